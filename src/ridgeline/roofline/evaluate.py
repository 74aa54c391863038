"""Evaluate a Workload on a device: attainable FLOP/s, bound, time per operator, per step and per phase.

Time per step is the sum over operators of max(FLOPs / peak, bytes / bandwidth) (each operator runs
at its own roofline; weight bytes at the device's measured GEMV rate for that format when it has one),
summed over the steps of the phase, so a decode whose attention grows with the
context is integrated exactly. The phase's own point (FLOPs / bytes) is what the roofline plot shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ridgeline.roofline.workload import KINDS, Phase, Workload
from ridgeline.specs import DeviceSpec, get_kv_format


@dataclass(frozen=True)
class OpResult:
    """One operator on one device: totals over its instances and the phase's steps."""

    name: str
    kind: str
    group: str
    count: int
    flops: float
    bytes_by_kind: dict[str, float]
    time_s: float

    @property
    def bytes(self) -> float:
        """All bytes moved."""
        return sum(self.bytes_by_kind.values())

    @property
    def intensity(self) -> float:
        """Operational intensity, FLOP/byte."""
        return self.flops / self.bytes if self.bytes else float("inf")


@dataclass(frozen=True)
class PhaseResult:
    """A phase on a device."""

    name: str
    steps: int
    tokens: int  # tokens processed (prefill) or generated (decode), whole batch
    flops: float
    bytes_by_kind: dict[str, float]
    attainable_flops: float
    bound: str
    time_s: float
    step_times_s: np.ndarray
    ops: tuple[OpResult, ...]

    @property
    def bytes(self) -> float:
        """All bytes moved in the phase."""
        return sum(self.bytes_by_kind.values())

    @property
    def intensity(self) -> float:
        """Operational intensity of the phase, FLOP/byte."""
        return self.flops / self.bytes if self.bytes else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Tokens per second over the phase (whole batch)."""
        return self.tokens / self.time_s if self.time_s else 0.0


@dataclass(frozen=True)
class Prediction:
    """A workload evaluated on a device: what the JSON contract and the tables show."""

    workload: Workload
    device: DeviceSpec
    peak_flops: float
    peak_dtype: str
    prefill: PhaseResult
    decode: PhaseResult

    @property
    def ttft_s(self) -> float:
        """Time to first token: the prefill."""
        return self.prefill.time_s

    @property
    def total_s(self) -> float:
        """Prefill plus all decode steps."""
        return self.prefill.time_s + self.decode.time_s

    @property
    def memory_total(self) -> float:
        """Weights + KV at the final context + peak activations, bytes."""
        w = self.workload
        return w.weights_bytes + w.kv_bytes + w.activation_bytes

    @property
    def fits(self) -> bool:
        """Whether the footprint fits in the device's memory."""
        return self.memory_total <= self.device.memory_bytes


def _phase(phase: Phase, peak: float, bw: float, weight_bw: float) -> PhaseResult:
    step_times = np.zeros(max(phase.steps, 1))
    ops = []
    for op in phase.ops:
        # weights stream at the engine's GEMV rate where the device has one measured, everything else at bw
        w = op.bytes.get("weights", 0.0)
        memory_t = (op.step_bytes() - w) / bw + w / weight_bw
        t = np.maximum(op.flops / peak, memory_t) * op.count  # per step (or constant)
        t_total = float(t.sum()) if t.size > 1 else float(t[0]) * phase.steps
        step_times = step_times + t
        ops.append(OpResult(op.name, op.kind, op.group, op.count, op.total_flops(phase.steps),
                            op.total_bytes(phase.steps), t_total))
    flops, by_kind = phase.flops, phase.bytes_by_kind()
    total_bytes = sum(by_kind.values())
    oi = flops / total_bytes if total_bytes else 0.0
    attainable = min(peak, oi * bw)
    time_s = float(sum(o.time_s for o in ops))
    if phase.steps == 0:
        step_times = np.zeros(0)
    tokens = phase.tokens if phase.tokens is not None else phase.steps * phase.tokens_per_step
    return PhaseResult(phase.name, phase.steps, tokens, flops, by_kind, attainable,
                       "compute" if oi * bw >= peak else "memory", time_s, step_times, tuple(ops))


def evaluate(workload: Workload, device: DeviceSpec) -> Prediction:
    """Price every operator of the workload on the device's roofline."""
    peak, dtype = device.peak(workload.precision.compute_dtype)
    bw = device.bandwidth_Bps
    wbw = device.weight_bandwidth(workload.precision.weights)
    return Prediction(workload, device, peak, dtype, _phase(workload.prefill, peak, bw, wbw),
                      _phase(workload.decode, peak, bw, wbw))


def prediction_json(p: Prediction, per_operator: bool = False) -> dict:
    """The documented JSON contract of `ridgeline analyze --json`."""
    w, m = p.workload, p.workload.model
    out = {
        "model": {"name": m.name, "model_type": m.model_type, "source": m.source,
                  "params": m.param_count(), "params_non_embedding": m.param_count() - m.embedding_params(),
                  "kv_bytes_per_token": w.kv_bytes_per_token, "layers": m.n_layers,
                  "attention": sorted({l.attention.kind for l in m.layers}),
                  "kv_heads": sorted({l.attention.n_kv_heads for l in m.layers if not l.attention.mla}),
                  # distinct sliding windows, null for full-attention layers (after --window, if given)
                  "windows": sorted({l.attention.window for l in m.layers}, key=lambda x: (x is None, x or 0))},
        "device": {"name": p.device.id, "full_name": p.device.name, "bandwidth_Bps": p.device.bandwidth_Bps,
                   "peak_flops": dict(p.device.peak_flops), "memory_bytes": p.device.memory_bytes,
                   "provenance": p.device.provenance.kind},
        "scenario": w.scenario.to_json(),
        "precision": {**w.precision.to_json(), "peak_dtype": p.peak_dtype,
                      "kv_format": get_kv_format(w.precision.kv).to_json()},
        "options": {k: getattr(w.options, k) for k in ("attention", "activation_traffic", "causal", "logits",
                                                         "mla_cache", "mla_decode")},
        "phases": {},
        "memory": {"weights_bytes": w.weights_bytes, "kv_bytes": w.kv_bytes,
                   "activation_bytes": w.activation_bytes, "total_bytes": p.memory_total,
                   "device_bytes": p.device.memory_bytes, "fits": p.fits},
        "ttft_s": p.ttft_s,
        "total_time_s": p.total_s,
    }
    for ph in (p.prefill, p.decode):
        out["phases"][ph.name] = {
            "steps": ph.steps, "tokens": ph.tokens, "flops": ph.flops, "bytes": ph.bytes,
            "bytes_by_kind": {k: ph.bytes_by_kind[k] for k in KINDS}, "intensity": ph.intensity,
            "attainable_flops": ph.attainable_flops, "bound": ph.bound, "time_s": ph.time_s,
            "tokens_per_s": ph.tokens_per_s,
        }
    d = p.decode
    # per generated token (a speculative step yields several; first and last stay per step)
    per = d.tokens // w.scenario.batch if w.scenario.speculation is not None else d.steps
    out["phases"]["decode"]["time_per_token_s"] = {
        "first": float(d.step_times_s[0]) if d.steps else 0.0,
        "mean": d.time_s / per if per else 0.0,
        "last": float(d.step_times_s[-1]) if d.steps else 0.0,
    }
    if per_operator:
        out["operators"] = [
            {"phase": ph.name, "name": o.name, "kind": o.kind, "group": o.group, "count": o.count,
             "flops": o.flops, "bytes": o.bytes, "bytes_by_kind": o.bytes_by_kind, "intensity": o.intensity,
             "attainable_flops": min(p.peak_flops, o.intensity * p.device.bandwidth_Bps),
             "bound": "compute" if o.intensity * p.device.bandwidth_Bps >= p.peak_flops else "memory",
             "time_s": o.time_s}
            for ph in (p.prefill, p.decode) for o in ph.ops]
    return out
