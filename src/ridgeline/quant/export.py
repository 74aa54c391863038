"""Export a transformers causal LM (llama, mistral, qwen2) to a GGUF file that llama.cpp loads and runs.

This module writes the file; `gguf_plan.py` says what goes in it (metadata and tensors) and
`gguf_tokenizer.py` builds or copies the tokenizer metadata.

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

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ridgeline.errors import RidgelineError
from ridgeline.quant.gguf_plan import (EXPORT_TYPES, SUPPORTED_ARCHITECTURES, add_arch_kv, encode_tensor, export_type,
                                       gguf_tensor_plan, input_embedding, llama_cpp_arch)
from ridgeline.quant.gguf_tokenizer import gguf_tokenizer_kv, hf_tokenizer_kv

__all__ = ["EXPORT_TYPES", "SUPPORTED_ARCHITECTURES", "ExportResult", "export_gguf", "export_plan_check"]


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


def export_plan_check(type: str, spec: Any) -> None:
    """Before any model loads: the export type is known and the architecture (a ModelSpec, None for a hub id)
    is one llama.cpp runs."""
    export_type(type)
    if spec is not None and spec.model_type not in SUPPORTED_ARCHITECTURES:
        raise RidgelineError(f"GGUF export supports the {', '.join(SUPPORTED_ARCHITECTURES)} model types, "
                             f"not {spec.model_type!r}")


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
    kind = export_type(type)
    out = Path(out).expanduser()
    if out.is_dir():
        raise RidgelineError(f"output {out} is a folder; pass a file path such as {out / 'model.gguf'}")
    if not out.parent.is_dir():
        raise RidgelineError(f"the output folder {out.parent} does not exist; create it first")
    if source_gguf is not None and not Path(source_gguf).is_file():
        raise RidgelineError(f"source GGUF {source_gguf} does not exist")

    config = model.config
    arch = llama_cpp_arch(config)
    plan = gguf_tensor_plan(model, kind)
    n_vocab = input_embedding(model).weight.shape[0]
    tokenizer_kv = (gguf_tokenizer_kv(Path(source_gguf), n_vocab) if source_gguf is not None
                    else hf_tokenizer_kv(tokenizer, config, n_vocab))

    from ridgeline.io import atomic_path

    total = len(plan)
    counts: dict[str, int] = {}
    type_bytes: dict[str, int] = {}
    parameters = 0
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        try:
            add_arch_kv(writer, model, arch, kind)
            for key, value, vtype, sub_type in tokenizer_kv:
                sub = None if sub_type is None else gguf.GGUFValueType(sub_type)
                writer.add_key_value(key, value, gguf.GGUFValueType(vtype), sub)
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
