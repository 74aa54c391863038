"""Exact ggml block codecs (the bytes llama.cpp writes into a GGUF tensor), vectorized in torch.

A tensor is a stack of rows; each row (ggml's ne[0], ``x.shape[1]``) is cut into blocks that are
stored one after the other, little-endian. Layouts (d, dmin, m are fp16, QK_K = 256):

- ``q8_0``  34 B / 32: d, 32 x int8; x = d*q.
- ``q4_0``  18 B / 32: d, 16 B of nibbles (byte j = q[j] | q[j+16] << 4); x = d*(q - 8).
- ``q4_1``  20 B / 32: d, m, nibbles as q4_0; x = d*q + m.
- ``q5_0``  22 B / 32: d, 4 B high bits (bit j of a little-endian uint32 = bit 4 of q[j]),
  16 B low nibbles as q4_0; x = d*(q - 16).
- ``q5_1``  24 B / 32: d, m, high bits, low nibbles; x = d*q + m.
- ``mxfp4`` 17 B / 32: one E8M0 exponent byte, nibbles as q4_0 indexing the doubled E2M1 values.
- ``q4_k`` 144 B / 256: d, dmin, 12 B of 6-bit scales and mins for 8 sub-blocks of 32, then 128 B
  where, per 64 values, byte l holds value l (low nibble) and value l+32 (high nibble);
  x = d*sc_j*q - dmin*m_j.
- ``q5_k`` 176 B / 256: d, dmin, 12 B scales/mins, 32 B high bits (byte l, bit j: value 32j+l),
  128 B low nibbles as q4_k.
- ``q6_k`` 210 B / 256: 128 B low nibbles, 64 B 2-bit highs, 16 int8 scales, d;
  x = d*sc_j*(q - 32) for 16 sub-blocks of 16.
- ``f32``, ``f16``, ``bf16``: plain little-endian values (block 1).

The quantizers re-derive ggml's reference C functions (``quantize_row_*_ref`` in
``ggml/src/ggml-quants.c``, the path llama.cpp takes without an importance matrix) in float32 with
the same rounding points: fp16 rounding of stored scales, ``roundf`` (half away from zero) for
Q8_0, truncation for Q4_0..Q5_1, ``nearest_int`` (the 1.5*2^23 magic-number trick) for the
K-quants, no fused multiply-adds, sequential (not pairwise) float sums, and correctly rounded
divisions and square roots (torch's ``scalar / tensor`` and float32 ``sqrt`` are not, so they are
avoided). Work is vectorized over blocks; the only Python loops run over candidate scales, the
elements of one sub-block (to keep the C summation order) and cache-sized chunks of blocks, which
run with torch single-threaded. Checked bit for bit against ggml's C reference, gguf-py and
llama.cpp's quantizer in tests/test_quant_ggml.py.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from ridgeline.errors import RidgelineError

#: the formats this module encodes and decodes (lower-case ggml type names)
GGML_CODECS: tuple[str, ...] = (
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "mxfp4",
)

_FLOAT_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

# nearest_int in ggml: adding 1.5*2^23 puts the rounded integer in the low mantissa bits
_MAGIC = 12582912.0
# ggml's threshold below which a group counts as all zero (GROUP_MAX_EPS)
_GROUP_MAX_EPS = np.float32(1e-15)
# doubled E2M1 values indexed by an MXFP4 nibble (kvalues_mxfp4)
_MXFP4_VALUES = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)
# elements per chunk of blocks: bounds the temporaries (a few MiB each) and keeps them in cache
_CHUNK_ELEMENTS = 1 << 18

if sys.byteorder != "little":  # the byte views below assume a little-endian host
    raise ImportError("ridgeline.quant.ggml needs a little-endian host")


def _fmt(fmt: str) -> str:
    key = str(fmt).strip().lower()
    if key not in GGML_CODECS:
        raise RidgelineError(f"unknown ggml format {fmt!r}: expected one of {', '.join(GGML_CODECS)}")
    return key


def type_size(fmt: str) -> tuple[int, int]:
    """(elements per block, bytes per block) of a ggml format, from gguf's GGML_QUANT_SIZES."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[_fmt(fmt).upper()]]
    return int(block), int(size)


# ----------------------------------------------------------------------------- small helpers


def _f32(value: float) -> torch.Tensor:
    """A float32 scalar tensor, so that scalar arithmetic rounds like C's float."""
    return torch.tensor(value, dtype=torch.float32)


# `python_scalar / tensor` runs as reciprocal(tensor) * scalar in torch (two roundings), so C's
# `c / x` divides a float32 0-dim tensor instead
_ONE = torch.tensor(1.0, dtype=torch.float32)


def _nearest_int(v: torch.Tensor) -> torch.Tensor:
    """ggml's nearest_int bit for bit: round half to even, and the same garbage outside +-2^22."""
    return ((v + _MAGIC).view(torch.int32) & 0x7FFFFF) - 0x400000


def _roundf(v: torch.Tensor) -> torch.Tensor:
    """C roundf: round half away from zero (torch.round is half to even)."""
    a = v.abs()
    f = a.floor()
    # a - f is exact, so the comparison sees the true fraction (floor(a + 0.5) can round up)
    return torch.copysign(f + (a - f >= 0.5).to(v.dtype), v)


def _fp16(v: torch.Tensor) -> torch.Tensor:
    """Round to fp16 (round to nearest even, like GGML_FP32_TO_FP16)."""
    return v.to(torch.float16)


def _fp16_bytes(v: torch.Tensor) -> torch.Tensor:
    """[n] float16 -> [n, 2] little-endian bytes."""
    return v.to(torch.float16).reshape(-1, 1).view(torch.uint8)


def _fp16_from(b: torch.Tensor) -> torch.Tensor:
    """[n, 2] bytes -> [n] float32 through fp16."""
    return b.contiguous().view(torch.float16).reshape(-1).to(torch.float32)


def _seqsum(t: torch.Tensor, start_with_first: bool = False) -> torch.Tensor:
    """Sum over dim 0 one element after the other, as a C `for` loop accumulating in float does.

    torch.sum adds pairwise/vectorized and cumsum accumulates in double on CPU; either would change
    the last bits of ggml's least-squares sums and with them some chosen scales.
    """
    acc = t[0].clone()
    if not start_with_first:
        # C starts from 0.0f; 0 + a == a except that it turns -0 into +0
        acc.add_(0.0)
    for i in range(1, t.shape[0]):
        acc.add_(t[i])
    return acc


def _first_max(v: torch.Tensor, dim: int) -> torch.Tensor:
    """Index of the first maximum along dim (C loops update only on a strictly larger value)."""
    return torch.argmax(v, dim=dim, keepdim=True)


def _c_min_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise min and max with C's signed-zero choice.

    ggml scans `if (v < min) min = v` from the first element, so a zero minimum carries the sign of
    the first zero in the block; it ends up in the stored fp16 m of q4_1/q5_1.
    """
    mn = x.amin(dim=1, keepdim=True)
    mx = x.amax(dim=1, keepdim=True)
    is_zero = x == 0
    if bool(is_zero.any()):
        first_zero = x.gather(1, _first_max(is_zero.to(torch.uint8), 1))
        mn = torch.where(mn == 0, first_zero, mn)
        mx = torch.where(mx == 0, first_zero, mx)
    return mn, mx


def _nibbles(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Pack two int tensors of 4-bit codes into bytes: lo in the low nibble."""
    return ((lo & 0x0F) | ((hi & 0x0F) << 4)).to(torch.uint8)


def _bits_to_bytes(bits: torch.Tensor) -> torch.Tensor:
    """[n, 8k] of 0/1 -> [n, k] bytes, bit b of byte i = bits[8i + b] (little-endian bit order)."""
    b = bits.reshape(bits.shape[0], -1, 8).to(torch.uint8)
    out = b[:, :, 0].clone()
    for i in range(1, 8):
        out |= b[:, :, i] << i
    return out


def _bytes_to_bits(b: torch.Tensor) -> torch.Tensor:
    """Inverse of _bits_to_bytes: [n, k] bytes -> [n, 8k] int32 of 0/1."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((b.unsqueeze(-1) >> shifts) & 1).reshape(b.shape[0], -1).to(torch.int32)


# ----------------------------------------------------------------------------- legacy 32-blocks


def _enc_q8_0(x: torch.Tensor) -> torch.Tensor:
    amax = x.abs().amax(dim=1, keepdim=True)
    d = amax / 127.0
    # the inverse comes from the fp32 d, before d is rounded to fp16
    inv = torch.where(d != 0, _ONE / d, torch.zeros_like(d))
    q = _roundf(x * inv).to(torch.int8)
    return torch.cat([_fp16_bytes(d), q.view(torch.uint8)], dim=1)


def _dec_q8_0(b: torch.Tensor) -> torch.Tensor:
    d = _fp16_from(b[:, :2]).unsqueeze(1)
    return b[:, 2:].view(torch.int8).to(torch.float32) * d


def _signed_absmax(x: torch.Tensor) -> torch.Tensor:
    """The value with the largest |x| (the first one on ties); +0 for an all-zero block."""
    a = x.abs()
    m = x.gather(1, _first_max(a, 1))
    # C starts from max = 0 and replaces it only on a strictly larger |v|
    return torch.where(a.amax(dim=1, keepdim=True) > 0, m, torch.zeros_like(m))


def _enc_sym(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q4_0 / q5_0: d = max/-levels, q = min(2*levels-1, trunc(x/d + levels + 0.5))."""
    d = _signed_absmax(x) / float(-levels)
    inv = torch.where(d != 0, _ONE / d, torch.zeros_like(d))
    # (int8_t)(x*id + 8.5f): the multiply and the add round separately (no FMA in the reference)
    q = torch.trunc(x * inv + (levels + 0.5)).to(torch.int32).clamp(max=2 * levels - 1)
    return d, q


def _enc_asym(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q4_1 / q5_1: d = (max-min)/levels, q = trunc((x-min)/d + 0.5)."""
    mn, mx = _c_min_max(x)
    d = (mx - mn) / float(levels)
    inv = torch.where(d != 0, _ONE / d, torch.zeros_like(d))
    q = torch.trunc((x - mn) * inv + 0.5).to(torch.int32)
    return d, mn, q


def _enc_q4_0(x: torch.Tensor) -> torch.Tensor:
    d, q = _enc_sym(x, 8)
    return torch.cat([_fp16_bytes(d), _nibbles(q[:, :16], q[:, 16:])], dim=1)


def _enc_q4_1(x: torch.Tensor) -> torch.Tensor:
    d, mn, q = _enc_asym(x, 15)
    q = q.clamp(max=15)
    return torch.cat([_fp16_bytes(d), _fp16_bytes(mn), _nibbles(q[:, :16], q[:, 16:])], dim=1)


def _enc_q5_0(x: torch.Tensor) -> torch.Tensor:
    d, q = _enc_sym(x, 16)
    qh = _bits_to_bytes((q >> 4) & 1)
    return torch.cat([_fp16_bytes(d), qh, _nibbles(q[:, :16], q[:, 16:])], dim=1)


def _enc_q5_1(x: torch.Tensor) -> torch.Tensor:
    d, mn, q = _enc_asym(x, 31)
    # the reference has no clamp here: (uint8_t)(x0 + 0.5f), then bits 0-3 and bit 4
    qh = _bits_to_bytes((q >> 4) & 1)
    return torch.cat([_fp16_bytes(d), _fp16_bytes(mn), qh, _nibbles(q[:, :16], q[:, 16:])], dim=1)


def _unnibble(qs: torch.Tensor) -> torch.Tensor:
    """[n, 16] bytes -> [n, 32] int32 codes in q4_0 order."""
    q = qs.to(torch.int32)
    return torch.cat([q & 0x0F, q >> 4], dim=1)


def _dec_q4_0(b: torch.Tensor) -> torch.Tensor:
    d = _fp16_from(b[:, :2]).unsqueeze(1)
    return (_unnibble(b[:, 2:]) - 8).to(torch.float32) * d


def _dec_q4_1(b: torch.Tensor) -> torch.Tensor:
    d = _fp16_from(b[:, :2]).unsqueeze(1)
    m = _fp16_from(b[:, 2:4]).unsqueeze(1)
    return _unnibble(b[:, 4:]).to(torch.float32) * d + m


def _dec_q5_0(b: torch.Tensor) -> torch.Tensor:
    d = _fp16_from(b[:, :2]).unsqueeze(1)
    q = _unnibble(b[:, 6:]) | (_bytes_to_bits(b[:, 2:6]) << 4)
    return (q - 16).to(torch.float32) * d


def _dec_q5_1(b: torch.Tensor) -> torch.Tensor:
    d = _fp16_from(b[:, :2]).unsqueeze(1)
    m = _fp16_from(b[:, 2:4]).unsqueeze(1)
    q = _unnibble(b[:, 8:]) | (_bytes_to_bits(b[:, 4:8]) << 4)
    return q.to(torch.float32) * d + m


def _e8m0_half(e: torch.Tensor) -> torch.Tensor:
    """GGML_E8M0_TO_FP32_HALF: 2^(e-127) / 2, built from bits (subnormal for e < 2)."""
    e = e.to(torch.int32)
    bits = torch.where(e < 2, torch.full_like(e, 0x00200000) << e.clamp(0, 1), (e - 1) << 23)
    return bits.view(torch.float32)


def _enc_mxfp4(x: torch.Tensor) -> torch.Tensor:
    amax = x.abs().amax(dim=1, keepdim=True)
    # floor(log2f(amax)): log2 in double rounded to float reproduces log2f, which rounds values a
    # few ulps below a power of two up to the integer (a bit-level exponent would not)
    lg = torch.log2(amax.to(torch.float64)).to(torch.float32).floor()
    e = torch.where(amax > 0, lg - 2 + 127, torch.zeros_like(lg)).to(torch.int32) & 0xFF
    d = _e8m0_half(e)
    # best_index_mxfp4 keeps the first of the 16 table entries with the smallest |k*d - x|.
    # |(-k)*d - x| == |k*d - |x|| bit for bit, a non-negative x never prefers a negative entry,
    # and on a tie the lower index (the smaller magnitude, and +0 over -0) comes first; so scanning
    # the 8 magnitudes against |x| and adding 8 for negative x gives the same index.
    a = x.abs()
    best_err = a.clone()
    best = torch.zeros(x.shape, dtype=torch.uint8)
    for i, k in enumerate(_MXFP4_VALUES[1:8], start=1):
        err = (float(k) * d - a).abs_()
        better = err < best_err
        best_err = torch.minimum(best_err, err)
        best.masked_fill_(better, i)
    best = torch.where((x < 0) & (best != 0), best + 8, best).to(torch.int32)
    return torch.cat([e.to(torch.uint8), _nibbles(best[:, :16], best[:, 16:])], dim=1)


def _dec_mxfp4(b: torch.Tensor) -> torch.Tensor:
    d = _e8m0_half(b[:, :1])
    values = torch.tensor(_MXFP4_VALUES, dtype=torch.float32)
    return values[_unnibble(b[:, 1:]).long()] * d


# ----------------------------------------------------------------------------- K-quants


def _round_clamp_(v: torch.Tensor, lo: int, hi: int, exact_float: bool) -> torch.Tensor:
    """In place: v <- MAX(lo, MIN(hi, nearest_int(v))) as float.

    With |v| < 2^22 (exact_float) adding and removing 1.5*2^23 rounds half to even exactly like
    nearest_int; otherwise the C bit extraction is replayed so that out-of-range values give the
    same codes as the C code.
    """
    if exact_float:
        return v.add_(_MAGIC).sub_(_MAGIC).clamp_(lo, hi)
    v.copy_(_nearest_int(v).clamp_(lo, hi))
    return v


def _in_range(*bounds: torch.Tensor, skip: torch.Tensor) -> bool:
    """True when every column's extreme |value| is below 2^22 (columns in `skip` are ignored)."""
    ok = torch.ones_like(skip)
    for b in bounds:
        ok &= b.abs() < 4194303.0
    return bool((ok | skip).all())


def _make_qkx2(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float,
               nstep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """make_qkx2_quants over sub-blocks laid out as columns: x, w are [n, S] float32.

    Weighted least squares for (scale, min) over nstep+1 candidate inverse scales. Like the C code,
    an accepted candidate replaces `min`, and later candidates use the updated min in both
    (max - min) and (x - min). Returns per column: scale, the_min (= -min), and what regenerates the
    chosen codes (iscale, the min they were computed with, flat) for `_qkx2_codes`.
    """
    nmax_f = float(nmax)
    xmin = x.amin(dim=0)
    mx = x.amax(dim=0)
    sum_w = _seqsum(w, start_with_first=True)
    sum_x = _seqsum(w * x, start_with_first=True)
    mn = torch.where(xmin > 0, torch.zeros_like(xmin), xmin)
    flat = mx == mn

    t = torch.empty_like(x)  # codes of the candidate, as float
    e = torch.empty_like(x)  # weighted squared errors
    sums = torch.empty((x.shape[0], 3) + x.shape[1:], dtype=x.dtype)

    def codes(iscale: torch.Tensor, mn: torch.Tensor) -> torch.Tensor:
        # iscale*(x - min) is monotonic in x, so its extremes come from the column's min and max
        exact = _in_range(iscale * (mx - mn), iscale * (xmin - mn), skip=flat)
        torch.sub(x, mn, out=t)
        t.mul_(iscale)
        return _round_clamp_(t, 0, nmax, exact)

    def wsse(scale: torch.Tensor, mn: torch.Tensor, lf: torch.Tensor) -> torch.Tensor:
        # sum of w*(scale*l + min - x)^2, rounded step by step as the C loop does
        torch.mul(lf, scale, out=e)
        e.add_(mn).sub_(x)
        e.mul_(e).mul_(w)
        return _seqsum(e)

    iscale = _f32(nmax_f) / (mx - mn)
    scale = _ONE / iscale
    best = wsse(scale, mn, codes(iscale, mn))
    best_iscale, best_mn = iscale, mn

    for step in range(nstep + 1):
        # (rmin + rdelta*is + nmax) in float, as the C expression evaluates it
        c = float(np.float32(rmin) + np.float32(rdelta) * np.float32(step) + np.float32(nmax))
        iscale = _f32(c) / (mx - mn)
        lf = codes(iscale, mn)
        torch.mul(w, lf, out=sums[:, 0])
        torch.mul(sums[:, 0], lf, out=sums[:, 1])
        torch.mul(sums[:, 0], x, out=sums[:, 2])
        sum_l, sum_l2, sum_xl = _seqsum(sums)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = this_min > 0
        this_min = torch.where(pos, torch.zeros_like(this_min), this_min)
        this_scale = torch.where(pos, sum_xl / sum_l2, this_scale)
        cur = wsse(this_scale, this_min, lf)
        better = (D > 0) & (cur < best)
        best = torch.where(better, cur, best)
        best_iscale = torch.where(better, iscale, best_iscale)
        best_mn = torch.where(better, mn, best_mn)  # the min these codes were computed with
        scale = torch.where(better, this_scale, scale)
        mn = torch.where(better, this_min, mn)

    # C returns before the search for a flat sub-block: scale 0, codes 0, the clamped initial min
    scale = torch.where(flat, torch.zeros_like(scale), scale)
    mn = torch.where(flat, torch.where(xmin > 0, torch.zeros_like(xmin), xmin), mn)
    return scale, -mn, best_iscale, best_mn, flat


def _qkx2_codes(x: torch.Tensor, nmax: int, iscale: torch.Tensor, mn: torch.Tensor,
                flat: torch.Tensor) -> torch.Tensor:
    """The codes make_qkx2_quants left in L, regenerated from the chosen candidate (int32 [n, S])."""
    L = _nearest_int(iscale * (x - mn)).clamp_(0, nmax)
    return torch.where(flat, torch.zeros_like(L), L)


def _pack_k4_scales(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """8 six-bit scales and mins [n, 8] int32 -> the 12-byte q4_K/q5_K scales field."""
    lo_s, hi_s = ls[:, :4], ls[:, 4:]
    lo_m, hi_m = lm[:, :4], lm[:, 4:]
    return torch.cat([
        lo_s | ((hi_s >> 4) << 6),
        lo_m | ((hi_m >> 4) << 6),
        (hi_s & 0x0F) | ((hi_m & 0x0F) << 4),
    ], dim=1).to(torch.uint8)


def _unpack_k4_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of _pack_k4_scales (get_scale_min_k4): [n, 12] bytes -> (sc, m) [n, 8] int32."""
    s = s.to(torch.int32)
    a, b, c = s[:, :4], s[:, 4:8], s[:, 8:]
    sc = torch.cat([a & 63, (c & 0x0F) | ((a >> 6) << 4)], dim=1)
    m = torch.cat([b & 63, (c >> 4) | ((b >> 6) << 4)], dim=1)
    return sc, m


def _quant_k4(x: torch.Tensor, nmax: int, rmin: float, rdelta: float,
              nstep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shared q4_K / q5_K reference: x [nb, 256] -> (d, dmin fp16 [nb], scales [nb, 12], L [nb, 256])."""
    nb = x.shape[0]
    xs = x.reshape(nb * 8, 32).t().contiguous()  # [32, S]: element-major, columns are sub-blocks
    sum_x2 = _seqsum(xs * xs)
    # torch's float32 sqrt is not correctly rounded (sqrtf is, ~20 % of results differ by an ulp);
    # sqrt in double rounded to float is
    av_x = torch.sqrt((sum_x2 / 32.0).double()).float()
    w = av_x + xs.abs()
    scale, the_min, best_iscale, best_mn, flat = _make_qkx2(xs, w, nmax, rmin, rdelta, nstep)

    scales = scale.reshape(nb, 8)
    mins = the_min.reshape(nb, 8)
    zero = torch.zeros(nb, dtype=torch.float32)
    # C keeps a running maximum from +0, so a block without positive scales stores +0
    max_scale = scales.amax(dim=1)
    max_scale = torch.where(max_scale > 0, max_scale, zero)
    max_min = mins.amax(dim=1)
    max_min = torch.where(max_min > 0, max_min, zero)
    inv_scale = torch.where(max_scale > 0, _f32(63.0) / max_scale, zero).unsqueeze(1)
    inv_min = torch.where(max_min > 0, _f32(63.0) / max_min, zero).unsqueeze(1)
    # uint8_t ls = nearest_int(...): the int wraps to a byte, then MIN(63, ls)
    ls = (_nearest_int(inv_scale * scales) & 0xFF).clamp_(max=63)
    lm = (_nearest_int(inv_min * mins) & 0xFF).clamp_(max=63)
    d16 = _fp16(max_scale / 63.0)
    dmin16 = _fp16(max_min / 63.0)

    # requantize with the stored (fp16-rounded) values
    d = (d16.to(torch.float32).unsqueeze(1) * ls.to(torch.float32)).reshape(-1)  # [S]
    dm = (dmin16.to(torch.float32).unsqueeze(1) * lm.to(torch.float32)).reshape(-1)
    L = _nearest_int((xs + dm) / d).clamp_(0, nmax)
    keep = d == 0
    if bool(keep.any()):
        # `if (!d) continue;` keeps the codes from the search for sub-blocks with a zero scale
        L = torch.where(keep, _qkx2_codes(xs, nmax, best_iscale, best_mn, flat), L)
    L = L.t().reshape(nb, 256)
    return d16, dmin16, _pack_k4_scales(ls, lm), L


def _enc_q4_k(x: torch.Tensor) -> torch.Tensor:
    d16, dmin16, scales, L = _quant_k4(x, 15, -1.0, 0.1, 20)
    nb = x.shape[0]
    L = L.reshape(nb, 4, 2, 32)
    qs = _nibbles(L[:, :, 0], L[:, :, 1]).reshape(nb, 128)
    return torch.cat([_fp16_bytes(d16), _fp16_bytes(dmin16), scales, qs], dim=1)


def _enc_q5_k(x: torch.Tensor) -> torch.Tensor:
    d16, dmin16, scales, L = _quant_k4(x, 31, -0.5, 0.1, 15)
    nb = x.shape[0]
    # high bit of value 32j + l goes to bit j of byte l
    hb = ((L >> 4) & 1).reshape(nb, 8, 32)
    qh = (hb << torch.arange(8, dtype=torch.int32).reshape(1, 8, 1)).sum(1).to(torch.uint8)
    L = L.reshape(nb, 4, 2, 32)
    qs = _nibbles(L[:, :, 0], L[:, :, 1]).reshape(nb, 128)
    return torch.cat([_fp16_bytes(d16), _fp16_bytes(dmin16), scales, qh, qs], dim=1)


def _dec_k4_scales(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = _fp16_from(b[:, :2]).unsqueeze(1)
    dmin = _fp16_from(b[:, 2:4]).unsqueeze(1)
    sc, m = _unpack_k4_scales(b[:, 4:16])
    # (d*sc)*q - (dmin*m), the order of dequantize_row_q4_K
    return (d * sc.to(torch.float32)).unsqueeze(2), (dmin * m.to(torch.float32)).unsqueeze(2)


def _dec_q4_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    dl, ml = _dec_k4_scales(b)
    q = b[:, 16:].to(torch.int32).reshape(nb, 4, 1, 32)
    q = torch.cat([q & 0x0F, q >> 4], dim=2).reshape(nb, 8, 32)
    return (dl * q.to(torch.float32) - ml).reshape(nb, 256)


def _dec_q5_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    dl, ml = _dec_k4_scales(b)
    qh = b[:, 16:48].to(torch.int32).reshape(nb, 1, 32)
    hb = (qh >> torch.arange(8, dtype=torch.int32).reshape(1, 8, 1)) & 1
    q = b[:, 48:].to(torch.int32).reshape(nb, 4, 1, 32)
    q = torch.cat([q & 0x0F, q >> 4], dim=2).reshape(nb, 8, 32) | (hb << 4)
    return (dl * q.to(torch.float32) - ml).reshape(nb, 256)


def _make_qx(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, NULL) over columns: x [n, S], weights x^2.

    Returns per column: scale, the inverse scale whose codes were kept (for `_qx_codes`), and
    whether the column counted as all zero.
    """
    a = x.abs()
    amax = a.amax(dim=0)
    mx = x.gather(0, _first_max(a, 0)).squeeze(0)
    zero = amax < _GROUP_MAX_EPS
    w = x * x
    wx = w * x
    t = torch.empty_like(x)
    sums = torch.empty((x.shape[0], 2) + x.shape[1:], dtype=x.dtype)

    def attempt(iscale):
        # iscale*x is monotonic in x, so |iscale|*amax bounds it
        exact = _in_range(iscale * amax, skip=zero)
        torch.mul(x, iscale, out=t)
        lf = _round_clamp_(t, -nmax, nmax - 1, exact)
        torch.mul(wx, lf, out=sums[:, 0])
        torch.mul(w, lf, out=sums[:, 1])
        sums[:, 1].mul_(lf)
        sumlx, suml2 = _seqsum(sums)
        return sumlx, suml2

    iscale = _f32(float(-nmax)) / mx
    sumlx, suml2 = attempt(iscale)
    best_iscale = iscale
    scale = torch.where(suml2 != 0, sumlx / suml2, torch.zeros_like(sumlx))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        c = float(-(np.float32(nmax) + np.float32(0.1) * np.float32(step)))
        iscale = _f32(c) / mx
        sumlx, suml2 = attempt(iscale)
        upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        new_scale = sumlx / suml2
        best_iscale = torch.where(upd, iscale, best_iscale)
        scale = torch.where(upd, new_scale, scale)
        best = torch.where(upd, new_scale * sumlx, best)
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    return scale, best_iscale, zero


def _qx_codes(x: torch.Tensor, nmax: int, iscale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The codes make_qx_quants left in L (0..2*nmax-1, int32), regenerated from the kept scale."""
    L = _nearest_int(iscale * x).clamp_(-nmax, nmax - 1) + nmax
    return torch.where(zero, torch.zeros_like(L), L)


def _enc_q6_k(x: torch.Tensor) -> torch.Tensor:
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16).t().contiguous()  # [16, S]
    scale, best_iscale, zero = _make_qx(xs, 32)
    scales = scale.reshape(nb, 16)
    max_abs = scales.abs().amax(dim=1)
    max_scale = scales.gather(1, _first_max(scales.abs(), 1)).squeeze(1)
    zero_block = max_abs < _GROUP_MAX_EPS
    iscale = _f32(-128.0) / max_scale
    d16 = _fp16(_ONE / iscale)
    # int8_t scales[ib] = MIN(127, nearest_int(...)): the int is stored modulo 256
    sc = _nearest_int(iscale.unsqueeze(1) * scales).clamp_(max=127)
    sc = ((sc + 128) & 0xFF) - 128
    d = (d16.to(torch.float32).unsqueeze(1) * sc.to(torch.float32)).reshape(-1)
    L = _nearest_int(xs / d).clamp_(-32, 31) + 32
    keep = d == 0
    if bool(keep.any()):
        # `if (!d) continue;` keeps the codes from make_qx_quants for sub-blocks with a zero scale
        L = torch.where(keep, _qx_codes(xs, 32, best_iscale, zero), L)
    L = L.t().reshape(nb, 2, 4, 32)  # [block, half of 128, quarter, l]
    ql = torch.cat([_nibbles(L[:, :, 0], L[:, :, 2]), _nibbles(L[:, :, 1], L[:, :, 3])], dim=2)
    qh = ((L >> 4) << (2 * torch.arange(4, dtype=torch.int32)).reshape(1, 1, 4, 1)).sum(2)
    out = torch.cat([ql.reshape(nb, 128), qh.reshape(nb, 64).to(torch.uint8),
                     sc.to(torch.int8).view(torch.uint8), _fp16_bytes(d16)], dim=1)
    # a block whose scales are all ~0 is written as 210 zero bytes
    return torch.where(zero_block.unsqueeze(1), torch.zeros_like(out), out)


def _dec_q6_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    ql = b[:, :128].to(torch.int32).reshape(nb, 2, 2, 32)  # [block, half, ql[0:32]/ql[32:64], l]
    qh = b[:, 128:192].to(torch.int32).reshape(nb, 2, 1, 32)
    sc = b[:, 192:208].view(torch.int8).to(torch.float32)
    d = _fp16_from(b[:, 208:210]).unsqueeze(1)
    low = torch.stack([ql[:, :, 0] & 0x0F, ql[:, :, 1] & 0x0F, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], dim=2)
    high = (qh >> (2 * torch.arange(4, dtype=torch.int32)).reshape(1, 1, 4, 1)) & 3
    q = ((low | (high << 4)) - 32).reshape(nb, 16, 16).to(torch.float32)
    return ((d * sc).unsqueeze(2) * q).reshape(nb, 256)


_ENCODERS = {"q8_0": _enc_q8_0, "q4_0": _enc_q4_0, "q4_1": _enc_q4_1, "q5_0": _enc_q5_0,
             "q5_1": _enc_q5_1, "mxfp4": _enc_mxfp4, "q4_k": _enc_q4_k, "q5_k": _enc_q5_k,
             "q6_k": _enc_q6_k}
_DECODERS = {"q8_0": _dec_q8_0, "q4_0": _dec_q4_0, "q4_1": _dec_q4_1, "q5_0": _dec_q5_0,
             "q5_1": _dec_q5_1, "mxfp4": _dec_mxfp4, "q4_k": _dec_q4_k, "q5_k": _dec_q5_k,
             "q6_k": _dec_q6_k}


# ----------------------------------------------------------------------------- public API


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded for the duration.

    The chunks are cache-sized (~1 MiB) and each op takes tens of microseconds, too short for
    intra-op threads to pay for their synchronisation; on a busy 2-core machine the waits made the
    K-quant search 30x slower. Process-wide setting, restored afterwards.
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_shape(shape: tuple[int, ...], key: str, block: int) -> tuple[int, int]:
    if len(shape) != 2:
        raise RidgelineError(f"ggml {key} codec needs a 2-D tensor (rows, row length), got shape {tuple(shape)}")
    rows, row = int(shape[0]), int(shape[1])
    if rows < 0 or row < 0:
        raise RidgelineError(f"ggml {key} codec needs a non-negative shape, got {tuple(shape)}")
    if row % block:
        raise RidgelineError(f"ggml {key}: row length {row} is not a multiple of the block size {block}")
    return rows, row


def encode(x: torch.Tensor, fmt: str) -> bytes:
    """Quantize a 2-D float tensor to the exact ggml bytes of `fmt` (rows of x.shape[1] values)."""
    key = _fmt(fmt)
    block, size = type_size(key)
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if not (x.is_floating_point()):
        raise RidgelineError(f"ggml {key} codec needs a floating-point tensor, got dtype {x.dtype}")
    _check_shape(tuple(x.shape), key, block)
    # ggml's quantizers read float32: wider or narrower inputs are rounded/widened to it first
    x = x.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if not bool(torch.isfinite(x).all()):
        raise RidgelineError(f"ggml {key}: the tensor contains NaN or inf; expected finite values")
    if key in _FLOAT_DTYPES:
        return x.to(_FLOAT_DTYPES[key]).view(torch.uint8).numpy().tobytes()
    blocks = x.reshape(-1, block)
    if blocks.shape[0] == 0:
        return b""
    encoder = _ENCODERS[key]
    step = max(1, _CHUNK_ELEMENTS // block)
    with _one_thread():
        out = torch.cat([encoder(blocks[i:i + step]) for i in range(0, blocks.shape[0], step)], dim=0)
    assert out.shape[1] == size
    return out.numpy().tobytes()


def decode(data: bytes, fmt: str, shape: tuple[int, int]) -> torch.Tensor:
    """Dequantize ggml bytes of `fmt` into a float32 tensor of `shape` (rows, row length)."""
    key = _fmt(fmt)
    block, size = type_size(key)
    rows, row = _check_shape(tuple(shape), key, block)
    expected = rows * (row // block) * size
    buf = memoryview(data).cast("B")  # any contiguous bytes-like object (bytes, numpy uint8, mmap)
    if buf.nbytes != expected:
        raise RidgelineError(f"ggml {key}: {buf.nbytes} bytes do not match shape {(rows, row)}, "
                             f"which takes {expected} bytes")
    if expected == 0:
        return torch.zeros((rows, row), dtype=torch.float32)
    raw = torch.frombuffer(bytearray(buf), dtype=torch.uint8)
    if key in _FLOAT_DTYPES:
        return raw.view(_FLOAT_DTYPES[key]).to(torch.float32).reshape(rows, row)
    blocks = raw.reshape(-1, size)
    decoder = _DECODERS[key]
    step = max(1, _CHUNK_ELEMENTS // block)
    with _one_thread():
        out = torch.cat([decoder(blocks[i:i + step]) for i in range(0, blocks.shape[0], step)], dim=0)
    return out.reshape(rows, row)


def quantize_dequantize(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """decode(encode(x, fmt)): the float32 values a ggml runtime would see for x stored as fmt."""
    shape = tuple(int(n) for n in (x.shape if isinstance(x, torch.Tensor) else np.shape(x)))
    return decode(encode(x, fmt), fmt, shape)
