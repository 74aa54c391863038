"""GPTQ over a whole model, one decoder layer at a time (the reference's `llama_sequential`).

The calibration inputs of layer 0 are caught once; for each layer the Hessians of its linears are
accumulated from the inputs the *already quantized* earlier layers produce, the layer is quantized, and
its outputs (with quantized weights) become the next layer's inputs. With `true_sequential` the
projections are quantized in the order they run — q/k/v, then o, then gate/up, then down — and each group
sees inputs computed with the groups before it already quantized; each of these passes stops right after
the group's last projection has its inputs, so the rest of the layer is not computed for nothing.
Projections that read the same tensor (q/k/v; gate/up) share one Hessian. Working memory beyond the
model: the layer's inputs and outputs for all calibration tokens and the Hessians of one layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ridgeline.quant.calib import LayerInputs, capture_inputs, decoder_layers, feed, first_layer_inputs, run_layer
from ridgeline.quant.config import GPTQConfig
from ridgeline.quant.gptq import HessianAccumulator, gptq_quantize
from ridgeline.quant.linear import QuantLinear, from_int_quant
from ridgeline.quant.modules import bias_of, float_weight, layer_linears, set_module
from ridgeline.quant.registry import QuantizeContext, register_handler

#: llama-family projections in the order a decoder layer runs them, grouped as true-sequential quantizes them
_SEQUENTIAL = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
               ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))


def _groups(layer: nn.Module, true_sequential: bool) -> list[list[str]]:
    """Names of the layer's linears in quantization groups (one group of all when the layout is unknown)."""
    linears = layer_linears(layer)
    known = [list(g) for g in _SEQUENTIAL]
    if true_sequential and sorted(linears) == sorted(n for g in known for n in g):
        return known
    return [linears]


def _quantize_group(layer: nn.Module, names: list[str], inputs: LayerInputs, config: Any, stop: bool,
                    prefix: str, new: dict[str, QuantLinear], losses: dict[str, float]) -> None:
    """Accumulate Hessians for `names` from one pass over the inputs, then GPTQ and swap each module."""
    modules = {n: layer.get_submodule(n) for n in names}
    hessians: dict[str, HessianAccumulator] = {}
    share: dict[str, str] = {}
    pending: dict[str, torch.Tensor] = {}

    def collect(name: str, x: torch.Tensor) -> None:
        # projections reading the very same tensor (q/k/v, gate/up) share one Hessian
        for other, seen in pending.items():
            if seen.data_ptr() == x.data_ptr() and seen.shape == x.shape:
                share[name] = other
                return
        pending[name] = x
        hessians.setdefault(name, HessianAccumulator(x.shape[-1])).add(x)

    with capture_inputs(modules, collect, stop_after=names[-1] if stop else None):
        for h in inputs.hidden:
            pending.clear()
            feed(layer, LayerInputs([h], inputs.kwargs))
    for name, m in modules.items():
        fqn = f"{prefix}.{name}"
        H = hessians[share.get(name, name)].hessian()
        result = gptq_quantize(float_weight(m, fqn), H, bits=config.bits, group=config.group, sym=config.sym,
                               act_order=config.act_order, static_groups=config.static_groups,
                               damp=config.damp, block_size=config.block_size)
        new[fqn] = from_int_quant(result.quant, bias_of(m), kernel=config.kernel)
        losses[fqn] = float(result.loss)
        set_module(layer, name, new[fqn])


@register_handler(GPTQConfig)
def gptq_model(model: nn.Module, config: GPTQConfig, ctx: QuantizeContext) -> dict[str, QuantLinear]:
    """Quantize every decoder-layer linear (and lm_head if asked) with GPTQ; fills manifest['gptq']."""
    ids = ctx.calibration(config)
    layers = decoder_layers(model)
    prefix = next(name for name, m in model.named_modules() if m is layers)
    inputs = first_layer_inputs(model, ids)
    new: dict[str, QuantLinear] = {}
    losses: dict[str, float] = {}
    total = len(layers) + (1 if config.include_lm_head else 0)
    for i, layer in enumerate(layers):
        groups = _groups(layer, config.true_sequential)
        for group in groups:
            # the last group's pass runs the whole layer anyway: no early stop needed
            _quantize_group(layer, group, inputs, config, stop=len(groups) > 1, prefix=f"{prefix}.{i}",
                            new=new, losses=losses)
        inputs = LayerInputs(run_layer(layer, inputs), inputs.kwargs)
        ctx.report(i + 1, total, f"layer {i}")
    if config.include_lm_head:
        head = model.lm_head
        acc = HessianAccumulator(head.in_features)
        with torch.no_grad():
            norm = model.get_decoder().norm
            for h in inputs.hidden:
                acc.add(norm(h))
        result = gptq_quantize(float_weight(head, "lm_head"), acc.hessian(), bits=config.bits, group=config.group,
                               sym=config.sym, act_order=config.act_order, static_groups=config.static_groups,
                               damp=config.damp, block_size=config.block_size)
        new["lm_head"] = from_int_quant(result.quant, bias_of(head), kernel=config.kernel)
        losses["lm_head"] = float(result.loss)
        set_module(model, "lm_head", new["lm_head"])
        ctx.report(total, total, "lm_head")
    ctx.manifest["gptq"] = {"calibration_tokens": int(ids.numel()), "loss": losses}
    return new
