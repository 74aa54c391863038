"""Batch-1 speculative decoding over a `Verifier`: draft, verify the whole candidate tree in one forward, accept,
keep the accepted path's K/V.

The verifier interface (`Verifier`) is the one contract between decoding loops and a model path: ridgeline's lean
torch path (`ridgeline.measure.LeanCausalLM`), the transformers path (`HFVerifier`: 4-D float mask, DynamicCache
compaction) and the native C++ path implement it. It is tensor-based and minimal:

* `prefill(ids (1, P)) -> logits (1, V)` and `decode(token (1, 1)) -> logits (1, V)` continue the cache;
* `verify(tokens [M], positions [M], visibility [M, M] bool) -> (logits [M, V], hidden [M, d])` appends M tokens
  after the L cached ones (their K/V in slots L..L+M-1): token i attends every cached position and the new
  tokens j with visibility[i, j]; the length is L + M until
* `keep(indices)` keeps the new tokens at L + indices[k] as L + k (indices increasing) and sets the length to
  L + len(indices), dropping the others;
* `hidden`: the post-norm hidden state(s) of the positions the last call returned logits for; `length`: tokens
  cached; `reset()` empties the cache.

One step of `SpecDecoder` (the loop every drafter shares): the pending token (the base's own next token, not
yet cached: the tree's root) and the drafter's candidates are verified together; the acceptance rule walks
the tree from the root and returns the accepted path and the bonus token (the base's prediction after the
path's last node); the path is kept, the bonus becomes the next root, and the drafter sees the hidden state at
the path's end (Medusa heads draft from it: no extra forward). A step caches len(path) tokens and yields
len(path) new tokens (the accepted drafts and the bonus), so "tokens per step" counts the base's own token:
plain decoding makes exactly 1 per step. With no drafts the step is a plain `decode`.

Acceptance (`Acceptance`):
* greedy (lossless): a child is accepted iff its token is the argmax of the base's logits at its parent; the
  output equals plain greedy decoding token for token (up to float ties between the verify and decode kernels);
* typical (Medusa's rule, sampling, **not lossless**): with p the base's distribution at temperature T at the
  parent, a child x is accepted iff p(x) > min(eps, alpha * exp(-H(p))); the deepest accepted node wins (ties: the
  highest sum of log p along the path); the root and the bonus are sampled from p with every token below that
  threshold removed (Medusa's `get_typical_one_token`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

import torch

from ridgeline.engine.tree import Tree
from ridgeline.errors import RidgelineError

ACCEPT_KINDS = ("greedy", "typical")


class Verifier(Protocol):
    """A batch-1 causal LM with a KV cache that can verify a token tree in one forward (see the module docstring)."""

    length: int
    hidden: torch.Tensor | None

    def reset(self) -> None:
        """Empty the cache."""
        ...

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(1, P) ids after the cache -> the last position's logits (1, V)."""
        ...

    def decode(self, token: torch.Tensor) -> torch.Tensor:
        """One (1, 1) token after the cache -> its logits (1, V)."""
        ...

    def verify(self, tokens: torch.Tensor, positions: torch.Tensor,
               visibility: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M tokens after the cache, their rope positions, [M, M] visibility -> (logits [M, V], hidden [M, d])."""
        ...

    def keep(self, indices: torch.Tensor) -> None:
        """Keep the verified tokens at L + indices[k] as L + k; length = L + len(indices)."""
        ...


class Drafter(Protocol):
    """Proposes candidate tokens after the root; sees the accepted tokens' last hidden state after each step."""

    name: str

    def start(self, prompt: Sequence[int]) -> None:
        """A new sequence begins with `prompt`."""
        ...

    def observe(self, hidden: torch.Tensor) -> None:
        """The post-norm hidden state [d] of the last cached token (the one whose logits gave the root)."""
        ...

    def propose(self, context: Sequence[int]) -> tuple[Tree, list[int]]:
        """The tree and one token per non-root node, drafted after `context` (which ends with the root)."""
        ...


@dataclass(frozen=True)
class Acceptance:
    """The acceptance rule: greedy (lossless), or typical with temperature, eps and alpha (sampling, not lossless)."""

    kind: str = "greedy"
    temperature: float = 0.7
    eps: float = 0.09  # Medusa's posterior_threshold
    alpha: float = 0.3  # Medusa's posterior_alpha
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ACCEPT_KINDS:
            raise RidgelineError(f"acceptance must be one of {', '.join(ACCEPT_KINDS)}, got {self.kind!r}")
        for name, lo in (("temperature", 0.0), ("eps", 0.0), ("alpha", 0.0)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > lo):
                raise RidgelineError(f"typical acceptance {name} must be a finite number > {lo}, got {v!r}")

    @property
    def lossless(self) -> bool:
        """Whether the output equals plain greedy decoding."""
        return self.kind == "greedy"

    @property
    def label(self) -> str:
        """'greedy' or 'typical T=0.7 eps=0.09 alpha=0.3'."""
        if self.kind == "greedy":
            return "greedy"
        return f"typical T={self.temperature:g} eps={self.eps:g} alpha={self.alpha:g}"

    def to_json(self) -> dict:
        """JSON form."""
        out: dict[str, Any] = {"kind": self.kind, "lossless": self.lossless}
        if self.kind == "typical":
            out.update(temperature=self.temperature, eps=self.eps, alpha=self.alpha, seed=self.seed)
        return out


def typical_probs(logits: torch.Tensor, acc: Acceptance) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, threshold): the softmax of `logits` [..., V] at the temperature, and min(eps, alpha * exp(-H(p))) [...]."""
    p = torch.softmax(logits.float() / acc.temperature, dim=-1)
    entropy = -torch.special.xlogy(p, p).sum(-1)
    return p, torch.clamp(acc.alpha * torch.exp(-entropy), max=acc.eps)


def greedy_path(tree: Tree, tokens: Sequence[int], logits: torch.Tensor) -> tuple[list[int], int]:
    """The longest path from the root whose every child is the argmax at its parent, and the bonus token."""
    pred = logits.argmax(-1).tolist()
    children = tree.children()
    path = [0]
    while True:
        node = path[-1]
        nxt = next((c for c in children[node] if tokens[c] == pred[node]), None)
        if nxt is None:
            return path, pred[node]
        path.append(nxt)


def typical_path(tree: Tree, tokens: Sequence[int], logits: torch.Tensor, acc: Acceptance,
                 generator: torch.Generator | None = None) -> tuple[list[int], int]:
    """The deepest path whose every child passes the typical rule at its parent (ties: highest sum of log p), and
    the bonus sampled from the typical-filtered distribution at its last node."""
    p, threshold = typical_probs(logits, acc)
    parents = tree.parents()
    best: dict[int, tuple[int, float]] = {0: (0, 0.0)}  # accepted node -> (depth, sum of log p)
    for i in range(1, tree.size):  # parents precede children
        parent = parents[i]
        if parent in best and float(p[parent, tokens[i]]) > float(threshold[parent]):
            depth, score = best[parent]
            best[i] = (depth + 1, score + math.log(float(p[parent, tokens[i]])))
    last = max(best, key=lambda i: (best[i][0], best[i][1], -i))
    path = [last]
    while path[-1] != 0:
        path.append(parents[path[-1]])
    return path[::-1], sample_typical(p[last], threshold[last], generator)


def sample_typical(p: torch.Tensor, threshold: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """A token drawn from `p` [V] with the tokens below `threshold` removed (the most likely one always stays)."""
    keep = p >= threshold
    keep[p.argmax()] = True
    q = torch.where(keep, p, torch.zeros_like(p))
    return int(torch.multinomial(q / q.sum(), 1, generator=generator))


@dataclass
class StepRecord:
    """One verify step: tokens verified, tokens it yielded (accepted drafts + bonus), and where the time went."""

    verified: int
    tokens: int
    draft_s: float
    verify_s: float
    accept_s: float


@contextlib.contextmanager
def glue_threads(verifier: Any) -> Iterator[None]:
    """Pin torch to the verifier's `glue_threads` (the native path: 1) for the torch work around its steps."""
    n, before = getattr(verifier, "glue_threads", None), torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class SpecDecoder:
    """Speculative decoding on a verifier with a drafter and an acceptance rule (batch 1; see the module docstring).

    It is also the runner ridgeline's bench times: `prefill(prompt)` returns the first token, each `step(limit)`
    caches at most `limit` tokens and returns the tokens it yielded, `cached()` is the cache length.
    """

    verifier: Any
    drafter: Drafter
    acceptance: Acceptance = field(default_factory=Acceptance)
    impl: str = "speculative"
    steps: list[StepRecord] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # what the record says about the run: drafter, tree, cost curve

    def __post_init__(self) -> None:
        self.context: list[int] = []
        self.generator = torch.Generator().manual_seed(self.acceptance.seed)

    def _root(self, logits: torch.Tensor) -> int:
        if self.acceptance.kind == "greedy":
            return int(logits.argmax())
        p, threshold = typical_probs(logits, self.acceptance)
        return sample_typical(p, threshold, self.generator)

    @torch.inference_mode()
    def prefill(self, prompt: Sequence[int]) -> int:
        """Reset the cache, prefill `prompt`, let the drafter see it; the first generated token (the first root)."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise RidgelineError("speculative decoding needs a prompt of at least one token")
        self.verifier.reset()
        self.steps = []
        self.generator.manual_seed(self.acceptance.seed)
        with glue_threads(self.verifier):
            logits = self.verifier.prefill(torch.tensor([prompt]))
            root = self._root(logits[0])
            self.drafter.start(prompt)
            self.drafter.observe(self.verifier.hidden[-1])
        self.context = prompt + [root]
        return root

    @torch.inference_mode()
    def step(self, limit: int | None = None) -> list[int]:
        """One verify step; caches and returns at most `limit` tokens (>= 1)."""
        if not self.context:
            raise RidgelineError("step follows prefill")
        limit = limit if limit is not None else 1 << 30
        if limit < 1:
            raise RidgelineError(f"step limit must be >= 1, got {limit}")
        with glue_threads(self.verifier):
            return self._step(limit)

    def _step(self, limit: int) -> list[int]:
        t0 = time.perf_counter()
        tree, drafts = self.drafter.propose(self.context) if limit > 1 else (Tree(()), [])
        if len(drafts) != tree.size - 1:
            raise RidgelineError(f"drafter {self.drafter.name} gave {len(drafts)} tokens for a "
                                 f"{tree.size - 1}-node tree")
        tokens = [self.context[-1]] + [int(t) for t in drafts]
        t1 = time.perf_counter()
        v = self.verifier
        if len(tokens) == 1:
            logits = v.decode(torch.tensor([tokens]))
            t2 = time.perf_counter()
            path, bonus, hidden = [0], self._root(logits[0]), v.hidden[-1]
        else:
            logits, hidden_all = v.verify(torch.tensor(tokens), tree.positions(v.length), tree.visibility())
            t2 = time.perf_counter()
            path, bonus = (greedy_path(tree, tokens, logits) if self.acceptance.kind == "greedy"
                           else typical_path(tree, tokens, logits, self.acceptance, self.generator))
            if len(path) > limit:
                path = path[:limit]
                bonus = self._root(logits[path[-1]])
            v.keep(torch.tensor(path))
            hidden = hidden_all[path[-1]]
        self.drafter.observe(hidden)
        new = [tokens[i] for i in path[1:]] + [bonus]
        self.context += new
        self.steps.append(StepRecord(len(tokens), len(new), t1 - t0, t2 - t1, time.perf_counter() - t2))
        return new

    def cached(self) -> int:
        """Tokens in the verifier's cache."""
        return int(self.verifier.length)

    def generate(self, prompt: Sequence[int], n: int) -> list[int]:
        """Exactly `n` new tokens after `prompt` (EOS ignored), as plain decoding would number them."""
        if n < 1:
            raise RidgelineError(f"generate needs n >= 1 new tokens, got {n}")
        out = [self.prefill(prompt)]
        end = len(prompt) + n - 1  # the cache holds the prompt and every token but the last
        while self.cached() < end:
            out += self.step(end - self.cached())
        return out[:n]

    def tokens_per_step(self) -> float:
        """Mean tokens yielded per verify step since the last prefill (the base's own token counted)."""
        return sum(s.tokens for s in self.steps) / len(self.steps) if self.steps else 0.0
