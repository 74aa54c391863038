"""The format registry: bits per element with block overhead, exact tensor bytes, clear errors."""

import pytest

from ridgeline.errors import RidgelineError
from ridgeline.specs.formats import get_format, list_formats
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
