"""What every benchmark record carries (machine, threads, versions, date, load), a repeat-timing helper, and the
machine-wide timing lock the benchmarks that time share (the 2 cores are shared)."""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from ridgeline.measure.stats import machine_info, summarize

__all__ = ["LOCK", "machine_info", "portable", "record_path", "say", "timed", "timing_lock", "uptime"]

LOCK = "/tmp/ridgeline-timing.lock"


def record_path(path: Path | str) -> str:
    """A path as a committed record may hold it: relative to the repository, or under $RIDGELINE_HOME, never the
    machine's absolute path (kept as given only when it is neither)."""
    from ridgeline.io import user_dir

    p = Path(path).resolve()
    for base, label in ((Path(__file__).resolve().parent.parent, ""), (user_dir().resolve(), "$RIDGELINE_HOME/")):
        if p.is_relative_to(base):
            return label + str(p.relative_to(base))
    return str(path)


def portable(record: object) -> object:
    """`record` with every absolute path string under the repository or $RIDGELINE_HOME made `record_path`'s
    portable form (what every record is written through; other strings and values unchanged)."""
    if isinstance(record, dict):
        return {k: portable(v) for k, v in record.items()}
    if isinstance(record, (list, tuple)):
        return [portable(v) for v in record]
    if isinstance(record, str) and record.startswith("/") and "\n" not in record and len(record) < 4096:
        return record_path(record)
    return record


def say(text: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def uptime() -> str:
    """`uptime` as printed (the load averages while the benchmark ran)."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def timing_lock() -> Iterator[None]:
    """Hold the machine-wide timing lock for a timing phase (waits while another benchmark times)."""
    with open(LOCK, "a") as fh:
        say(f"waiting for {LOCK} ...")
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
