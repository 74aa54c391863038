"""`NativeCausalLM`: a llama/mistral/qwen2 decoder run by the native kernels, one C++ call per step.

The same interface and numerics conventions as `ridgeline.measure.lean.LeanCausalLM` — `reset()`,
`prefill(ids) -> logits`, `decode(token) -> logits`, `length` — plus `forward(tokens, positions,
visibility)` for up to 16 tokens with an arbitrary [M, length + M] visibility (tree verification) and
`compact(keep)` (keep given cache slots, moved contiguous), and the speculative decoders' `Verifier` interface
(`ridgeline.engine.speculative`): `hidden` (the post-norm hidden states behind the last logits), `verify(tokens,
positions, visibility [M, M])`, `keep(indices)` and `crop(n)`. Support checks are lean's: the same model
types, rope from the model's own `rotary_emb` (every static rope_scaling variant), fused q/k/v and
gate/up, qwen2's q/k/v biases, tied heads; anything else raises RidgelineError with one line.

What runs where:
* one `forward` call = every layer and the head in C++ (csrc/model.h): RMSNorm, q/k/v, rope, KV write,
  attention over the KV cache, o_proj + residual, gate/up + silu·mul, down_proj + residual, on the native
  thread pool with five phase hand-overs per layer. Python per decoded token: a few microseconds.
* prefill: chunks of up to 16 tokens, each one `forward` through the small-M kernels (each weight tile
  is loaded once per group of 4 tokens); causal within the chunk and over the cache before it.
* weights: each linear as stored — float modules in the model's dtype (or `float_format`), quantized
  modules as `quantize_` left them (see `pack`); the head in its own format or `head_format` (e.g. "q8_0",
  quantized from the model's head with ridgeline's exact codec, as llama.cpp stores it).
* numerics: fp32 models compute in fp32; bf16 models round to bf16 wherever lean holds a bf16 tensor
  (linear outputs, norms, rope, attention output, residual stream, silu·mul, logits). Logits come back
  in the model's dtype. Quantized formats use int8 activation blocks (see `linear`).
* the KV cache: fp32, bf16 or fp16 slots (`kv_dtype`, default the model's dtype), max_len slots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ridgeline.errors import RidgelineError
from ridgeline.kernels.linear import PackedLinear
from ridgeline.kernels.pack import pack_module
from ridgeline.kernels.runtime import native

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: model types the native path rebuilds (those of the lean path)
SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
_LENGTH_DEPENDENT_ROPE = {"dynamic", "longrope"}
_KV_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
#: tokens per native call (the small-M kernels' limit)
MAX_TOKENS = 16


def check_supported(model: PreTrainedModel, max_len: int) -> None:
    """Raise RidgelineError naming the first feature of `model` the native path does not reproduce.

    The same checks as ridgeline.measure.lean (kernels may not import measure), plus the native limits.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_TYPES:
        raise RidgelineError(f"native decode supports model types {', '.join(SUPPORTED_TYPES)}, not {model_type!r}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len <= 65536:
        raise RidgelineError(f"max_len must be an integer in 1..65536, got {max_len!r}")
    window = getattr(config, "sliding_window", None)
    if model_type == "qwen2":
        sliding = any(t == "sliding_attention" for t in (getattr(config, "layer_types", None) or []))
        window = window if sliding else None
    if window is not None and window < max_len:
        raise RidgelineError(f"native decode does not do sliding-window attention ({model_type} sliding_window="
                             f"{window} < max_len={max_len}); use max_len <= {window}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise RidgelineError(f"native decode supports the silu activation only, not {config.hidden_act!r}")
    inner = getattr(model, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")) \
            or not hasattr(model, "lm_head"):
        raise RidgelineError("native decode needs a transformers *ForCausalLM with model.{embed_tokens,layers,norm,"
                             "rotary_emb} and lm_head")
    rotary = inner.rotary_emb
    rope_type = getattr(rotary, "rope_type", "default")
    if not isinstance(rope_type, str):
        raise RidgelineError("native decode does not support per-layer-type rope parameters")
    if rope_type in _LENGTH_DEPENDENT_ROPE:
        params = getattr(config, "rope_parameters", None) or {}
        original = (params.get("original_max_position_embeddings") if rope_type == "longrope"
                    else getattr(rotary, "original_max_seq_len", None))
        if original is None or max_len > original:
            raise RidgelineError(f"native decode does not do {rope_type} rope scaling past the original context "
                                 f"({original} positions); use max_len <= {original}")
    dtype = inner.embed_tokens.weight.dtype
    if dtype not in (torch.float32, torch.bfloat16):
        raise RidgelineError(f"native decode runs fp32 and bf16 models, not {dtype}")
    for i, layer in enumerate(inner.layers):
        attn, mlp = layer.self_attn, layer.mlp
        if getattr(attn, "sliding_window", None) is not None and attn.sliding_window < max_len:
            raise RidgelineError(f"native decode does not do sliding-window attention (layer {i})")
        if getattr(attn.o_proj, "bias", None) is not None:
            raise RidgelineError(f"native decode does not support attention_bias (o_proj bias in layer {i})")
        if any(getattr(getattr(mlp, n), "bias", None) is not None for n in ("gate_proj", "up_proj", "down_proj")):
            raise RidgelineError(f"native decode does not support mlp_bias (layer {i})")
        qkv_bias = [getattr(p, "bias", None) is not None for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
        if any(qkv_bias) and not all(qkv_bias):
            raise RidgelineError(f"native decode needs biases on all of q, k, v or none (layer {i})")
        for name in ("q_norm", "k_norm"):
            if getattr(attn, name, None) is not None:
                raise RidgelineError(f"native decode does not support per-head {name} (layer {i})")
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if float(norm.variance_epsilon) != float(inner.norm.variance_epsilon):
                raise RidgelineError("native decode needs one rms_norm_eps for every norm")


def _rope_tables(rotary: nn.Module, max_len: int, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sign-folded sin [max_len, head_dim] in fp32, holding the model dtype's values (lean's tables)."""
    positions = torch.arange(max_len)[None]
    with torch.no_grad():
        cos, sin = rotary(torch.empty(0, dtype=dtype), position_ids=positions)
    cos, sin = cos[0].to(dtype), sin[0].to(dtype)
    if cos.shape[-1] != head_dim:
        raise RidgelineError(f"native decode does not support partial rotary ({cos.shape[-1]} of {head_dim} dims)")
    half = head_dim // 2
    sin_signed = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)
    return cos.float().contiguous(), sin_signed.float().contiguous()


def _head_module(model: PreTrainedModel, head_format: str | None) -> PackedLinear:
    head = model.lm_head
    if head_format is None or not isinstance(head, nn.Linear):
        return pack_module(head)
    if head_format in ("f32", "fp32", "bf16"):
        return pack_module(head, "f32" if head_format != "bf16" else "bf16")
    from ridgeline.kernels.linear import BLOCK_FORMATS, native_format

    fmt = native_format(head_format)
    if fmt not in BLOCK_FORMATS:
        raise RidgelineError(f"head_format must be f32, bf16 or a block format ({', '.join(BLOCK_FORMATS)})")
    from ridgeline.quant import encode  # function level: only when asked to quantize the head here

    w = head.weight.detach().float()
    return PackedLinear.from_blocks(encode(w, fmt), fmt, tuple(w.shape))


class NativeCausalLM:
    """A llama/mistral/qwen2 causal LM on the native kernels with a static KV cache (batch 1)."""

    #: the most tokens one verify (one `forward`) takes: speculative trees are capped to it
    max_verify = MAX_TOKENS
    #: torch threads for the glue around a step (argmax over the tree's logits, masks, Medusa heads): one. A torch
    #: op that enters an OpenMP parallel region leaves its workers spinning for milliseconds on the cores the
    #: native pool needs next (measured here: an argmax over [4, 49152] logits added 5 ms to a 23 ms forward)
    glue_threads = 1

    def __init__(self, model: PreTrainedModel, max_len: int, head_format: str | None = None,
                 float_format: str | None = None, kv_dtype: torch.dtype | None = None) -> None:
        """Build from `model` (see `from_hf`, which checks support first)."""
        mod = native()
        config, inner = model.config, model.model
        embed = inner.embed_tokens.weight.detach()
        self.dtype = embed.dtype
        self.max_len = max_len
        attn0 = inner.layers[0].self_attn
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = attn0.head_dim
        self.hidden_size = embed.shape[1]
        self.vocab_size = embed.shape[0]
        ffn = inner.layers[0].mlp.gate_proj.out_features
        kv_dtype = kv_dtype or self.dtype
        if kv_dtype not in _KV_DTYPES:
            raise RidgelineError(f"kv_dtype must be float32, bfloat16 or float16, got {kv_dtype}")
        self._handle = mod.model_new(len(inner.layers), self.hidden_size, ffn, self.n_heads, self.n_kv_heads,
                                     self.head_dim, self.vocab_size, max_len, float(inner.norm.variance_epsilon),
                                     float(attn0.scaling), int(self.dtype == torch.bfloat16), _KV_DTYPES[kv_dtype])
        self._keep: list[Any] = []  # everything C++ points into
        self.formats: dict[str, str] = {}
        for i, layer in enumerate(inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            for which, modules in enumerate(([attn.q_proj, attn.k_proj, attn.v_proj], [attn.o_proj],
                                             [mlp.gate_proj, mlp.up_proj], [mlp.down_proj])):
                for m in modules:
                    packed = pack_module(m, float_format)
                    self._add(i, which, packed)
            self._vector(i, 0, layer.input_layernorm.weight)
            self._vector(i, 1, layer.post_attention_layernorm.weight)
            if attn.q_proj.bias is not None:
                self._vector(i, 2, torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        self._add(-1, 4, _head_module(model, head_format))
        self._vector(-1, 3, inner.norm.weight)
        cos, sin = _rope_tables(inner.rotary_emb, max_len, self.head_dim, self.dtype)
        embed = embed.contiguous()
        self._keep += [embed, cos, sin]
        mod.model_set_tables(self._handle, embed.data_ptr(), int(self.dtype == torch.bfloat16), cos.data_ptr(),
                             sin.data_ptr())
        self.kv_bytes = int(mod.model_finalize(self._handle))
        self.weight_bytes = sum(p.stream_bytes for p in self._keep if isinstance(p, PackedLinear))
        self._tokens = np.zeros(MAX_TOKENS, dtype=np.int64)
        self._positions = np.zeros(MAX_TOKENS, dtype=np.int64)
        self._ptrs = (self._tokens.ctypes.data, self._positions.ctypes.data)
        self._forward = mod.model_forward
        self._bf16_logits = int(self.dtype == torch.bfloat16)
        self._len = 0  # mirrors the C++ cache length (every change goes through this object)
        # the post-norm hidden states of the rows the last call returned logits for (C++ writes them here)
        self._hidden = torch.zeros(MAX_TOKENS, self.hidden_size)
        self._hidden_rows = 0
        self._verified: int | None = None  # cache length before the last verify (keep's base)

    def _add(self, layer: int, which: int, packed: PackedLinear) -> None:
        self._keep.append(packed)
        self.formats[packed.fmt] = self.formats.get(packed.fmt, 0) + 1
        native().model_add_linear(self._handle, layer, which, packed.handle, _mode(packed))

    def _vector(self, layer: int, which: int, values: torch.Tensor) -> None:
        v = values.detach().float().contiguous()
        native().model_set_vector(self._handle, layer, which, v.data_ptr(), v.numel())

    @classmethod
    def from_hf(cls, model: PreTrainedModel, max_len: int, *, head_format: str | None = None,
                float_format: str | None = None, kv_dtype: torch.dtype | None = None) -> NativeCausalLM:
        """Build from a transformers llama/mistral/qwen2 *ForCausalLM (float or quantized as `quantize_` leaves
        it); RidgelineError names anything unsupported, including why native kernels are unavailable."""
        check_supported(model, max_len)
        with torch.no_grad():
            return cls(model, max_len, head_format, float_format, kv_dtype)

    @property
    def length(self) -> int:
        """Tokens in the KV cache."""
        return self._len

    def reset(self) -> None:
        """Empty the KV cache (the next prefill starts at position 0)."""
        self._len = int(native().model_length(self._handle, 0))
        self._hidden_rows, self._verified = 0, None

    def truncate(self, length: int) -> None:
        """Drop cache slots from `length` on (speculative decoding's rollback)."""
        if not 0 <= length <= self._len:
            raise RidgelineError(f"truncate takes a length in 0..{self._len}, got {length}")
        self._len = int(native().model_length(self._handle, int(length)))
        self._verified = None

    def compact(self, keep: list[int] | torch.Tensor) -> None:
        """Keep the given cache slots (ascending), moved to slots 0..len(keep)-1; the length becomes len(keep)."""
        k = torch.as_tensor(keep, dtype=torch.int64).contiguous()
        native().model_compact(self._handle, k.data_ptr(), k.numel())
        self._len = int(native().model_length(self._handle, -1))
        self._verified = None

    def _logits(self, rows: int) -> torch.Tensor:
        return torch.empty(rows, self.vocab_size, dtype=self.dtype)

    def forward(self, tokens: torch.Tensor | list[int], positions: torch.Tensor | list[int] | None = None,
                visibility: torch.Tensor | None = None) -> torch.Tensor:
        """Run M <= 16 tokens at cache slots length..length+M-1; logits [M, vocab] of every token.

        positions: rope positions (default length + i); visibility: bool [M, length + M], which cache slots
        each token attends to (default causal).
        """
        toks = torch.as_tensor(tokens, dtype=torch.int64).reshape(-1).contiguous()
        m = toks.numel()
        if not 1 <= m <= MAX_TOKENS:
            raise RidgelineError(f"forward takes 1 to {MAX_TOKENS} tokens, got {m}")
        start = self.length
        pos = (torch.arange(start, start + m) if positions is None
               else torch.as_tensor(positions, dtype=torch.int64).reshape(-1)).contiguous()
        if pos.numel() != m:
            raise RidgelineError(f"positions must have {m} entries, got {pos.numel()}")
        vis_ptr = 0
        if visibility is not None:
            vis = torch.as_tensor(visibility).to(torch.uint8).contiguous()
            if tuple(vis.shape) != (m, start + m):
                raise RidgelineError(f"visibility must be [{m}, {start + m}], got {tuple(vis.shape)}")
            vis_ptr = vis.data_ptr()
        out = self._logits(m)
        self._len = self._forward(self._handle, toks.data_ptr(), pos.data_ptr(), m, vis_ptr, out.data_ptr(), 1,
                                  self._bf16_logits, self._hidden.data_ptr())
        self._hidden_rows, self._verified = m, None
        return out

    @torch.inference_mode()
    def prefill(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Run a (1, P) prompt, continuing the cache, in chunks of 16; its last position's logits (1, vocab)."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
            raise RidgelineError(f"prefill takes input_ids of shape (1, P) with P >= 1, got {tuple(input_ids.shape)}")
        ids = input_ids[0].to(torch.int64).contiguous()
        start, n = self.length, ids.numel()
        if start + n > self.max_len:
            raise RidgelineError(f"KV cache full: {start} + {n} tokens > max_len {self.max_len}")
        out = self._logits(1)
        for c0 in range(0, n, MAX_TOKENS):
            chunk = ids[c0:c0 + MAX_TOKENS]
            m = chunk.numel()
            pos = torch.arange(start + c0, start + c0 + m)
            self._len = self._forward(self._handle, chunk.data_ptr(), pos.data_ptr(), m, 0, out.data_ptr(), 0,
                                      self._bf16_logits, self._hidden.data_ptr())
        self._hidden_rows, self._verified = 1, None
        return out

    def decode(self, token: torch.LongTensor | int) -> torch.Tensor:
        """Run one token at the next position, continuing the cache; its logits (1, vocab).

        No autograd or inference-mode context is entered: nothing here records gradients, and entering one
        costs several microseconds per token.
        """
        n = self._len
        if n >= self.max_len:
            raise RidgelineError(f"KV cache full: position {n} is past max_len {self.max_len}")
        self._tokens[0] = int(token)
        self._positions[0] = n
        out = torch.empty(1, self.vocab_size, dtype=self.dtype)
        self._len = self._forward(self._handle, self._ptrs[0], self._ptrs[1], 1, 0, out.data_ptr(), 0,
                                  self._bf16_logits, self._hidden.data_ptr())
        self._hidden_rows, self._verified = 1, None
        return out

    @property
    def hidden(self) -> torch.Tensor | None:
        """Post-norm hidden states [rows, d] (model dtype, a copy) behind the last call's logits; None before any."""
        if not self._hidden_rows:
            return None
        return self._hidden[:self._hidden_rows].to(self.dtype, copy=True)

    def verify(self, tokens: torch.Tensor, positions: torch.Tensor,
               visibility: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M <= 16 tokens after the L cached ones: every cached slot visible, the new ones as the bool [M, M]
        `visibility` says; (logits [M, V], hidden [M, d]). The length is L + M until `keep`."""
        m, start = int(tokens.numel()), self._len
        if tuple(visibility.shape) != (m, m) or visibility.dtype != torch.bool or not bool(visibility.diagonal().all()):
            raise RidgelineError(f"verify: visibility must be a bool [{m}, {m}] tensor whose diagonal is True")
        vis = torch.ones(m, start + m, dtype=torch.bool)
        vis[:, start:] = visibility
        logits = self.forward(tokens, positions, vis)
        self._verified = start
        return logits, self.hidden

    def keep(self, indices: torch.Tensor | list[int]) -> None:
        """Keep the verified tokens at L + indices[k] as L + k (indices increasing); drop the other verified ones."""
        start = self._verified
        if start is None:
            raise RidgelineError("keep follows verify: no verified tokens to keep")
        idx = [int(i) for i in torch.as_tensor(indices).reshape(-1).tolist()]
        if any(not 0 <= i < self._len - start for i in idx) or any(b <= a for a, b in zip(idx, idx[1:])):
            raise RidgelineError(f"keep: indices must be increasing and in [0, {self._len - start}), got {idx}")
        self.compact(list(range(start)) + [start + i for i in idx])
        self._verified = None

    def crop(self, n: int) -> None:
        """Forget the cached positions n and after (a draft model's rollback)."""
        self.truncate(n)


def _mode(packed: PackedLinear) -> int:
    from ridgeline.kernels.linear import ACT_MODES

    return ACT_MODES[packed.act_mode]


@torch.inference_mode()
def greedy(model: NativeCausalLM, input_ids: torch.LongTensor, n: int) -> list[int]:
    """Reset, prefill `input_ids` (1, P), then take n argmax tokens (EOS ignored); the n generated ids."""
    model.reset()
    logits = model.prefill(input_ids)
    out: list[int] = []
    for i in range(n):
        token = int(logits.argmax(-1))
        out.append(token)
        if i + 1 < n:
            logits = model.decode(token)
    return out
