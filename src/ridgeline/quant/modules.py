"""Which modules a quantization method replaces, and how: one place for every method.

Targets are the nn.Linear modules inside the decoder layers (MoE routers excepted: their few outputs
decide which experts run, and quantizing them changes routing), plus `lm_head` when asked. A tied
lm_head is untied by the swap: the embedding lookup stays in floating point.
"""

from __future__ import annotations

import torch
from torch import nn

from ridgeline.errors import RidgelineError
from ridgeline.quant.calib import decoder_layers
from ridgeline.quant.intq import check_weight

#: suffixes of MoE router (gate) modules, never quantized
ROUTER_NAMES = ("mlp.gate", "router", "block_sparse_moe.gate", "shared_expert_gate")


def is_router(name: str) -> bool:
    """Whether the module at dotted path `name` is an MoE router."""
    return any(name.endswith(r) for r in ROUTER_NAMES)


def layer_linears(layer: nn.Module) -> list[str]:
    """Names (relative to `layer`) of the nn.Linear modules a method quantizes in one decoder layer."""
    return [n for n, m in layer.named_modules() if isinstance(m, nn.Linear) and not is_router(n)]


def target_linears(model: nn.Module, include_lm_head: bool = False) -> dict[str, nn.Linear]:
    """Fully-qualified names → nn.Linear modules a method quantizes (decoder layers, optionally lm_head)."""
    layers = decoder_layers(model)
    prefix = next(name for name, m in model.named_modules() if m is layers)
    out = {f"{prefix}.{name}": layers.get_submodule(name) for name in layer_linears(layers)}
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


def float_weight(m: nn.Linear, fqn: str) -> torch.Tensor:
    """The module's weight as fp32 (detached), refused if not finite."""
    w = m.weight.detach().float()
    check_weight(w, fqn)
    return w


def bias_of(m: nn.Linear) -> torch.Tensor | None:
    """The module's bias (detached), or None."""
    return None if m.bias is None else m.bias.detach()
