"""Export a transformers causal LM (llama, mistral, qwen2) to a GGUF file that llama.cpp loads and runs.

What the file holds, re-derived from llama.cpp's `convert_hf_to_gguf.py` (LlamaModel / Qwen2Model) and
`gguf-py`:

* arch metadata: context length, embedding length, block count, feed-forward length, head counts,
  key/value length, rope dimension count, rope freq base, rope scaling (linear, yarn; llama3-style
  scaling as the `rope_freqs.weight` factor tensor), rms eps, vocab size, file type;
* tensors named as llama.cpp names them (`token_embd`, `blk.N.attn_norm|attn_q|attn_k|attn_v|attn_output|
  ffn_norm|ffn_gate|ffn_up|ffn_down`, `output_norm`, `output`; no `output` when the embeddings are tied;
  q/k/v (and o) biases when the model has them);
* for the llama architecture (llama, mistral) the rows of Q and K are permuted: Hugging Face rotates
  pairs (i, i + d/2) of each head (`rotate_half`), llama.cpp's "normal" rope rotates adjacent pairs
  (2i, 2i + 1). Row i of the first half of a head goes to row 2i, row i of the second half to 2i + 1.
  qwen2 runs llama.cpp's NeoX rope, which pairs like Hugging Face: not permuted;
* tensor types: `ridgeline.specs.recipes.tensor_type` per tensor, i.e. what `llama-quantize <type>` would
  choose (1-D tensors and norms F32; for the K mixtures the output/attn_v/ffn_down rules and the
  row-length fallbacks). Quantized tensors are the bytes of `ridgeline.quant.ggml.encode`;
* tokenizer metadata: copied key by key (types kept) from `source_gguf` when given, else built from the
  Hugging Face tokenizer for byte-level BPE ("gpt2") tokenizers, with llama.cpp's pre-tokenizer name
  found the way convert_hf_to_gguf finds it (a hash of the token ids of a fixed check text).

The file is written to a temporary file beside the target and renamed into place, tensor by tensor
(header, metadata and tensor infos first, then each tensor converted and written in turn), so memory
stays about one tensor above the model and an interrupted export leaves nothing behind.

Mistral's sliding window is not written (llama.cpp's llama graph has none, as with convert_hf_to_gguf):
outputs differ from transformers only past the window.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ridgeline.errors import RidgelineError

__all__ = ["EXPORT_TYPES", "SUPPORTED_ARCHITECTURES", "ExportResult", "export_gguf", "gguf_tensor_plan",
           "permute_qk", "read_gguf_kv", "unpermute_qk"]

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

# llama.cpp's BPE pre-tokenizer check text and the hashes convert_hf_to_gguf.py maps to a
# `tokenizer.ggml.pre` name (sha256 of str(tokenizer.encode(_CHKTXT))), for tokenizers of models
# that use the llama and qwen2 architectures (llama.cpp knows these names).
_CHKTXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
           "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
           "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE "
           "you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL")
_PRE_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2 / Qwen2.5
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff": "refact",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",
    "d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec": "seed-coder",
}

Progress = Callable[[int, int], None]  # (tensors written, total)


@dataclass(frozen=True)
class ExportResult:
    """What was written: file, export type, tensor count, sizes, bits per weight, tensors per ggml type."""

    path: Path
    type: str
    tensors: int
    bytes: int  # size of the file
    tensor_bytes: int  # bytes of tensor data (what bits_per_weight counts)
    parameters: int  # elements of all tensors
    bits_per_weight: float  # tensor_bytes * 8 / parameters, as llama.cpp reports it
    type_counts: dict[str, int] = field(default_factory=dict)  # ggml type ("q4_k", "f32", ...) -> tensors
    type_bytes: dict[str, int] = field(default_factory=dict)  # ggml type -> tensor bytes
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain values for records and tables."""
        return {"path": str(self.path), "type": self.type, "tensors": self.tensors, "bytes": self.bytes,
                "tensor_bytes": self.tensor_bytes, "parameters": self.parameters,
                "bits_per_weight": self.bits_per_weight, "type_counts": dict(self.type_counts),
                "type_bytes": dict(self.type_bytes), "seconds": self.seconds}


@dataclass(frozen=True)
class _Planned:
    """One tensor of the file: GGUF name, torch shape, ggml type, and how to get its float data."""

    name: str
    shape: tuple[int, ...]
    ggml_type: str
    get: Callable[[], Any]  # -> float torch tensor in GGUF row order (permuted already)


# --------------------------------------------------------------------------------------------- public API

def export_gguf(model: Any, tokenizer: Any, out: str | Path, type: str = "f16", *,
                source_gguf: Path | None = None, progress: Progress | None = None) -> ExportResult:
    """Write `model` (a transformers llama / mistral / qwen2 causal LM) as a GGUF file llama.cpp can run.

    `type` is an llama-quantize type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_m, q4_k_s, q5_k_m,
    q5_k_s or q6_k; every tensor gets the ggml type `ridgeline.specs.recipes.tensor_type` gives it.
    `source_gguf`: a GGUF the model was loaded from; its `tokenizer.*` metadata is copied as is (otherwise
    it is built from `tokenizer`, byte-level BPE only). `progress(done, total)` is called after each tensor.
    """
    import gguf

    started = time.perf_counter()
    kind = _export_type(type)
    out = Path(out).expanduser()
    if out.is_dir():
        raise RidgelineError(f"output {out} is a folder; pass a file path such as {out / 'model.gguf'}")
    if not out.parent.is_dir():
        raise RidgelineError(f"the output folder {out.parent} does not exist; create it first")
    if source_gguf is not None and not Path(source_gguf).is_file():
        raise RidgelineError(f"source GGUF {source_gguf} does not exist")

    config = model.config
    arch = _arch(config)
    plan = gguf_tensor_plan(model, kind)
    n_vocab = _embedding(model).weight.shape[0]
    tokenizer_kv = (_gguf_tokenizer_kv(Path(source_gguf), n_vocab) if source_gguf is not None
                    else hf_tokenizer_kv(tokenizer, config, n_vocab))

    from ridgeline.io import atomic_path

    total = len(plan)
    counts: dict[str, int] = {}
    type_bytes: dict[str, int] = {}
    parameters = 0
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        try:
            _add_arch_kv(writer, model, arch, kind)
            for key, value, vtype, sub_type in tokenizer_kv:
                writer.add_key_value(key, value, vtype, sub_type)
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            for t in plan:
                qtype = gguf.GGMLQuantizationType[t.ggml_type.upper()]
                nbytes = _nbytes(t.shape, qtype)
                writer.add_tensor_info(t.name, _byte_shape(t.shape, qtype), _np_uint8(), nbytes, raw_dtype=qtype)
                counts[t.ggml_type] = counts.get(t.ggml_type, 0) + 1
                type_bytes[t.ggml_type] = type_bytes.get(t.ggml_type, 0) + nbytes
                parameters += math.prod(t.shape)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for done, t in enumerate(plan, 1):
                data = encode_tensor(t.get(), t.ggml_type)
                qtype = gguf.GGMLQuantizationType[t.ggml_type.upper()]
                if len(data) != _nbytes(t.shape, qtype):
                    raise RidgelineError(f"{t.name}: the {t.ggml_type} codec returned {len(data)} bytes, "
                                         f"expected {_nbytes(t.shape, qtype)}")
                writer.write_tensor_data(_as_uint8(data))
                del data
                if progress is not None:
                    progress(done, total)
        finally:
            writer.close()
        size = tmp.stat().st_size
    tensor_bytes = sum(type_bytes.values())
    return ExportResult(path=out, type=kind, tensors=total, bytes=size, tensor_bytes=tensor_bytes,
                        parameters=parameters, bits_per_weight=tensor_bytes * 8 / max(parameters, 1),
                        type_counts=dict(sorted(counts.items())), type_bytes=dict(sorted(type_bytes.items())),
                        seconds=time.perf_counter() - started)


def gguf_tensor_plan(model: Any, type: str = "f16") -> list[_Planned]:
    """The tensors `export_gguf` writes, in order: GGUF name, torch shape, ggml type, and a data getter.

    Checks everything it can before a byte is written: architecture, module kinds (plain float
    nn.Linear / nn.Embedding weights), shapes, and that each tensor's ggml type divides its rows.
    """
    import torch

    from ridgeline.quant.gguf_names import recipe_context
    from ridgeline.specs.recipes import tensor_type

    kind = _export_type(type)
    config = model.config
    arch = _arch(config)
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
    entries.append(("token_embd.weight", _weight(_embedding(model), "model.embed_tokens"), None))
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
        plan.append(_Planned(name, shape, ggml_type, _getter(tensor, transform)))
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


def hf_tokenizer_kv(tokenizer: Any, config: Any, n_vocab: int | None = None) -> list[tuple[str, Any, Any, Any]]:
    """`tokenizer.*` metadata of a Hugging Face byte-level BPE tokenizer as (key, value, GGUF type, sub type).

    As convert_hf_to_gguf's `_set_vocab_gpt2`: tokens 0..n_vocab-1 (ids the tokenizer lacks become
    `[PAD<id>]`, UNUSED), token types (CONTROL for special added tokens, USER_DEFINED for other added
    ones, NORMAL), merges, the pre-tokenizer name, special token ids, add_bos/add_eos and the chat template.
    """
    from gguf import GGUFValueType, TokenType

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise RidgelineError(f"tokenizer {type_name(tokenizer)} is not a fast (tokenizers) tokenizer; only "
                             "byte-level BPE tokenizers convert to GGUF here: pass source_gguf= a GGUF of the model")
    spec = json.loads(backend.to_str())
    model_spec = spec.get("model") or {}
    if model_spec.get("type") != "BPE" or not _has_byte_level(spec.get("pre_tokenizer")):
        what = model_spec.get("type", "unknown")
        if model_spec.get("byte_fallback"):
            what += " with byte fallback (SentencePiece style)"
        raise RidgelineError(f"cannot convert a {what} tokenizer to GGUF: only byte-level BPE ('gpt2') tokenizers "
                             "are supported; pass source_gguf= a GGUF of the same model to copy its tokenizer")
    vocab = tokenizer.get_vocab()
    n_vocab = int(n_vocab if n_vocab is not None else getattr(config, "vocab_size", None) or len(vocab))
    if vocab and max(vocab.values()) >= n_vocab:
        raise RidgelineError(f"tokenizer has token id {max(vocab.values())}, beyond the model's {n_vocab} embeddings")

    digest = hashlib.sha256(str(tokenizer.encode(_CHKTXT)).encode()).hexdigest()
    pre = _PRE_HASHES.get(digest)
    if pre is None:
        raise RidgelineError(f"llama.cpp's pre-tokenizer for this tokenizer is not known (check hash {digest[:16]}...); "
                             "pass source_gguf= a GGUF of the same model to copy its tokenizer")

    reverse = {i: tok for tok, i in vocab.items()}
    added = tokenizer.get_added_vocab()
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        tok = reverse.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
            continue
        if tok in added:
            info = decoder.get(i)
            if info is not None and not getattr(info, "normalized", True):
                tok = tokenizer.decode(tokenizer.encode(tok, add_special_tokens=False))
            if (info is not None and getattr(info, "special", False)) or _looks_special(tok):
                types.append(int(TokenType.CONTROL))
            else:
                tok = tok.replace("\u2581", " ")
                types.append(int(TokenType.USER_DEFINED))
        else:
            types.append(int(TokenType.NORMAL))
        tokens.append(tok)

    merges = [m if isinstance(m, str) else " ".join(m) for m in model_spec.get("merges") or []]
    S, A = GGUFValueType.STRING, GGUFValueType.ARRAY
    kv: list[tuple[str, Any, Any, Any]] = [
        ("tokenizer.ggml.model", "gpt2", S, None),
        ("tokenizer.ggml.pre", pre, S, None),
        ("tokenizer.ggml.tokens", tokens, A, S),
        ("tokenizer.ggml.token_type", types, A, GGUFValueType.INT32),
    ]
    if merges:
        kv.append(("tokenizer.ggml.merges", merges, A, S))
    for key, attr in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unknown", "unk_token_id"),
                      ("padding", "pad_token_id")):
        value = getattr(tokenizer, attr, None)
        if value is None and key != "unknown":
            value = getattr(config, attr, None)
            value = value[0] if isinstance(value, (list, tuple)) and value else value
        if isinstance(value, int) and 0 <= value < n_vocab:
            kv.append((f"tokenizer.ggml.{key}_token_id", int(value), GGUFValueType.UINT32, None))
    add_bos, add_eos = _adds_special(tokenizer)
    kv.append(("tokenizer.ggml.add_bos_token", add_bos, GGUFValueType.BOOL, None))
    kv.append(("tokenizer.ggml.add_eos_token", add_eos, GGUFValueType.BOOL, None))
    prefix = _byte_level_prefix_space(spec.get("pre_tokenizer"))
    if prefix is not None:
        kv.append(("tokenizer.ggml.add_space_prefix", prefix, GGUFValueType.BOOL, None))
    template = getattr(tokenizer, "chat_template", None)
    templates = template if isinstance(template, dict) else {"default": template}
    for name, text in templates.items():
        if isinstance(text, str) and text:
            key = "tokenizer.chat_template" if name == "default" else f"tokenizer.chat_template.{name}"
            kv.append((key, text, S, None))
    return kv


def type_name(x: Any) -> str:
    """A short description of what `x` is, for messages."""
    dtype = getattr(x, "dtype", None)
    return f"{type(x).__name__}" + (f" ({dtype})" if dtype is not None else "")


# --------------------------------------------------------------------------------------------- helpers

def _export_type(type: Any) -> str:
    key = type.strip().lower() if isinstance(type, str) else ""
    key = _ALIASES.get(key, key)
    if key not in EXPORT_TYPES:
        raise RidgelineError(f"unknown GGUF export type {type!r}; expected one of {', '.join(EXPORT_TYPES)}")
    return key


def _arch(config: Any) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise RidgelineError(f"GGUF export supports the {', '.join(SUPPORTED_ARCHITECTURES)} model types, "
                             f"not {model_type!r}")
    if getattr(config, "use_sliding_window", False):
        raise RidgelineError("qwen2 with use_sliding_window=True has no llama.cpp equivalent; cannot export")
    return SUPPORTED_ARCHITECTURES[model_type]


def _heads(config: Any) -> tuple[int, int, int]:
    n_head = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    return n_head, n_kv, int(head_dim)


def _embedding(model: Any) -> Any:
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


def _add_arch_kv(writer: Any, model: Any, arch: str, kind: str) -> None:
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
    writer.add_vocab_size(int(_embedding(model).weight.shape[0]))
    writer.add_file_type(int(getattr(gguf.LlamaFileType, EXPORT_TYPES[kind])))


def _gguf_tokenizer_kv(path: Path, n_vocab: int) -> list[tuple[str, Any, Any, Any]]:
    """Every `tokenizer.*` key of a GGUF file, values and types as stored (strings as raw bytes)."""
    kv = [item for item in read_gguf_kv(path) if item[0].startswith("tokenizer.")]
    tokens = next((v for k, v, _, _ in kv if k == "tokenizer.ggml.tokens"), None)
    if tokens is None:
        raise RidgelineError(f"source GGUF {path} has no tokenizer.ggml.tokens; cannot copy its tokenizer")
    if len(tokens) != n_vocab:
        raise RidgelineError(f"source GGUF {path} has {len(tokens)} tokens but the model has {n_vocab} "
                             "embeddings; is it the GGUF this model was loaded from?")
    return [item for item in kv if not (item[2] == 9 and not item[1])]  # empty arrays cannot be written


def read_gguf_kv(path: str | Path) -> list[tuple[str, Any, Any, Any]]:
    """The metadata of a GGUF file as (key, value, GGUFValueType, array item type or None), in file order.

    Strings come back as raw bytes. The same values `gguf.GGUFReader(path).fields` holds, read with plain
    `struct` from the header only: GGUFReader memory-maps the file and slices it per item, which takes
    seconds for a 50k-token vocabulary.
    """
    from gguf import GGUFValueType as T

    path = Path(path)
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise RidgelineError(f"cannot read GGUF {path}: {exc}") from None
    with fh:
        r = _HeaderReader(fh, path)
        if r.raw(4) != b"GGUF":
            raise RidgelineError(f"{path} is not a GGUF file")
        version = r.take("I")
        if version not in (2, 3):
            raise RidgelineError(f"{path}: GGUF version {version} is not supported (2 or 3, little-endian)")
        r.take("Q")  # tensor count
        out = []
        for _ in range(r.take("Q")):
            try:
                key = r.string().decode("utf-8")
                vtype = T(r.take("I"))
                if vtype == T.ARRAY:
                    sub = T(r.take("I"))
                    count = r.take("Q")
                    if sub == T.ARRAY:
                        raise RidgelineError(f"{path}: key {key} is a nested array; not supported")
                    items = [r.string() for _ in range(count)] if sub == T.STRING else r.array(sub, count)
                    out.append((key, items, vtype, sub))
                else:
                    out.append((key, r.string() if vtype == T.STRING else r.take(_SCALAR[vtype]), vtype, None))
            except (ValueError, KeyError, UnicodeDecodeError) as exc:
                raise RidgelineError(f"{path}: malformed GGUF metadata ({exc})") from None
        return out


#: GGUFValueType number -> struct format of a scalar
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class _HeaderReader:
    """Little-endian reads from the start of a file, in growing chunks (the metadata precedes the tensors)."""

    def __init__(self, fh: Any, path: Path) -> None:
        self.fh, self.path, self.buf, self.pos = fh, path, bytearray(), 0

    def raw(self, n: int) -> bytes:
        while len(self.buf) < self.pos + n:
            chunk = self.fh.read(max(n, len(self.buf), 1 << 20))
            if not chunk:
                raise RidgelineError(f"{self.path}: truncated GGUF metadata")
            self.buf.extend(chunk)
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos])

    def take(self, fmt: str) -> Any:
        import struct

        return struct.unpack("<" + fmt, self.raw(struct.calcsize("<" + fmt)))[0]

    def array(self, vtype: Any, count: int) -> list:
        import struct

        fmt = f"<{count}{_SCALAR[int(vtype)]}"
        return list(struct.unpack(fmt, self.raw(struct.calcsize(fmt))))

    def string(self) -> bytes:
        return self.raw(self.take("Q"))


def _has_byte_level(pre: Any) -> bool:
    return any(p.get("type") == "ByteLevel" for p in _flatten_pre(pre))


def _byte_level_prefix_space(pre: Any) -> bool | None:
    for p in _flatten_pre(pre):
        if p.get("type") == "ByteLevel":
            return bool(p.get("add_prefix_space", False))
    return None


def _flatten_pre(pre: Any) -> Iterator[dict[str, Any]]:
    if isinstance(pre, dict):
        yield pre
        for p in pre.get("pretokenizers") or []:
            yield from _flatten_pre(p)


def _looks_special(tok: str) -> bool:
    """convert_hf_to_gguf's does_token_look_special."""
    return (tok in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (tok.startswith("<|") and tok.endswith("|>"))
            or (tok.startswith("<｜") and tok.endswith("｜>")) or (tok.startswith("<unused") and tok.endswith(">")))


def _adds_special(tokenizer: Any) -> tuple[bool, bool]:
    """Whether encoding adds BOS in front / EOS at the end (what the tokenizer actually does)."""
    with_special = list(tokenizer.encode("a b", add_special_tokens=True))
    without = list(tokenizer.encode("a b", add_special_tokens=False))
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    add_bos = bos is not None and len(with_special) > len(without) and with_special[0] == bos \
        and (not without or without[0] != bos)
    add_eos = eos is not None and len(with_special) > len(without) and with_special[-1] == eos \
        and (not without or without[-1] != eos)
    return bool(add_bos), bool(add_eos)


def _check_codec(ggml_type: str) -> None:
    try:
        from ridgeline.quant import ggml  # noqa: F401
    except ImportError as exc:
        raise RidgelineError(f"the ggml block codec (ridgeline.quant.ggml) is not available: {exc}") from None


def _nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    from gguf.constants import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    cols = shape[-1]
    if cols % block:
        raise RidgelineError(f"row length {cols} is not a multiple of the {qtype.name} block ({block})")
    return math.prod(shape[:-1]) * (cols // block) * size


def _byte_shape(shape: tuple[int, ...], qtype: Any) -> tuple[int, ...]:
    from gguf.constants import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    return (*shape[:-1], shape[-1] // block * size)


def _np_uint8():
    import numpy as np

    return np.dtype(np.uint8)


def _as_uint8(data: bytes):
    import numpy as np

    return np.frombuffer(data, dtype=np.uint8)
