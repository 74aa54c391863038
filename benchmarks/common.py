"""What every benchmark record carries (machine, threads, versions, date) and a repeat-timing helper."""

from __future__ import annotations

import time
from typing import Callable

from ridgeline.measure.stats import machine_info, summarize

__all__ = ["machine_info", "timed"]


def timed(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict:
    """Run `fn` warmup + repeats times; median, min, max and every sample, in seconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    s = summarize(samples)
    return {"median_s": s.median, "min_s": s.min, "max_s": s.max, "repeats": repeats, "warmup": warmup,
            "samples_s": samples}
