"""Harmonia-style BFP KV cache (arXiv 2602.04595) and offline key-outlier smoothing, as `transformers` pieces.

Format: BFP(group, m) as in `ridgeline.quant.mx`: a group of `group` elements shares an 8-bit exponent
``E = floor(log2 max|x|)``; each element keeps a sign and an m-bit magnitude,
``x_hat = 2**(E-(m-1)) * clamp(round(x * 2**((m-1)-E)), -(2**m - 1), 2**m - 1)``, rounding half to even.
Bytes per group: 1 exponent byte + the (1 + m)-bit sign-magnitude codes as a little-endian bit stream,
exactly `mx.encode`'s BFP layout (bfp32m4: 21 B per 32 = 5.25 bits; bfp32m8: 37 B = 9.25 bits).

Grouping: K **and** V are grouped along head_dim, per token (32 consecutive channels of one head of one
token). For K this is the paper's reading (QKᵀ reduces over head_dim). For V the paper's "incremental
V-group" suggests groups along tokens, which suits the hardware PV product; per-token groups are chosen
here so every token is encoded on arrival and can be re-encoded on its own when it leaves the recent
window. Bytes are identical either way; only which 32 elements share an exponent differs.

Asymmetric bits (tiers by absolute position p, T tokens seen): the first `n_sink` tokens (attention
sinks) and the last `n_recent` tokens are stored at `hi_mantissa` (8) bits, everything in between at
`lo_mantissa` (4). Defaults n_sink = 32, n_recent = 128: StreamingLLM needs only ~4 sink tokens, but 32 costs
a constant 32 x 4 extra bits per channel, also keeps BOS/system-prompt tokens precise, and makes every tier
boundary a multiple of 32, so the tiers stay whole groups under the token-axis V-grouping reading too;
128 matches KIVI's residual R for like-for-like comparisons.

Window bookkeeping: the cache holds three segments per tensor, sink (hi) ‖ middle (lo) ‖ recent (hi).
New tokens are encoded straight from full precision into their final tier; when recent tokens are pushed
out of the window they are re-encoded from their stored 8-bit codes (no full-precision copy is kept,
which would defeat the cache). Re-encoding decodes and encodes again, which is exact: the shared exponent
does not change (|8-bit value| < 2**(E+1)), so it equals rounding each 8-bit magnitude code right by
``hi - lo`` bits (half to even, saturating), as a hardware requantizer would. `update` stores first and
then returns the stored (dequantized) K/V, so attention always reads the BFP data, as on the accelerator.

`HarmoniaConfig.uniform(m)` (n_sink = n_recent = 0) is the uniform BFP KV cache Harmonia compares against.

Key smoothing (offline part only; the paper's online part is unverified and not implemented): per-channel
factors S fold into the weights, ``QKᵀ = (Q·S)(K/S)ᵀ``. See `smooth_keys`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ridgeline.errors import RidgelineError
from ridgeline.kv.base import QuantizedKVCache, QuantizedKVLayer, kv_dims, pack_bits, positive_int, unpack_bits
from ridgeline.quant import bfp_codes, bfp_values

__all__ = [
    "HarmoniaCache", "HarmoniaConfig", "HarmoniaLayer", "bfp_decode", "bfp_demote", "bfp_encode",
    "fold_key_scales", "harmonia_bits_per_element", "harmonia_bytes", "key_smoothing_factors", "smooth_keys",
]

_EXP_BIAS = 127  # exponent byte = E + 127, as in mx.encode
_MAX_MANTISSA = 15


def _check_mantissa(name: str, m: Any) -> None:
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= _MAX_MANTISSA:
        raise RidgelineError(f"Harmonia {name} must be an integer from 1 to {_MAX_MANTISSA}, got {m!r}")


def _check_count(name: str, n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise RidgelineError(f"Harmonia {name} must be a non-negative integer (tokens), got {n!r}")


@dataclass(frozen=True)
class HarmoniaConfig:
    """BFP KV settings: group, mantissa bits of the sink/recent tiers (hi) and of the rest (lo), tier sizes."""

    group: int = 32
    hi_mantissa: int = 8
    lo_mantissa: int = 4
    n_sink: int = 32
    n_recent: int = 128

    def __post_init__(self) -> None:
        positive_int("group", self.group, "Harmonia")
        _check_mantissa("hi_mantissa", self.hi_mantissa)
        _check_mantissa("lo_mantissa", self.lo_mantissa)
        if self.lo_mantissa > self.hi_mantissa:
            raise RidgelineError(f"Harmonia lo_mantissa ({self.lo_mantissa}) must not exceed hi_mantissa "
                                 f"({self.hi_mantissa}): tokens leaving the recent window are re-encoded down")
        for m in (self.hi_mantissa, self.lo_mantissa):
            if self.group * (1 + m) % 8:
                raise RidgelineError(f"Harmonia group {self.group} x (1 + {m}) bits is not a whole number of "
                                     "bytes; use a group that is a multiple of 8")
        _check_count("n_sink", self.n_sink)
        _check_count("n_recent", self.n_recent)

    @classmethod
    def uniform(cls, mantissa: int = 4, group: int = 32) -> HarmoniaConfig:
        """A uniform BFP(group, mantissa) KV cache: every token at the same precision (no sink/recent tiers)."""
        return cls(group=group, hi_mantissa=mantissa, lo_mantissa=mantissa, n_sink=0, n_recent=0)

    def group_bytes(self, mantissa: int) -> int:
        """Bytes of one group: the exponent byte plus `group` sign-magnitude codes of 1 + mantissa bits."""
        return 1 + self.group * (1 + mantissa) // 8

    def check_head_dim(self, head_dim: int) -> None:
        """Raise unless groups tile head_dim."""
        if head_dim % self.group:
            raise RidgelineError(f"Harmonia group {self.group} must divide the model's head_dim {head_dim} "
                                 "(K and V are grouped along head_dim); choose a group that divides it")

    def hi_tokens(self, tokens: int) -> int:
        """How many of `tokens` tokens are held at hi_mantissa (sinks plus the recent window)."""
        sink = min(tokens, self.n_sink)
        return sink + min(tokens - sink, self.n_recent)


# ---------------------------------------------------------------------------------------------------------
# BFP codec on [..., D] tensors, groups along the last axis


def bfp_encode(x: torch.Tensor, group: int, mantissa: int) -> torch.Tensor:
    """BFP-encode x [..., D] in groups along D -> uint8 [..., D/group, 1 + group*(1+m)/8] (mx.encode layout)."""
    lead, d = x.shape[:-1], x.shape[-1]
    shared, codes = bfp_codes(x.detach().float().reshape(-1, group), mantissa)  # sign-magnitude: bit m is the sign
    exp = (shared + _EXP_BIAS).to(torch.uint8)[:, None]
    packed = torch.cat([exp, pack_bits(codes, 1 + mantissa)], dim=1)
    return packed.reshape(*lead, d // group, packed.shape[-1])


def bfp_decode(packed: torch.Tensor, group: int, mantissa: int,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of `bfp_encode`: uint8 [..., D/group, bytes] -> [..., D] in `dtype` (exact in float32)."""
    lead, groups = packed.shape[:-2], packed.shape[-2]
    flat = packed.reshape(-1, packed.shape[-1])
    shared = flat[:, 0].to(torch.int64) - _EXP_BIAS
    codes = unpack_bits(flat[:, 1:], 1 + mantissa, group).to(torch.int64)
    x = bfp_values(shared, codes, mantissa)
    return x.to(dtype).reshape(*lead, groups * group)


def bfp_demote(packed: torch.Tensor, group: int, hi: int, lo: int) -> torch.Tensor:
    """Re-encode BFP(group, hi) data at `lo` mantissa bits from its codes (no full-precision copy needed)."""
    return bfp_encode(bfp_decode(packed, group, hi), group, lo)


# ---------------------------------------------------------------------------------------------------------
# the cache


class HarmoniaLayer(QuantizedKVLayer):
    """One layer of a Harmonia KV cache: per K and V, BFP segments sink (hi) ‖ middle (lo) ‖ recent (hi)."""

    _STATE = ("key_sink", "key_mid", "key_recent", "value_sink", "value_mid", "value_recent")

    def __init__(self, config: HarmoniaConfig = HarmoniaConfig()) -> None:
        self.config = config
        super().__init__()

    def _init_args(self) -> tuple:
        return (self.config,)

    def _init_state(self, batch: int, heads: int, head_dim: int) -> None:
        c = self.config
        c.check_head_dim(head_dim)
        ng = head_dim // c.group

        def empty(m: int) -> torch.Tensor:
            return torch.empty(batch, heads, 0, ng, c.group_bytes(m), dtype=torch.uint8, device=self.device)

        for name in ("key", "value"):
            setattr(self, f"{name}_sink", empty(c.hi_mantissa))
            setattr(self, f"{name}_mid", empty(c.lo_mantissa))
            setattr(self, f"{name}_recent", empty(c.hi_mantissa))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new K/V [B, kv_heads, T, D] in BFP; return every token's K/V as stored (dequantized)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.length
        self.length += key_states.shape[2]
        return self._store("key", key_states, start), self._store("value", value_states, start)

    def _store(self, name: str, x: torch.Tensor, start: int) -> torch.Tensor:
        c, g = self.config, self.config.group
        hi, lo = c.hi_mantissa, c.lo_mantissa
        sink, mid, recent = (getattr(self, f"{name}_{tier}") for tier in ("sink", "mid", "recent"))
        n_sink = min(max(c.n_sink - start, 0), x.shape[2])  # new tokens that are still sinks
        rest = x[:, :, n_sink:]
        keep = min(rest.shape[2], c.n_recent)  # new tokens that end up in the recent window
        direct = rest.shape[2] - keep  # new tokens already past the window: straight to lo
        if n_sink:
            sink = torch.cat([sink, bfp_encode(x[:, :, :n_sink], g, hi)], dim=2)
        if keep:
            recent = torch.cat([recent, bfp_encode(rest[:, :, direct:], g, hi)], dim=2)
        out = max(recent.shape[2] - c.n_recent, 0)  # oldest recent tokens pushed out of the window
        if out:
            mid = torch.cat([mid, bfp_demote(recent[:, :, :out], g, hi, lo)], dim=2)
            recent = recent[:, :, out:].clone()  # a view would keep the demoted tokens' storage alive
        if direct:
            mid = torch.cat([mid, bfp_encode(rest[:, :, :direct], g, lo)], dim=2)
        for tier, t in (("sink", sink), ("mid", mid), ("recent", recent)):
            setattr(self, f"{name}_{tier}", t)
        parts = [bfp_decode(sink, g, hi, self.dtype), bfp_decode(mid, g, lo, self.dtype),
                 bfp_decode(recent, g, hi, self.dtype)]
        return torch.cat(parts, dim=2)


class HarmoniaCache(QuantizedKVCache):
    """A `transformers` Cache holding K/V as BFP with 8-bit sink/recent tiers and 4-bit elsewhere."""

    def __init__(self, model_or_config: Any, config: HarmoniaConfig = HarmoniaConfig()) -> None:
        if not isinstance(config, HarmoniaConfig):
            raise RidgelineError(f"HarmoniaCache expects a HarmoniaConfig, got {type(config).__name__}")
        dims = kv_dims(model_or_config)
        config.check_head_dim(dims.head_dim)
        self.config = config
        super().__init__(dims, [HarmoniaLayer(config) for _ in range(dims.layers)])


def harmonia_bytes(tokens: int, kv_heads: int, head_dim: int, layers: int, config: HarmoniaConfig,
                   batch: int = 1) -> int:
    """Bytes a Harmonia cache holds after `tokens` tokens (equals `HarmoniaCache.memory_bytes()` exactly)."""
    config.check_head_dim(head_dim)
    hi = config.hi_tokens(tokens)
    per_token = (head_dim // config.group) * (hi * config.group_bytes(config.hi_mantissa)
                                               + (tokens - hi) * config.group_bytes(config.lo_mantissa))
    return 2 * layers * batch * kv_heads * per_token


def harmonia_bits_per_element(tokens: int, config: HarmoniaConfig) -> float:
    """Average stored bits per K/V element after `tokens` tokens (5.25 for 4-bit mantissa, group 32)."""
    return 8 * harmonia_bytes(tokens, 1, config.group, 1, config) / (2 * config.group * tokens)


# ---------------------------------------------------------------------------------------------------------
# offline key smoothing


def _attention_modules(model: Any) -> list[Any]:
    """The self-attention modules with separate q_proj/k_proj and full rotate_half RoPE; raise otherwise."""
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    rope = getattr(cfg, "rope_parameters", None)
    rope = rope if isinstance(rope, dict) else {}
    partial = rope.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0))
    if partial not in (None, 1.0):
        raise RidgelineError(f"smooth_keys needs RoPE on the whole head (partial_rotary_factor 1.0), "
                             f"got {partial}")
    attns = [m for m in model.modules() if all(hasattr(m, a) for a in ("q_proj", "k_proj", "head_dim"))]
    if not attns:
        raise RidgelineError("smooth_keys needs attention modules with separate q_proj and k_proj "
                             "(Llama/Mistral/Qwen2-style); this model has none")
    if any(hasattr(m, "q_norm") or hasattr(m, "k_norm") for m in attns):
        raise RidgelineError("smooth_keys cannot fold into models with q/k norms (Qwen3-style): the norm "
                             "after k_proj would undo the scaling")
    return attns


def _heads(attn: Any) -> tuple[int, int]:
    """(query heads, kv heads) of an attention module, from its projection shapes."""
    d = attn.head_dim
    return attn.q_proj.out_features // d, attn.k_proj.out_features // d


def _pair_max(t: torch.Tensor) -> torch.Tensor:
    """Max over each RoPE channel pair (i, i + D/2) of HF's rotate_half layout, written to both channels."""
    h = t.shape[-1] // 2
    m = torch.maximum(t[..., :h], t[..., h:])
    return torch.cat([m, m], dim=-1)


def key_smoothing_factors(kmax: torch.Tensor, qmax: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Per-channel factors S [kv_heads, D] = max|K|**alpha / max|Q|**(1 - alpha), equal on RoPE pairs.

    `kmax` [kv_heads, D] and `qmax` [q_heads, D] are calibration maxima (before RoPE); a KV head's Q range
    is the max over its GQA group. Pair maxima are taken first because RoPE mixes the two channels of a
    pair, and equal factors on a pair are what makes the fold commute with the rotation.
    """
    if not 0.0 <= alpha <= 1.0:
        raise RidgelineError(f"smooth_keys alpha must be in [0, 1], got {alpha}")
    kv_heads, d = kmax.shape
    qk = qmax.reshape(kv_heads, -1, d).amax(dim=1)
    k, q = _pair_max(kmax.float()).clamp(min=1e-5), _pair_max(qk.float()).clamp(min=1e-5)
    return k ** alpha / q ** (1.0 - alpha)


def _calibrate(model: Any, attns: list[Any], ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(max |K| [kv_heads, D], max |Q| [q_heads, D]) per attention module over the calibration tokens."""
    stats: list[dict[str, torch.Tensor]] = [{} for _ in attns]
    hooks = []

    def hook(i: int, kind: str, d: int):
        def fn(_module: Any, _inputs: Any, out: torch.Tensor) -> None:
            m = out.detach().abs().float().reshape(-1, out.shape[-1] // d, d).amax(dim=0)
            stats[i][kind] = torch.maximum(stats[i][kind], m) if kind in stats[i] else m
        return fn

    for i, attn in enumerate(attns):
        hooks.append(attn.k_proj.register_forward_hook(hook(i, "k", attn.head_dim)))
        hooks.append(attn.q_proj.register_forward_hook(hook(i, "q", attn.head_dim)))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return [(s["k"], s["q"]) for s in stats]


def fold_key_scales(model: Any, factors: list[torch.Tensor]) -> None:
    """Fold S into the weights in place: q_proj rows (and bias) x S, k_proj rows (and bias) / S.

    Each S [kv_heads, D] must be equal on RoPE pairs (i, i + D/2), else the fold would not commute with
    RoPE; a KV head's S scales the q_proj rows of every query head of its GQA group.
    """
    attns = _attention_modules(model)
    if len(factors) != len(attns):
        raise RidgelineError(f"fold_key_scales needs one factor tensor per attention layer ({len(attns)}), "
                             f"got {len(factors)}")
    for attn, s in zip(attns, factors, strict=True):
        q_heads, kv_heads = _heads(attn)
        if tuple(s.shape) != (kv_heads, attn.head_dim):
            raise RidgelineError(f"key smoothing factors must have shape ({kv_heads}, {attn.head_dim}), "
                                 f"got {tuple(s.shape)}")
        if not torch.equal(s, _pair_max(s)) or not bool((s > 0).all()):
            raise RidgelineError("key smoothing factors must be positive and equal on each RoPE pair "
                                 "(i, i + head_dim/2), otherwise the fold does not commute with RoPE")
        sq = s.repeat_interleave(q_heads // kv_heads, dim=0).reshape(-1)  # query head h uses kv head h // n_rep
        with torch.no_grad():
            _scale_rows(attn.q_proj, sq, divide=False)
            _scale_rows(attn.k_proj, s.reshape(-1), divide=True)


def _scale_rows(lin: torch.nn.Linear, f: torch.Tensor, divide: bool) -> None:
    """Multiply (or divide) the output rows of `lin` by `f`, in the weight's dtype (so S and 1/S match)."""
    f = f.to(lin.weight.dtype)
    for t in (lin.weight, lin.bias):
        if t is not None:
            shaped = f[:, None] if t.dim() == 2 else f
            if divide:
                t.div_(shaped)
            else:
                t.mul_(shaped)


def smooth_keys(model: Any, calibration_ids: torch.Tensor, alpha: float = 0.5) -> list[torch.Tensor]:
    """Calibrate per-channel key factors S on `calibration_ids` [B, T] and fold them into q_proj/k_proj.

    S = max|K|**alpha / max|Q|**(1 - alpha) per channel (SmoothQuant's migration between Q and K, alpha 0.5
    gives K and Q the same range), shared by each RoPE pair. The model's attention scores are unchanged;
    the cached K is divided by S, which flattens per-channel outliers before KV quantization.
    Returns S per layer [kv_heads, head_dim].
    """
    ids = calibration_ids
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < 1:
        got = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise RidgelineError(f"smooth_keys needs calibration token ids of shape [batch, tokens], got {got}")
    attns = _attention_modules(model)
    factors = [key_smoothing_factors(k, q, alpha) for k, q in _calibrate(model, attns, calibration_ids)]
    fold_key_scales(model, factors)
    return factors
