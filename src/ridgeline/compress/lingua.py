"""LLMLingua-style compression: coarse paragraph dropping, then token dropping segment by segment, each segment
scored by the model conditioned on the prompt as compressed so far (Jiang et al., EMNLP 2023).

Per part of the prompt (instruction / context / question, budgets from the controller in `budget.py`):

1. Coarse (demonstration level): when a part holds more than `coarse_factor` times its budget, its paragraphs
   (blocks between blank lines: speeches in a play) are ranked by their mean self-information under the model
   (one forward over the prompt) and the least informative are dropped until `coarse_factor` x budget tokens
   remain. Protected tokens are never dropped.
2. Fine (token level, iterative): the surviving tokens are cut into segments of `segment` tokens. A KV cache
   holds the compressed prompt so far. Each segment is run once on top of that cache to get every token's
   -log p given the compressed prefix; the cache is cropped back; the segment keeps its share of the budget
   (protected tokens plus a share of the free budget proportional to its unprotected tokens) by `select`;
   then the kept tokens are run on the cache, so the next segment is conditioned on exactly the compressed
   text. Cost: every surviving token once, plus every kept token once (about 1.5 prefills at 2x).

Differences from the reference implementation (microsoft/LLMLingua): it compacts the KV cache of the whole
segment instead of re-running the kept tokens (cheaper, but the kept tokens' keys then still depend on the
dropped ones), sets a perplexity threshold per segment instead of an exact count, and ranks demonstrations
with independent forwards; here the kept count is exact and the conditioning is on the compressed text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ridgeline.compress.budget import select, spread
from ridgeline.compress.lm import cache_kwargs, crop, prefix_id, self_information
from ridgeline.compress.prompt import Prompt
from ridgeline.errors import RidgelineError

_BLANK_LINE = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class LinguaPlan:
    """Knobs of the iterative compressor."""

    segment: int = 128  # tokens scored per forward (LLMLingua's iterative_size is 200)
    coarse_factor: float = 2.0  # paragraphs are dropped only while a part holds more than this x its budget

    def __post_init__(self) -> None:
        if isinstance(self.segment, bool) or not isinstance(self.segment, int) or self.segment < 1:
            raise RidgelineError(f"segment must be an integer >= 1 token, got {self.segment!r}")
        if not isinstance(self.coarse_factor, (int, float)) or self.coarse_factor < 1:
            raise RidgelineError(f"coarse_factor must be >= 1 (a large value turns the coarse stage off), "
                                 f"got {self.coarse_factor!r}")


def paragraphs(prompt: Prompt, start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of the blocks between blank lines inside tokens [start, end)."""
    starts = np.asarray([s for s, _ in prompt.spans[start:end]])
    # a paragraph starts at the first token at or after the end of a blank line
    cuts = {int(np.searchsorted(starts, m.end())) for m in _BLANK_LINE.finditer(prompt.text)}
    bounds = [0] + sorted(c for c in cuts if 0 < c < end - start) + [end - start]
    return [(start + a, start + b) for a, b in zip(bounds, bounds[1:]) if b > a]


def coarse_keep(prompt: Prompt, info: np.ndarray | None, start: int, end: int, budget: int, factor: float,
                protected: np.ndarray) -> np.ndarray:
    """Candidates of part [start, end) after dropping its least informative paragraphs (boolean over the part)."""
    n = end - start
    alive = np.ones(n, dtype=bool)
    if info is None or n <= factor * budget:
        return alive
    paras = paragraphs(prompt, start, end)
    if len(paras) < 2:
        return alive
    means = np.array([info[s:e].mean() for s, e in paras])
    alive[:] = False
    total = 0
    for j in np.argsort(-means, kind="stable"):  # most informative paragraphs first
        s, e = paras[j]
        alive[s - start:e - start] = True
        total += e - s
        if total >= factor * budget:
            break
    return alive | protected[start:end]


def local_units(units: list[tuple[int, int]] | None, idx: np.ndarray) -> list[tuple[int, int]] | None:
    """Units restricted to the positions `idx` (sorted), as ranges of local indices into idx."""
    if units is None:
        return None
    owner = np.empty(idx.max() + 1 if idx.size else 0, dtype=np.int64)
    for u, (s, e) in enumerate(units):
        owner[s:min(e, owner.size)] = u
    out, s = [], 0
    for i in range(1, idx.size + 1):
        if i == idx.size or owner[idx[i]] != owner[idx[i - 1]] or idx[i] != idx[i - 1] + 1:
            out.append((s, i))
            s = i
    return out


@torch.inference_mode()
def lingua_keep(model: Any, tokenizer: Any, prompt: Prompt, plan: list[tuple[int, int, int]], protected: np.ndarray,
                units: list[tuple[int, int]] | None, cfg: LinguaPlan) -> np.ndarray:
    """Keep mask over the prompt: coarse paragraph dropping, then iterative conditional token dropping."""
    from transformers import DynamicCache

    n = len(prompt)
    needs_coarse = any(e - s > cfg.coarse_factor * b for s, e, b in plan)
    info = self_information(model, tokenizer, prompt.ids) if needs_coarse else None
    alive = np.concatenate([coarse_keep(prompt, info, s, e, b, cfg.coarse_factor, protected) for s, e, b in plan])
    segments = []  # (token indices, budget)
    for s, e, b in plan:
        idx = np.flatnonzero(alive[s:e]) + s
        chunks = [idx[i:i + cfg.segment] for i in range(0, idx.size, cfg.segment)]
        prot = [int(protected[c].sum()) for c in chunks]
        if sum(prot) <= b:  # each segment: its protected tokens and a share of the free budget
            free = spread(b - sum(prot), [c.size - p for c, p in zip(chunks, prot)])
            segments += [(c, p + f) for c, p, f in zip(chunks, prot, free)]
        else:  # protected tokens alone overflow the part's budget: they share it
            segments += list(zip(chunks, spread(b, prot)))
    keep = np.zeros(n, dtype=bool)
    device = next(model.parameters()).device
    ids = torch.tensor(prompt.ids, dtype=torch.long, device=device)
    cache = DynamicCache(config=model.config)
    was = model.training
    model.eval()
    try:
        out = model(input_ids=torch.tensor([[prefix_id(tokenizer)]], device=device), use_cache=True,
                    **cache_kwargs(model, cache))
        last = out.logits[0, -1]
        for j, (idx, b) in enumerate(segments):
            local = np.ones(idx.size, dtype=bool)
            if b < idx.size:
                local = _segment_keep(model, ids[idx], last, cache, b, protected[idx], local_units(units, idx))
            keep[idx[local]] = True
            kept = ids[idx[local]]
            if j + 1 < len(segments) and kept.numel():
                out = model(input_ids=kept[None], use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
                last = out.logits[0, -1]
    finally:
        model.train(was)
    return keep


def _segment_keep(model: Any, seg: torch.Tensor, last: torch.Tensor, cache: Any, budget: int, protected: np.ndarray,
                  units: list[tuple[int, int]] | None) -> np.ndarray:
    """Score a segment on top of the cache (then crop it back) and keep `budget` of its tokens."""
    length = cache.get_seq_length()
    out = model(input_ids=seg[None], use_cache=True, **cache_kwargs(model, cache))
    crop(cache, length)
    logits = torch.cat([last[None], out.logits[0, :-1]]).float()
    info = F.cross_entropy(logits, seg, reduction="none").double().cpu().numpy()
    return select(info, budget, protected, units)
