"""Read a ModelSpec from a GGUF header: architecture from the metadata, bytes from the tensor table."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ridgeline.errors import RidgelineError
from ridgeline.specs.gguf_header import ARRAY, STRING, read_gguf_header
from ridgeline.specs.model import ModelSpec, TensorSpec, spec_from_config

# llama.cpp architecture name -> Hugging Face model_type with the same accounting
_ARCH = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma",
         "gemma3": "gemma3_text", "phi3": "phi3", "gptneox": "gpt_neox", "qwen2moe": "qwen2_moe",
         "qwen3moe": "qwen3_moe", "deepseek2": "deepseek_v2", "smollm3": "llama"}


def _layer_of(name: str) -> int | None:
    """The block index of `blk.N.*` tensor names (None for model-level tensors)."""
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit() else None


def spec_from_gguf(path: str | Path) -> ModelSpec:
    """ModelSpec of a GGUF file: metadata gives the architecture, the tensor table the exact bytes."""
    header = read_gguf_header(path)
    path = header.path
    meta: dict[str, Any] = {}
    for key, value, vtype, _ in header.kv:
        if vtype == ARRAY:  # token lists and the like: only their length matters here
            meta[key] = len(value)
        else:
            meta[key] = value.decode("utf-8", "replace") if vtype == STRING else value
    arch = meta.get("general.architecture")
    if arch not in _ARCH:
        raise RidgelineError(f"{path}: GGUF architecture {arch!r} is not supported; known: {', '.join(sorted(_ARCH))}")
    tensors = tuple(TensorSpec(t.name, t.shape, _layer_of(t.name), t.ggml_type, t.nbytes) for t in header.tensors)
    names = {t.name: t for t in tensors}

    def m(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    for key in ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon", "rope.freq_base"):
        v = m(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e30):
            raise RidgelineError(f"{path}: GGUF metadata {arch}.{key} must be a finite number > 0, got {v!r}")
    try:
        cfg = _config(arch, m, meta, names)
    except (TypeError, ValueError, AttributeError) as exc:  # a metadata value of the wrong type
        raise RidgelineError(f"{path}: malformed GGUF metadata for {arch} ({type(exc).__name__}: {exc})") from None
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not cfg.get(key):
            raise RidgelineError(f"{path}: GGUF metadata lacks what {key!r} needs ({arch}.* keys)")
    spec = spec_from_config({k: v for k, v in cfg.items() if v is not None}, path.stem, str(path))
    return replace(spec, gguf_tensors=tensors)


def _config(arch: str, m: Any, meta: dict[str, Any], names: dict[str, TensorSpec]) -> dict[str, Any]:
    """The config.json-style fields of a GGUF's metadata (values checked by `spec_from_config`)."""
    embd = names.get("token_embd.weight")
    vocab = m("vocab_size") or meta.get("tokenizer.ggml.tokens") or (embd.shape[0] if embd else None)
    cfg: dict[str, Any] = {
        "model_type": _ARCH[arch],
        "hidden_size": m("embedding_length"), "num_hidden_layers": m("block_count"),
        "num_attention_heads": m("attention.head_count"), "num_key_value_heads": m("attention.head_count_kv"),
        "intermediate_size": m("feed_forward_length"), "vocab_size": vocab,
        "max_position_embeddings": m("context_length"),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names or "blk.0.attn_qkv.bias" in names,
    }
    if m("attention.key_length") and arch != "deepseek2":
        cfg["head_dim"] = m("attention.key_length")
    if m("attention.sliding_window"):
        cfg["sliding_window"] = m("attention.sliding_window")
    if m("expert_count"):
        cfg.update(num_experts=m("expert_count"), num_experts_per_tok=m("expert_used_count"),
                   moe_intermediate_size=m("expert_feed_forward_length") or m("feed_forward_length"))
        if m("expert_shared_feed_forward_length"):
            cfg["shared_expert_intermediate_size"] = m("expert_shared_feed_forward_length")
    if arch == "deepseek2":
        rope = m("rope.dimension_count")
        cfg.update(kv_lora_rank=m("attention.kv_lora_rank"), q_lora_rank=m("attention.q_lora_rank"),
                   qk_rope_head_dim=rope, qk_nope_head_dim=m("attention.key_length") - rope,
                   v_head_dim=m("attention.value_length"), n_routed_experts=m("expert_count"),
                   n_shared_experts=m("expert_shared_count"), first_k_dense_replace=m("leading_dense_block_count", 0))
    return cfg
