"""The format registry: bits per element with block overhead, exact tensor bytes, clear errors."""

import pytest

from ridgeline.errors import RidgelineError
from ridgeline.specs.formats import get_format, get_kv_format, list_formats
from ridgeline.specs.scenario import Precision


@pytest.mark.parametrize("name,bits", [
    ("fp32", 32), ("bf16", 16), ("fp16", 16), ("f16", 16),
    ("q8_0", 8.5), ("q4_0", 4.5), ("q4_1", 5.0), ("q5_0", 5.5), ("q4_k", 4.5), ("q5_k", 5.5), ("q6_k", 6.5625),
    ("q2_k", 2.625), ("q3_k", 3.4375), ("iq4_nl", 4.5), ("iq4_xs", 4.25),
    ("mxint8", 8.25), ("mxint4", 4.25), ("mxfp8_e4m3", 8.25), ("mxfp8_e5m2", 8.25), ("mxfp6", 6.25),
    ("mxfp6_e3m2", 6.25), ("mxfp4", 4.25),
    ("bfp32m4", (32 * 5 + 8) / 32),  # sign + 4 mantissa bits, 8-bit shared exponent per 32: 5.25
    ("bfp(16,8)", (16 * 9 + 8) / 16),
    ("int4_g128", 4 + 16 / 128), ("int4_g128_asym", 4 + 32 / 128), ("int8_g32", 8 + 16 / 32),
    ("int3_g128", 3 + 16 / 128), ("int4_g64", 4 + 16 / 64),
])
def test_bits_per_element(name, bits):
    assert get_format(name).bits == pytest.approx(bits)


def test_per_channel_overhead_depends_on_row():
    f = get_format("int8")
    assert f.bits_for_row(4096) == pytest.approx(8 + 16 / 4096)
    assert f.tensor_bytes((10, 4096)) == 10 * (4096 + 2)
    assert get_format("int4_pc_asym").tensor_bytes((3, 100)) == 3 * (50 + 4)


def test_block_tensor_bytes_and_row_check():
    assert get_format("q4_k").tensor_bytes((2, 512)) == 2 * 2 * 144
    assert get_format("mxfp4").tensor_bytes((1, 64)) == 2 * 17
    with pytest.raises(RidgelineError, match="not a multiple of the q4_k block size 256"):
        get_format("q4_k").tensor_bytes((4, 576))


@pytest.mark.parametrize("bad", ["q9_9", "int9_g128", "bfp0m4", "int4_g0", "nonsense"])
def test_unknown_formats_are_clear_errors(bad):
    with pytest.raises(RidgelineError, match="format"):
        get_format(bad)


def test_recipe_is_not_a_format_but_a_weight_precision():
    with pytest.raises(RidgelineError, match="recipe"):
        get_format("q4_k_m")
    assert Precision(weights="Q4_K_M").weights == "q4_k_m"
    with pytest.raises(RidgelineError):
        Precision(kv="q4_k_m")


def test_registry_lists_every_family():
    fams = {f.family for f in list_formats()}
    assert fams == {"float", "ggml", "mx", "int", "bfp"}


def test_compute_dtype_from_activations():
    assert Precision(acts="fp32").compute_dtype == "fp32"
    assert Precision(acts="int8").compute_dtype == "int8"
    assert Precision(acts="bf16", compute="int8").compute_dtype == "int8"


# ---------------------------------------------------------------------------------------------
# KV-cache formats that mix precisions over positions (KIVI, Harmonia); per-token row of 32 numbers

ROW = 32
FP16_ROW = 64  # bytes of 32 fp16 numbers
KIVI2_ROW = 32 * 2 // 8 + 4  # 2-bit codes + fp16 scale + fp16 zero per group of 32: 12 bytes (3 bits/number)
KIVI4_ROW = 32 * 4 // 8 + 4  # 20 bytes (5 bits/number)
BFP8_ROW = (32 * 9 + 8) // 8  # sign + 8-bit mantissa each, one 8-bit exponent: 37 bytes (9.25 bits)
BFP4_ROW = (32 * 5 + 8) // 8  # sign + 4-bit mantissa: 21 bytes (5.25 bits)


@pytest.mark.parametrize("name,canonical", [
    ("kivi2", "kivi2_g32_r128"), ("KIVI-4", "kivi4_g32_r128"), ("kivi2_g16_r64", "kivi2_g16_r64"),
    ("kivi4_r256", "kivi4_g32_r256"), ("harmonia", "harmonia_s32_r128"), ("harmonia_s4_r8", "harmonia_s4_r8"),
    ("bf16", "bf16"), ("f16", "fp16"), ("bfp32m4", "bfp32m4"), ("mxint8", "mxint8"), ("q8_0", "q8_0"),
])
def test_kv_format_names(name, canonical):
    assert get_kv_format(name).name == canonical


@pytest.mark.parametrize("bad,needle", [
    ("kivi2_g32_r100", "multiple of G"), ("kivi2_g64_r32", "multiple of G"), ("kivi2_g0", "G >= 1"),
    ("kivi1", "2..8 bits"), ("kivi9", "2..8 bits"), ("kivi3_g4", "whole bytes"), ("fp9", "kivi2"),
    ("q4_k_m", "recipe"),
])
def test_bad_kv_formats_are_clear_errors(bad, needle):
    with pytest.raises(RidgelineError, match=needle):
        get_kv_format(bad)
    with pytest.raises(RidgelineError):
        Precision(kv=bad)


# (L, keys quantized, keys fp16, values quantized, values fp16): keys only in whole chunks of R = 128,
# values keep the last 128 in fp16
KIVI_SPLITS = [(1, 0, 1, 0, 1), (5, 0, 5, 0, 5), (31, 0, 31, 0, 31), (32, 0, 32, 0, 32), (100, 0, 100, 0, 100),
               (127, 0, 127, 0, 127), (128, 128, 0, 0, 128), (129, 128, 1, 1, 128), (256, 256, 0, 128, 128),
               (300, 256, 44, 172, 128)]


@pytest.mark.parametrize("L,kq,kf,vq,vf", KIVI_SPLITS)
def test_kivi_bytes_by_hand(L, kq, kf, vq, vf):
    kivi2, kivi4 = get_kv_format("kivi2"), get_kv_format("kivi4")
    assert kivi2.cache_bytes(L, ROW, key=True) == kq * KIVI2_ROW + kf * FP16_ROW
    assert kivi2.cache_bytes(L, ROW, key=False) == vq * KIVI2_ROW + vf * FP16_ROW
    assert kivi2.layer_bytes(L, ROW, ROW) == (kq + vq) * KIVI2_ROW + (kf + vf) * FP16_ROW
    assert kivi4.layer_bytes(L, ROW, ROW) == (kq + vq) * KIVI4_ROW + (kf + vf) * FP16_ROW


def test_kivi_parameters_by_hand():
    # G 16, R 64 at L = 300: keys 256 quantized + 44 fp16, values 236 + 64; a row is 2 groups of 16
    f = get_kv_format("kivi2_g16_r64")
    row = 32 * 2 // 8 + 2 * 4
    assert f.layer_bytes(300, ROW, ROW) == (256 + 236) * row + (44 + 64) * FP16_ROW


# (L, tokens at 8-bit mantissa, at 4-bit): the first S = 32 and the last R = 128 held tokens at 8 bits
@pytest.mark.parametrize("L,hi,lo", [(1, 1, 0), (31, 31, 0), (100, 100, 0), (160, 160, 0), (161, 160, 1),
                                     (300, 160, 140)])
def test_harmonia_bytes_by_hand(L, hi, lo):
    f = get_kv_format("harmonia")
    assert f.cache_bytes(L, ROW, key=True) == f.cache_bytes(L, ROW, key=False) == hi * BFP8_ROW + lo * BFP4_ROW
    assert get_kv_format("harmonia_s4_r8").layer_bytes(20, ROW, ROW) == 2 * (12 * BFP8_ROW + 8 * BFP4_ROW)


@pytest.mark.parametrize("name,ratio", [("kivi2", 0.1875), ("kivi4", 0.3125), ("bf16", 1.0),
                                        ("harmonia", 1 / 3.05), ("bfp32m4", 1 / 3.05), ("mxint8", 8.25 / 16)])
def test_kv_bytes_relative_to_fp16_at_long_context(name, ratio):
    fp16 = get_kv_format("fp16").layer_bytes(10**6, 64, 64)
    assert get_kv_format(name).layer_bytes(10**6, 64, 64) / fp16 == pytest.approx(ratio, rel=2e-3)


def test_kv_writes_add_up_to_every_byte_stored():
    # decode step by step: a new token in its position's format, plus tokens re-quantized as they leave fp16
    kivi = get_kv_format("kivi2")
    assert kivi.write_bytes(0, 300, ROW, True) == kivi.cache_bytes(300, ROW, True)  # prefill: the cache itself
    assert kivi.write_bytes(300, 1, ROW, True) == FP16_ROW  # key 301 joins the fp16 tail of 45
    assert kivi.write_bytes(383, 1, ROW, True) == 128 * KIVI2_ROW  # key 384 completes a chunk: 128 quantized
    assert kivi.write_bytes(300, 1, ROW, False) == FP16_ROW + KIVI2_ROW  # value 301 in fp16, value 173 quantized
    assert kivi.write_bytes(50, 1, ROW, False) == FP16_ROW
    h = get_kv_format("harmonia")
    assert h.write_bytes(0, 300, ROW, True) == h.cache_bytes(300, ROW, True)
    assert h.write_bytes(159, 1, ROW, True) == BFP8_ROW  # 160 tokens: all sinks or recent
    assert h.write_bytes(160, 1, ROW, False) == BFP8_ROW + BFP4_ROW  # token 33 leaves the recent window
    assert h.write_bytes(10, 30, ROW, True) == 30 * BFP8_ROW
    uniform = get_kv_format("q8_0")
    assert uniform.write_bytes(123, 2, ROW, True) == 2 * 34
