"""`quantize_(model, config)`: one verb for every method, replacing nn.Linear modules in place.

The config's type selects the handler (`registry.py`; the methods live in `methods.py`, `sequential.py`
for GPTQ and `smoothquant.py`), and `modules.py` says which modules are replaced. The model records what
was done in `model.ridgeline_quant` (a JSON-ready manifest: the method and config, each replaced module's
spec, formats, kernels, bytes), which `save_quantized` writes and `ridgeline analyze` reads for the weight
bytes.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import torch
from torch import nn

from ridgeline.errors import RidgelineError
from ridgeline.quant import methods, sequential, smoothquant  # noqa: F401 (each registers its handlers)
from ridgeline.quant.config import Config, config_to_dict
from ridgeline.quant.linear import QuantLinear
from ridgeline.quant.registry import Progress, QuantizeContext, handler_for

def quantize_(model: nn.Module, config: Config, *, tokenizer: Any = None,
              calibration: torch.Tensor | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Quantize `model` in place with `config`; return (and attach as model.ridgeline_quant) the manifest.

    Calibrated methods (GPTQ, SmoothQuant) take `calibration` token ids [n, seq] or build them from the
    config's calibration source with `tokenizer`.
    """
    if getattr(model, "ridgeline_quant", None):
        raise RidgelineError("this model is already quantized; quantize the float model")
    start = time.perf_counter()
    ctx = QuantizeContext(tokenizer, calibration, progress, {"config": config_to_dict(config)})
    new = handler_for(config)(model, config, ctx)
    manifest = ctx.manifest
    manifest.update(_summary(model, new))
    for name, kind in manifest.get("float_tensors", {}).items():  # gguf: tensors llama.cpp would quantize too
        manifest["tensor_formats"][name] = kind.split()[0]
    manifest["seconds"] = time.perf_counter() - start
    model.ridgeline_quant = manifest
    return manifest


def _summary(model: nn.Module, new: dict[str, QuantLinear]) -> dict[str, Any]:
    """Formats, kernels and bytes of the quantized modules (and the float parameters left)."""
    quant_bytes = sum(m.weight_bytes() for m in new.values())
    quant_params = sum(m.in_features * m.out_features for m in new.values())
    seen: set[int] = set()
    float_bytes = 0
    float_params = 0
    for p in list(model.parameters()) + [b for n, b in model.named_buffers() if "rotary" not in n]:
        if id(p) in seen or not p.is_floating_point() or any(p is getattr(m, n, None) for m in new.values()
                                                             for n, _ in m.named_buffers()):
            continue
        seen.add(id(p))
        if isinstance(p, nn.Parameter):
            float_bytes += p.numel() * p.element_size()
            float_params += p.numel()
    emulated = sorted({m.weight_format for m in new.values() if m.emulated})
    from ridgeline.quant.gguf_names import gguf_name

    tensor_formats = {}
    for fqn, m in new.items():
        try:
            tensor_formats[gguf_name(fqn)] = m.weight_format
        except RidgelineError:  # not a llama-family name: analyze then falls back to the float format
            pass
    return {
        "tensor_formats": tensor_formats,
        "modules": {fqn: m.spec() for fqn, m in new.items()},
        "formats": dict(Counter(m.weight_format for m in new.values())),
        "kernels": dict(Counter(m.kernel for m in new.values())),
        "emulated": bool(emulated),
        "emulated_formats": emulated,
        "quantized_params": quant_params,
        "quantized_bytes": quant_bytes,
        "float_params": float_params,
        "float_bytes": float_bytes,
        "bits_per_quantized_weight": 8 * quant_bytes / quant_params if quant_params else None,
    }


def precision_label(model: nn.Module) -> str:
    """A short label of the model's weight precision, e.g. 'int4_g128_asym (_weight_int4pack_mm_for_cpu)'."""
    manifest = getattr(model, "ridgeline_quant", None)
    if not manifest:
        p = next(model.parameters())
        return str(p.dtype).removeprefix("torch.")
    formats = ", ".join(sorted(manifest["formats"]))
    kernels = ", ".join(k for k in sorted(manifest["kernels"]) if k != "emulated")
    tag = "emulated" if manifest["emulated"] else kernels
    if manifest["emulated"] and kernels:
        tag = f"{kernels} + emulated"
    return f"{manifest['config']['method']} {formats} ({tag})"


def bench_info(model: nn.Module) -> dict[str, Any] | None:
    """What a measured run needs to know of a quantized model: label, per-tensor formats, kernels."""
    manifest = getattr(model, "ridgeline_quant", None)
    if not manifest:
        return None
    return {"label": precision_label(model), "method": manifest["config"]["method"],
            "tensor_formats": manifest.get("tensor_formats", {}), "kernels": manifest["kernels"],
            "emulated": manifest["emulated"]}


def param_bytes(model: nn.Module) -> float:
    """Bytes of the model's parameters, shared (tied) ones counted once: the float model's size."""
    unique = {id(p): p for p in model.parameters()}
    return float(sum(p.numel() * p.element_size() for p in unique.values()))
