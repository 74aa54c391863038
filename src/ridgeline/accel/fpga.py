"""An FPGA target: a resource model (DSP, LUT, BRAM36 per PE type) and an HLS-style latency estimate of a tiled
GEMM loop nest, to compare a naive HLS design with the one a design-space search finds (the survey's ScaleHLS
claim, ×768.1 over baseline HLS designs, as a ratio on our own workloads).

Loop nest: tile loops m, n, k (k innermost, so a C tile stays in BRAM) load A (Tm × Tk) and B (Tk × Tn) tiles
from DDR; inside a tile, loops over Tm/Um, Tn/Un, Tk/Uk with Um · Un · Uk MAC lanes unrolled and arrays
partitioned to match (one access per bank per iteration: resource II = 1). ScaleHLS's QoR rules
(reference note): II = max(ResMII, RecMII); RecMII = ⌈adder latency / dependence distance⌉ where the
accumulation into C[m][n] recurs every iteration when k is the pipelined loop (distance 1) and every Tn/Un
iterations when n is pipelined inside k; a pipelined loop takes (trip − 1) · II + depth cycles, depth =
multiplier + adder tree (⌈log2 Uk⌉ + 1 adds) + 2 BRAM accesses. Flattened loops pay the depth once per tile.
With ping-pong buffers (dataflow) a tile's DDR transfer overlaps the previous tile's compute.

Naive design: the same GEMM tiled only as far as BRAM requires, no unrolling, no pipelining (each MAC takes the
full depth), no partitioning, transfers not overlapped (Vivado HLS without directives, the ScaleHLS baseline
kind). Optimised: the fastest point of the search over tiles, unroll factors, loop order, under the device's
DSP, LUT and BRAM36 budgets.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from ridgeline.errors import RidgelineError
from ridgeline.roofline import Workload

_BRAM_BITS = 36 * 1024


@dataclass(frozen=True)
class FPGADevice:
    """An FPGA's budgets."""

    id: str
    name: str
    dsp: int
    lut: int
    bram36: int
    clock_hz: float
    ddr_Bps: float
    source: str


@dataclass(frozen=True)
class PECost:
    """Resources of one MAC lane and the latencies HLS schedules it with; operand and accumulator bits."""

    name: str
    dsp: float
    lut: float
    mult_latency: int
    add_latency: int
    a_bits: int
    b_bits: int
    acc_bits: int = 32


@dataclass(frozen=True)
class HLSPoint:
    """One HLS design of one GEMM: its parameters, latency and resources."""

    cycles: float
    tile: tuple[int, int, int]
    unroll: tuple[int, int, int]
    pipelined: str  # "k", "n" or "none"
    ii: int
    dsp: float
    lut: float
    bram36: int


@lru_cache(maxsize=1)
def _table() -> dict:
    return tomllib.loads(resources.files("ridgeline.accel").joinpath("data/fpga.toml").read_text())


def fpga_device(name: str) -> FPGADevice:
    """A bundled FPGA target (zcu102, kv260)."""
    devs = _table()["devices"]
    if name not in devs:
        raise RidgelineError(f"unknown FPGA {name!r}; bundled: {', '.join(devs)}")
    e = devs[name]
    return FPGADevice(name, e["name"], e["dsp"], e["lut"], e["bram36"], e["clock_hz"], e["ddr_Bps"], e["source"])


_BITS = {"fp16xfp16": (16, 16), "int8xint8": (8, 8), "bfp8xint4": (9, 4)}


def pe_cost(name: str) -> PECost:
    """Per-lane resources of a PE type (fp16xfp16, int8xint8, bfp8xint4)."""
    pes = _table()["pe"]
    if name not in pes:
        raise RidgelineError(f"unknown FPGA PE type {name!r}; expected one of {', '.join(pes)}")
    e = pes[name]
    return PECost(name, e["dsp"], e["lut"], e["mult_latency"], e["add_latency"], *_BITS[name])


def _banks(rows, cols, bits, parts):
    """BRAM36 blocks of a rows × cols array of `bits`-bit words split into `parts` banks."""
    per_bank = np.ceil(rows * cols / parts) * bits
    return parts * np.maximum(1, np.ceil(per_bank / _BRAM_BITS))


def _evaluate(M, K, N, pe: PECost, dev: FPGADevice, Tm, Tk, Tn, Um, Uk, Un, pipe: str, dataflow: bool):
    """Latency (cycles) and resources of design points (numpy arrays broadcast)."""
    lanes = Um * Uk * Un
    dsp, lut = lanes * pe.dsp, lanes * pe.lut
    copies = 2 if dataflow else 1
    bram = copies * (_banks(Tm, Tk, pe.a_bits, Um * Uk) + _banks(Tk, Tn, pe.b_bits, Uk * Un)) \
        + _banks(Tm, Tn, pe.acc_bits, Um * Un)
    tm, tk, tn = Tm / Um, Tk / Uk, Tn / Un
    depth = pe.mult_latency + pe.add_latency * (1 + np.ceil(np.log2(np.maximum(Uk, 1)))) + 2
    if pipe == "none":
        ii = depth
        compute = tm * tn * tk * depth
    else:
        distance = 1 if pipe == "k" else tn  # the accumulation recurs every pipelined iteration, or every tn
        ii = np.maximum(1, np.ceil(pe.add_latency / distance))
        compute = (tm * tn * tk - 1) * ii + depth  # flattened: the pipeline fills once per tile
    bpc = dev.ddr_Bps / dev.clock_hz
    load = (Tm * Tk * pe.a_bits + Tk * Tn * pe.b_bits) / 8 / bpc
    tiles = np.ceil(M / Tm) * np.ceil(N / Tn) * np.ceil(K / Tk)
    per_tile = np.maximum(compute, load) if dataflow else compute + load
    store = np.ceil(M / Tm) * np.ceil(N / Tn) * Tm * Tn * 2 / bpc  # C written back as 16-bit outputs
    cycles = tiles * per_tile + (load if dataflow else 0) + store
    return cycles, ii, dsp, lut, bram


def naive(M: int, K: int, N: int, pe: PECost, dev: FPGADevice) -> HLSPoint:
    """The directive-free design: the largest power-of-two cubic tile whose three arrays fit the BRAM."""
    t = 1
    while t < max(M, K, N):
        nxt = 2 * t
        tile = [min(nxt, d) for d in (M, K, N)]
        if _banks(tile[0], tile[1], pe.a_bits, 1) + _banks(tile[1], tile[2], pe.b_bits, 1) + \
                _banks(tile[0], tile[2], pe.acc_bits, 1) > dev.bram36:
            break
        t = nxt
    Tm, Tk, Tn = (min(t, d) for d in (M, K, N))
    c, ii, dsp, lut, bram = _evaluate(M, K, N, pe, dev, Tm, Tk, Tn, 1, 1, 1, "none", False)
    return HLSPoint(float(c), (Tm, Tk, Tn), (1, 1, 1), "none", int(ii), float(dsp), float(lut), int(bram))


def optimise(M: int, K: int, N: int, pe: PECost, dev: FPGADevice) -> HLSPoint:
    """The fastest design within the device's DSP, LUT and BRAM36 budgets."""
    pows = lambda d, lo: sorted({min(d, 2 ** i) for i in range(lo, 11)})  # noqa: E731
    best = None
    grid = [np.array(g, dtype=np.float64).ravel() for g in
            np.meshgrid(pows(M, 0), pows(K, 4), pows(N, 4), pows(64, 0), pows(64, 0), pows(64, 0), indexing="ij")]
    Tm, Tk, Tn, Um, Uk, Un = grid
    ok = (Um <= Tm) & (Uk <= Tk) & (Un <= Tn)
    Tm, Tk, Tn, Um, Uk, Un = (g[ok] for g in (Tm, Tk, Tn, Um, Uk, Un))
    for pipe in ("k", "n"):
        c, ii, dsp, lut, bram = _evaluate(M, K, N, pe, dev, Tm, Tk, Tn, Um, Uk, Un, pipe, True)
        fits = (dsp <= dev.dsp) & (lut <= dev.lut) & (bram <= dev.bram36)
        if not fits.any():
            continue
        i = np.flatnonzero(fits)[np.argmin(c[fits])]
        if best is None or c[i] < best.cycles:
            iv = np.broadcast_to(ii, c.shape)
            best = HLSPoint(float(c[i]), (int(Tm[i]), int(Tk[i]), int(Tn[i])), (int(Um[i]), int(Uk[i]), int(Un[i])),
                            pipe, int(iv[i]), float(dsp[i]), float(lut[i]), int(bram[i]))
    if best is None:
        raise RidgelineError(f"no HLS design of a {M}×{K}×{N} GEMM fits {dev.name}")
    return best


def hls_compare(workload: Workload, device: str = "zcu102", pe: str = "fp16xfp16", phase: str = "prefill") -> dict:
    """Naive against optimised HLS designs for every linear GEMM of one phase: seconds and the ratio."""
    dev, cost = fpga_device(device), pe_cost(pe)
    ph = workload.prefill if phase == "prefill" else workload.decode
    rows, total_naive, total_best = [], 0.0, 0.0
    steps = max(ph.steps, 1)
    for op in ph.ops:
        if op.shape is None or op.shape.b != "weights":
            continue
        s = op.shape
        M, K, N = (int(np.ceil(float(np.asarray(v).reshape(-1)[0]))) for v in (s.m, s.k, s.n))
        n, b = naive(M, K, N, cost, dev), optimise(M, K, N, cost, dev)
        times = s.batch * op.count * steps / dev.clock_hz
        total_naive += n.cycles * times
        total_best += b.cycles * times
        rows.append({"op": op.name, "group": op.group, "shape": [M, K, N], "naive_s": n.cycles * times,
                     "optimised_s": b.cycles * times, "speedup": n.cycles / b.cycles,
                     "naive": vars(n), "optimised": vars(b)})
    return {"device": dev.name, "pe": pe, "phase": phase, "model": workload.model.name,
            "scenario": workload.scenario.label, "naive_s": total_naive, "optimised_s": total_best,
            "speedup": total_naive / total_best if total_best else 0.0, "scalehls_reported": 768.1, "ops": rows}
