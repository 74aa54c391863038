"""MHA <-> GQA conversion (Ainslie et al., EMNLP 2023, arXiv 2305.13245) for llama-style HF models.

With H query heads in G groups, query head h reads KV head h // (H/G): consecutive query heads share one KV
head, as transformers' `repeat_kv` lays them out. Conversion works in the MHA picture: each query head
first gets its own copy of its current KV head, then each new group mean-pools the copies of its H/G
query heads. So G may be any divisor of H (SmolLM2: 9 query heads, 3 KV heads -> G in {1, 3, 9}), and
pooling groups of identical copies returns them unchanged (expand then pool back is exact).

Both transforms change the model in place (k_proj / v_proj are replaced by smaller or larger Linear
layers; config.num_key_value_heads and each attention module's num_key_value_groups follow) and return
it for chaining; deep-copy first to keep the original.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ridgeline.errors import RidgelineError
from ridgeline.specs import attention_dims


def attention_modules(model: Any) -> list[nn.Module]:
    """The self-attention module of every decoder layer of a llama-style causal LM."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    attns = [getattr(layer, "self_attn", None) for layer in layers] if layers is not None else []
    if not attns or any(not all(isinstance(getattr(a, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj"))
                        or not hasattr(a, "num_key_value_groups") for a in attns):
        name = type(model).__name__
        raise RidgelineError(f"{name} is not a llama-style causal LM: expected model.layers[i].self_attn with "
                             "q_proj/k_proj/v_proj Linear layers and num_key_value_groups (Llama, Mistral, Qwen2, Qwen3)")
    return attns


def _heads(model: Any) -> tuple[int, int]:
    dims = attention_dims(model.config)
    return dims.n_heads, dims.n_kv_heads


def _pool_matrix(n_query: int, n_kv: int, groups: int) -> torch.Tensor:
    """[groups, n_kv] weights: new KV head g = sum_k M[g, k] * old KV head k (mean over its query heads)."""
    h = torch.arange(n_query)
    old = h // (n_query // n_kv)  # the KV head each query head reads now
    new = h // (n_query // groups)  # ... and after conversion
    m = torch.zeros(groups, n_kv, dtype=torch.float64)
    m.index_put_((new, old), torch.ones(n_query, dtype=torch.float64), accumulate=True)
    return m / (n_query // groups)  # a group of copies of one head gets weight exactly 1.0 -> exact


def _pooled_linear(lin: nn.Linear, m: torch.Tensor, head_dim: int) -> nn.Linear:
    """A Linear whose output heads are the `m`-weighted combinations of `lin`'s output heads."""
    groups, n_kv = m.shape
    out = nn.Linear(lin.in_features, groups * head_dim, bias=lin.bias is not None,
                    device=lin.weight.device, dtype=lin.weight.dtype)
    with torch.no_grad():
        # float64 so the mean is exact to the weights' precision whatever their dtype (bf16 included)
        w = lin.weight.double().view(n_kv, head_dim, lin.in_features)
        out.weight.copy_(torch.einsum("gk,kdi->gdi", m, w).reshape_as(out.weight))
        if lin.bias is not None:
            out.bias.copy_((m @ lin.bias.double().view(n_kv, head_dim)).reshape(-1))
    out.weight.requires_grad_(lin.weight.requires_grad)
    return out


def check_groups(model: Any, groups: int) -> None:
    """Raise unless `model` is llama-style and `groups` divides its query heads."""
    attention_modules(model)
    n_query = model.config.num_attention_heads
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or n_query % groups:
        divisors = [g for g in range(1, n_query + 1) if n_query % g == 0]
        raise RidgelineError(f"KV groups must divide the {n_query} query heads (one of {divisors}), got {groups!r}")


def pool_kv_heads(model: Any, groups: int) -> Any:
    """Convert `model` in place to `groups` KV heads by mean-pooling (any divisor of the query heads); returns it."""
    check_groups(model, groups)
    attns = attention_modules(model)
    n_query, n_kv = _heads(model)
    m = _pool_matrix(n_query, n_kv, groups)
    for attn in attns:
        head_dim = attn.head_dim
        attn.k_proj = _pooled_linear(attn.k_proj, m, head_dim)
        attn.v_proj = _pooled_linear(attn.v_proj, m, head_dim)
        attn.num_key_value_groups = n_query // groups  # what repeat_kv / sdpa's enable_gqa read
        if hasattr(attn, "num_key_value_heads"):
            attn.num_key_value_heads = groups
    model.config.num_key_value_heads = groups
    return model


def expand_kv_heads(model: Any) -> Any:
    """Convert `model` in place to multi-head attention by repeating each KV head for its query heads (exact)."""
    attention_modules(model)
    return pool_kv_heads(model, model.config.num_attention_heads)


def kv_bytes_per_token(config: Any, elem_bytes: float) -> float:
    """KV-cache bytes one token adds: 2 (K and V) · layers · KV heads · head_dim · bytes per element."""
    dims = attention_dims(config)
    return 2.0 * dims.n_layers * dims.kv_width * elem_bytes
