"""transformers module names → llama.cpp tensor names, and the recipe context of a transformers model."""

from __future__ import annotations

import re
from typing import Any

from ridgeline.errors import RidgelineError
from ridgeline.specs import RecipeContext, attention_dims

#: llama-family projection names (transformers) → GGUF tensor names (llama.cpp's convert_hf_to_gguf.py)
_LAYER_TENSORS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.qkv_proj": "attn_qkv",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "mlp.gate_up_proj": "ffn_up",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
}
_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+?)(\.weight|\.bias)?$")


def gguf_name(fqn: str) -> str:
    """GGUF tensor name of a transformers module or parameter name (e.g. model.layers.3.mlp.down_proj)."""
    suffix = ".bias" if fqn.endswith(".bias") else ".weight"
    base = fqn.removesuffix(".weight").removesuffix(".bias")
    if base in _GLOBAL:
        return _GLOBAL[base] + suffix
    m = _LAYER_RE.match(base)
    if m and m.group(2) in _LAYER_TENSORS:
        return f"blk.{m.group(1)}.{_LAYER_TENSORS[m.group(2)]}{suffix}"
    raise RidgelineError(f"no GGUF tensor name for {fqn!r} (llama-family layouts only)")


def recipe_context(model: Any, arch: str = "llama") -> RecipeContext:
    """The facts llama.cpp's recipe rules read (layer count, GQA ratio, tied output) of a transformers model."""
    cfg = model.config
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is None or getattr(head, "weight", None) is embed.weight
    dims = attention_dims(cfg)
    return RecipeContext(n_layers=dims.n_layers, n_gqa=max(1, dims.n_heads // max(1, dims.n_kv_heads)),
                         has_output=not tied, arch=arch)
