"""OCP MX (microscaling) and generic block floating point (BFP): exact, vectorized torch codecs.

Semantics (quantize-dequantize along one axis, in blocks):

* **MX** (OCP MX v1.0, microxcaling conventions; block 32 unless overridden). Per block the shared
  exponent is ``s = floor(log2 amax) - emax_elem`` (exact, read from the float32 exponent bits, as
  torchao does), clamped to the E8M0 range [-127, 127]; an all-zero block gets ``s = -127``
  (E8M0 code 0). Elements ``x / 2**s`` are rounded to the element format (subnormals included) and
  **saturated** to its largest normal, so a block never holds inf/NaN. MX INT elements follow
  microxcaling's sign-magnitude 1.x form: mxint8 is ``k / 64`` with ``|k| <= 127`` (max 1.984375),
  mxint4 is ``k / 4`` with ``|k| <= 7`` (max 1.75).
* **BFP(block, m)** as Harmonia uses it: ``E = floor(log2 max|x|)`` clamped to [-127, 127] (8-bit
  exponent, all-zero block -> -127), and
  ``x_hat = 2**(E-(m-1)) * clamp(round(x * 2**((m-1)-E)), -(2**m - 1), 2**m - 1)``.
  (mxint8 and mxint4 are numerically bfp32m7 and bfp32m3.)
* Rounding of the element magnitude: ``"even"`` (half to even), ``"nearest"`` (half away from zero),
  ``"floor"`` (magnitude rounded down) or ``"half_down"`` (nearest, ties toward zero, i.e.
  ``decimal.ROUND_HALF_DOWN``). ``rounding=None`` means the format's default: ``"half_down"`` for
  mxfp4, because gguf's MXFP4 quantizer takes the first (lower-magnitude) code on exact ties, so our
  bytes equal ``gguf.quants.quantize(x, MXFP4)`` tie cases included; ``"even"`` for every other format.
* Input is converted to float32 first; NaN/inf are rejected (the formats have no NaN/inf element we
  produce, and the E8M0 NaN scale 0xFF is never written). Zeros are always +0.0.

Storage layout of :func:`encode` (a 2-D tensor, blocks along the last axis, row-major):

* **mxfp4**: exactly gguf/ggml ``block_mxfp4`` (17 B / 32): byte 0 is the E8M0 scale (``s + 127``),
  bytes 1..16 hold the 4-bit codes, byte ``1 + j`` = ``code[j] | code[j + 16] << 4``. Codes are
  OCP E2M1: bit 3 sign, bits 2..1 exponent (bias 1), bit 0 mantissa.
* **every other format**: per block, one exponent byte (E8M0 ``s + 127`` for MX, ``E + 127`` for BFP)
  followed by the element codes as a little-endian bit stream: code bit ``b`` of element ``i`` is
  stream bit ``i * w + b`` and stream bit ``t`` is bit ``t % 8`` of byte ``t // 8`` (for 8-bit
  elements simply one byte per element; for 4-bit ones byte ``j`` = ``code[2j] | code[2j+1] << 4``).
  Element codes: MX FP formats use the OCP codes (sign in the top bit, then exponent, then mantissa:
  E4M3 bias 7, E5M2 bias 15, E2M3 bias 1, E3M2 bias 3); mxint8/mxint4 use two's complement
  ``k`` in 8/4 bits (OCP MXINT8: ``k * 2**-6``; -128 is decoded as -2.0 but never written); BFP
  uses sign-magnitude in ``1 + m`` bits (bit ``m`` sign, bits ``m-1..0`` the magnitude).
  When ``block * (1 + m)`` is not a multiple of 8 (BFP only, e.g. bfp4m4) the blocks follow one
  another in the same bit stream without byte alignment, and the last byte is zero-padded.

``len(encode(x, fmt)) == get_format(fmt).tensor_bytes(x.shape)`` for every MX format and every BFP
format whose total bit count is a whole number of bytes (the registry floors a fractional byte count).

Known divergences from gguf's MXFP4 quantizer, both outside random data: gguf takes
``floor(np.log2(amax))`` in float32, which rounds up for ``amax`` within a few ulp below a power of
two ``2**k`` with ``|k| >= 2`` (e.g. ``8 - 2**-21`` -> exponent 3, we use the exact 2); and for blocks
with ``0 < amax < 2**-125`` gguf's exponent underflows uint8, where we clamp to E8M0 code 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ridgeline.errors import RidgelineError
from ridgeline.specs import NumberFormat, get_format

__all__ = [
    "MX_BLOCK", "MX_FORMATS", "ROUNDING_MODES", "ElementFormat", "decode", "element_format", "encode",
    "fake_quantize", "roundtrip_error",
]

#: the registry's OCP MX format names
MX_FORMATS = ("mxint8", "mxint4", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4")
#: OCP MX block size
MX_BLOCK = 32
#: element rounding modes accepted by `fake_quantize` and `encode`
ROUNDING_MODES = ("even", "nearest", "floor", "half_down")
#: range of the shared exponent (E8M0 for MX; the same 8-bit range for BFP), code = exponent + 127
SCALE_EMIN, SCALE_EMAX = -127, 127
_EXP_BIAS = 127


@dataclass(frozen=True)
class ElementFormat:
    """An element format of a block: `mbits` counts explicit fraction bits (int: bits after the 1.x point)."""

    name: str
    kind: str  # "int" | "float"
    ebits: int  # exponent bits (0 for int)
    mbits: int  # explicit mantissa bits (float) or fractional bits of the fixed-point value (int)
    emax: int  # exponent of the largest normal (what the shared exponent is offset by)
    max_normal: float  # largest magnitude; elements saturate here
    bits: int  # storage bits per element, sign included
    twos_complement: bool = False  # int codes: two's complement (MX INT) or sign-magnitude (BFP)

    @property
    def bias(self) -> int:
        """Exponent bias (0 for int formats)."""
        return 2 ** (self.ebits - 1) - 1 if self.ebits else 0

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal (float) or of the unit (int: 0)."""
        return 1 - self.bias if self.ebits else 0

    def grid(self) -> torch.Tensor:
        """All non-negative representable magnitudes, ascending, float64; index == magnitude code."""
        if self.kind == "int":
            return torch.arange(2 ** (self.bits - 1), dtype=torch.float64) / 2.0 ** self.mbits
        codes = torch.arange(2 ** (self.bits - 1), dtype=torch.int64)
        efield, frac = codes >> self.mbits, (codes & (2 ** self.mbits - 1)).double()
        normal = (1.0 + frac / 2.0 ** self.mbits) * torch.pow(2.0, (efield - self.bias).double())
        sub = frac * 2.0 ** (self.emin - self.mbits)
        vals = torch.where(efield == 0, sub, normal)
        return vals[vals <= self.max_normal]  # drops E4M3's NaN and E5M2's inf/NaN codes


_MX_ELEMENTS = {
    "mxint8": ElementFormat("int8", "int", 0, 6, 0, 127 / 64, 8, True),
    "mxint4": ElementFormat("int4", "int", 0, 2, 0, 7 / 4, 4, True),
    "mxfp8_e4m3": ElementFormat("fp8_e4m3", "float", 4, 3, 8, 448.0, 8),
    "mxfp8_e5m2": ElementFormat("fp8_e5m2", "float", 5, 2, 15, 57344.0, 8),
    "mxfp6_e2m3": ElementFormat("fp6_e2m3", "float", 2, 3, 2, 7.5, 6),
    "mxfp6_e3m2": ElementFormat("fp6_e3m2", "float", 3, 2, 4, 28.0, 6),
    "mxfp4": ElementFormat("fp4_e2m1", "float", 2, 1, 2, 6.0, 4),
}


def _bfp_element(m: int) -> ElementFormat:
    return ElementFormat(f"sm{1 + m}", "int", 0, m - 1, 0, (2 ** m - 1) / 2 ** (m - 1), 1 + m)


def _resolve(fmt: str) -> tuple[NumberFormat, ElementFormat]:
    nf = None
    if isinstance(fmt, str):
        try:
            nf = get_format(fmt)
        except RidgelineError:
            nf = None
    if nf is None or nf.family not in ("mx", "bfp"):
        raise RidgelineError(f"unknown MX/BFP format {fmt!r}; supported: {', '.join(MX_FORMATS)}, "
                             "bfp<block>m<mantissa> or bfp(<block>, <mantissa>)")
    if nf.family == "mx":
        return nf, _MX_ELEMENTS[nf.name]
    return nf, _bfp_element(int(nf.element_bits) - 1)


def element_format(fmt: str) -> ElementFormat:
    """The element format of an MX or BFP format name."""
    return _resolve(fmt)[1]


def _default_rounding(nf: NumberFormat, rounding: str | None) -> str:
    if rounding is None:
        return "half_down" if nf.name == "mxfp4" else "even"
    if rounding not in ROUNDING_MODES:
        raise RidgelineError(f"unknown rounding {rounding!r}; expected one of {', '.join(ROUNDING_MODES)}")
    return rounding


def _as_float32(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise RidgelineError(f"{what} expects a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise RidgelineError(f"{what}: complex tensors are not supported")
    x = x.detach().to(device="cpu", dtype=torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise RidgelineError(f"{what}: input holds NaN or inf (after conversion to float32); MX/BFP "
                             "blocks have no NaN/inf encoding here (elements saturate, the E8M0 NaN "
                             "scale is not used)")
    return x


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """Exact float64 2**e for integer e in [-1022, 1023], built from the exponent bits."""
    return ((e.to(torch.int64) + 1023) << 52).view(torch.float64)


def _round(t: torch.Tensor, rounding: str) -> torch.Tensor:
    if rounding == "even":
        return torch.round(t)
    if rounding == "nearest":
        return torch.floor(t + 0.5)
    if rounding == "floor":
        return torch.floor(t)
    return torch.ceil(t - 0.5)  # half_down


def _quantize_blocks(xb: torch.Tensor, ef: ElementFormat, rounding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [n, block] -> (shared exponent int64 [n], element values float64 [n, block]).

    All arithmetic is exact: scaling by powers of two in float64 and rounding of values with at
    most 24 significant bits.
    """
    amax = xb.abs().amax(dim=-1)
    _, e = torch.frexp(amax)  # amax = f * 2**e, f in [0.5, 1)  ->  floor(log2 amax) = e - 1
    shared = torch.where(amax > 0, e.to(torch.int64) - 1 - ef.emax, SCALE_EMIN)
    shared = shared.clamp(SCALE_EMIN, SCALE_EMAX)
    y = xb.double() * _pow2(-shared)[:, None]
    a = y.abs()
    if ef.kind == "float":
        _, pe = torch.frexp(a)
        step = _pow2((pe.to(torch.int64) - 1).clamp(min=ef.emin) - ef.mbits)
    else:
        step = torch.tensor(2.0 ** -ef.mbits, dtype=torch.float64)
    mag = torch.clamp(_round(a / step, rounding) * step, max=ef.max_normal)
    q = torch.where(y < 0, -mag, mag) + 0.0  # + 0.0 turns -0.0 into +0.0
    return shared, q


def _check_block(block: int | None, nf: NumberFormat) -> int:
    if block is None:
        return nf.block
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise RidgelineError(f"block must be a positive integer, got {block!r}")
    return block


def fake_quantize(x: torch.Tensor, fmt: str, *, block: int | None = None, rounding: str | None = None,
                  axis: int = -1, pad: bool = False) -> torch.Tensor:
    """Quantize-dequantize `x` to `fmt` in blocks along `axis` (float32 result of x's shape)."""
    nf, ef = _resolve(fmt)
    rounding = _default_rounding(nf, rounding)
    bs = _check_block(block, nf)
    x = _as_float32(x, "fake_quantize")
    if x.dim() == 0:
        raise RidgelineError("fake_quantize needs a tensor with at least one dimension")
    if not -x.dim() <= axis < x.dim():
        raise RidgelineError(f"axis {axis} is out of range for a {x.dim()}-D tensor")
    xt = x.movedim(axis, -1)
    n = xt.shape[-1]
    extra = -n % bs
    if extra:
        if not pad:
            raise RidgelineError(f"axis {axis} has length {n}, not a multiple of the {nf.name} block "
                                 f"size {bs}; pass pad=True to pad the blocks with zeros")
        xt = torch.nn.functional.pad(xt, (0, extra))
    shape = xt.shape
    shared, q = _quantize_blocks(xt.reshape(-1, bs), ef, rounding)
    out = (q * _pow2(shared)[:, None]).float().reshape(shape)
    if extra:
        out = out[..., :n]
    return out.movedim(-1, axis).contiguous()


def _layout(nf: NumberFormat, ef: ElementFormat, shape: tuple[int, int]) -> tuple[int, int, int]:
    """(number of blocks, bits per block, total bytes) of a 2-D tensor."""
    rows, row = shape
    nf.check_row(row, f"{nf.name} tensor")
    nblocks = rows * (row // nf.block)
    block_bits = 8 + nf.block * ef.bits
    return nblocks, block_bits, math.ceil(nblocks * block_bits / 8)


def _codes(q: torch.Tensor, ef: ElementFormat) -> torch.Tensor:
    """Element values (float64, on the grid) -> int64 storage codes."""
    if ef.kind == "int":
        k = torch.round(q * 2.0 ** ef.mbits).to(torch.int64)
        if ef.twos_complement:
            return k & (2 ** ef.bits - 1)
        return (k.abs() | ((k < 0).to(torch.int64) << (ef.bits - 1)))
    mag = torch.searchsorted(ef.grid(), q.abs().contiguous())
    return mag | ((q < 0).to(torch.int64) << (ef.bits - 1))


def _values(codes: torch.Tensor, ef: ElementFormat) -> torch.Tensor:
    """int64 storage codes -> element values (float64); rejects NaN/inf codes."""
    sign_bit = 1 << (ef.bits - 1)
    if ef.kind == "int" and ef.twos_complement:
        return (codes - ((codes & sign_bit) << 1)).double() / 2.0 ** ef.mbits
    mag = codes & (sign_bit - 1)
    if ef.kind == "int":
        vals = mag.double() / 2.0 ** ef.mbits
    else:
        grid = ef.grid()
        if bool((mag >= grid.numel()).any()):
            raise RidgelineError(f"byte stream holds {ef.name} NaN/inf element codes, which MX blocks "
                                 "never contain (elements saturate)")
        vals = grid[mag]
    return torch.where((codes & sign_bit) != 0, -vals, vals) + 0.0


def _order(nf: NumberFormat) -> torch.Tensor | None:
    """Within-block element order of the bit stream (None: natural order)."""
    if nf.name == "mxfp4":  # gguf: low nibble element j, high nibble element j + 16
        half = nf.block // 2
        return torch.stack([torch.arange(half), torch.arange(half, nf.block)], dim=1).reshape(-1)
    return None


def encode(x: torch.Tensor, fmt: str, *, rounding: str | None = None) -> bytes:
    """Pack a 2-D tensor into `fmt`'s storage bytes, blocks along the last axis (layout: module docstring)."""
    nf, ef = _resolve(fmt)
    rounding = _default_rounding(nf, rounding)
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        got = f"a {x.dim()}-D tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise RidgelineError(f"encode expects a 2-D tensor (rows, row), got {got}")
    x = _as_float32(x, "encode")
    nblocks, _, _ = _layout(nf, ef, tuple(x.shape))
    shared, q = _quantize_blocks(x.reshape(nblocks, nf.block), ef, rounding)
    codes = _codes(q, ef)
    order = _order(nf)
    if order is not None:
        codes = codes[:, order]
    w = ef.bits
    ebits = ((shared + _EXP_BIAS)[:, None] >> torch.arange(8)) & 1
    cbits = ((codes[:, :, None] >> torch.arange(w)) & 1).reshape(nblocks, nf.block * w)
    bits = torch.cat([ebits, cbits], dim=1).to(torch.uint8).numpy().reshape(-1)
    return np.packbits(bits, bitorder="little").tobytes()


def decode(data: bytes, fmt: str, shape: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Unpack `fmt` storage bytes of a 2-D tensor of `shape` into float32 values."""
    nf, ef = _resolve(fmt)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RidgelineError(f"decode expects bytes, got {type(data).__name__}")
    shape = tuple(shape)
    if len(shape) != 2 or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise RidgelineError(f"decode expects a 2-D shape (rows, row), got {shape}")
    nblocks, block_bits, nbytes = _layout(nf, ef, shape)
    if len(data) != nbytes:
        raise RidgelineError(f"{nf.name} data for shape {shape} must be {nbytes} bytes, got {len(data)}")
    raw = np.frombuffer(bytes(data), dtype=np.uint8)
    bits = np.unpackbits(raw, bitorder="little", count=nblocks * block_bits)
    bits = torch.from_numpy(bits.astype(np.int64)).reshape(nblocks, block_bits)
    ecode = (bits[:, :8] << torch.arange(8)).sum(dim=1)
    if bool((ecode == 255).any()):
        raise RidgelineError(f"{nf.name} data holds the exponent code 0xFF (E8M0 NaN), which encode never writes")
    w = ef.bits
    codes = (bits[:, 8:].reshape(nblocks, nf.block, w) << torch.arange(w)).sum(dim=2)
    order = _order(nf)
    if order is not None:
        codes = codes[:, torch.argsort(order)]
    q = _values(codes, ef)
    return (q * _pow2(ecode - _EXP_BIAS)[:, None]).float().reshape(shape)


def roundtrip_error(fmt: str, n: int = 64 * 4096, seed: int = 0, *, rounding: str | None = None) -> dict:
    """QSNR (dB) and relative RMSE of `fmt`'s quantize-dequantize on `n` N(0,1) samples."""
    nf, _ = _resolve(fmt)
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0 or n % nf.block:
        raise RidgelineError(f"n must be a positive multiple of the {nf.name} block size {nf.block}, got {n!r}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen, dtype=torch.float32)
    xq = fake_quantize(x, nf.name, rounding=rounding)
    err = float(((xq.double() - x.double()) ** 2).sum())
    sig = float((x.double() ** 2).sum())
    rel = math.sqrt(err / sig)
    return {"format": nf.name, "n": n, "seed": seed, "bits": nf.bits, "rel_rmse": rel,
            "qsnr_db": (-20.0 * math.log10(rel)) if rel > 0 else math.inf}


def bfp_codes(xb: torch.Tensor, mantissa: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BFP(block, m) of float32 blocks [n, block], rounding half to even: (shared exponent E, int64 [n]; the
    (1 + m)-bit sign-magnitude element codes, int64 [n, block]) as `encode` stores them."""
    ef = _bfp_element(mantissa)
    shared, q = _quantize_blocks(xb, ef, "even")
    return shared, _codes(q, ef)


def bfp_values(shared: torch.Tensor, codes: torch.Tensor, mantissa: int) -> torch.Tensor:
    """The inverse of `bfp_codes`: float64 values [n, block] of the shared exponents and element codes."""
    return _values(codes, _bfp_element(mantissa)) * _pow2(shared)[:, None]

