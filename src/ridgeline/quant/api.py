"""`quantize_(model, config)`: one verb for every method, replacing nn.Linear modules in place.

Which modules: every nn.Linear inside the decoder layers (MoE routers excepted), plus `lm_head` when the
config says `include_lm_head`. A tied lm_head is untied by the swap: the embedding lookup stays in
floating point. The model records what was done in `model.ridgeline_quant` (a JSON-ready manifest: the
method and config, each replaced module's spec, formats, kernels, bytes), which `save_quantized` writes
and `ridgeline analyze` reads for the weight bytes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ridgeline.errors import RidgelineError
from ridgeline.quant.calib import decoder_layers
from ridgeline.quant.config import (BFPConfig, Config, GGUFConfig, GPTQConfig, LLMInt8Config, RTNConfig,
                                    SmoothQuantConfig, config_to_dict)
from ridgeline.quant.intq import check_weight, rtn
from ridgeline.quant.linear import EmulatedLinear, QuantLinear, W8A8Linear, from_int_quant

#: progress(done, total, what) for long methods
Progress = Callable[[int, int, str], None]

_ROUTER_NAMES = ("mlp.gate", "router", "block_sparse_moe.gate", "shared_expert_gate")


def target_linears(model: nn.Module, include_lm_head: bool = False) -> dict[str, nn.Linear]:
    """Fully-qualified names → nn.Linear modules a method quantizes (decoder layers, optionally lm_head)."""
    layers = decoder_layers(model)
    prefix = next(name for name, m in model.named_modules() if m is layers)
    out = {}
    for name, m in layers.named_modules():
        if isinstance(m, nn.Linear) and not any(name.endswith(r) for r in _ROUTER_NAMES):
            out[f"{prefix}.{name}"] = m
    if include_lm_head:
        head = getattr(model, "lm_head", None)
        if not isinstance(head, nn.Linear):
            raise RidgelineError("include_lm_head: the model has no nn.Linear lm_head")
        out["lm_head"] = head
    if not out:
        raise RidgelineError(f"{type(model).__name__} has no nn.Linear modules to quantize (already quantized?)")
    return out


def set_module(model: nn.Module, fqn: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path `fqn`."""
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _bias(m: nn.Linear) -> torch.Tensor | None:
    return None if m.bias is None else m.bias.detach()


def _weight(m: nn.Linear, fqn: str) -> torch.Tensor:
    w = m.weight.detach().float()
    check_weight(w, fqn)
    return w


def _rtn(model: nn.Module, config: RTNConfig, progress: Progress | None) -> dict[str, QuantLinear]:
    targets = target_linears(model, config.include_lm_head)
    new = {}
    for i, (fqn, m) in enumerate(targets.items()):
        q = rtn(_weight(m, fqn), config.bits, config.group, config.sym, what=fqn)
        new[fqn] = from_int_quant(q, _bias(m), kernel=config.kernel)
        set_module(model, fqn, new[fqn])
        if progress:
            progress(i + 1, len(targets), fqn)
    return new


def _w8a8(model: nn.Module, threshold: float | None, include_lm_head: bool,
          progress: Progress | None) -> dict[str, QuantLinear]:
    targets = target_linears(model, include_lm_head)
    new = {}
    for i, (fqn, m) in enumerate(targets.items()):
        q = rtn(_weight(m, fqn), 8, 0, True, what=fqn)
        new[fqn] = W8A8Linear.from_quant(q, _bias(m), threshold)
        set_module(model, fqn, new[fqn])
        if progress:
            progress(i + 1, len(targets), fqn)
    return new


def _bfp(model: nn.Module, config: BFPConfig, progress: Progress | None) -> dict[str, QuantLinear]:
    targets = target_linears(model, config.include_lm_head)
    new = {}
    for i, (fqn, m) in enumerate(targets.items()):
        new[fqn] = EmulatedLinear.from_weight(_weight(m, fqn), config.weight_format, _bias(m), config.act_format)
        set_module(model, fqn, new[fqn])
        if progress:
            progress(i + 1, len(targets), fqn)
    return new


def _gguf(model: nn.Module, config: GGUFConfig, progress: Progress | None,
          manifest: dict[str, Any]) -> dict[str, QuantLinear]:
    """Each tensor gets the ggml type llama.cpp's recipe gives it; weights pass through the exact codecs."""
    from ridgeline.quant.codec import decode, encode
    from ridgeline.quant.gguf_names import gguf_name, recipe_context
    from ridgeline.specs.recipes import tensor_type

    ctx = recipe_context(model)
    targets = target_linears(model, include_lm_head=False)
    new: dict[str, QuantLinear] = {}
    floats: dict[str, str] = {}
    for i, (fqn, m) in enumerate(targets.items()):
        w = _weight(m, fqn)
        ggml_type = tensor_type(config.recipe, gguf_name(fqn), tuple(w.shape), ctx)
        if ggml_type in ("f32", "f16", "bf16"):
            floats[gguf_name(fqn)] = ggml_type
            if ggml_type != "f32":
                m.weight.data = decode(encode(w, ggml_type), ggml_type, w.shape).to(m.weight.dtype)
        else:
            new[fqn] = EmulatedLinear.from_weight(w, ggml_type, _bias(m))
            set_module(model, fqn, new[fqn])
        if progress:
            progress(i + 1, len(targets), fqn)
    if config.include_embeddings:
        # llama.cpp stores token_embd (and output, or token_embd again when tied) in a recipe type and both the
        # lookup and the logits read the quantized values: replacing the float values by the decoded ones
        # emulates exactly that. The dequantized values stay in the model's float dtype.
        embed = model.get_input_embeddings()
        head = model.get_output_embeddings()
        tied = head is not None and head.weight is embed.weight
        for name, mod in (("token_embd.weight", embed), ("output.weight", None if tied else head)):
            if mod is None:
                continue
            w = mod.weight.detach().float()
            check_weight(w, name)
            # with tied embeddings the context says there is no output tensor: token_embd gets the output rules
            ggml_type = tensor_type(config.recipe, name, tuple(w.shape), ctx)
            if ggml_type != "f32":
                mod.weight.data = decode(encode(w, ggml_type), ggml_type, w.shape).to(mod.weight.dtype)
            floats[name] = ggml_type + (" (stored dequantized)" if ggml_type != "f32" else "")
    manifest["float_tensors"] = floats
    return new


def quantize_(model: nn.Module, config: Config, *, tokenizer: Any = None,
              calibration: torch.Tensor | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Quantize `model` in place with `config`; return (and attach as model.ridgeline_quant) the manifest.

    Calibrated methods (GPTQ, SmoothQuant) take `calibration` token ids [n, seq] or build them from the
    config's calibration source with `tokenizer`.
    """
    if getattr(model, "ridgeline_quant", None):
        raise RidgelineError("this model is already quantized; quantize the float model")
    start = time.perf_counter()
    manifest: dict[str, Any] = {"config": config_to_dict(config)}
    if isinstance(config, RTNConfig):
        new = _rtn(model, config, progress)
    elif isinstance(config, LLMInt8Config):
        new = _w8a8(model, config.threshold, config.include_lm_head, progress)
    elif isinstance(config, BFPConfig):
        new = _bfp(model, config, progress)
    elif isinstance(config, GGUFConfig):
        new = _gguf(model, config, progress, manifest)
    elif isinstance(config, (GPTQConfig, SmoothQuantConfig)):
        if calibration is None:
            if tokenizer is None:
                raise RidgelineError(f"{config.method} needs calibration data: pass calibration ids or a tokenizer")
            from ridgeline.quant.calib import calibration_ids

            calibration = calibration_ids(tokenizer, config.calibration)
        if isinstance(config, GPTQConfig):
            from ridgeline.quant.sequential import gptq_model

            new = gptq_model(model, config, calibration, progress, manifest)
        else:
            from ridgeline.quant.smoothquant import smoothquant_model

            new = smoothquant_model(model, config, calibration, progress, manifest)
    else:
        raise RidgelineError(f"unknown quantization config {type(config).__name__}")
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
