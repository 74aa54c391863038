"""KIVI: tuning-free asymmetric 2/4-bit KV cache (Liu et al. 2024, arXiv 2402.02750) as a `transformers` Cache.

Format (reference/quantization.md section 10):

* Asymmetric min/max per group: ``scale = (max - min) / (2**b - 1)``, ``zero = min``,
  ``q = clamp(round((x - zero) / scale), 0, 2**b - 1)``, ``x_hat = q * scale + zero``. Scale and zero are
  stored as fp16, and the codes are computed with the fp16-rounded scale and zero, so dequantization
  reproduces exactly what was encoded. Rounding is half to even (``torch.round``).
* **Keys per channel**: a group is G consecutive *tokens* of one channel (outlier channels get their own
  range). **Values per token**: a group is G consecutive *channels* of one token.
* Codes are really packed: a little-endian bit stream in uint8 along head_dim (4 codes per byte at 2 bits,
  2 at 4 bits, 1 at 8 bits; code i sits at stream bits ``[i*b, (i+1)*b)``): the density of KIVI's 16 2-bit
  codes per int32, in the byte order `ridgeline.quant.mx` uses.

Residual-window bookkeeping, per layer (T = tokens seen so far, R the residual length):

* keys are quantized only in whole chunks of R tokens: the full-precision tail holds ``T mod R`` tokens.
  When the tail reaches R (one update may complete several chunks) the first ``floor(tail / R) * R``
  tokens are quantized, G tokens per group. So ``T - T mod R`` key tokens are quantized.
* values keep the **last** ``min(T, R)`` tokens in full precision; anything older is quantized, one token
  at a time as decoding pushes it out (per-token groups need no other token), so ``max(T - R, 0)``
  value tokens are quantized. A long prompt is quantized at prefill except this residual tail.
* ``update`` returns ``[dequantized ‖ window before the update ‖ new tokens]`` and only then compresses,
  as KIVI's reference attention does: the tokens of the current step see themselves and the window in
  full precision.

bits 8 is accepted besides KIVI's 2 and 4 as a near-lossless reference point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ridgeline.errors import RidgelineError
from ridgeline.kv.base import (QuantizedKVCache, QuantizedKVLayer, kv_dims, pack_bits, positive_int,
                               unpack_bits)

__all__ = ["KIVI_BITS", "KIVICache", "KIVIConfig", "KIVILayer", "asym_dequantize", "asym_quantize", "kivi_bytes"]

#: code widths KIVI supports (2 and 4 as in the paper; 8 as a near-lossless reference)
KIVI_BITS = (2, 4, 8)
_FP16_BYTES = 2  # scale and zero are fp16


@dataclass(frozen=True)
class KIVIConfig:
    """KIVI settings: code bits, group size G, residual (full-precision) length R, a multiple of G."""

    bits: int = 2
    group: int = 32
    residual: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in KIVI_BITS:
            raise RidgelineError(f"KIVI bits must be one of {', '.join(map(str, KIVI_BITS))}, got {self.bits!r}")
        positive_int("group", self.group, "KIVI")
        positive_int("residual", self.residual, "KIVI")
        if self.residual % self.group:
            raise RidgelineError(f"KIVI residual must be a multiple of group {self.group} (keys are quantized "
                                 f"in whole chunks of groups), got {self.residual}")

    @property
    def bits_per_element(self) -> float:
        """Bits per quantized element: the code plus its share of an fp16 scale and fp16 zero."""
        return self.bits + 8 * 2 * _FP16_BYTES / self.group

    def check_head_dim(self, head_dim: int) -> None:
        """Raise unless values can be grouped (G divides head_dim) and codes pack into whole bytes."""
        if head_dim % self.group or head_dim * self.bits % 8:
            raise RidgelineError(f"KIVI group {self.group} must divide the model's head_dim {head_dim} "
                                 "(values are grouped along head_dim); choose a group that divides it")


# ---------------------------------------------------------------------------------------------------------
# asymmetric group quantization


def _grouped(x: torch.Tensor, group: int, axis: int) -> torch.Tensor:
    """`x` with `axis` moved last and split into [..., n / group, group]."""
    xt = x.movedim(axis, -1)
    return xt.reshape(*xt.shape[:-1], xt.shape[-1] // group, group)


def _ungrouped(xg: torch.Tensor, axis: int) -> torch.Tensor:
    return xg.reshape(*xg.shape[:-2], xg.shape[-2] * xg.shape[-1]).movedim(-1, axis)


def asym_quantize(x: torch.Tensor, bits: int, group: int,
                  axis: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Min/max quantize groups of `group` along `axis` -> (uint8 codes like x, fp16 scale, fp16 zero).

    scale and zero have x's shape with `axis` shortened to n / group.
    """
    xg = _grouped(x.float(), group, axis)
    lo, hi = xg.amin(-1), xg.amax(-1)
    qmax = 2 ** bits - 1
    scale, zero = ((hi - lo) / qmax).half(), lo.half()
    s = scale.float()
    s = torch.where(s > 0, s, torch.ones_like(s))  # a constant group (or an fp16-underflowed range) codes to 0
    q = torch.round((xg - zero.float()[..., None]) / s[..., None]).clamp_(0, qmax)
    return _ungrouped(q, axis).to(torch.uint8), scale.movedim(-1, axis), zero.movedim(-1, axis)


def asym_dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int, axis: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of `asym_quantize`: codes * scale + zero per group, in `dtype`."""
    cg = _grouped(codes.float(), group, axis)
    s, z = scale.movedim(axis, -1).float(), zero.movedim(axis, -1).float()
    return _ungrouped(cg * s[..., None] + z[..., None], axis).to(dtype)


def _cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cat([a, b], dim=2)


# ---------------------------------------------------------------------------------------------------------
# KIVI


class KIVILayer(QuantizedKVLayer):
    """One layer of a KIVI cache: packed key/value codes, fp16 scales and zeros, full-precision residuals."""

    _STATE = ("key_codes", "key_scale", "key_zero", "key_fp",
              "value_codes", "value_scale", "value_zero", "value_fp")

    def __init__(self, config: KIVIConfig = KIVIConfig()) -> None:
        self.config = config
        super().__init__()

    def _init_args(self) -> tuple:
        return (self.config,)

    def _init_state(self, batch: int, heads: int, head_dim: int) -> None:
        c = self.config
        c.check_head_dim(head_dim)
        u8 = {"dtype": torch.uint8, "device": self.device}
        f16 = {"dtype": torch.float16, "device": self.device}
        nbytes = head_dim * c.bits // 8
        self.key_codes = torch.empty(batch, heads, 0, nbytes, **u8)
        self.key_scale = torch.empty(batch, heads, 0, head_dim, **f16)  # one per G tokens per channel
        self.key_zero = torch.empty_like(self.key_scale)
        self.value_codes = torch.empty(batch, heads, 0, nbytes, **u8)
        self.value_scale = torch.empty(batch, heads, 0, head_dim // c.group, **f16)  # one per G channels per token
        self.value_zero = torch.empty_like(self.value_scale)
        self.key_fp = torch.empty(batch, heads, 0, head_dim, dtype=self.dtype, device=self.device)
        self.value_fp = torch.empty_like(self.key_fp)

    def _codes(self, packed: torch.Tensor) -> torch.Tensor:
        return unpack_bits(packed, self.config.bits, packed.shape[-1] * 8 // self.config.bits)

    def dequantized_keys(self) -> torch.Tensor:
        """The quantized key tokens, dequantized to the model dtype [B, H, T_q, D]."""
        codes = self._codes(self.key_codes)
        return asym_dequantize(codes, self.key_scale, self.key_zero, self.config.group, -2, self.dtype)

    def dequantized_values(self) -> torch.Tensor:
        """The quantized value tokens, dequantized to the model dtype [B, H, T_q, D]."""
        codes = self._codes(self.value_codes)
        return asym_dequantize(codes, self.value_scale, self.value_zero, self.config.group, -1, self.dtype)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new K/V [B, kv_heads, T, D]; return all K/V to attend to (dequantized ‖ full precision)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        key_states, value_states = key_states.to(self.dtype), value_states.to(self.dtype)
        keys = torch.cat([self.dequantized_keys(), self.key_fp, key_states], dim=2)
        values = torch.cat([self.dequantized_values(), self.value_fp, value_states], dim=2)
        self.length += key_states.shape[2]
        self._store_keys(_cat(self.key_fp, key_states))
        self._store_values(_cat(self.value_fp, value_states))
        return keys, values

    def _store_keys(self, window: torch.Tensor) -> None:
        c = self.config
        n = window.shape[2] // c.residual * c.residual  # whole chunks of R tokens only
        if n:
            codes, scale, zero = asym_quantize(window[:, :, :n], c.bits, c.group, axis=-2)
            self.key_codes = _cat(self.key_codes, pack_bits(codes, c.bits))
            self.key_scale, self.key_zero = _cat(self.key_scale, scale), _cat(self.key_zero, zero)
            window = window[:, :, n:].clone()  # a view would keep the quantized tokens' storage alive
        self.key_fp = window

    def _store_values(self, window: torch.Tensor) -> None:
        c = self.config
        n = max(window.shape[2] - c.residual, 0)  # keep the last R tokens
        if n:
            codes, scale, zero = asym_quantize(window[:, :, :n], c.bits, c.group, axis=-1)
            self.value_codes = _cat(self.value_codes, pack_bits(codes, c.bits))
            self.value_scale, self.value_zero = _cat(self.value_scale, scale), _cat(self.value_zero, zero)
            window = window[:, :, n:].clone()
        self.value_fp = window


class KIVICache(QuantizedKVCache):
    """A `transformers` Cache storing every layer's K/V in KIVI format; works with `generate` and `stream_nll`."""

    def __init__(self, model_or_config: Any, config: KIVIConfig = KIVIConfig()) -> None:
        if not isinstance(config, KIVIConfig):
            raise RidgelineError(f"KIVICache expects a KIVIConfig, got {type(config).__name__}")
        dims = kv_dims(model_or_config)
        config.check_head_dim(dims.head_dim)
        self.config = config
        super().__init__(dims, [KIVILayer(config) for _ in range(dims.layers)])


def kivi_bytes(tokens: int, kv_heads: int, head_dim: int, layers: int, config: KIVIConfig,
               fp_bytes: int = 2, batch: int = 1) -> int:
    """Bytes a KIVI cache holds after `tokens` tokens (equals `KIVICache.memory_bytes()` exactly)."""
    config.check_head_dim(head_dim)
    g, r = config.group, config.residual
    code_bytes = head_dim * config.bits // 8  # per quantized token
    key_q = tokens - tokens % r
    value_q = max(tokens - r, 0)
    keys = key_q * code_bytes + (key_q // g) * head_dim * 2 * _FP16_BYTES + (tokens - key_q) * head_dim * fp_bytes
    values = (value_q * code_bytes + value_q * (head_dim // g) * 2 * _FP16_BYTES
              + (tokens - value_q) * head_dim * fp_bytes)
    return layers * batch * kv_heads * (keys + values)
