"""`predict`: the roofline in one call — model, device and scenario in, a `Prediction` out.

It is the composition every analytic command shares (load the spec, apply the architecture overrides,
choose the formats, build the Workload, evaluate it on the device), so `ridgeline analyze`, `ridgeline
plot` and a Python user get the same numbers from the same defaults:

* weights default to the model's stored formats when it has a stored-tensor table (a GGUF file, a
  ridgeline-quantized folder), else bf16;
* the KV cache defaults to the activation format when that is a float format, else bf16;
* `layers` keeps the first N blocks (repeating them past the model's depth), `window` gives every
  attention layer a sliding window of W keys, `kv_heads` sets every layer's K/V heads (GQA conversion);
* `compress` = r prefills round(P / r) of the P prompt tokens; `compressor` adds what compressing costs to
  the prefill: 'self' (the target model itself over the full prompt, LM head at every position: self-information),
  'self:K' (its first K layers and a keep/drop head: a learned scorer), 'MODEL' or 'MODEL:K' (another model),
  or `compressor_flops` FLOPs per prompt token. `compression_summary` sets the result beside the uncompressed
  prompt: TTFT, total time and KV memory saved.
* `speculation` makes the decode speculative (tokens verified and accepted per step, Medusa heads);
  `speculative_speedup` compares it with plain decoding on the same device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ridgeline.errors import RidgelineError
from ridgeline.roofline.evaluate import Prediction, evaluate
from ridgeline.roofline.workload import Compressor, Options, build_workload
from ridgeline.specs import (DeviceSpec, ModelSpec, Precision, Scenario, Speculation, get_device, get_format, load_spec,
                             parse_scenario)

#: the keep/drop head size `ridgeline.compress` trains by default (priced for 'MODEL:K' compressors)
SCORER_HEAD_HIDDEN = 256


def default_kv(acts: str, kv: str | None = None) -> str:
    """`kv` if given, else the activation format when it is a float format, else bf16."""
    if kv is not None:
        return kv
    return acts if get_format(acts).family == "float" else "bf16"


def default_precision(spec: ModelSpec, weights: str | None = None, acts: str = "bf16", kv: str | None = None,
                      compute: str | None = None) -> Precision:
    """Formats with ridgeline's defaults: stored weights when the spec has a tensor table, else bf16."""
    if weights is None:
        weights = "stored" if spec.gguf_tensors is not None else "bf16"
    return Precision(weights=weights, acts=acts, kv=default_kv(acts, kv), compute=compute)


def variant_spec(spec: ModelSpec, layers: int | None = None, window: int | None = None,
                 kv_heads: int | None = None) -> ModelSpec:
    """The spec with the depth, sliding window and K/V-head overrides applied (errors name the option as the
    command line spells it, as every message about these knobs does)."""
    if layers is not None:
        spec = _override("--layers", spec.with_layers, layers)
    if window is not None:
        spec = _override("--window", spec.with_window, window)
    if kv_heads is not None:
        spec = _override("--kv-heads", spec.with_kv_heads, kv_heads)
    return spec


def _override(option: str, transform, value: int) -> ModelSpec:
    try:
        return transform(value)
    except RidgelineError as exc:
        raise RidgelineError(f"{option}: {exc}") from None


def predict(model: str | ModelSpec, device: str | DeviceSpec, scenario: str | Scenario = "SISO", *,
            batch: int = 1, precision: Precision | None = None, weights: str | None = None, acts: str = "bf16",
            kv: str | None = None, compute: str | None = None, options: Options | None = None,
            layers: int | None = None, window: int | None = None, kv_heads: int | None = None,
            device_files: Sequence[str | Path] = (), compress: float | None = None, compressor: str | None = None,
            compressor_flops: float | None = None, speculation: Speculation | None = None) -> Prediction:
    """Predict prefill and decode of `model` on `device` for `scenario`: every operator's FLOPs, bytes and time.

    `model` is a config.json, model folder, .gguf file, catalogue id or a ModelSpec; `device` a catalogue id,
    'local', a device file or a DeviceSpec; `scenario` SISO/LISO/SILO/LILO, 'P:N' or a Scenario (`batch`
    applies to a string). Give `precision`, or the formats one by one (`weights`, `acts`, `kv`, `compute`).
    `compress`, `compressor` and `compressor_flops`: see the module docstring.
    A `speculation` makes the decode speculative (k tokens verified, a accepted per step).
    """
    spec = load_spec(model) if isinstance(model, str) else model
    spec = variant_spec(spec, layers, window, kv_heads)
    dev = get_device(device, tuple(device_files)) if isinstance(device, str) else device
    sc = parse_scenario(scenario, batch) if isinstance(scenario, str) else scenario
    comp = None
    if compress is not None or compressor is not None or compressor_flops is not None:
        sc, comp = compressed(sc, spec, compress, compressor, compressor_flops)
    if speculation is not None:
        sc = replace(sc, speculation=speculation)
    if spec.max_position is not None and sc.final_context > spec.max_position:
        raise RidgelineError(f"scenario {sc.label} needs {sc.final_context} positions; {spec.name}'s context limit "
                             f"(max_position_embeddings) is {spec.max_position}")
    prec = precision or default_precision(spec, weights, acts, kv, compute)
    return evaluate(build_workload(spec, sc, prec, options, comp), dev)


def compressed(sc: Scenario, spec: ModelSpec, rate: float | None, compressor: str | None = None,
               flops: float | None = None) -> tuple[Scenario, Compressor | None]:
    """The scenario with its prompt compressed at `rate` (> 1), and the compressor it names (or None)."""
    if rate is None:
        raise RidgelineError("--compressor and --compressor-flops need a compression rate (--compress R, R > 1)")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 1 < rate < float("inf"):
        raise RidgelineError(f"compression rate must be a number > 1 (2: half the prompt), got {rate!r}")
    if compressor is not None and flops is not None:
        raise RidgelineError("give --compressor or --compressor-flops, not both")
    sc = replace(sc, compress=float(rate))
    if flops is not None:
        return sc, Compressor(f"{flops:g} FLOP/token", flops_per_token=float(flops))
    if compressor is None:
        return sc, None
    return sc, parse_compressor(compressor, spec)


def parse_compressor(text: str, target: ModelSpec) -> Compressor:
    """'self', 'self:K', 'MODEL' or 'MODEL:K' (K = the first K layers and a keep/drop head)."""
    name, sep, tail = text.strip().rpartition(":")
    if not sep or not tail.isdigit():
        name, tail = text.strip(), ""
    if not name:
        raise RidgelineError(f"compressor {text!r} is not self, self:K, MODEL or MODEL:K")
    layers = int(tail) if tail else None
    spec = target if name == "self" else load_spec(name)
    if layers is not None and not 1 <= layers <= spec.n_layers:
        raise RidgelineError(f"compressor {text!r}: K must be between 1 and the model's {spec.n_layers} layers")
    return Compressor(text.strip(), spec, layers, SCORER_HEAD_HIDDEN)


def compression_summary(pred: Prediction) -> dict:
    """A compressed prediction beside the same scenario uncompressed: tokens, compressor cost, TTFT, time, KV."""
    w = pred.workload
    sc = w.scenario
    base = evaluate(build_workload(w.model, replace(sc, compress=1.0), w.precision,
                                   w.options), pred.device)
    comp_ops = [o for o in pred.prefill.ops if o.group.startswith("compressor")]
    comp_s = sum(o.time_s for o in comp_ops)
    return {"rate": sc.compress, "prompt_tokens": sc.prompt, "prefill_tokens": sc.prefill_tokens,
            "compressor": w.compressor.name if w.compressor else None,
            "compressor_flops": sum(o.flops for o in comp_ops), "compressor_time_s": comp_s,
            "ttft_s": pred.ttft_s, "ttft_uncompressed_s": base.ttft_s,
            "ttft_speedup": base.ttft_s / pred.ttft_s if pred.ttft_s else None,
            "total_time_s": pred.total_s, "total_uncompressed_s": base.total_s,
            "kv_bytes": w.kv_bytes, "kv_bytes_uncompressed": base.workload.kv_bytes,
            "kv_saved_bytes": base.workload.kv_bytes - w.kv_bytes,
            "kv_saved_fraction": 1 - w.kv_bytes / base.workload.kv_bytes if base.workload.kv_bytes else 0.0}


def speculative_speedup(speculative: Prediction) -> tuple[Prediction, float]:
    """(the plain-decoding prediction of the same workload on the same device, plain / speculative decode time)."""
    w = speculative.workload
    if w.scenario.speculation is None:
        raise RidgelineError("speculative_speedup needs a prediction made with a speculation")
    plain = evaluate(build_workload(w.model, replace(w.scenario, speculation=None), w.precision, w.options,
                                    w.compressor),
                     speculative.device)
    return plain, (plain.decode.time_s / speculative.decode.time_s if speculative.decode.time_s else 0.0)
