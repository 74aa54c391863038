"""Relative inference potential Φ: how close a measured run gets to the roofline, per phase.

For the scenario that actually ran, the Workload gives the phase's FLOPs F and bytes B (operational
intensity I = F/B). With the measured phase time t:
    achieved = F / t,   attainable = min(peak, I · BW),   Φ = achieved / attainable,
    bandwidth utilisation = B / t / BW.
This is ridgeline's own definition (RooflineBench's exact formula was never published). A speculative run is
placed with its measured speculation (tokens verified and accepted per step, Medusa heads) in the Workload, so
F and B are what its verify steps moved; its placement also carries the roofline's predicted speedup (plain
decode time / speculative decode time on that roof). Φ > 1 cannot
happen if F, B and the roof are right, so it is reported as a modelling error naming the suspect term:
achieved FLOP/s above the peak points at the FLOP count or the compute roof; bytes per second above
the bandwidth points at the byte count (e.g. weights that stay cache-resident) or the bandwidth roof.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ridgeline.measure.bench import BenchRecord
from ridgeline.measure.stats import Stat, summarize
from ridgeline.roofline import Options, Prediction, Workload, build_workload, evaluate
from ridgeline.specs import (DeviceSpec, ModelSpec, Precision, Speculation, spec_from_config, spec_from_gguf,
                             with_stored_formats)

_FLOAT_GGUF = {"f32", "f16", "bf16"}  # ggml type names as TensorSpec holds them


@dataclass(frozen=True)
class PhasePhi:
    """One phase of a measured run against one roof."""

    phase: str
    flops: float
    bytes: float
    measured_s: Stat  # phase time per repeat (decode: all steps)
    attainable_flops: float
    phi: Stat
    bandwidth_utilisation: Stat
    predicted_s: float  # the roofline's per-operator prediction of the phase time
    flags: tuple[str, ...]

    @property
    def intensity(self) -> float:
        """Operational intensity of the phase, FLOP/byte."""
        return self.flops / self.bytes if self.bytes else 0.0

    @property
    def achieved_flops(self) -> float:
        """FLOP/s at the median phase time."""
        return self.flops / self.measured_s.median if self.measured_s.median else 0.0

    @property
    def prediction_error(self) -> float:
        """|predicted - measured| / measured for the median phase time."""
        return abs(self.predicted_s - self.measured_s.median) / self.measured_s.median if self.measured_s.median else 0.0

    def to_json(self) -> dict:
        """JSON form."""
        return {"phase": self.phase, "flops": self.flops, "bytes": self.bytes, "intensity": self.intensity,
                "measured_s": self.measured_s.to_json(), "achieved_flops": self.achieved_flops,
                "attainable_flops": self.attainable_flops, "phi": self.phi.to_json(),
                "bandwidth_utilisation": self.bandwidth_utilisation.to_json(), "predicted_s": self.predicted_s,
                "prediction_error": self.prediction_error, "phi_above_1": list(self.flags)}


@dataclass(frozen=True)
class RunPhi:
    """A measured run placed on one device's roofline: prefill and decode."""

    device: DeviceSpec
    role: str  # "measured roof" (probe) | "catalogue roof"
    prediction: Prediction
    prefill: PhasePhi
    decode: PhasePhi
    plain_decode_s: float | None = None  # speculative runs: the roofline's time of plain decoding on this roof

    @property
    def predicted_speedup(self) -> float | None:
        """Speculative runs: plain decode time / speculative decode time, both predicted on this roof."""
        if self.plain_decode_s is None or not self.decode.predicted_s:
            return None
        return self.plain_decode_s / self.decode.predicted_s

    def to_json(self) -> dict:
        """JSON form, with the roof used."""
        d = self.device
        out = {"role": self.role, "device": d.id, "device_name": d.name, "provenance": d.provenance.kind,
               "bandwidth_Bps": d.bandwidth_Bps, "peak_flops": self.prediction.peak_flops,
               "peak_dtype": self.prediction.peak_dtype,
               "prefill": self.prefill.to_json(), "decode": self.decode.to_json()}
        if self.plain_decode_s is not None:
            out.update(plain_decode_predicted_s=self.plain_decode_s, predicted_speedup=self.predicted_speedup)
        return out


def _gguf_spec(record: BenchRecord) -> ModelSpec:
    """The GGUF's spec of a llama.cpp record: the one parsed at load, else (a record built by hand) read now."""
    return record.spec if record.spec is not None else spec_from_gguf(record.gguf)


def record_precision(record: BenchRecord) -> Precision:
    """Formats the run actually used: torch dtype everywhere; llama.cpp: GGUF types, fp32 activations,
    f16 KV, and the int8 roof for quantized weights (its CPU kernels use integer dot products)."""
    if record.config.backend == "torch":
        d, kv = record.config.dtype, record.config.kv_format
        quant = record.model_config.get("ridgeline_quant")
        if quant:  # quantized: stored formats per tensor; W8A8 (_int_mm) computes on the int8 roof
            return Precision("stored", d, kv, compute="int8" if "_int_mm" in quant["kernels"] else d)
        return Precision(d, d, kv)
    types = {t.ggml_type for t in _gguf_spec(record).gguf_tensors if len(t.shape) > 1}
    quantized = bool(types - _FLOAT_GGUF)
    compute = "int8" if quantized else ("bf16" if "bf16" in types else "fp32")
    return Precision("stored", "fp32", "fp16", compute=compute)


def weights_label(record: BenchRecord) -> str:
    """The weights' format as run: the torch dtype, or the GGUF type holding most bytes (e.g. Q4_1)."""
    if record.config.backend == "torch":
        quant = record.model_config.get("ridgeline_quant")
        return quant["label"] if quant else record.config.dtype
    from collections import Counter

    c: Counter = Counter()
    for t in _gguf_spec(record).gguf_tensors:
        c[t.ggml_type] += t.nbytes or 0
    return c.most_common(1)[0][0]


def record_speculation(record: BenchRecord) -> Speculation | None:
    """The speculation a run measured: mean tokens verified (rounded) and accepted per step, Medusa heads run."""
    if record.config.spec is None:
        return None
    steps = [t for s in record.samples for t in s.tokens_per_step]
    if not steps:
        return None
    tokens = max(1, round(record.verified_per_step))
    info = record.speculative or {}
    return Speculation(tokens, min(float(tokens), sum(steps) / len(steps)), int(info.get("heads", 0)),
                       bool(info.get("untied", False)), int(info.get("draft_vocab") or 0))


def record_workload(record: BenchRecord, options: Options | None = None, plain: bool = False) -> Workload:
    """The Workload of exactly the scenario that ran, on the model that ran (its layers, its formats); a
    speculative run's with its measured speculation, unless `plain`."""
    if record.config.backend == "torch":
        spec = spec_from_config(record.model_config, record.model_name, record.model_source)
        quant = record.model_config.get("ridgeline_quant")
        if quant:
            spec = with_stored_formats(spec, quant["tensor_formats"], record.config.dtype)
    else:
        spec = _gguf_spec(record)
    scenario = record.config.scenario
    speculation = None if plain else record_speculation(record)
    if speculation is not None:
        scenario = replace(scenario, speculation=speculation)
    return build_workload(spec, scenario, record_precision(record), options)


def _flags(achieved_flops: float, peak: float, bytes_per_s: float, bw: float) -> tuple[str, ...]:
    flags = []
    if achieved_flops > peak:
        flags.append(f"achieved {achieved_flops / 1e9:.3g} GFLOP/s exceeds the {peak / 1e9:.3g} GFLOP/s peak: "
                     "FLOPs over-counted or the compute roof too low")
    if bytes_per_s > bw:
        flags.append(f"{bytes_per_s / 1e9:.3g} GB/s exceeds the {bw / 1e9:.3g} GB/s roof: bytes over-counted "
                     f"(a working set that stays in cache{_llc_note()}) or the bandwidth roof too low")
    return tuple(flags)


def _llc_note() -> str:
    """The last-level cache size, when the OS says it."""
    try:
        size = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        return f"; last-level cache here {size}"
    except OSError:
        return ""


def _phase_phi(name: str, phase, times: list[float], pred_s: float, peak: float, bw: float) -> PhasePhi:
    flops, nbytes = phase.flops, phase.bytes
    attainable = min(peak, flops / nbytes * bw) if nbytes else peak
    phis = [flops / t / attainable for t in times]
    utils = [nbytes / t / bw for t in times]
    t_med = summarize(times).median
    flags = _flags(flops / t_med, peak, nbytes / t_med, bw) if flops / t_med > attainable else ()
    return PhasePhi(name, flops, nbytes, summarize(times), attainable, summarize(phis), summarize(utils), pred_s, flags)


def place(record: BenchRecord, device: DeviceSpec, role: str, options: Options | None = None) -> RunPhi:
    """Φ and bandwidth utilisation of a record's prefill and decode against `device`'s roofs."""
    pred = evaluate(record_workload(record, options), device)
    bw = device.bandwidth_Bps
    prefill = _phase_phi("prefill", pred.prefill, [s.ttft_s for s in record.samples], pred.prefill.time_s,
                         pred.peak_flops, bw)
    decode = _phase_phi("decode", pred.decode, [s.decode_s for s in record.samples], pred.decode.time_s,
                        pred.peak_flops, bw)
    plain = None
    if record_speculation(record) is not None:
        plain = evaluate(record_workload(record, options, plain=True), device).decode.time_s
    return RunPhi(device, role, pred, prefill, decode, plain)
