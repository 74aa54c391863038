"""Drafters for `SpecDecoder`: Medusa heads (a tree from the heads' top-k), prompt lookup and a draft model (chains).

* `MedusaDrafter`: head j's top-k at the last accepted position fill depth j of a fixed tree (every node at depth j
  takes head j's candidate of its rank, whatever its parent: Medusa's Cartesian candidates). The heads run once
  per step on one hidden state: K ResBlocks and K rows through the (shared) vocabulary projection.
* `PromptLookupDrafter`: transformers' prompt lookup decoding (`PromptLookupCandidateGenerator`): for n-gram sizes
  from `max_ngram` down to 1, the first earlier occurrence (left to right) of the context's last n tokens that has
  a continuation proposes up to `num_tokens` of it (cut before an EOS); no match, no drafts (a plain step).
* `DraftModelDrafter`: assisted generation with a small draft model: it keeps its own cache in step with the
  context (cropped to the common prefix, the missing tokens prefilled) and drafts greedily up to `num_tokens`
  tokens, stopping after a token whose probability falls below `confidence` (transformers' defaults: 20 tokens,
  threshold 0.4; transformers adapts the threshold over time, here it is fixed).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ridgeline.engine.tree import Tree
from ridgeline.errors import RidgelineError


class MedusaDrafter:
    """Candidates from Medusa heads (anything with `topk(hidden [d], k) -> [K, k]` and `num_heads`) on a fixed tree."""

    name = "medusa"

    def __init__(self, heads: Any, tree: Tree) -> None:
        if tree.depth > heads.num_heads:
            raise RidgelineError(f"the tree is {tree.depth} deep but there are only {heads.num_heads} Medusa heads")
        self.heads, self.tree = heads, tree
        self.k = max(tree.ranks_needed(), default=0)
        depths, ranks = tree.depths()[1:], [p[-1] for p in tree.paths]
        self._flat = torch.tensor([(d - 1) * self.k + r for d, r in zip(depths, ranks)], dtype=torch.long)
        self._candidates: torch.Tensor | None = None

    def start(self, prompt: Sequence[int]) -> None:
        """Nothing to set up: the heads read hidden states only."""
        self._candidates = None

    def observe(self, hidden: torch.Tensor) -> None:
        """Run the heads on the hidden state of the last cached token: top-k of each head the tree uses."""
        if self.k:
            self._candidates = self.heads.topk(hidden, self.k, self.tree.depth)

    def propose(self, context: Sequence[int]) -> tuple[Tree, list[int]]:
        """The fixed tree, node tokens gathered from the heads' ranked candidates."""
        if not self.k:
            return self.tree, []
        return self.tree, self._candidates.reshape(-1)[self._flat].tolist()


class PromptLookupDrafter:
    """transformers' prompt lookup: copy the continuation of an earlier occurrence of the context's last n-gram."""

    name = "prompt-lookup"

    def __init__(self, num_tokens: int = 10, max_ngram: int = 2, eos: Sequence[int] = ()) -> None:
        if num_tokens < 1 or max_ngram < 1:
            raise RidgelineError(f"prompt lookup needs num_tokens >= 1 and max_ngram >= 1, got {num_tokens}, "
                                 f"{max_ngram}")
        self.num_tokens, self.max_ngram, self.eos = num_tokens, max_ngram, set(eos)

    def start(self, prompt: Sequence[int]) -> None:
        """Stateless: the context is searched each step."""

    def observe(self, hidden: torch.Tensor) -> None:
        """Not used."""

    def lookup(self, context: Sequence[int]) -> list[int]:
        """The drafted continuation (possibly empty), exactly as transformers' candidate generator finds it."""
        ids = torch.as_tensor(context, dtype=torch.long)
        n_ctx = ids.numel()
        for n in range(min(self.max_ngram, n_ctx - 1), 0, -1):
            windows = ids.unfold(0, n, 1)
            matches = (windows == ids[-n:]).all(dim=1).nonzero().flatten().tolist()
            for idx in matches:
                start = idx + n
                end = min(start + self.num_tokens, n_ctx)
                if start < end:
                    out = ids[start:end].tolist()
                    cut = next((i for i, t in enumerate(out) if t in self.eos), len(out))
                    return out[:cut]
        return []

    def propose(self, context: Sequence[int]) -> tuple[Tree, list[int]]:
        """A chain of the looked-up tokens."""
        drafts = self.lookup(context)
        return Tree.chain(len(drafts)), drafts


class DraftModelDrafter:
    """A small draft model (a verifier-like object with prefill, decode, crop, length) proposing a greedy chain."""

    name = "draft"

    def __init__(self, draft: Any, num_tokens: int = 20, confidence: float | None = 0.4) -> None:
        if num_tokens < 1:
            raise RidgelineError(f"draft tokens per step must be >= 1, got {num_tokens}")
        if confidence is not None and not 0.0 <= confidence < 1.0:
            raise RidgelineError(f"draft confidence threshold must be in [0, 1), got {confidence}")
        self.draft, self.num_tokens, self.confidence = draft, num_tokens, confidence
        self._held: list[int] = []  # the tokens the draft's cache holds

    def start(self, prompt: Sequence[int]) -> None:
        """A new sequence: empty the draft's cache."""
        self.draft.reset()
        self._held = []

    def observe(self, hidden: torch.Tensor) -> None:
        """Not used (the draft model runs on tokens)."""

    @torch.inference_mode()
    def propose(self, context: Sequence[int]) -> tuple[Tree, list[int]]:
        """Sync the draft's cache with `context`, then draft greedily."""
        common = 0
        for a, b in zip(self._held, context):
            if a != b:
                break
            common += 1
        common = min(common, len(context) - 1)  # at least the root is fed, so there are logits to draft from
        self.draft.crop(common)
        logits = self.draft.prefill(torch.tensor([list(context[common:])]))
        self._held = list(context)
        drafts: list[int] = []
        while True:
            conf, tok = torch.softmax(logits[0].float(), -1).max(-1)
            drafts.append(int(tok))
            # transformers' ConfidenceCriteria: the unsure token is still proposed, then drafting stops
            unsure = self.confidence is not None and float(conf) < self.confidence
            if unsure or len(drafts) == self.num_tokens or self.draft.length >= self.draft.max_len - 1:
                break
            logits = self.draft.decode(tok.view(1, 1))
            self._held.append(int(tok))
        return Tree.chain(len(drafts)), drafts
