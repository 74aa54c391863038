"""Summaries of repeated measurements: median and spread, never a single run."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
from dataclasses import dataclass
from importlib import metadata
from typing import Sequence


@dataclass(frozen=True)
class Stat:
    """Median, min, max and interquartile range of repeated samples (every sample kept)."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    samples: tuple[float, ...]

    @property
    def spread(self) -> float:
        """(max - min) / median: the relative range of the samples."""
        return (self.max - self.min) / self.median if self.median else 0.0

    def to_json(self) -> dict:
        """JSON form: the summary and every sample."""
        return {"median": self.median, "min": self.min, "max": self.max, "q1": self.q1, "q3": self.q3,
                "n": len(self.samples), "samples": list(self.samples)}


def summarize(samples: Sequence[float]) -> Stat:
    """Median, extremes and quartiles of `samples` (at least one)."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("summarize needs at least one sample")
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0], xs[0], xs[0])
    return Stat(statistics.median(xs), xs[0], xs[-1], q1, q3, tuple(float(x) for x in samples))


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(packages: Sequence[str] = ("ridgeline", "numpy", "torch", "transformers", "gguf",
                                            "llama_cpp_python")) -> dict:
    """CPU model, cores, platform, Python and package versions, CPU capability, load and date."""
    versions = {}
    for pkg in packages:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    try:
        import torch

        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # torch absent or too old: the record says so by omission
        pass
    return info
