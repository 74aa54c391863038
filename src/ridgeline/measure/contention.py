"""Was the machine quiet while we measured? CPU used by other processes, stolen time, load and roof drift.

On a shared 2-core VM a run can be 2× or 20× slow with nothing in the run to show it. So every measured run
samples, before and after: the machine's busy CPU time and steal time (`/proc/stat`), this process's own CPU
time including its threads (`/proc/self/stat`), the load average, and a quick read-bandwidth probe (a few
passes over an array far above the last-level cache). Other processes' CPU = busy − ours, over the run.

A run is **contended** when other processes used more than `OTHER_CPU_LIMIT` of one core on average, when
more than `STEAL_LIMIT` of the run's CPU time was stolen by the hypervisor, or when the read bandwidth moved
by more than `DRIFT_LIMIT` between before and after. Contended runs are kept (a user may have nothing
better) but flagged in records, tables and the HTML report. Where `/proc` is missing (not Linux) the sample
is empty and nothing is flagged; the record says "unknown".
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

#: average cores' worth of CPU other processes may use during a run before it is flagged
OTHER_CPU_LIMIT = 0.25
#: share of the run's CPU time stolen by the hypervisor before it is flagged
STEAL_LIMIT = 0.05
#: relative change of the quick read bandwidth between before and after that flags a run
DRIFT_LIMIT = 0.20

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSample:
    """One reading: wall time, the machine's busy and stolen CPU seconds, ours, the 1-minute load."""

    wall: float
    busy_s: float
    steal_s: float
    own_s: float
    load_avg: float | None


def cpu_sample() -> CpuSample | None:
    """The machine's and this process's CPU time now (None where /proc is not readable)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    own = sum(int(x) for x in stat[11:15])  # utime, stime, cutime, cstime (fields 14-17)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return CpuSample(time.perf_counter(), busy / _TICKS, steal / _TICKS, own / _TICKS, load)


def quick_read_bandwidth(mib: int = 256, passes: int = 3) -> float | None:
    """Best of a few read passes over a `mib` MiB array, B/s (a cheap probe of the memory roof, ~0.1 s)."""
    try:
        import torch
    except ImportError:
        return None
    x = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    x.sum()  # touch every page once
    best = 0.0
    for _ in range(passes):
        t0 = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - t0))
    return best


@dataclass(frozen=True)
class Contention:
    """How busy the machine was during a run, and whether that flags it."""

    seconds: float | None = None
    other_cpu_s: float | None = None  # CPU seconds other processes used during the run
    other_cores: float | None = None  # ... on average, in cores
    steal_share: float | None = None  # stolen CPU time / (run time × cores)
    load_avg_before: float | None = None
    load_avg_after: float | None = None
    read_Bps_before: float | None = None
    read_Bps_after: float | None = None
    contended: bool = False
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def known(self) -> bool:
        """Whether anything could be measured (Linux /proc)."""
        return self.seconds is not None

    def to_json(self) -> dict:
        """JSON form (with `known`)."""
        return {**asdict(self), "reasons": list(self.reasons), "known": self.known}


def assess(before: CpuSample | None, after: CpuSample | None, bw_before: float | None = None,
           bw_after: float | None = None) -> Contention:
    """Compare two samples (and two quick bandwidth probes) against the limits."""
    if before is None or after is None:
        return Contention(read_Bps_before=bw_before, read_Bps_after=bw_after)
    wall = max(after.wall - before.wall, 1e-9)
    other = max((after.busy_s - before.busy_s) - (after.own_s - before.own_s), 0.0)
    cores = os.cpu_count() or 1
    steal = (after.steal_s - before.steal_s) / (wall * cores)
    reasons = []
    if other / wall > OTHER_CPU_LIMIT:
        reasons.append(f"other processes used {other / wall:.2f} cores on average (limit {OTHER_CPU_LIMIT})")
    if steal > STEAL_LIMIT:
        reasons.append(f"{steal:.0%} of the CPU time was stolen by the hypervisor (limit {STEAL_LIMIT:.0%})")
    if bw_before and bw_after and abs(bw_after - bw_before) / bw_before > DRIFT_LIMIT:
        reasons.append(f"read bandwidth moved {bw_before / 1e9:.1f} → {bw_after / 1e9:.1f} GB/s "
                       f"(limit {DRIFT_LIMIT:.0%})")
    return Contention(wall, other, other / wall, steal, before.load_avg, after.load_avg, bw_before, bw_after,
                      bool(reasons), tuple(reasons))


class Watch:
    """Measure contention over a block: `with Watch() as w: ...` then `w.result`."""

    def __init__(self, bandwidth: bool = True) -> None:
        self.bandwidth = bandwidth
        self.result = Contention()

    def __enter__(self) -> "Watch":
        self._bw = quick_read_bandwidth() if self.bandwidth else None
        self._before = cpu_sample()
        return self

    def __exit__(self, *exc: object) -> None:
        after = cpu_sample()
        bw = quick_read_bandwidth() if self.bandwidth else None
        self.result = assess(self._before, after, self._bw, bw)


def wait_until_quiet(max_wait_s: float, window_s: float = 2.0,
                     on_wait: Callable[[Contention, float], None] | None = None) -> Contention:
    """Sample the machine in windows of `window_s` until one is quiet or `max_wait_s` has passed; return the
    last window's assessment (its `contended` says which happened). `on_wait(assessment, waited)` hears each
    busy window."""
    start = time.perf_counter()
    while True:
        before = cpu_sample()
        time.sleep(window_s)
        result = assess(before, cpu_sample())
        waited = time.perf_counter() - start
        if not result.contended or waited >= max_wait_s:
            return result
        if on_wait:
            on_wait(result, waited)
