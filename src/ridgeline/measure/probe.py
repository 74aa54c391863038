"""Measure this machine's roofs: sustained memory bandwidth and GEMM peak FLOP/s per dtype.

Bandwidth: STREAM-style kernels on torch arrays far larger than the last-level cache. Every stream
is counted (copy = 1 read + 1 write, triad `a = b + s*c` = 2 reads + 1 write); write-allocate traffic
is not counted, as in STREAM. Outputs are preallocated, each kernel is warmed up, then repeated.
The roofs are ceilings, so they take the best sample (noise on a shared machine only ever slows a
kernel down): bandwidth from the best read-only kernel (decode reads weights), peaks per dtype;
medians and every sample stay in the record, and a median far below the best is warned about.
Compute: square GEMMs per dtype (int8 through `torch._int_mm`), FLOPs = 2·n³, sized so one run
takes long enough to time. Decode's kernel: batch-1 matrix-vector products over weights larger than the
cache, per weight dtype; where torch's GEMV streams below the memory roof, predictions use its rate
for weight bytes (Φ still uses the memory roof). RooflineBench's probe timed 10 matmuls with no warm-up and counted
2 of the triad's 3 streams; this one does neither.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ridgeline.errors import RidgelineError
from ridgeline.io import user_dir
from ridgeline.measure.stats import Stat, cpu_model, machine_info, summarize
from ridgeline.specs import DeviceSpec, Provenance

GEMM_DTYPES = ("fp32", "bf16", "fp16", "int8")
GEMV_DTYPES = ("fp32", "bf16")  # weight dtypes decode streams through torch's matrix-vector kernels
Progress = Callable[[str, int, int], None]  # (what, done, total)
MAX_REPEATS = 1000  # timed repeats (and warm-ups) per kernel or run: more only waits longer
MAX_ARRAY_MIB = 1 << 16


@dataclass(frozen=True)
class ProbeResult:
    """One probe of this machine: bandwidth per kernel (B/s), GEMM rate per dtype (FLOP/s), and how."""

    threads: int
    array_bytes: int
    bandwidth: dict[str, Stat]
    gemm: dict[str, Stat]
    gemm_sizes: dict[str, int]
    gemv: dict[str, Stat]  # matrix-vector rate per weight dtype, B/s of weights (decode's kernel)
    machine: dict
    memory_bytes: float
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def read_bandwidth(self) -> float:
        """The bandwidth roof: best sample of the read-only kernels, B/s."""
        return max(self.bandwidth[k].max for k in self.bandwidth if k.startswith("read"))

    @property
    def peaks(self) -> dict[str, float]:
        """The compute roofs: best sample per GEMM dtype, FLOP/s."""
        return {d: s.max for d, s in self.gemm.items()}

    def to_json(self) -> dict:
        """Everything measured, with every sample."""
        return {"threads": self.threads, "array_bytes": self.array_bytes,
                "bandwidth_Bps": {k: v.to_json() for k, v in self.bandwidth.items()},
                "gemm_flops": {k: v.to_json() for k, v in self.gemm.items()},
                "gemm_sizes": self.gemm_sizes, "gemv_Bps": {k: v.to_json() for k, v in self.gemv.items()},
                "memory_bytes": self.memory_bytes,
                "roof": {"bandwidth_Bps": self.read_bandwidth, "peak_flops": self.peaks},
                "warnings": list(self.warnings), "machine": self.machine}


def check_threads(n: int) -> int:
    """Refuse a thread count below 1 or above this machine's logical CPUs (oversubscribed runs measure the
    scheduler, not the model)."""
    cpus = os.cpu_count() or 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= cpus:
        raise RidgelineError(f"threads must be between 1 and this machine's {cpus} logical CPUs, got {n!r}")
    return n


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run a block with torch pinned to `n` threads (default: as configured); restores the setting."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(check_threads(n))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _time(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def total_memory() -> float:
    """Physical memory in bytes."""
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def bandwidth_kernels(array_bytes: int, repeats: int, warmup: int,
                      progress: Progress | None = None) -> dict[str, Stat]:
    """STREAM-style read (sum, max), copy and triad over fp32 arrays of `array_bytes` each; B/s."""
    import torch

    n = array_bytes // 4
    a = torch.empty(n, dtype=torch.float32)
    b = torch.empty(n, dtype=torch.float32)
    c = torch.empty(n, dtype=torch.float32)
    a.uniform_(), b.uniform_(), c.uniform_()  # touch every page before timing, with data no page shares
    nbytes = n * 4
    kernels = {  # name: (kernel, bytes moved per call)
        "read_sum": (lambda: torch.sum(a), nbytes),
        "read_max": (lambda: torch.max(b), nbytes),
        "copy": (lambda: b.copy_(a), 2 * nbytes),
        "triad": (lambda: torch.add(b, c, alpha=3.0, out=a), 3 * nbytes),
    }
    out = {}
    for i, (name, (fn, moved)) in enumerate(kernels.items()):
        if progress:
            progress(f"bandwidth {name}", i, len(kernels))
        out[name] = summarize([moved / t for t in _time(fn, repeats, warmup)])
    return out


def _gemm_call(dtype: str, n: int) -> Callable[[], object]:
    import torch

    if dtype == "int8":
        x = torch.randint(-64, 64, (n, n), dtype=torch.int8)
        w = torch.randint(-64, 64, (n, n), dtype=torch.int8)
        return lambda: torch._int_mm(x, w)
    td = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    x, w = torch.randn(n, n).to(td), torch.randn(n, n).to(td)
    out = torch.empty(n, n, dtype=td)
    return lambda: torch.mm(x, w, out=out)


def gemm_peak(dtype: str, repeats: int, warmup: int, max_n: int = 2048, min_time_s: float = 0.05) -> tuple[Stat, int]:
    """GEMM FLOP/s (OP/s for int8) for `dtype`: grow the square size until one call takes `min_time_s`."""
    n = 256
    while True:
        fn = _gemm_call(dtype, n)
        t = min(_time(fn, 2, 1))
        if t >= min_time_s or n >= max_n:
            break
        n *= 2
    samples = _time(fn, repeats, warmup)
    return summarize([2.0 * n**3 / s for s in samples]), n


def gemv_rate(dtype: str, total_bytes: int, repeats: int, warmup: int) -> Stat:
    """Weight bytes per second of batch-1 `F.linear` (decode's matrix-vector product) over `total_bytes` of
    8192×2048 weights, more than the last-level cache holds, each used once per pass."""
    import torch
    import torch.nn.functional as F

    td = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    n, k = 8192, 2048
    per = n * k * td.itemsize
    ws = [torch.randn(n, k).to(td) for _ in range(max(2, total_bytes // per))]
    x = torch.randn(1, k).to(td)

    def one_pass() -> None:
        for w in ws:
            F.linear(x, w)

    return summarize([len(ws) * per / t for t in _time(one_pass, repeats, warmup)])


def probe(threads: int | None = None, array_mib: int = 512, repeats: int = 7, warmup: int = 2,
          dtypes: tuple[str, ...] = GEMM_DTYPES, progress: Progress | None = None) -> ProbeResult:
    """Measure bandwidth (read/copy/triad) and GEMM peaks per dtype with `threads` torch threads."""
    if not (1 <= array_mib <= MAX_ARRAY_MIB and 1 <= repeats <= MAX_REPEATS and 0 <= warmup <= MAX_REPEATS):
        raise RidgelineError(f"probe needs array size 1 to {MAX_ARRAY_MIB} MiB, repeats 1 to {MAX_REPEATS} and "
                             f"warm-up 0 to {MAX_REPEATS}; got {array_mib} MiB, {repeats}, {warmup}")
    for d in dtypes:
        if d not in GEMM_DTYPES:
            raise RidgelineError(f"probe dtype {d!r} is not one of {', '.join(GEMM_DTYPES)}")
    mem = total_memory()
    array_bytes = min(array_mib * 2**20, int(mem / 8 / 3))  # three arrays, at most an eighth of RAM
    warnings = []
    if array_bytes < 128 * 2**20:
        warnings.append(f"arrays of {array_bytes / 2**20:.0f} MiB may be cache-resident; bandwidth may be inflated")
    with torch_threads(threads) as used:
        bw = bandwidth_kernels(array_bytes, repeats, warmup, progress)
        gemm, sizes = {}, {}
        for i, d in enumerate(dtypes):
            if progress:
                progress(f"GEMM {d}", i, len(dtypes))
            gemm[d], sizes[d] = gemm_peak(d, max(3, repeats // 2), warmup)
        gemv = {}
        for i, d in enumerate(GEMV_DTYPES):
            if progress:
                progress(f"GEMV {d}", i, len(GEMV_DTYPES))
            gemv[d] = gemv_rate(d, array_bytes, repeats, warmup)
    for name, s in {**bw, **gemm, **{f"gemv_{k}": v for k, v in gemv.items()}}.items():
        if s.max and s.median / s.max < 0.75:
            warnings.append(f"{name}: median is {s.median / s.max:.0%} of the best sample (noisy machine?)")
    return ProbeResult(used, array_bytes, bw, gemm, sizes, gemv, machine_info(), mem, tuple(warnings))


def probe_lock() -> contextlib.AbstractContextManager:
    """An exclusive lock on probing this machine ($RIDGELINE_HOME/devices/.probe.lock): a second probe started
    while one runs is refused at once, so two never measure each other's contention and save it as `local`."""
    from ridgeline.io import exclusive_lock

    return exclusive_lock(user_dir() / "devices" / ".probe.lock", "probing this machine")


def probe_device(result: ProbeResult, device_id: str = "local") -> DeviceSpec:
    """The measured roofs as a device entry (provenance 'measured', today's date)."""
    peaks = result.peaks
    if "fp32" not in peaks:
        raise RidgelineError("a device entry needs the fp32 GEMM peak; probe fp32 too")
    bw = result.read_bandwidth
    notes = (f"ridgeline probe, {result.threads} threads, arrays {result.array_bytes / 2**20:.0f} MiB; "
             f"roofs = best samples; bandwidth from the read kernels (copy {result.bandwidth['copy'].max / 1e9:.1f}, "
             f"triad {result.bandwidth['triad'].max / 1e9:.1f} GB/s counting every stream); "
             f"GEMM n = {result.gemm_sizes}")
    return DeviceSpec(
        id=device_id, name=f"{cpu_model()} ({result.threads} threads, probed)", kind="cpu",
        memory_bytes=result.memory_bytes, bandwidth_Bps=bw, peak_flops=peaks,
        provenance=Provenance("measured", f"ridgeline probe {machine_info(('ridgeline',))['versions']['ridgeline']}",
                              _dt.date.today().isoformat(), notes),
        engines={d: ("torch._int_mm" if d == "int8" else "torch.mm") for d in peaks},
        threads=result.threads, gemv_Bps={d: s.max for d, s in result.gemv.items()})


def save_device(device: DeviceSpec, result: ProbeResult | None = None) -> Path:
    """Save a measured device where the catalogue finds it ($RIDGELINE_HOME/devices/<id>.json); a probed
    device is also kept per thread count as `<id>-<n>t`, so thread sweeps compare with their own roofs."""
    import dataclasses

    from ridgeline.io import write_json

    data: dict = {"devices": [device.to_json()]}
    if result is not None:
        data["probe"] = result.to_json()
    path = write_json(user_dir() / "devices" / f"{device.id}.json", data)
    if device.threads and not re.search(r"-\d+t$", device.id):
        per = dataclasses.replace(device, id=f"{device.id}-{device.threads}t")
        write_json(user_dir() / "devices" / f"{per.id}.json", {**data, "devices": [per.to_json()]})
    return path


def roof_for_threads(device: DeviceSpec, threads: int) -> DeviceSpec:
    """The probe of `device` at `threads` threads (saved as `<id>-<n>t`) when there is one, else `device`."""
    from ridgeline.specs import catalogue

    if device.threads == threads:
        return device
    return catalogue().get(f"{device.id}-{threads}t", device)
