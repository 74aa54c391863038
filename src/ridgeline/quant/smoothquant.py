"""SmoothQuant: migrate activation outliers into the weights, then W8A8 (int8 per channel × int8 per token).

For every norm → linears pair (pre-attention norm → q, k, v; pre-FFN norm → gate, up) the smoothing
factors are s_j = act_max_j^α / w_max_j^(1−α), where act_max_j is the calibrated max |x_j| over every
token entering those linears and w_max_j the max |W[:, j]| over all of them. Dividing the norm weight by s
and multiplying the weight columns by s leaves the model's function unchanged (in exact arithmetic; a
test checks the logits), while the activations the int8 quantizer sees have flatter channels. o_proj and
down_proj have no norm in front and are quantized unsmoothed, as in the reference. Every linear then runs
as a `W8A8Linear` (`torch._int_mm`). With `search`, α is picked from the grid by the calibration NLL of the
quantized model (a few calibration sequences; each candidate quantizes a copy).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ridgeline.errors import RidgelineError
from ridgeline.quant.calib import decoder_layers
from ridgeline.quant.config import SmoothQuantConfig
from ridgeline.quant.methods import quantize_w8a8
from ridgeline.quant.registry import QuantizeContext, register_handler

#: (norm attribute, linear names in order) per llama-family decoder layer; the first alternative present wins
_PAIRS = (
    ("input_layernorm", (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.qkv_proj",))),
    ("post_attention_layernorm", (("mlp.gate_proj", "mlp.up_proj"), ("mlp.gate_up_proj",))),
)
#: model types whose norms multiply by `weight` (gemma's (1 + weight) would need another fold)
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "phi3")


def smooth_pairs(model: nn.Module) -> list[tuple[nn.Module, list[nn.Linear], str]]:
    """(norm, linears, name) for every smoothable pair of the model."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED:
        raise RidgelineError(f"SmoothQuant folds into norms of {', '.join(SUPPORTED)} models, not {model_type!r}; "
                             "use --method llm_int8 for int8 activations on other models")
    pairs = []
    for i, layer in enumerate(decoder_layers(model)):
        for norm_name, alternatives in _PAIRS:
            norm = getattr(layer, norm_name)
            for names in alternatives:
                try:
                    linears = [layer.get_submodule(n) for n in names]
                except AttributeError:
                    continue
                if not all(isinstance(m, nn.Linear) for m in linears):
                    raise RidgelineError(f"layer {i}: {names} are not nn.Linear (already quantized?)")
                if getattr(norm, "bias", None) is not None:
                    raise RidgelineError(f"layer {i}: {norm_name} has a bias; only weight-only norms fold here")
                pairs.append((norm, linears, f"layers.{i}.{norm_name}"))
                break
            else:
                raise RidgelineError(f"layer {i}: no linears after {norm_name} among {alternatives}")
    return pairs


def activation_maxima(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """max |x_j| per input channel of the first linear of each pair, over every calibration token."""
    pairs = smooth_pairs(model)
    maxima: dict[str, torch.Tensor] = {}
    handles = []
    for _, linears, name in pairs:
        def hook(m: nn.Module, args: tuple, name: str = name) -> None:
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(dim=0).float()
            maxima[name] = x if name not in maxima else torch.maximum(maxima[name], x)
        handles.append(linears[0].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for start in range(0, ids.shape[0], batch_size):
                model(input_ids=ids[start:start + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return maxima


def smooth_(model: nn.Module, maxima: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Fold smoothing factors for strength `alpha` into norms and weights in place; return the factors."""
    factors = {}
    with torch.no_grad():
        for norm, linears, name in smooth_pairs(model):
            act = maxima[name].clamp(min=1e-5)
            w_max = torch.cat([m.weight.detach().float().abs() for m in linears], dim=0).amax(dim=0).clamp(min=1e-5)
            s = (act.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)
            norm.weight.div_(s.to(norm.weight.dtype))
            for m in linears:
                m.weight.mul_(s.to(m.weight.dtype))
            factors[name] = s
    return factors


def _calibration_nll(model: nn.Module, ids: torch.Tensor) -> float:
    """Mean next-token NLL of the model on `ids` (the α search's criterion)."""
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids, use_cache=False).loss)


@register_handler(SmoothQuantConfig)
def smoothquant_model(model: nn.Module, config: SmoothQuantConfig, ctx: QuantizeContext) -> dict[str, Any]:
    """Calibrate, (search α,) smooth and quantize every linear to W8A8; fills manifest['smoothquant']."""
    ids = ctx.calibration(config)
    maxima = activation_maxima(model, ids)
    alpha = config.alpha
    scores = {}
    if config.search:
        probe = ids[: min(4, ids.shape[0])]
        for i, a in enumerate(config.grid):
            trial = copy.deepcopy(model)
            smooth_(trial, maxima, a)
            quantize_w8a8(trial, None, config.include_lm_head, None)
            scores[a] = _calibration_nll(trial, probe)
            del trial
            ctx.report(i + 1, len(config.grid), f"alpha {a}")
        alpha = min(scores, key=scores.get)
    factors = smooth_(model, maxima, alpha)
    new = quantize_w8a8(model, None, config.include_lm_head, ctx)
    ctx.manifest["smoothquant"] = {
        "alpha": alpha, "searched": scores or None,
        "max_factor": max(float(s.max()) for s in factors.values()),
        "min_factor": min(float(s.min()) for s in factors.values()),
    }
    return new
