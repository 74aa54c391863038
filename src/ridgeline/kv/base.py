"""What every quantized KV cache shares: model dimensions, a little-endian bit stream, the transformers
Cache plumbing (`QuantizedKVLayer` holds named state tensors; `QuantizedKVCache` counts their bytes).

Bit packing: code i of width b sits at stream bits [i*b, (i+1)*b), stream bit t is bit t % 8 of byte t // 8
(the byte order `ridgeline.quant.mx` uses), so KIVI's codes and Harmonia's BFP codes pack alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ridgeline.errors import RidgelineError
from ridgeline.specs import attention_dims


def positive_int(name: str, value: Any, what: str) -> int:
    """`value` if it is an integer >= 1, else a RidgelineError naming `what` and `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RidgelineError(f"{what} {name} must be a positive integer, got {value!r}")
    return value


def _offsets(n: int, bits: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte index and bit shift of each of `n` codes in the stream."""
    offs = torch.arange(n, device=device) * bits
    return offs // 8, (offs % 8).to(torch.int32)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes [..., n] of `bits` (1-16) bits into uint8 [..., n*bits/8], a little-endian bit stream."""
    n = codes.shape[-1]
    if n * bits % 8:
        raise RidgelineError(f"cannot pack {n} codes of {bits} bits into whole bytes")
    c = codes.to(torch.int32)
    if 8 % bits == 0:  # whole codes per byte: shift and add
        per = 8 // bits
        shifts = torch.arange(0, 8, bits, dtype=torch.int32, device=c.device)
        return (c.reshape(*c.shape[:-1], n // per, per) << shifts).sum(-1).to(torch.uint8)
    # a code spans at most 3 bytes (shift <= 7, bits <= 16); the pieces never overlap, so adding is OR-ing
    idx, shift = _offsets(n, bits, c.device)
    word = c << shift
    out = torch.zeros(*c.shape[:-1], n * bits // 8 + 2, dtype=torch.int32, device=c.device)
    for k in range(3):
        out.index_add_(-1, idx + k, (word >> (8 * k)) & 0xFF)
    return out[..., :-2].to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_bits`: uint8 [..., n*bits/8] -> int32 codes [..., n]."""
    p = packed.to(torch.int32)
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, dtype=torch.int32, device=p.device)
        return ((p[..., None] >> shifts) & mask).reshape(*p.shape[:-1], n)
    idx, shift = _offsets(n, bits, p.device)
    p = torch.nn.functional.pad(p, (0, 2))
    word = p.index_select(-1, idx) | (p.index_select(-1, idx + 1) << 8) | (p.index_select(-1, idx + 2) << 16)
    return (word >> shift) & mask


@dataclass(frozen=True)
class KVDims:
    """What a KV cache needs from a model: decoder layers, KV heads, head_dim."""

    layers: int
    kv_heads: int
    head_dim: int


def kv_dims(model_or_config: Any) -> KVDims:
    """KV dimensions of a transformers model or config; only all-full-attention decoders are supported."""
    cfg = getattr(model_or_config, "config", model_or_config)
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config(decoder=True)
    try:
        dims = attention_dims(cfg)
    except (AttributeError, TypeError):
        raise RidgelineError("a quantized KV cache needs a transformers causal LM or its config (with num_hidden_"
                             f"layers, num_attention_heads, hidden_size), got {type(cfg).__name__}") from None
    types = getattr(cfg, "layer_types", None) or []
    if getattr(cfg, "sliding_window", None) is not None or any(t != "full_attention" for t in types):
        raise RidgelineError("quantized KV caches support full-attention layers only; this model has "
                             "sliding-window or other attention layers")
    return KVDims(dims.n_layers, dims.n_kv_heads, dims.head_dim)


class QuantizedKVLayer(CacheLayerMixin):
    """One layer of a quantized KV cache: its state is the tensors named in `_STATE` (beside `length`)."""

    _STATE: tuple[str, ...] = ()
    is_sliding = False

    def __init__(self) -> None:
        super().__init__()
        self.length = 0
        for name in self._STATE:
            setattr(self, name, None)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Record dtype/device and create empty state tensors shaped for `key_states` [B, kv_heads, T, D]."""
        self.dtype, self.device = key_states.dtype, key_states.device
        self._init_state(*key_states.shape[:2], key_states.shape[-1])
        self.is_initialized = True

    def _init_state(self, batch: int, heads: int, head_dim: int) -> None:
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state tensors, by name (empty before the first update)."""
        if not self.is_initialized:
            return {}
        return {name: getattr(self, name) for name in self._STATE}

    def memory_bytes(self) -> int:
        """Bytes of storage the state tensors hold (views never outlive an update, so this is the memory)."""
        return sum(t.untyped_storage().nbytes() for t in self.tensors().values())

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for name, t in self.tensors().items():
            setattr(self, name, fn(t))

    def get_seq_length(self) -> int:
        """Tokens seen so far."""
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """(kv_length, kv_offset) of the attention mask: every stored token plus the query."""
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        """No maximum length (-1)."""
        return -1

    def reset(self) -> None:
        """Drop everything stored; the next update re-creates the state for whatever shapes it brings."""
        self.__init__(*self._init_args())

    def _init_args(self) -> tuple:
        return ()

    def offload(self) -> None:
        """Move the state to CPU."""
        self._apply(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        """Move the state back to the layer's device."""
        self._apply(lambda t: t.to(self.device, non_blocking=True))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the batch (beam search); exact, since every group lies inside one batch row."""
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every batch row `repeats` times."""
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the batch rows `indices`."""
        self._apply(lambda t: t[indices])

    def crop(self, tokens_to_remove: int) -> None:
        """Not supported (except 0): quantized tokens cannot be un-quantized back into the residual window."""
        if tokens_to_remove == 0:
            return
        raise RidgelineError("a quantized KV cache cannot be cropped (assisted/speculative decoding needs a "
                             "DynamicCache)")


class QuantizedKVCache(Cache):
    """A Cache of `QuantizedKVLayer`s that can say how many bytes it holds."""

    def __init__(self, dims: KVDims, layers: list[QuantizedKVLayer]) -> None:
        self.dims = dims
        super().__init__(layers=layers)

    def memory_bytes(self) -> int:
        """Bytes held by all layers' state tensors (codes, scales, exponents, full-precision windows)."""
        return sum(layer.memory_bytes() for layer in self.layers)

    def bits_per_element(self) -> float:
        """Stored bits per K/V element so far (16 for an fp16 cache; NaN while empty)."""
        state = self.layers[0].tensors()
        batch = next(iter(state.values())).shape[0] if state else 0
        d = self.dims
        elements = 2 * d.layers * batch * d.kv_heads * d.head_dim * self.get_seq_length()
        return 8 * self.memory_bytes() / elements if elements else float("nan")
