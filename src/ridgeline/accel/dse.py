"""Design-space exploration: sweep a base design's array shape, buffers (size, double buffering), activation
mantissa, DRAM bandwidth, weight format and KV tiers; evaluate each point on one workload; keep prefill and
decode Pareto fronts apart.

A point's metrics: prefill latency (TTFT, s) and energy (J); decode latency and energy per generated token;
area (mm²). A point is on a phase's front when no other point is at least as good in that phase's latency,
energy and area and better in one. Points are the full product of the axes, or a seeded random sample of
it; evaluation runs in `workers` processes (each point is independent) and reports progress. Decode attention
is priced every `step_stride` steps (each sampled step standing for its stride) to keep sweeps fast.
"""

from __future__ import annotations

import itertools
import math
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ridgeline.accel.design import Design
from ridgeline.accel.operands import parse_operand
from ridgeline.accel.simulate import simulate
from ridgeline.accel.costs import PEMode
from ridgeline.errors import RidgelineError
from ridgeline.roofline import build_workload
from ridgeline.specs import ModelSpec, Precision, Scenario

#: default axes (a Harmonia-style base design)
DEFAULT_AXES: dict[str, tuple] = {
    "rows": (8, 16, 32, 64, 128),
    "cols": (16, 32, 64, 128, 256),
    "buffer_kib": (64, 128, 256, 512),
    "act_mantissa": (4, 6, 8),
    "dram_GBps": (34.0, 68.0, 136.0),
    "weights": ("int4_g128", "int8_pc"),
    "kv": ("harmonia", "harmonia_s4_r64", "bfp32m4", "bfp32m8"),
    "double_buffer": (True, False),
}
PHASE_METRICS = {"prefill": ("prefill_s", "prefill_j"), "decode": ("decode_s_per_token", "decode_j_per_token")}


@dataclass(frozen=True)
class Point:
    """One evaluated design point: its axis values and metrics (None and `error` when it cannot run)."""

    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Exploration:
    """All points and, per phase, the indices of its Pareto front."""

    points: tuple[Point, ...]
    fronts: dict[str, tuple[int, ...]]
    axes: dict[str, tuple]
    model: str
    scenario: str


def apply(base: Design, params: dict[str, Any]) -> Design:
    """The base design with a point's axis values applied (activation mantissa changes the BFP modes too)."""
    d = base
    changes: dict[str, Any] = {}
    if "rows" in params:
        changes["rows"] = int(params["rows"])
    if "cols" in params:
        changes["cols"] = int(params["cols"])
    if "buffer_kib" in params:
        size = int(params["buffer_kib"] * 1024)
        for b in ("input", "weight", "output"):
            changes[b] = {"bytes": size}
    if "double_buffer" in params:
        changes["double_buffer"] = bool(params["double_buffer"])
    if "dram_GBps" in params:
        changes["dram_Bps"] = float(params["dram_GBps"]) * 1e9
    fmts = {}
    if "act_mantissa" in params:
        m = int(params["act_mantissa"])
        fmts.update(linear_acts=f"bfp32m{m}", attention_acts=f"bfp32m{m}")
        changes["modes"] = tuple(PEMode(parse_operand(f"bfp{m}"), mode.b, mode.macs) if mode.a.family == "bfp"
                                 else mode for mode in d.modes)
    if "weights" in params:
        fmts["weights"] = params["weights"]
    if "kv" in params:
        fmts["kv"] = params["kv"]
    if fmts:
        changes["formats"] = fmts
    d = d.with_(**changes)
    if "weights" in params and params["weights"].startswith("int8"):
        d = d.with_(modes=_widen(d.modes, "int8"))
    return d


def _widen(modes: tuple[PEMode, ...], b: str) -> tuple[PEMode, ...]:
    """Modes whose B operand is an integer, widened to `b` (a design sweeping INT8 weights needs INT8 lanes)."""
    return tuple(PEMode(m.a, parse_operand(b), m.macs) if m.b.family == "int" else m for m in modes)


def grid(axes: dict[str, Sequence], samples: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The full product of the axes, or `samples` distinct points drawn from it (seeded)."""
    keys = list(axes)
    sizes = [len(axes[k]) for k in keys]
    total = math.prod(sizes)
    if samples is None or samples >= total:
        combos = itertools.product(*(axes[k] for k in keys))
        return [dict(zip(keys, c)) for c in combos]
    rng = random.Random(seed)
    picks = rng.sample(range(total), samples)
    out = []
    for p in picks:
        idx = []
        for s in reversed(sizes):
            idx.append(p % s)
            p //= s
        out.append({k: axes[k][i] for k, i in zip(keys, reversed(idx))})
    return out


_CTX: dict[str, Any] = {}


def _init(base: Design, model: ModelSpec, scenario: Scenario, objective: str, stride: int) -> None:
    _CTX.update(base=base, model=model, scenario=scenario, objective=objective, stride=stride, workloads={})


def _evaluate(params: dict[str, Any]) -> Point:
    c = _CTX
    try:
        d = apply(c["base"], params)
        key = (d.formats.weights, d.formats.kv, d.formats.linear_acts)
        if key not in c["workloads"]:
            c["workloads"][key] = build_workload(c["model"], c["scenario"],
                                                 Precision(weights=key[0], acts=key[2], kv=key[1]))
        r = simulate(c["workloads"][key], d, c["objective"], c["stride"])
    except RidgelineError as exc:
        return Point(params, {}, str(exc))
    n = max(r.decode.tokens, 1)
    return Point(params, {"prefill_s": r.prefill.time_s, "prefill_j": r.prefill.energy * 1e-12,
                          "decode_s_per_token": r.decode.time_s / n, "decode_j_per_token": r.decode.energy * 1e-12 / n,
                          "area_mm2": r.area_mm2, "pes": d.pes})


def pareto(values: np.ndarray) -> np.ndarray:
    """Indices of the rows of `values` (points × objectives, minimised) that no other row dominates."""
    keep = []
    for i, v in enumerate(values):
        dominated = np.all(values <= v, axis=1) & np.any(values < v, axis=1)
        if not dominated.any():
            keep.append(i)
    return np.asarray(keep, dtype=int)


def explore(base: Design, model: ModelSpec, scenario: Scenario, axes: dict[str, Sequence] | None = None,
            samples: int | None = None, objective: str = "latency", step_stride: int = 8, workers: int = 1,
            seed: int = 0, progress: Callable[[str, int, int], None] | None = None) -> Exploration:
    """Evaluate the design points and find each phase's latency/energy/area Pareto front."""
    axes = {k: tuple(v) for k, v in (axes or DEFAULT_AXES).items()}
    unknown = set(axes) - set(DEFAULT_AXES)
    if unknown:
        raise RidgelineError(f"unknown DSE axes {sorted(unknown)}; expected some of {', '.join(DEFAULT_AXES)}")
    params = grid(axes, samples, seed)
    args = (base, model, scenario, objective, step_stride)
    points: list[Point] = []
    chunk = max(1, min(64, len(params) // (8 * max(workers, 1)) or 1))
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_init, initargs=args) as pool:
            for p in pool.map(_evaluate, params, chunksize=chunk):
                points.append(p)
                if progress and len(points) % 50 == 0:
                    progress("design points", len(points), len(params))
    else:
        _init(*args)
        for p in map(_evaluate, params):
            points.append(p)
            if progress and len(points) % 50 == 0:
                progress("design points", len(points), len(params))
    if progress:
        progress("design points", len(points), len(params))
    ok = [i for i, p in enumerate(points) if p.error is None]
    fronts = {}
    for phase, (lat, en) in PHASE_METRICS.items():
        vals = np.array([[points[i].metrics[lat], points[i].metrics[en], points[i].metrics["area_mm2"]] for i in ok])
        fronts[phase] = tuple(ok[j] for j in pareto(vals)) if len(ok) else ()
    return Exploration(tuple(points), fronts, axes, model.name, scenario.label)
