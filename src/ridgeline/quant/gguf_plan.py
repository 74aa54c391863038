"""What a GGUF export writes: the architecture's metadata and every tensor (name, shape, ggml type, data).

Re-derived from llama.cpp's `convert_hf_to_gguf.py` (LlamaModel / Qwen2Model): tensors named as llama.cpp
names them, Q and K rows permuted for the llama architecture (Hugging Face's rotate_half pairs (i, i + d/2)
become llama.cpp's adjacent pairs (2i, 2i + 1); qwen2 runs NeoX rope, not permuted), each tensor in the
ggml type `ridgeline.specs.tensor_type` gives it for the export type (what `llama-quantize <type>` chooses),
quantized tensors encoded by the exact ggml codecs, llama3-style rope scaling as the `rope_freqs` tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ridgeline.errors import RidgelineError
from ridgeline.specs import attention_dims

#: transformers model_type -> llama.cpp architecture
SUPPORTED_ARCHITECTURES: dict[str, str] = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}


#: export type -> gguf LlamaFileType member name ("general.file_type")
EXPORT_TYPES: dict[str, str] = {
    "f32": "ALL_F32",
    "f16": "MOSTLY_F16",
    "bf16": "MOSTLY_BF16",
    "q8_0": "MOSTLY_Q8_0",
    "q4_0": "MOSTLY_Q4_0",
    "q4_1": "MOSTLY_Q4_1",
    "q5_0": "MOSTLY_Q5_0",
    "q5_1": "MOSTLY_Q5_1",
    "q4_k_m": "MOSTLY_Q4_K_M",
    "q4_k_s": "MOSTLY_Q4_K_S",
    "q5_k_m": "MOSTLY_Q5_K_M",
    "q5_k_s": "MOSTLY_Q5_K_S",
    "q6_k": "MOSTLY_Q6_K",
}


_ALIASES = {"fp32": "f32", "float32": "f32", "fp16": "f16", "float16": "f16", "bfloat16": "bf16",
            "q4_k": "q4_k_m", "q5_k": "q5_k_m"}


#: ggml types written from a float tensor without the block codec
_FLOAT_GGML = ("f32", "f16", "bf16")


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the file: GGUF name, torch shape, ggml type, and how to get its float data."""

    name: str
    shape: tuple[int, ...]
    ggml_type: str
    get: Callable[[], Any]  # -> float torch tensor in GGUF row order (permuted already)


def gguf_tensor_plan(model: Any, type: str = "f16") -> list[PlannedTensor]:
    """The tensors `export_gguf` writes, in order: GGUF name, torch shape, ggml type, and a data getter.

    Checks everything it can before a byte is written: architecture, module kinds (plain float
    nn.Linear / nn.Embedding weights), shapes, and that each tensor's ggml type divides its rows.
    """
    import torch

    from ridgeline.quant.gguf_names import recipe_context
    from ridgeline.specs import tensor_type

    kind = export_type(type)
    config = model.config
    arch = llama_cpp_arch(config)
    core = getattr(model, "model", None)
    layers = getattr(core, "layers", None)
    if core is None or layers is None:
        raise RidgelineError(f"{arch} model without `.model.layers`: not a transformers causal LM")
    n_head, n_kv, head_dim = _heads(config)
    tied = _tied(model)
    permute = arch == "llama"
    ctx = recipe_context(model, arch)

    entries: list[tuple[str, Any, Callable[[Any], Any] | None]] = []  # (name, tensor, transform)
    rope = _rope_freqs(config, head_dim)
    if rope is not None:
        entries.append(("rope_freqs.weight", rope, None))
    entries.append(("token_embd.weight", _weight(input_embedding(model), "model.embed_tokens"), None))
    for i, layer in enumerate(layers):
        attn, mlp = layer.self_attn, layer.mlp
        p = f"blk.{i}."
        entries.append((p + "attn_norm.weight", _weight(layer.input_layernorm, f"layers.{i}.input_layernorm"), None))
        for proj, short, heads in (("q_proj", "attn_q", n_head), ("k_proj", "attn_k", n_kv),
                                   ("v_proj", "attn_v", None), ("o_proj", "attn_output", None)):
            module = _linear(attn, proj, f"layers.{i}.self_attn.{proj}")
            perm = (lambda t, h=heads: permute_qk(t, h)) if (permute and heads is not None) else None
            entries.append((p + short + ".weight", module.weight, perm))
            if module.bias is not None:
                entries.append((p + short + ".bias", _float(module.bias, f"layers.{i}.self_attn.{proj}.bias"), perm))
        entries.append((p + "ffn_norm.weight",
                        _weight(layer.post_attention_layernorm, f"layers.{i}.post_attention_layernorm"), None))
        for proj, short in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
            module = _linear(mlp, proj, f"layers.{i}.mlp.{proj}")
            entries.append((p + short + ".weight", module.weight, None))
            if module.bias is not None:
                entries.append((p + short + ".bias", _float(module.bias, f"layers.{i}.mlp.{proj}.bias"), None))
    entries.append(("output_norm.weight", _weight(core.norm, "model.norm"), None))
    if not tied:
        head = _linear(model, "lm_head", "lm_head")
        entries.append(("output.weight", head.weight, None))

    plan = []
    for name, tensor, transform in entries:
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise RidgelineError(f"{name}: weight is {type_name(tensor)}, not a floating-point tensor; "
                                 "export the float (unquantized) model")
        if tensor.device.type == "meta":
            raise RidgelineError(f"{name}: weight is on the meta device (not loaded)")
        shape = tuple(int(d) for d in tensor.shape)
        ggml_type = tensor_type(kind, name, shape, ctx)
        if ggml_type not in _FLOAT_GGML:
            _check_codec(ggml_type)
        plan.append(PlannedTensor(name, shape, ggml_type, _getter(tensor, transform)))
    return plan


def permute_qk(w: Any, n_heads: int) -> Any:
    """Hugging Face Q/K rows (rotate_half pairs i, i + d/2 per head) -> llama.cpp rows (pairs 2i, 2i + 1)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_qk(w: Any, n_heads: int) -> Any:
    """The inverse of `permute_qk`: llama.cpp Q/K rows back to Hugging Face order."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def encode_tensor(x: Any, ggml_type: str) -> bytes:
    """Bytes of float tensor `x` as ggml type `ggml_type` (F32/F16/BF16 by casting, blocks by the ggml codec)."""
    import torch

    x = x.detach().to("cpu")
    if ggml_type == "f32":
        return x.to(torch.float32).contiguous().numpy().tobytes()
    if ggml_type == "f16":
        return x.to(torch.float16).contiguous().numpy().tobytes()
    if ggml_type == "bf16":
        return x.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
    from ridgeline.quant import ggml

    x = x.to(torch.float32)
    return ggml.encode(x.reshape(-1, x.shape[-1]).contiguous(), ggml_type)


def type_name(x: Any) -> str:
    """A short description of what `x` is, for messages."""
    dtype = getattr(x, "dtype", None)
    return f"{type(x).__name__}" + (f" ({dtype})" if dtype is not None else "")


def export_type(type: Any) -> str:
    """The canonical export type for `type` (aliases such as fp16 or q4_k accepted)."""
    key = type.strip().lower() if isinstance(type, str) else ""
    key = _ALIASES.get(key, key)
    if key not in EXPORT_TYPES:
        raise RidgelineError(f"unknown GGUF export type {type!r}; expected one of {', '.join(EXPORT_TYPES)}")
    return key


def llama_cpp_arch(config: Any) -> str:
    """llama.cpp's architecture for a transformers config (llama for llama and mistral, qwen2)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise RidgelineError(f"GGUF export supports the {', '.join(SUPPORTED_ARCHITECTURES)} model types, "
                             f"not {model_type!r}")
    if getattr(config, "use_sliding_window", False):
        raise RidgelineError("qwen2 with use_sliding_window=True has no llama.cpp equivalent; cannot export")
    return SUPPORTED_ARCHITECTURES[model_type]


def _heads(config: Any) -> tuple[int, int, int]:
    dims = attention_dims(config)
    return dims.n_heads, dims.n_kv_heads, dims.head_dim


def input_embedding(model: Any) -> Any:
    """The model's input embedding module, refused unless it holds a plain weight tensor."""
    emb = model.get_input_embeddings()
    if emb is None or not isinstance(getattr(emb, "weight", None), _torch().Tensor):
        raise RidgelineError("the model's input embedding has no plain weight tensor; export the float model")
    return emb


def _tied(model: Any) -> bool:
    """True when the output head is the token embedding (no `output.weight` in the file)."""
    head = getattr(model, "lm_head", None)
    if head is None:
        return True
    hw, ew = getattr(head, "weight", None), getattr(model.get_input_embeddings(), "weight", None)
    if hw is None or ew is None:
        return hw is None
    return hw is ew or (hw.shape == ew.shape and hw.data_ptr() == ew.data_ptr())


def _torch():
    import torch

    return torch


def _linear(parent: Any, attr: str, what: str) -> Any:
    torch = _torch()
    module = getattr(parent, attr, None)
    if not isinstance(module, torch.nn.Linear):
        raise RidgelineError(f"{what} is {type(module).__name__}, not a plain nn.Linear (a quantized model?); "
                             "export the float model and let the export quantize it")
    _float(module.weight, what + ".weight")
    return module


def _weight(module: Any, what: str) -> Any:
    return _float(getattr(module, "weight", None), what + ".weight")


def _float(t: Any, what: str) -> Any:
    torch = _torch()
    plain = (torch.Tensor, torch.nn.Parameter)
    if not isinstance(t, torch.Tensor) or type(t) not in plain or not t.is_floating_point():
        raise RidgelineError(f"{what} is {type_name(t)}, not a plain floating-point tensor (a quantized model?); "
                             "export the float model")
    return t


def _getter(tensor: Any, transform: Callable[[Any], Any] | None) -> Callable[[], Any]:
    def get():
        t = tensor.detach()
        return transform(t) if transform is not None else t
    return get


def _rope(config: Any) -> tuple[float | None, dict[str, Any] | None]:
    """(rope theta, rope scaling dict or None) from transformers 5 `rope_parameters` or 4.x fields."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params:
        if "full_attention" in params and isinstance(params["full_attention"], dict):
            params = params["full_attention"]
        theta = params.get("rope_theta", getattr(config, "rope_theta", None))
        kind = params.get("rope_type", params.get("type", "default"))
        return theta, (None if kind in (None, "default") else {**params, "rope_type": kind})
    theta = getattr(config, "rope_theta", None)
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict) and scaling:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        return theta, (None if kind in (None, "default") else {**scaling, "rope_type": kind})
    return theta, None


def _rope_freqs(config: Any, head_dim: int) -> Any:
    """llama3-style rope scaling as llama.cpp's per-frequency factor tensor (`rope_freqs.weight`), else None."""
    torch = _torch()
    theta, scaling = _rope(config)
    if scaling is None or scaling["rope_type"] != "llama3":
        return None
    base = float(theta if theta is not None else 10000.0)
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings")
                    or getattr(config, "original_max_position_embeddings", None) or 8192)
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:  # llama.cpp divides theta by the factor: the inverse of the smoothed frequency multiplier
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


def add_arch_kv(writer: Any, model: Any, arch: str, kind: str) -> None:
    """The architecture's metadata (sizes, heads, rope, eps, vocabulary, file type) into a GGUFWriter."""
    import gguf

    config = model.config
    n_head, n_kv, head_dim = _heads(config)
    source = getattr(model, "ridgeline_source", None)
    name = getattr(source, "name", None) or Path(str(getattr(config, "name_or_path", "") or "model")).name
    writer.add_type("model")
    if name:
        writer.add_name(str(name))
    writer.add_block_count(int(config.num_hidden_layers))
    ctx_len = getattr(config, "max_position_embeddings", None)
    if ctx_len is not None:
        writer.add_context_length(int(ctx_len))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    theta, scaling = _rope(config)
    if theta is not None:
        writer.add_rope_freq_base(float(theta))
    if scaling is not None:
        rope_type = scaling["rope_type"]
        if rope_type == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(scaling["factor"]))
        elif rope_type == "yarn":
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(float(scaling["factor"]))
            orig = scaling.get("original_max_position_embeddings")
            if orig is not None:
                writer.add_rope_scaling_orig_ctx_len(int(orig))
        elif rope_type != "llama3":  # llama3 is the rope_freqs tensor
            raise RidgelineError(f"rope scaling {rope_type!r} has no llama.cpp equivalent here (supported: linear, "
                                 "yarn, llama3); cannot export")
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(input_embedding(model).weight.shape[0]))
    writer.add_file_type(int(getattr(gguf.LlamaFileType, EXPORT_TYPES[kind])))


def _check_codec(ggml_type: str) -> None:
    try:
        from ridgeline.quant import ggml  # noqa: F401
    except ImportError as exc:
        raise RidgelineError(f"the ggml block codec (ridgeline.quant.ggml) is not available: {exc}") from None
