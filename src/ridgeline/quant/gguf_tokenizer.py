"""Tokenizer metadata for a GGUF file: copied from the model's source GGUF, or built from a Hugging Face
byte-level BPE tokenizer as llama.cpp's `convert_hf_to_gguf.py` (`_set_vocab_gpt2`) builds it.

llama.cpp picks its pre-tokenizer by name (`tokenizer.ggml.pre`); convert_hf_to_gguf finds the name from a
hash of the token ids of a fixed check text, and so does `hf_tokenizer_kv`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ridgeline.errors import RidgelineError
from ridgeline.specs import read_gguf_kv

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


def hf_tokenizer_kv(tokenizer: Any, config: Any, n_vocab: int | None = None) -> list[tuple[str, Any, Any, Any]]:
    """`tokenizer.*` metadata of a Hugging Face byte-level BPE tokenizer as (key, value, GGUF type, sub type).

    As convert_hf_to_gguf's `_set_vocab_gpt2`: tokens 0..n_vocab-1 (ids the tokenizer lacks become
    `[PAD<id>]`, UNUSED), token types (CONTROL for special added tokens, USER_DEFINED for other added
    ones, NORMAL), merges, the pre-tokenizer name, special token ids, add_bos/add_eos and the chat template.
    """
    from gguf import GGUFValueType, TokenType

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise RidgelineError(f"tokenizer {type(tokenizer).__name__} is not a fast (tokenizers) tokenizer; only "
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


def gguf_tokenizer_kv(path: Path, n_vocab: int) -> list[tuple[str, Any, Any, Any]]:
    """Every `tokenizer.*` key of a GGUF file, values and types as stored (strings as raw bytes)."""
    kv = [item for item in read_gguf_kv(path) if item[0].startswith("tokenizer.")]
    tokens = next((v for k, v, _, _ in kv if k == "tokenizer.ggml.tokens"), None)
    if tokens is None:
        raise RidgelineError(f"source GGUF {path} has no tokenizer.ggml.tokens; cannot copy its tokenizer")
    if len(tokens) != n_vocab:
        raise RidgelineError(f"source GGUF {path} has {len(tokens)} tokens but the model has {n_vocab} "
                             "embeddings; is it the GGUF this model was loaded from?")
    return [item for item in kv if not (item[2] == 9 and not item[1])]  # empty arrays cannot be written


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
