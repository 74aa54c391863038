"""Self-distillation data for Medusa heads: the base's own greedy continuations, hidden states cached once.

Procedure: `sequences` windows of `prompt_len` tokens are drawn (seeded) from the token stream of a corpus split
(calibration for training: the split is by whole documents, so heads never see a held-out document); the base
continues each greedily for `generate` tokens, a batch of equal-length prompts at a time (no padding), through
transformers' forward (`model.model` with a DynamicCache, then `lm_head`). Every forward's post-norm hidden state
is kept, so the base runs once per token in all — the prompt's prefill, then one step per generated token (the
last step covers the final position) — and training never reruns the layers.

`argmax[s, t]` is the base's greedy token after position t; along the continuation it is the sequence's next
token. Head k (1..K) at position t is trained on argmax[t + k] (the token at t+1+k). Training positions are
t = prompt_len-1 .. T-2: the positions whose next token the base itself chose, as at inference (the tree's root
is always the base's own token). A target past the end is masked (-100).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ridgeline.errors import RidgelineError

Progress = Callable[[str, int, int], None]
IGNORE = -100


@dataclass
class DistillData:
    """Sequences (prompt + the base's greedy continuation), their hidden states and the base's argmax per position."""

    tokens: torch.Tensor  # [S, T]
    hidden: torch.Tensor  # [S, T, d] float32, post-norm
    argmax: torch.Tensor  # [S, T]
    prompt_len: int
    info: dict = field(default_factory=dict)  # split, seed, windows, seconds

    def labels(self, heads: int) -> torch.Tensor:
        """[S, T, K]: head k's target at t is argmax[t + k] (k = 1..K), IGNORE past the end."""
        S, T = self.argmax.shape
        out = torch.full((S, T, heads), IGNORE, dtype=torch.long)
        for k in range(1, heads + 1):
            out[:, :T - k, k - 1] = self.argmax[:, k:]
        return out

    def positions(self, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training positions flattened: hidden [N, d] and labels [N, K] (t = prompt_len-1 .. T-2)."""
        lo, hi = self.prompt_len - 1, self.tokens.shape[1] - 1
        x = self.hidden[:, lo:hi].reshape(-1, self.hidden.shape[-1])
        y = self.labels(heads)[:, lo:hi].reshape(-1, heads)
        return x, y

    def split(self, held_out: int) -> tuple[DistillData, DistillData]:
        """(the first S - held_out sequences, the last held_out)."""
        S = self.tokens.shape[0]
        if not 0 <= held_out < S:
            raise RidgelineError(f"cannot hold out {held_out} of {S} sequences")
        cut = S - held_out
        part = lambda sl: DistillData(self.tokens[sl], self.hidden[sl], self.argmax[sl], self.prompt_len, self.info)
        return part(slice(0, cut)), part(slice(cut, S))


def _cache_keyword(inner: Any) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache`; use whichever the model takes."""
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def corpus_stream(tokenizer: Any, split: str = "calib", source: str | None = None) -> torch.Tensor:
    """The token ids of a corpus split (documents joined by blank lines) as one 1-D tensor."""
    from ridgeline.corpus import load_corpus
    from ridgeline.loader import quiet_transformers

    with quiet_transformers():  # no "longer than the model's maximum" warning: the stream is only cut into windows
        ids = tokenizer(load_corpus(split, source).text, add_special_tokens=False).input_ids
    return torch.tensor(ids, dtype=torch.long)


def draw_prompts(stream: torch.Tensor, sequences: int, prompt_len: int, seed: int = 0) -> torch.Tensor:
    """[sequences, prompt_len] windows of the stream at seeded random offsets."""
    if stream.numel() < prompt_len + 1:
        raise RidgelineError(f"the corpus has {stream.numel()} tokens; {prompt_len}-token prompts need more")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - prompt_len, (sequences,), generator=gen)
    return torch.stack([stream[s:s + prompt_len] for s in starts.tolist()])


@torch.inference_mode()
def continue_greedily(model: Any, prompts: torch.Tensor, generate: int,
                      progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, ...]:
    """(tokens [B, T], hidden [B, T, d] float32, argmax [B, T]) for a batch of equal-length prompts [B, P]."""
    from transformers import DynamicCache

    inner, head = model.model, model.lm_head
    B, P = prompts.shape
    T = P + generate
    kw = {_cache_keyword(inner): DynamicCache(config=model.config), "use_cache": True}
    tokens = torch.cat([prompts, torch.zeros(B, generate, dtype=torch.long)], 1)
    hidden = torch.empty(B, T, head.weight.shape[1], dtype=torch.float32)
    argmax = torch.empty(B, T, dtype=torch.long)
    h = inner(input_ids=prompts, position_ids=torch.arange(P).expand(B, P), **kw).last_hidden_state
    hidden[:, :P] = h.float()
    for b in range(B):  # one sequence at a time: B x P x vocab logits at once would be large
        argmax[b, :P] = head(h[b]).argmax(-1)
    for j in range(generate):
        tokens[:, P + j] = argmax[:, P + j - 1]
        h = inner(input_ids=tokens[:, P + j:P + j + 1], position_ids=torch.full((B, 1), P + j), **kw).last_hidden_state
        hidden[:, P + j] = h[:, 0].float()
        argmax[:, P + j] = head(h[:, 0]).argmax(-1)
        if progress is not None:
            progress(j + 1)
    return tokens, hidden, argmax


def distill_data(model: Any, stream: torch.Tensor, sequences: int, prompt_len: int, generate: int,
                 batch: int = 32, seed: int = 0, progress: Progress | None = None) -> DistillData:
    """The base's greedy continuations of `sequences` seeded prompts from `stream` (see the module docstring)."""
    for name, v, lo in (("sequences", sequences, 1), ("prompt length", prompt_len, 1),
                        ("generated tokens", generate, 2), ("generation batch", batch, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise RidgelineError(f"self-distillation {name} must be an integer >= {lo}, got {v!r}")
    prompts = draw_prompts(stream, sequences, prompt_len, seed)
    parts, t0, c0 = [], time.perf_counter(), time.process_time()
    total = sequences * generate
    for s in range(0, sequences, batch):
        chunk = prompts[s:s + batch]
        done = s * generate
        report = None
        if progress is not None:
            report = lambda j, done=done, n=chunk.shape[0]: progress("generating", done + j * n, total)  # noqa: E731
        parts.append(continue_greedily(model, chunk, generate, report))
    tokens, hidden, argmax = (torch.cat(x) for x in zip(*parts))
    info = {"sequences": sequences, "prompt_len": prompt_len, "generate": generate, "seed": seed,
            "generated_tokens": sequences * generate, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0}
    return DistillData(tokens, hidden, argmax, prompt_len, info)
