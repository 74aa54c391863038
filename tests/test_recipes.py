"""llama.cpp per-tensor quantization recipes (ridgeline.specs.recipes).

Expectations are written by hand from llama.cpp's `src/llama-quant.cpp` (commit 007dbbf3) rules and
from the anchors in the shared quantization/roofline references.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from conftest import BUNDLED_GGUF, needs_bundled
from ridgeline.errors import RidgelineError
from ridgeline.specs.recipes import (
    RECIPES,
    RecipeContext,
    allows_quantization,
    is_recipe,
    tensor_type,
    use_more_bits,
)


def nbytes(type_name: str, shape: tuple[int, ...]) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name.upper()]]
    n = math.prod(shape)
    assert n % block == 0
    return n // block * size


def dense_model(L, h, n_head, n_kv, hd, ff, vocab, tied, qkv_bias=False, rope_freqs=False):
    """(name, torch shape) for a llama/qwen2-style GGUF."""
    ts = [("token_embd.weight", (vocab, h)), ("output_norm.weight", (h,))]
    if not tied:
        ts.append(("output.weight", (vocab, h)))
    if rope_freqs:
        ts.append(("rope_freqs.weight", (hd // 2,)))
    for i in range(L):
        p = f"blk.{i}."
        ts += [
            (p + "attn_norm.weight", (h,)),
            (p + "ffn_norm.weight", (h,)),
            (p + "attn_q.weight", (n_head * hd, h)),
            (p + "attn_k.weight", (n_kv * hd, h)),
            (p + "attn_v.weight", (n_kv * hd, h)),
            (p + "attn_output.weight", (h, n_head * hd)),
            (p + "ffn_gate.weight", (ff, h)),
            (p + "ffn_up.weight", (ff, h)),
            (p + "ffn_down.weight", (h, ff)),
        ]
        if qkv_bias:
            ts += [
                (p + "attn_q.bias", (n_head * hd,)),
                (p + "attn_k.bias", (n_kv * hd,)),
                (p + "attn_v.bias", (n_kv * hd,)),
            ]
    return ts


def bpw(recipe, tensors, ctx):
    total_bytes = sum(nbytes(tensor_type(recipe, n, s, ctx), s) for n, s in tensors)
    total_elems = sum(math.prod(s) for n, s in tensors)
    return total_bytes * 8 / total_elems, total_bytes


LLAMA31_8B = dense_model(32, 4096, 32, 8, 128, 14336, 128256, tied=False, rope_freqs=True)
LLAMA31_CTX = RecipeContext(n_layers=32, n_gqa=4)

QWEN25_05B = dense_model(24, 896, 14, 2, 64, 4864, 151936, tied=True, qkv_bias=True)
QWEN25_CTX = RecipeContext(n_layers=24, n_gqa=7, has_output=False, arch="qwen2")

SMOL_CTX = RecipeContext(n_layers=30, n_gqa=3, has_output=False)

# use_more_bits(i, n) = i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2 (C integer division)
MORE_BITS_30 = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29}
MORE_BITS_32 = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}


# --- the recipe table --------------------------------------------------------------------------


def test_recipes_table_defaults():
    expected = {
        "q4_k_m": "q4_k", "q5_k_m": "q5_k", "q4_k_s": "q4_k", "q5_k_s": "q5_k", "q3_k_m": "q3_k",
        "q3_k_s": "q3_k", "q3_k_l": "q3_k", "q6_k": "q6_k", "q8_0": "q8_0", "q4_0": "q4_0",
        "q4_1": "q4_1", "q5_0": "q5_0", "q5_1": "q5_1", "q2_k": "q2_k", "f16": "f16",
        "bf16": "bf16", "f32": "f32", "iq4_xs": "iq4_xs", "iq2_m": "iq2_s", "iq3_xs": "iq3_s",
    }
    for k, v in expected.items():
        assert RECIPES[k] == v
    for k, v in RECIPES.items():
        assert k == k.lower() and v == v.lower()
        GGMLQuantizationType[v.upper()]  # every default is a real ggml type


def test_is_recipe():
    assert is_recipe("q4_k_m") and is_recipe("Q4_K_M") and is_recipe("q8_0") and is_recipe("f16")
    assert not is_recipe("q4_k")  # a block type (llama-quantize alias, deliberately not a recipe)
    assert not is_recipe("int4") and not is_recipe("")


def test_unknown_recipe_raises():
    with pytest.raises(RidgelineError):
        tensor_type("q4_k_xl", "blk.0.attn_q.weight", (4096, 4096), LLAMA31_CTX)


def test_alias_q4_k_is_q4_k_m():
    n = "blk.0.ffn_down.weight"
    assert tensor_type("q4_k", n, (4096, 14336), LLAMA31_CTX) == "q6_k"


# --- use_more_bits -----------------------------------------------------------------------------


@pytest.mark.parametrize("n, expected", [(30, MORE_BITS_30), (32, MORE_BITS_32)])
def test_use_more_bits_pattern(n, expected):
    assert {i for i in range(n) if use_more_bits(i, n)} == expected


@pytest.mark.parametrize("n, expected", [(30, MORE_BITS_30), (32, MORE_BITS_32)])
def test_q4_k_m_attn_v_and_ffn_down_layers(n, expected):
    ctx = RecipeContext(n_layers=n, n_gqa=4)
    v = {i for i in range(n) if tensor_type("q4_k_m", f"blk.{i}.attn_v.weight", (1024, 4096), ctx) == "q6_k"}
    d = {i for i in range(n) if tensor_type("q4_k_m", f"blk.{i}.ffn_down.weight", (4096, 14336), ctx) == "q6_k"}
    assert v == expected and d == expected
    others = {tensor_type("q4_k_m", f"blk.{i}.attn_v.weight", (1024, 4096), ctx) for i in range(n)} - {"q6_k"}
    assert others == {"q4_k"}


def test_n_attention_wv_is_the_attn_v_denominator():
    # 16 attention layers in a 32-block hybrid: use_more_bits(i, 16) for attn_v, (i, 32) for ffn_down
    ctx = RecipeContext(n_layers=32, n_attention_wv=16)
    assert tensor_type("q4_k_m", "blk.14.attn_v.weight", (1024, 4096), ctx) == "q6_k"  # 14 >= 7*16/8
    assert tensor_type("q4_k_m", "blk.14.ffn_down.weight", (4096, 14336), ctx) == "q4_k"


# --- output / token embeddings -----------------------------------------------------------------


def test_output_and_token_embd():
    assert tensor_type("q4_k_m", "output.weight", (128256, 4096), LLAMA31_CTX) == "q6_k"
    assert tensor_type("q4_k_m", "token_embd.weight", (128256, 4096), LLAMA31_CTX) == "q4_k"
    tied = RecipeContext(n_layers=32, has_output=False)
    assert tensor_type("q4_k_m", "token_embd.weight", (128256, 4096), tied) == "q6_k"
    # row not a multiple of 256 -> Q8_0
    assert tensor_type("q4_k_m", "output.weight", (49152, 576), LLAMA31_CTX) == "q8_0"
    # falcon always Q8_0
    falcon = RecipeContext(n_layers=32, arch="falcon")
    assert tensor_type("q4_k_m", "output.weight", (65024, 4544), falcon) == "q8_0"


@pytest.mark.parametrize(
    "recipe, expected",
    [("q8_0", "q8_0"), ("q4_0", "q6_k"), ("q4_1", "q6_k"), ("q5_1", "q6_k"), ("q6_k", "q6_k"),
     ("q2_k", "q6_k"), ("q5_k_s", "q6_k"), ("iq2_xs", "q5_k"), ("mxfp4_moe", "q8_0"),
     ("f16", "f16"), ("bf16", "bf16"), ("f32", "f32")],
)
def test_output_rule_per_recipe(recipe, expected):
    assert tensor_type(recipe, "output.weight", (128256, 4096), LLAMA31_CTX) == expected


def test_legacy_output_rule_checks_the_default_block_then_falls_back():
    # Q4_0 ftype: 576 % 32 == 0 -> Q6_K, which then needs 256 -> fallback Q8_0
    assert tensor_type("q4_0", "token_embd.weight", (49152, 576), SMOL_CTX) == "q8_0"
    assert tensor_type("q4_0", "token_embd.weight", (49152, 576), RecipeContext(n_layers=30)) == "q4_0"


# --- what stays unquantized ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shape",
    [
        ("output_norm.weight", (4096,)),
        ("blk.3.attn_norm.weight", (4096,)),
        ("blk.3.attn_q_norm.weight", (128,)),
        ("blk.3.attn_q.bias", (4096,)),
        ("blk.3.ffn_gate_inp.weight", (8, 4096)),
        ("position_embd.weight", (2048, 768)),
        ("token_types.weight", (2, 768)),
        ("blk.0.ssm_conv1d.weight", (5120, 4)),
        ("blk.0.ssm_a", (5120, 16)),
        ("rope_freqs.weight", (64,)),
    ],
)
def test_not_quantized_stay_f32(name, shape):
    for recipe in ("q4_k_m", "q8_0", "f16", "q4_0"):
        assert tensor_type(recipe, name, shape, LLAMA31_CTX) == "f32"


def test_ssm_projections_are_quantized():
    # only ssm_conv1d is excluded by name; ssm_in/ssm_out/ssm_x are ordinary 2-D weights
    assert allows_quantization("blk.0.ssm_in.weight", (10240, 2560))
    assert tensor_type("q4_k_m", "blk.0.ssm_out.weight", (2560, 5120), LLAMA31_CTX) == "q4_k"


def test_float_recipes_cover_all_2d_weights():
    for name, shape in [("token_embd.weight", (49152, 576)), ("blk.0.attn_q.weight", (576, 576)),
                        ("blk.0.ffn_down.weight", (576, 1536)), ("blk.0.ffn_up_exps.weight", (8, 1536, 576))]:
        assert tensor_type("f16", name, shape, SMOL_CTX) == "f16"
        assert tensor_type("bf16", name, shape, SMOL_CTX) == "bf16"


# --- shape fallback -----------------------------------------------------------------------------


def test_shape_fallbacks():
    ctx = RecipeContext(n_layers=30)
    q = "blk.4.attn_q.weight"
    assert tensor_type("q4_k_m", q, (576, 576), ctx) == "q5_0"
    assert tensor_type("q5_k_m", q, (576, 576), ctx) == "q5_1"
    assert tensor_type("q6_k", q, (576, 576), ctx) == "q8_0"
    assert tensor_type("q3_k_s", q, (576, 576), ctx) == "q4_0"
    assert tensor_type("q2_k", q, (576, 576), ctx) == "q4_0"
    assert tensor_type("iq4_xs", q, (576, 576), ctx) == "iq4_nl"
    # not even a multiple of 32 -> F16
    assert tensor_type("q4_k_m", q, (576, 100), ctx) == "f16"
    # legacy types have no fallback: llama.cpp refuses
    with pytest.raises(RidgelineError):
        tensor_type("q8_0", q, (576, 100), ctx)


def test_row_length_is_last_dim_for_experts():
    ctx = RecipeContext(n_layers=48, n_experts=128, n_gqa=8)
    # (n_expert, rows, row_length): row 768 = 3*256 is fine for K-quants
    assert tensor_type("q4_k_m", "blk.10.ffn_gate_exps.weight", (128, 768, 2048), ctx) == "q4_k"
    assert tensor_type("q4_k_m", "blk.10.ffn_up_exps.weight", (128, 768, 2880), ctx) == "q5_0"


# --- SmolLM2-135M -------------------------------------------------------------------------------


def test_smollm2_135m_q4_k_m():
    h, ff = 576, 1536
    for i in range(30):
        p = f"blk.{i}."
        for n, s in [("attn_q", (h, h)), ("attn_k", (192, h)), ("attn_output", (h, h)),
                     ("ffn_gate", (ff, h)), ("ffn_up", (ff, h))]:
            assert tensor_type("q4_k_m", p + n + ".weight", s, SMOL_CTX) == "q5_0"
        # attn_v: Q6_K on use_more_bits layers -> fallback Q8_0; Q4_K -> Q5_0 elsewhere
        v = tensor_type("q4_k_m", p + "attn_v.weight", (192, h), SMOL_CTX)
        assert v == ("q8_0" if i in MORE_BITS_30 else "q5_0")
        # ffn_down rows are 1536 = 6*256: real K-quants
        d = tensor_type("q4_k_m", p + "ffn_down.weight", (h, ff), SMOL_CTX)
        assert d == ("q6_k" if i in MORE_BITS_30 else "q4_k")
    assert tensor_type("q4_k_m", "token_embd.weight", (49152, h), SMOL_CTX) == "q8_0"


@needs_bundled
def test_matches_real_smollm2_q4_1_file():
    from gguf import GGUFReader

    reader = GGUFReader(str(BUNDLED_GGUF))
    names = {t.name for t in reader.tensors}
    ctx = RecipeContext(n_layers=30, n_gqa=3, has_output="output.weight" in names)
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape))
        assert tensor_type("q4_1", t.name, shape, ctx) == t.tensor_type.name.lower(), t.name


# --- whole-model anchors ------------------------------------------------------------------------


def test_llama31_8b_q4_k_m_bpw():
    x, total = bpw("q4_k_m", LLAMA31_8B, LLAMA31_CTX)
    assert abs(x - 4.8944) < 0.005
    assert abs(total / 2**30 - 4.58) < 0.01
    types = Counter(tensor_type("q4_k_m", n, s, LLAMA31_CTX) for n, s in LLAMA31_8B)
    # 16 attn_v + 16 ffn_down + output on Q6_K; everything 2-D else Q4_K; 65 norms + rope_freqs F32
    assert types == {"q6_k": 33, "q4_k": 7 * 32 - 32 + 1, "f32": 66}


def test_llama31_8b_uniform_anchors():
    assert abs(bpw("q8_0", LLAMA31_8B, LLAMA31_CTX)[0] - 8.5008) < 0.0005
    assert abs(bpw("f16", LLAMA31_8B, LLAMA31_CTX)[0] - 16.0) < 0.001


def test_qwen25_05b_q4_k_m():
    layer = [(n, s) for n, s in QWEN25_05B if n.startswith("blk.") and len(s) >= 2]
    by_type: Counter[str] = Counter()
    bytes_by_type: Counter[str] = Counter()
    for n, s in layer:
        t = tensor_type("q4_k_m", n, s, QWEN25_CTX)
        by_type[t] += math.prod(s)
        bytes_by_type[t] += nbytes(t, s)
    n_w, n_b = sum(by_type.values()), sum(bytes_by_type.values())
    assert set(by_type) == {"q5_0", "q4_k", "q6_k", "q8_0"}
    assert abs(by_type["q5_0"] / n_w - 0.70) < 0.01  # 70 % Q5_0 (0.704 of weights, 0.701 of bytes)
    assert abs(bytes_by_type["q4_k"] / n_b - 0.12) < 0.01  # "12 % Q4_K" (by bytes; 14.6 % of weights)
    # The 5.52 bpw anchor is the repeating layers' figure: (sum of their bytes) / (their weights).
    assert abs(n_b * 8 / n_w - 5.52) < 0.01
    # The whole file is heavier: the tied 151936 x 896 embedding (27.5 % of all weights) is Q8_0
    # because 896 % 256 != 0, which lifts the file to ~6.35 bpw (391.9 MB of tensor data).
    x, total = bpw("q4_k_m", QWEN25_05B, QWEN25_CTX)
    assert tensor_type("q4_k_m", "token_embd.weight", (151936, 896), QWEN25_CTX) == "q8_0"
    assert abs(x - 6.345) < 0.01
    assert abs(total / 1e6 - 391.86) < 0.1


# --- other recipes and model-specific rules ---------------------------------------------------------


def test_q4_k_s_and_q3_k_m_rules():
    ctx = RecipeContext(n_layers=32, n_gqa=4)
    v = [tensor_type("q4_k_s", f"blk.{i}.attn_v.weight", (1024, 4096), ctx) for i in range(6)]
    assert v == ["q5_k"] * 4 + ["q4_k"] * 2
    d = [tensor_type("q4_k_s", f"blk.{i}.ffn_down.weight", (4096, 14336), ctx) for i in range(6)]
    assert d == ["q5_k"] * 4 + ["q4_k"] * 2
    v = [tensor_type("q3_k_m", f"blk.{i}.attn_v.weight", (1024, 4096), ctx) for i in range(4)]
    assert v == ["q5_k", "q5_k", "q4_k", "q4_k"]
    d = [tensor_type("q3_k_m", f"blk.{i}.ffn_down.weight", (4096, 14336), ctx) for i in range(4)]
    assert d == ["q5_k", "q5_k", "q4_k", "q4_k"]  # i < 32/16 -> Q5_K, else Q4_K (non-falcon)
    assert tensor_type("q3_k_m", "blk.5.attn_output.weight", (4096, 4096), ctx) == "q4_k"
    assert tensor_type("q3_k_m", "blk.5.attn_q.weight", (4096, 4096), ctx) == "q3_k"
    assert tensor_type("q2_k", "blk.5.attn_v.weight", (1024, 4096), ctx) == "q4_k"  # gqa >= 4
    assert tensor_type("q2_k", "blk.5.ffn_down.weight", (4096, 14336), ctx) == "q3_k"
    assert tensor_type("q5_k_m", "blk.6.ffn_down.weight", (4096, 14336), ctx) == "q6_k"
    assert tensor_type("q5_k_m", "blk.7.ffn_down.weight", (4096, 14336), ctx) == "q5_k"


def test_falcon_q4_k_m_ffn_down():
    ctx = RecipeContext(n_layers=32, arch="falcon")
    d = [tensor_type("q4_k_m", f"blk.{i}.ffn_down.weight", (4544, 18176), ctx)
         for i in (0, 1, 2, 6, 7)]
    assert d == ["q6_k", "q6_k", "q5_k", "q5_k", "q4_k"]


def test_70b_attn_v_bump():
    ctx = RecipeContext(n_layers=80, n_gqa=8)
    assert tensor_type("q4_k_m", "blk.11.attn_v.weight", (1024, 8192), ctx) == "q5_k"
    assert tensor_type("q4_k_m", "blk.12.attn_v.weight", (1024, 8192), ctx) == "q6_k"  # use_more_bits
    small = RecipeContext(n_layers=32, n_gqa=4)
    assert tensor_type("q4_k_m", "blk.11.attn_v.weight", (1024, 4096), small) == "q4_k"


def test_mixtral_8_experts():
    ctx = RecipeContext(n_layers=32, n_experts=8, n_gqa=4)
    assert tensor_type("q4_k_m", "blk.7.attn_v.weight", (1024, 4096), ctx) == "q8_0"
    assert tensor_type("q4_k_m", "blk.7.attn_k.weight", (1024, 4096), ctx) == "q8_0"
    assert tensor_type("q4_k_m", "blk.7.attn_output.weight", (4096, 4096), ctx) == "q5_k"
    assert tensor_type("q4_k_m", "blk.6.ffn_down_exps.weight", (8, 4096, 14336), ctx) == "q6_k"
    assert tensor_type("q4_k_m", "blk.7.ffn_down_exps.weight", (8, 4096, 14336), ctx) == "q4_k"
    assert tensor_type("q4_k_m", "blk.7.ffn_gate_inp.weight", (8, 4096), ctx) == "f32"


def test_fused_qkv_and_mla_follow_attn_v_rule():
    # at this llama.cpp commit attn_qkv / attn_kv_b are "attn_v-like": Q6_K on use_more_bits layers
    ctx = RecipeContext(n_layers=32)
    assert tensor_type("q4_k_m", "blk.0.attn_qkv.weight", (9216, 3072), ctx) == "q6_k"
    assert tensor_type("q4_k_m", "blk.4.attn_qkv.weight", (9216, 3072), ctx) == "q4_k"
    assert tensor_type("q4_k_m", "blk.6.attn_kv_b.weight", (32768, 512), ctx) == "q6_k"
    assert tensor_type("q4_k_m", "blk.4.attn_q_b.weight", (24576, 1536), ctx) == "q4_k"


def test_mxfp4_moe():
    ctx = RecipeContext(n_layers=24, n_experts=32, n_gqa=8)
    assert tensor_type("mxfp4_moe", "blk.3.ffn_up_exps.weight", (32, 2880, 2880), ctx) == "mxfp4"
    assert tensor_type("mxfp4_moe", "blk.3.attn_q.weight", (4096, 2880), ctx) == "q8_0"


def test_imatrix_rules():
    ctx = RecipeContext(n_layers=32, has_imatrix=True)
    assert tensor_type("q4_0", "blk.1.ffn_down.weight", (4096, 14336), ctx) == "q4_1"
    assert tensor_type("q4_0", "blk.1.ffn_down.weight", (4096, 14336), LLAMA31_CTX) == "q4_0"
