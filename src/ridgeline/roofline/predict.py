"""`predict`: the roofline in one call — model, device and scenario in, a `Prediction` out.

It is the composition every analytic command shares (load the spec, apply the architecture overrides,
choose the formats, build the Workload, evaluate it on the device), so `ridgeline analyze`, `ridgeline
plot` and a Python user get the same numbers from the same defaults:

* weights default to the model's stored formats when it has a stored-tensor table (a GGUF file, a
  ridgeline-quantized folder), else bf16;
* the KV cache defaults to the activation format when that is a float format, else bf16;
* `layers` keeps the first N blocks (repeating them past the model's depth), `window` gives every
  attention layer a sliding window of W keys, `kv_heads` sets every layer's K/V heads (GQA conversion).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ridgeline.errors import RidgelineError
from ridgeline.roofline.evaluate import Prediction, evaluate
from ridgeline.roofline.workload import Options, build_workload
from ridgeline.specs import (DeviceSpec, ModelSpec, Precision, Scenario, get_device, get_format, load_spec,
                             parse_scenario)


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
            device_files: Sequence[str | Path] = ()) -> Prediction:
    """Predict prefill and decode of `model` on `device` for `scenario`: every operator's FLOPs, bytes and time.

    `model` is a config.json, model folder, .gguf file, catalogue id or a ModelSpec; `device` a catalogue id,
    'local', a device file or a DeviceSpec; `scenario` SISO/LISO/SILO/LILO, 'P:N' or a Scenario (`batch`
    applies to a string). Give `precision`, or the formats one by one (`weights`, `acts`, `kv`, `compute`).
    """
    spec = load_spec(model) if isinstance(model, str) else model
    spec = variant_spec(spec, layers, window, kv_heads)
    dev = get_device(device, tuple(device_files)) if isinstance(device, str) else device
    sc = parse_scenario(scenario, batch) if isinstance(scenario, str) else scenario
    if spec.max_position is not None and sc.final_context > spec.max_position:
        raise RidgelineError(f"scenario {sc.label} needs {sc.final_context} positions; {spec.name}'s context limit "
                             f"(max_position_embeddings) is {spec.max_position}")
    prec = precision or default_precision(spec, weights, acts, kv, compute)
    return evaluate(build_workload(spec, sc, prec, options), dev)
