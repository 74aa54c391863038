"""Quality of a compressed prompt: how well the model still predicts what truly follows it.

A sample is a window of held-out text: `context` tokens and the `continuation` tokens after them (64 by
default). For each compressed context the model reads [prefix] + kept ids + continuation in one forward, and:
- NLL: the mean -log p of the continuation tokens (nats/token); ΔNLL = compressed - full context, per sample;
- cloze: the first word of at least 4 letters lying wholly inside the continuation (after its first token,
  so it is predicted from the context plus a little of the continuation); correct when every token of it is
  the model's argmax (lm-eval's lambada rule), as the full context and each compressed one see it.
Shorter contexts of one sample are its last L tokens, so every length shares the same continuation.
Gap recovery at a rate = (ΔNLL_truncate - ΔNLL_method) / ΔNLL_truncate: the share of what truncation loses
that the method wins back (1: as good as the full context; 0: no better than truncation).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ridgeline.compress.prompt import Prompt
from ridgeline.compress.units import unit_ranges
from ridgeline.errors import RidgelineError

Progress = Callable[[str, int, int], None]  # (what, done, total)
_WORD = re.compile(r"[A-Za-z]{4,}")


@dataclass(frozen=True)
class Sample:
    """A held-out window: the longest context, the true continuation after it, and the cloze word's tokens."""

    title: str
    offset: int  # token index of the context's first token in its document
    context: Prompt
    continuation: Prompt
    cloze: tuple[int, int]  # token range of the cloze word inside the continuation

    @property
    def cloze_word(self) -> str:
        """The word the cloze item asks for."""
        s, e = self.cloze
        return "".join(self.continuation.piece(i) for i in range(s, e)).strip()

    def context_of(self, length: int) -> Prompt:
        """The last `length` tokens of the context."""
        n = len(self.context)
        if not 1 <= length <= n:
            raise RidgelineError(f"context length {length} is outside this sample's 1..{n} tokens")
        return self.context.slice(n - length, n)


def _cloze_range(cont: Prompt) -> tuple[int, int] | None:
    """The first word unit after token 0 whose text is one alphabetic word of 4+ letters."""
    for s, e in unit_ranges(cont, "word"):
        if s >= 1 and e < len(cont) and _WORD.fullmatch("".join(cont.piece(i) for i in range(s, e)).strip()):
            return s, e
    return None


def corpus_samples(tokenizer: Any, n: int, context: int, continuation: int = 64, split: str = "eval",
                   seed: int = 0, source: str | None = None) -> list[Sample]:
    """`n` reproducible windows of `context` + `continuation` tokens from the corpus split, none overlapping.

    Documents are tokenized in a seeded order only until there are 4n candidate windows from at least
    min(n, documents) of them (a long corpus is not tokenized whole for a few samples); the windows are a grid of
    stride context + continuation inside each document, picked in a seeded random order."""
    from ridgeline.corpus import load_corpus

    if n < 1 or context < 1 or continuation < 2:
        raise RidgelineError(f"need n >= 1 samples, context >= 1 and continuation >= 2 tokens; "
                             f"got {n}, {context}, {continuation}")
    width = context + continuation
    rng = random.Random(seed)
    documents = list(load_corpus(split, source).documents)
    rng.shuffle(documents)
    docs, starts = [], []
    for title, text in documents:
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False, verbose=False)
        ids = enc["input_ids"]
        if len(ids) >= width:
            starts += [(len(docs), s) for s in range(0, len(ids) - width + 1, width)]
            docs.append((title, text, ids, [tuple(o) for o in enc["offset_mapping"]]))
        if len(starts) >= 4 * n and len(docs) >= min(n, len(documents)):
            break
    if not starts:
        raise RidgelineError(f"the corpus has no document of {width} tokens; use shorter contexts")
    rng.shuffle(starts)
    out = []
    for d, s in starts:
        title, text, ids, offs = docs[d]
        ctx = _prompt(text, ids, offs, s, s + context)
        cont = _prompt(text, ids, offs, s + context, s + width)
        cloze = _cloze_range(cont)
        if cloze is not None:
            out.append(Sample(title, s, ctx, cont, cloze))
        if len(out) == n:
            return out
    raise RidgelineError(f"the corpus has only {len(out)} windows of {width} tokens with a cloze word among those "
                         f"read, fewer than the {n} asked for")


def _prompt(text: str, ids: Sequence[int], offs: Sequence[tuple[int, int]], s: int, e: int) -> Prompt:
    lo, hi = offs[s][0], offs[e - 1][1]
    return Prompt(tuple(ids[s:e]), text[lo:hi], tuple((a - lo, b - lo) for a, b in offs[s:e]))


@dataclass(frozen=True)
class Score:
    """The continuation's summed NLL (nats), its token count, and whether the cloze word is the greedy choice."""

    nll: float
    tokens: int
    cloze_correct: bool

    @property
    def nll_per_token(self) -> float:
        """Mean NLL per continuation token."""
        return self.nll / self.tokens


def score_continuation(model: Any, prefix: int, context_ids: Sequence[int], sample: Sample) -> Score:
    """NLL of the sample's continuation and its cloze item after [prefix] + `context_ids`, one forward."""
    import torch
    import torch.nn.functional as F

    from ridgeline.compress.lm import check_fits

    cont = list(sample.continuation.ids)
    ids = [prefix, *context_ids, *cont]
    check_fits(model, len(ids), "context + continuation")
    x = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
    with torch.inference_mode():
        logits = model(input_ids=x, use_cache=False, logits_to_keep=len(cont) + 1).logits[0, :-1].float()
    target = torch.tensor(cont, dtype=torch.long, device=logits.device)
    nll = F.cross_entropy(logits, target, reduction="sum").item()
    s, e = sample.cloze
    correct = bool((logits[s:e].argmax(-1) == target[s:e]).all())
    return Score(nll, len(cont), correct)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (0 for one value)."""
    xs = np.asarray(values, dtype=np.float64)
    se = float(xs.std(ddof=1) / math.sqrt(len(xs))) if len(xs) > 1 else 0.0
    return float(xs.mean()), se
