"""What every benchmark record carries: machine, threads, versions, date; and timing statistics."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from importlib import metadata
from typing import Callable


def machine_info() -> dict:
    """CPU model, cores, Python and package versions, date."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for pkg in ("ridgeline", "numpy", "torch", "transformers", "gguf"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None}


def timed(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict:
    """Run `fn` warmup + repeats times; median, min, max and every sample, in seconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
            "repeats": repeats, "warmup": warmup, "samples_s": samples}
