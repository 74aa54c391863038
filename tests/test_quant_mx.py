"""OCP MX and generic BFP codecs: gguf MXFP4 bytes, torch float8 casts, hand fixtures, BFP invariants, QSNR."""

import math

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from ridgeline.errors import RidgelineError
from ridgeline.quant.mx import (
    MX_FORMATS,
    ROUNDING_MODES,
    decode,
    element_format,
    encode,
    fake_quantize,
    roundtrip_error,
)
from ridgeline.specs.formats import get_format

MXFP4 = GGMLQuantizationType.MXFP4
BFP_FORMATS = ("bfp32m4", "bfp32m8", "bfp16m4", "bfp(8, 3)", "bfp32m7", "bfp4m4", "bfp(2, 23)")


def _gguf_bytes(x: torch.Tensor) -> bytes:
    return gguf_quantize(x.numpy(), MXFP4).tobytes()


def _gguf_values(data: bytes, shape) -> torch.Tensor:
    return torch.from_numpy(gguf_dequantize(np.frombuffer(data, dtype=np.uint8), MXFP4)).reshape(shape)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _assert_bit_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    assert torch.equal(_bits(a), _bits(b)), (a - b).abs().max()


# ---------------------------------------------------------------------------------------------- gguf MXFP4


def _random_rows(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 256, generator=g) * torch.logspace(-30, 30, 24, base=2.0)[:, None]
    x[3, 32:64] = 0.0  # an all-zero block
    x[4, :32] = -0.0  # a negative-zero block
    x[5, 64:96] *= 1e-3  # small elements under a large neighbour block
    x[6, :] = torch.randint(-12, 13, (256,), generator=g) / 2.0  # lands on grid points and midpoints
    return x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mxfp4_bytes_and_values_equal_gguf(seed):
    x = _random_rows(seed)
    ours, ref = encode(x, "mxfp4"), _gguf_bytes(x)
    assert ours == ref
    _assert_bit_equal(decode(ours, "mxfp4", x.shape), _gguf_values(ref, x.shape))
    _assert_bit_equal(fake_quantize(x, "mxfp4"), _gguf_values(ref, x.shape))


def test_mxfp4_ties_follow_gguf_lower_magnitude_code():
    # block max 6 * 2**k fixes the scale at 2**k; then every midpoint of the E2M1 grid, both signs
    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0])
    rows = []
    for k in (-3, 0, 5):
        block = torch.zeros(32)
        block[0] = 6.0
        block[1:9], block[9:17] = mids, -mids
        rows.append(block * 2.0 ** k)
    x = torch.stack(rows)
    assert encode(x, "mxfp4") == _gguf_bytes(x)
    lower = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])  # ties toward zero (7 saturates to 6)
    even = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0])
    away = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 6.0])
    for rounding, want in ((None, lower), ("half_down", lower), ("even", even), ("nearest", away), ("floor", lower)):
        got = fake_quantize(x, "mxfp4", rounding=rounding)
        for i, k in enumerate((-3, 0, 5)):
            assert torch.equal(got[i, 1:9], want * 2.0 ** k), rounding
            assert torch.equal(got[i, 9:17], -want * 2.0 ** k), rounding


def test_mxfp4_nibble_layout_and_documented_gguf_divergences():
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 16], x[0, 1] = 6.0, -0.5, 1.5  # scale 1: codes 0b0111, 0b1001, 0b0011
    data = encode(x, "mxfp4")
    assert data[0] == 127 and data[1] == 0x7 | 0x9 << 4 and data[2] == 0x3
    # gguf's float32 log2 rounds 8 - ulp up to exponent 3; the exact OCP exponent is 2 (saturating at 6)
    x = torch.zeros(1, 32)
    x[0, 0] = float(np.nextafter(np.float32(8), np.float32(0)))
    assert _gguf_bytes(x)[0] == 128 and encode(x, "mxfp4")[0] == 127
    assert fake_quantize(x, "mxfp4")[0, 0] == 6.0
    # a block below 2**-125: gguf's uint8 exponent wraps, we clamp to E8M0 code 0 and flush to zero
    x[0, 0] = 1e-39
    assert encode(x, "mxfp4")[0] == 0 and fake_quantize(x, "mxfp4")[0, 0] == 0.0


# ------------------------------------------------------------------------------------- element grids


GRID_FACTS = {  # format: (number of non-negative values, smallest positive, largest)
    "mxint8": (128, 1 / 64, 127 / 64),
    "mxint4": (8, 0.25, 1.75),
    "mxfp8_e4m3": (127, 2.0 ** -9, 448.0),
    "mxfp8_e5m2": (124, 2.0 ** -16, 57344.0),
    "mxfp6_e2m3": (32, 0.125, 7.5),
    "mxfp6_e3m2": (32, 0.0625, 28.0),
    "mxfp4": (8, 0.5, 6.0),
}


def test_element_grids():
    for fmt, (count, smallest, largest) in GRID_FACTS.items():
        grid = element_format(fmt).grid()
        assert grid.numel() == count and grid[0] == 0 and grid[1] == smallest and grid[-1] == largest
        assert bool((grid[1:] > grid[:-1]).all())
        assert element_format(fmt).max_normal == largest
    assert element_format("mxfp4").grid().tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert element_format("mxfp6_e2m3").grid().tolist() == [i / 8 for i in range(16)] + [2 + i / 4 for i in range(8)] + [4 + i / 2 for i in range(8)]
    for fmt, dtype in (("mxfp8_e4m3", torch.float8_e4m3fn), ("mxfp8_e5m2", torch.float8_e5m2)):
        ref = torch.arange(128, dtype=torch.uint8).view(dtype).double()
        ref = ref[torch.isfinite(ref)]
        assert torch.equal(element_format(fmt).grid(), ref)


def _grid_blocks(fmt: str, s: int) -> torch.Tensor:
    """Blocks of 32 whose first element is max_normal * 2**s (fixing the scale at 2**s), then every
    signed grid value."""
    grid = element_format(fmt).grid()
    vals = torch.cat([grid, -grid[1:]])
    vals = torch.cat([vals, vals.new_zeros(-vals.numel() % 31)]).reshape(-1, 31)
    head = torch.full((vals.shape[0], 1), element_format(fmt).max_normal, dtype=torch.float64)
    return (torch.cat([head, vals], dim=1) * 2.0 ** s).float()


@pytest.mark.parametrize("fmt", MX_FORMATS)
@pytest.mark.parametrize("s", [-120, -4, 0, 9, 100])
def test_every_grid_value_maps_to_itself(fmt, s):
    x = _grid_blocks(fmt, s)
    for rounding in ROUNDING_MODES:
        _assert_bit_equal(fake_quantize(x, fmt, rounding=rounding), x)
    assert bool((torch.tensor(list(encode(x, fmt)[::x.shape[1] * element_format(fmt).bits // 8 + 1])) == s + 127).all())


@pytest.mark.parametrize("fmt", [f for f in MX_FORMATS if f.startswith("mxfp")])
def test_midpoints_round_by_mode(fmt):
    grid = element_format(fmt).grid()
    lo, hi = grid[:-1], grid[1:]
    mid = (lo + hi) / 2
    n = mid.numel()
    vals = torch.cat([mid, mid.new_zeros(-n % 31)]).reshape(-1, 31)
    head = torch.full((vals.shape[0], 1), element_format(fmt).max_normal, dtype=torch.float64)
    x = torch.cat([head, vals], dim=1).float()
    even_code = torch.arange(n) % 2 == 1  # hi's magnitude code is i + 1: even when i is odd
    want = {"even": torch.where(even_code, hi, lo), "nearest": hi, "floor": lo, "half_down": lo}
    for rounding, w in want.items():
        got = fake_quantize(x, fmt, rounding=rounding)[:, 1:].reshape(-1)[:n].double()
        assert torch.equal(got, w), rounding
        got = fake_quantize(-x, fmt, rounding=rounding)[:, 1:].reshape(-1)[:n].double()
        assert torch.equal(got, -w), rounding


# ----------------------------------------------------------------------------------- torch float8


@pytest.mark.parametrize("fmt,dtype", [("mxfp8_e4m3", torch.float8_e4m3fn), ("mxfp8_e5m2", torch.float8_e5m2)])
def test_mxfp8_matches_saturating_torch_cast(fmt, dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 256, generator=g) * torch.exp(4 * torch.randn(64, 256, generator=g))  # wide range: subnormals
    x[0, :32] = torch.linspace(-500, 500, 32)  # saturation
    ef = element_format(fmt)
    blocks = x.reshape(-1, 32)
    amax = blocks.abs().amax(dim=1, keepdim=True).double()
    scale = (2.0 ** (torch.floor(torch.log2(amax)) - ef.emax).clamp(-127, 127)).float()
    ref = ((blocks / scale).clamp(-ef.max_normal, ef.max_normal).to(dtype).float() * scale).reshape(x.shape)
    got = fake_quantize(x, fmt, rounding="even")
    assert torch.equal(got, ref)
    assert torch.equal(decode(encode(x, fmt, rounding="even"), fmt, x.shape), ref)


def test_fp8_saturation_and_subnormal_fixtures():
    x = torch.zeros(32)
    x[:8] = torch.tensor([500.0, 464.0, -470.0, 2.0 ** -9, 2.0 ** -10, 1.5 * 2.0 ** -10, 3 * 2.0 ** -10, 2.0 ** -11])
    want = [448.0, 448.0, -448.0, 2.0 ** -9, 0.0, 2.0 ** -9, 2.0 ** -8, 0.0]
    assert fake_quantize(x, "mxfp8_e4m3")[:8].tolist() == want
    assert fake_quantize(x, "mxfp8_e4m3", rounding="nearest")[:8].tolist() == [448.0, 448.0, -448.0, 2.0 ** -9, 2.0 ** -9, 2.0 ** -9, 2.0 ** -8, 0.0]
    y = torch.zeros(32)
    y[:6] = torch.tensor([60000.0, -61440.0, 2.0 ** -16, 2.0 ** -17, 3 * 2.0 ** -17, 5 * 2.0 ** -17])
    assert fake_quantize(y, "mxfp8_e5m2")[:6].tolist() == [57344.0, -57344.0, 2.0 ** -16, 0.0, 2.0 ** -15, 2.0 ** -15]
    # E3M2 (emax 4): block max 30 -> scale 1, saturates to 28; 0.03125 is half the smallest subnormal
    z = torch.zeros(32)
    z[:4] = torch.tensor([30.0, 0.03125, 0.09375, 0.1])
    assert fake_quantize(z, "mxfp6_e3m2")[:4].tolist() == [28.0, 0.0, 0.125, 0.125]


# ----------------------------------------------------------------------------- MX INT, microxcaling


def test_mxint_hand_fixtures():
    x = torch.zeros(32)
    # amax 3 -> shared exponent 1 (scale 2); mxint8 step 2/64, mxint4 step 2/4
    x[:7] = torch.tensor([3.0, 0.02, 2.5 / 32, -2.5 / 32, 0.1, 1.25, -1.25])
    assert fake_quantize(x, "mxint8")[:7].tolist() == [3.0, 0.03125, 0.0625, -0.0625, 0.09375, 1.25, -1.25]
    assert fake_quantize(x, "mxint8", rounding="nearest")[:4].tolist() == [3.0, 0.03125, 0.09375, -0.09375]
    assert fake_quantize(x, "mxint8", rounding="floor")[:5].tolist() == [3.0, 0.0, 0.0625, -0.0625, 0.09375]
    assert fake_quantize(x, "mxint4")[:7].tolist() == [3.0, 0.0, 0.0, -0.0, 0.0, 1.0, -1.0]
    assert fake_quantize(x, "mxint4", rounding="nearest")[5:7].tolist() == [1.5, -1.5]
    # saturation at 127/64 and 7/4 of the scale
    x[0] = 3.99
    assert fake_quantize(x, "mxint8")[0] == 127 / 64 * 2 and fake_quantize(x, "mxint4")[0] == 1.75 * 2
    # storage: exponent byte 128, two's complement codes
    data = encode(x.reshape(1, 32), "mxint8")
    assert data[0] == 128 and data[1] == 127 and data[2] == 1 and data[6] == 40 and data[7] == 0xD8  # -40
    data4 = encode(x.reshape(1, 32), "mxint4")  # byte j: code[2j] | code[2j+1] << 4; -2 -> 0xE
    assert data4[:5] == bytes([128, 0x07, 0x00, 0x20, 0x0E])


def test_mxint_is_bfp_with_one_fewer_mantissa_bit():
    x = torch.randn(8, 512, generator=torch.Generator().manual_seed(5))
    for rounding in ROUNDING_MODES:
        assert torch.equal(fake_quantize(x, "mxint8", rounding=rounding), fake_quantize(x, "bfp32m7", rounding=rounding))
        assert torch.equal(fake_quantize(x, "mxint4", rounding=rounding), fake_quantize(x, "bfp32m3", rounding=rounding))


# ------------------------------------------------------------------------------------ BFP invariants


def _block_exponent(block: list[float]) -> int:
    amax = max(abs(v) for v in block)
    return -127 if amax == 0 else max(-127, math.frexp(amax)[1] - 1)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 16), st.sampled_from([1, 3, 8, 16]), st.integers(1, 4), st.sampled_from(ROUNDING_MODES),
       st.data())
def test_bfp_invariants(m, block, nblocks, rounding, data):
    floats = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)
    vals = data.draw(st.lists(floats, min_size=block * nblocks, max_size=block * nblocks))
    fmt = f"bfp{block}m{m}"
    x = torch.tensor(vals, dtype=torch.float32)
    xq = fake_quantize(x, fmt, rounding=rounding)
    assert torch.equal(fake_quantize(xq, fmt, rounding=rounding), xq)  # idempotent
    assert decode(encode(x.reshape(1, -1), fmt, rounding=rounding), fmt, (1, x.numel())).reshape(-1).equal(xq)
    for b in range(nblocks):
        xs, qs = x[b * block:(b + 1) * block].double(), xq[b * block:(b + 1) * block].double()
        step = 2.0 ** (_block_exponent(xs.tolist()) - (m - 1))
        k = qs / step
        assert torch.equal(k, torch.round(k)) and bool((k.abs() <= 2 ** m - 1).all())
        err = (xs - qs).abs()
        saturated = k.abs() == 2 ** m - 1
        if rounding == "floor":
            assert bool((err < step).all()) and bool((qs.abs() <= xs.abs()).all())
        else:
            assert bool((err[~saturated] <= step / 2).all())
            assert bool((err[saturated] <= step).all())
        assert bool((qs * xs >= 0).all())  # never flips a sign


def test_bfp_zero_block_and_saturation():
    x = torch.zeros(2, 32)
    x[1, 0], x[1, 1] = 2.0 - 2.0 ** -20, 1.0  # E = 0; m = 4 step 1/8: the max saturates to 15/8
    assert torch.equal(fake_quantize(x, "bfp32m4"), torch.tensor([[0.0] * 32, [1.875, 1.0] + [0.0] * 30]))
    data = encode(x, "bfp32m4")
    assert len(data) == 2 * 21 and data[:21] == bytes(21) and data[21] == 127
    # 5-bit codes 15 (0b01111) and 8 (0b01000) as a little-endian bit stream after the exponent byte
    assert data[22:25] == bytes([0x0F, 0x01, 0x00])
    neg = encode(-x, "bfp32m4")  # sign-magnitude: bit 4 is the sign, codes 0b11111 and 0b11000
    assert neg[21] == 127 and neg[22:25] == bytes([0x1F, 0x03, 0x00])


# ---------------------------------------------------------------------------------------------- QSNR


@pytest.mark.parametrize("fmt,qsnr", [("mxint8", 41.6), ("mxfp8_e4m3", 30.7), ("mxfp6_e2m3", 30.9),
                                      ("mxfp4", 18.8), ("mxint4", 17.5)])
def test_qsnr_matches_reference_table(fmt, qsnr):
    r = roundtrip_error(fmt)
    assert r["qsnr_db"] == pytest.approx(qsnr, abs=0.3)
    assert r["rel_rmse"] == pytest.approx(10 ** (-qsnr / 20), rel=0.04)
    assert r["n"] == 64 * 4096 and r["bits"] == get_format(fmt).bits


def test_qsnr_orders_bfp_by_mantissa():
    r4, r8, r16 = roundtrip_error("bfp32m4")["qsnr_db"], roundtrip_error("bfp32m8")["qsnr_db"], roundtrip_error("bfp16m4")["qsnr_db"]
    assert r4 < r16 < r8 and r8 - r4 == pytest.approx(24, abs=0.5)  # ~6 dB per mantissa bit


# ------------------------------------------------------------------------------------ bytes and layout


@pytest.mark.parametrize("fmt", MX_FORMATS + BFP_FORMATS)
def test_bytes_match_registry_and_decode_is_bit_exact(fmt):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 128, generator=g) * torch.logspace(-8, 8, 6, base=2.0)[:, None]
    x[2, :] = 0.0
    nf = get_format(fmt)
    for rounding in ROUNDING_MODES:
        data = encode(x, fmt, rounding=rounding)
        assert len(data) == nf.tensor_bytes(tuple(x.shape))
        _assert_bit_equal(decode(data, fmt, x.shape), fake_quantize(x, fmt, rounding=rounding))


def test_unaligned_bfp_bit_stream_rounds_up_to_whole_bytes():
    x = torch.randn(1, 4, generator=torch.Generator().manual_seed(8))  # bfp4m4: 8 + 4 * 5 = 28 bits
    data = encode(x, "bfp4m4")
    assert len(data) == 4  # 3.5 B of blocks: the stream ends on a whole byte
    assert get_format("bfp4m4").tensor_bytes((1, 4)) == 4
    assert torch.equal(decode(data, "bfp4m4", (1, 4)), fake_quantize(x, "bfp4m4"))


def test_axis_pad_and_shapes():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 64, 5, generator=g)
    got = fake_quantize(x, "mxfp6_e3m2", axis=1)
    assert got.shape == x.shape and got.dtype == torch.float32
    assert torch.equal(got, fake_quantize(x.transpose(1, 2), "mxfp6_e3m2").transpose(1, 2))
    y = torch.randn(4, 40, generator=g, dtype=torch.float64)
    with pytest.raises(RidgelineError, match="not a multiple of the mxfp4 block size 32; pass pad=True"):
        fake_quantize(y, "mxfp4")
    padded = fake_quantize(torch.nn.functional.pad(y, (0, 24)), "mxfp4")[:, :40]
    assert torch.equal(fake_quantize(y, "mxfp4", pad=True), padded)
    assert fake_quantize(torch.randn(2, 48), "mxfp4", block=16).shape == (2, 48)
    z = torch.randn(2, 32, generator=g)
    assert torch.equal(fake_quantize(z, "bfp32m4", block=8), fake_quantize(z, "bfp8m4"))


def test_optional_torchao_oracle():
    mx_tensor = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
    x = torch.randn(16, 256, generator=torch.Generator().manual_seed(10))
    cases = [("mxfp8_e4m3", torch.float8_e4m3fn)]
    if hasattr(torch, "float4_e2m1fn_x2"):
        cases.append(("mxfp4", torch.float4_e2m1fn_x2))
    for fmt, dtype in cases:
        try:
            ref = mx_tensor.MXTensor.to_mx(x, dtype, 32).dequantize(torch.float32)
        except (TypeError, AttributeError, NotImplementedError) as exc:  # API drift across torchao versions
            pytest.skip(f"torchao MXTensor API differs: {exc}")
        assert torch.equal(fake_quantize(x, fmt, rounding="even"), ref)


# ---------------------------------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error():
    x = torch.randn(2, 32)
    with pytest.raises(RidgelineError, match="unknown MX/BFP format 'mxfp3'; supported: mxint8, .*bfp<block>m<mantissa>"):
        fake_quantize(x, "mxfp3")
    with pytest.raises(RidgelineError, match="unknown MX/BFP format 'q4_0'"):
        encode(x, "q4_0")
    bad = x.clone()
    bad[0, 3] = float("nan")
    with pytest.raises(RidgelineError, match="NaN or inf.*no NaN/inf encoding"):
        fake_quantize(bad, "mxfp8")
    bad[0, 3] = float("inf")
    with pytest.raises(RidgelineError, match="NaN or inf"):
        encode(bad, "mxint8")
    with pytest.raises(RidgelineError, match="encode expects a 2-D tensor"):
        encode(torch.randn(64), "mxfp4")
    with pytest.raises(RidgelineError, match="row length 48 is not a multiple of the mxfp4 block size 32"):
        encode(torch.randn(2, 48), "mxfp4")
    with pytest.raises(RidgelineError, match="must be 34 bytes, got 33"):
        decode(encode(x, "mxfp4")[:-1], "mxfp4", (1, 64))
    with pytest.raises(RidgelineError, match="unknown rounding 'up'; expected one of even, nearest, floor, half_down"):
        fake_quantize(x, "mxfp4", rounding="up")
    with pytest.raises(RidgelineError, match="E8M0 NaN"):
        decode(b"\xff" + bytes(32), "mxint8", (1, 32))
    with pytest.raises(RidgelineError, match="NaN/inf element codes"):
        decode(b"\x7f" + b"\x7f" * 32, "mxfp8_e4m3", (1, 32))
    with pytest.raises(RidgelineError, match="axis 2 is out of range"):
        fake_quantize(x, "mxfp4", axis=2)
    with pytest.raises(RidgelineError, match="block must be a positive integer"):
        fake_quantize(x, "mxfp4", block=0)
    with pytest.raises(RidgelineError, match="expects a torch.Tensor"):
        fake_quantize([1.0] * 32, "mxfp4")
    with pytest.raises(RidgelineError, match="positive multiple of the mxfp4 block size 32"):
        roundtrip_error("mxfp4", n=100)
