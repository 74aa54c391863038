"""Corpus evaluation of compression methods: held-out windows, every length x rate x method, ΔNLL and cloze.

For each sample and context length L, the full context is scored once; then every method compresses the
same L tokens at every rate and its kept ids are scored the same way (quality.py). The budget controller
treats the last `question_share` x budget tokens of a context as its question (kept whole: what was said
last matters most to what follows) and compresses the rest; truncation is that controller's limit (the
whole budget to the tail). Summaries per (L, rate, method): mean ΔNLL with its standard error, cloze accuracy
(beside the full context's), the achieved rate (mean, min, max), the compressor's median time, and the gap
recovered against truncation.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ridgeline.compress.api import Method, Truncate, compress
from ridgeline.compress.budget import Parts, resolve_budget
from ridgeline.compress.lm import prefix_id
from ridgeline.compress.quality import corpus_samples, mean_se, score_continuation
from ridgeline.errors import RidgelineError

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CorpusEvalConfig:
    """What to evaluate: context lengths, rates, held-out samples, continuation tokens, the controller's tail share."""

    lengths: tuple[int, ...] = (512,)
    rates: tuple[float, ...] = (2.0,)
    samples: int = 8
    continuation: int = 64
    question_share: float = 0.5
    seed: int = 0
    split: str = "eval"
    source: str | None = None  # a corpus file instead of the default held-out split

    def __post_init__(self) -> None:
        if not self.lengths or any(L < 2 for L in self.lengths):
            raise RidgelineError(f"context lengths must be >= 2 tokens, got {self.lengths}")
        for r in self.rates:
            resolve_budget(max(self.lengths), rate=r)  # rate > 1, with the same one-line error
        if self.samples < 1:
            raise RidgelineError(f"samples must be >= 1, got {self.samples}")
        if not 0 <= self.question_share < 1:
            raise RidgelineError(f"question_share must be in [0, 1), got {self.question_share}")


def controller_parts(n: int, rate: float, share: float) -> Parts:
    """The corpus controller: the last share x budget tokens are the question, kept whole."""
    keep, _ = resolve_budget(n, rate=rate)
    return Parts(question=int(share * keep))


def corpus_eval(model: Any, tokenizer: Any, methods: dict[str, Method], config: CorpusEvalConfig = CorpusEvalConfig(),
                progress: Progress | None = None) -> dict:
    """Score every method at every length and rate on held-out samples; the record with items and summaries."""
    methods = {"truncate": Truncate(), **methods}
    samples = corpus_samples(tokenizer, config.samples, max(config.lengths), config.continuation, config.split,
                             config.seed, config.source)
    prefix = prefix_id(tokenizer)
    items = []
    total, done = len(samples) * len(config.lengths), 0
    for i, sample in enumerate(samples):
        for length in config.lengths:
            ctx = sample.context_of(length)
            full = score_continuation(model, prefix, ctx.ids, sample)
            items.append(_item(i, length, None, "full", full, full, len(ctx), 0.0))
            for rate in config.rates:
                parts = controller_parts(len(ctx), rate, config.question_share)
                for name, cfg in methods.items():
                    r = compress(ctx, cfg, rate=rate, model=model, tokenizer=tokenizer,
                                 parts=None if isinstance(cfg, Truncate) else parts)
                    score = score_continuation(model, prefix, r.kept_ids, sample)
                    items.append(_item(i, length, rate, name, score, full, r.kept_tokens, r.compressor_s))
            done += 1
            if progress is not None:
                progress(f"sample {i + 1}/{len(samples)}, {length} tokens", done, total)
    return {"kind": "ridgeline.compress.eval", "config": asdict(config), "methods": list(methods),
            "samples": [{"title": s.title, "offset": s.offset, "cloze_word": s.cloze_word} for s in samples],
            "summary": summarize(items), "items": items}


def _item(i: int, length: int, rate: float | None, method: str, score: Any, full: Any, kept: int,
          seconds: float) -> dict:
    return {"sample": i, "length": length, "rate": rate, "method": method, "kept": kept,
            "rate_achieved": length / kept, "nll_per_token": score.nll_per_token,
            "delta_nll": score.nll_per_token - full.nll_per_token, "cloze_correct": score.cloze_correct,
            "compressor_s": seconds}


def summarize(items: Sequence[dict]) -> list[dict]:
    """One row per (length, rate, method): ΔNLL mean ± SE, cloze accuracy, rate achieved, time, gap recovered."""
    groups: dict[tuple, list[dict]] = {}
    for it in items:
        groups.setdefault((it["length"], it["rate"], it["method"]), []).append(it)
    full = {L: g for (L, r, m), g in groups.items() if m == "full"}
    rows = []
    for (length, rate, method), g in groups.items():
        delta, se = mean_se([x["delta_nll"] for x in g])
        rates = [x["rate_achieved"] for x in g]
        rows.append({"length": length, "rate": rate, "method": method, "n": len(g),
                     "nll_per_token": statistics.fmean(x["nll_per_token"] for x in g),
                     "delta_nll": delta, "delta_nll_se": se,
                     "cloze_accuracy": statistics.fmean(x["cloze_correct"] for x in g),
                     "full_cloze_accuracy": statistics.fmean(x["cloze_correct"] for x in full[length]),
                     "rate_achieved_mean": statistics.fmean(rates), "rate_achieved_min": min(rates),
                     "rate_achieved_max": max(rates),
                     "compressor_s_median": statistics.median(x["compressor_s"] for x in g)})
    trunc = {(r["length"], r["rate"]): r["delta_nll"] for r in rows if r["method"] == "truncate"}
    for r in rows:
        t = trunc.get((r["length"], r["rate"]))
        r["gap_recovered"] = (t - r["delta_nll"]) / t if t is not None and t > 0 and r["method"] != "full" else None
    return sorted(rows, key=lambda r: (r["length"], r["rate"] or 0, r["method"] != "full", r["method"]))

