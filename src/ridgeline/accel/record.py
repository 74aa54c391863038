"""An accelerator result in the shapes the rest of ridgeline uses: a roofline `Prediction` (so the device
tables and roofline plots show it) and a JSON record.

The Prediction's device is the design seen as a roofline: DRAM bandwidth and the array's peak (2 FLOPs per
MAC in its fastest mode); each operator's time is the simulated one, and a phase's "attainable" FLOP/s is
what the simulation attains (its FLOPs / its time), bounded by what dominated its operators' time.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ridgeline.accel.simulate import ENERGY_PARTS, AccelPhase, AccelResult
from ridgeline.roofline import KINDS, OpResult, PhaseResult, Prediction
from ridgeline.specs import DeviceSpec, Provenance


def design_device(result: AccelResult) -> DeviceSpec:
    """The design as a roofline device: DRAM bandwidth, array peak FLOP/s in its compute dtype."""
    d = result.design
    peak = 2.0 * d.peak_macs_per_s
    dtype = result.workload.precision.compute_dtype
    peaks = {"fp32": peak, dtype: peak}
    return DeviceSpec(id=d.name, name=f"{d.name} (simulated accelerator, {d.rows}×{d.cols} PEs)", kind="npu",
                      memory_bytes=d.dram_bytes, bandwidth_Bps=d.dram_Bps, peak_flops=peaks,
                      provenance=Provenance("theoretical", "ridgeline.accel simulation", "2026",
                                            d.description))


def _phase(ph: AccelPhase) -> PhaseResult:
    ops = tuple(OpResult(o.name, o.kind, o.group, o.count, o.flops, {k: o.dram.get(k, 0.0) for k in KINDS}, o.time_s)
                for o in ph.ops)
    flops = sum(o.flops for o in ph.ops)
    by_kind = ph.dram
    bound = Counter()
    for o in ph.ops:
        bound[o.bound] += o.time_s
    attained = flops / ph.time_s if ph.time_s else 0.0
    return PhaseResult(ph.name, ph.steps, ph.tokens, flops, by_kind, attained,
                       bound.most_common(1)[0][0] if bound else "-", ph.time_s, np.asarray(ph.step_times_s), ops)


def to_prediction(result: AccelResult) -> Prediction:
    """The result as a roofline Prediction (report.tables.summary_table / operator_table render it)."""
    dev = design_device(result)
    fastest = max(result.design.modes, key=lambda m: m.macs).label
    return Prediction(result.workload, dev, 2.0 * result.design.peak_macs_per_s, fastest,
                      _phase(result.prefill), _phase(result.decode))


def phase_json(ph: AccelPhase, clock_hz: float) -> dict:
    """One phase: time, tokens/s, energy by part, DRAM bytes by kind, MACs, utilisation."""
    return {"steps": ph.steps, "tokens": ph.tokens, "time_s": ph.time_s, "tokens_per_s": ph.tokens_per_s,
            "energy_j": ph.energy * 1e-12, "energy_by_part_j": {k: v * 1e-12 for k, v in ph.energy_pj.items()},
            "joules_per_token": ph.energy * 1e-12 / ph.tokens if ph.tokens else 0.0,
            "dram_bytes": ph.dram, "macs": ph.macs,
            "cycles": ph.time_s * clock_hz}


def result_json(result: AccelResult, per_operator: bool = False) -> dict:
    """The JSON record of `ridgeline accel`."""
    d, w = result.design, result.workload
    out = {
        "design": {"name": d.name, "description": d.description, "array": [d.rows, d.cols], "pes": d.pes,
                   "modes": [m.label for m in d.modes], "clock_hz": d.clock_hz, "dram_Bps": d.dram_Bps,
                   "buffers_bytes": {b: getattr(d, b).bytes for b in ("input", "weight", "output")},
                   "formats": vars(d.formats), "node_nm": d.node_nm},
        "model": w.model.name, "scenario": w.scenario.to_json(), "precision": w.precision.to_json(),
        "objective": result.objective,
        "area_mm2": {k: v / 1e6 for k, v in result.area_um2.items()}, "area_total_mm2": result.area_mm2,
        "phases": {ph.name: phase_json(ph, d.clock_hz) for ph in result.phases},
        "total_time_s": result.total_s, "energy_j": result.energy_pj * 1e-12,
    }
    if per_operator:
        out["operators"] = [
            {"phase": o.phase, "name": o.name, "group": o.group, "count": o.count, "flops": o.flops, "macs": o.macs,
             "cycles": o.cycles, "time_s": o.time_s, "dram_bytes": o.dram, "sram_bytes": o.sram_bytes,
             "energy_pj": {p: o.energy_pj.get(p, 0.0) for p in ENERGY_PARTS}, "unit": o.unit, "mapping": o.mapping,
             "mode": o.mode, "bound": o.bound, "conversions": o.conversions}
            for ph in result.phases for o in ph.ops]
    return out
