"""llama.cpp quantization recipes ("ftypes"): which ggml type each tensor of a GGUF file gets.

`llama-quantize model.gguf out.gguf Q4_K_M` does not write a uniform 4.5-bpw file. The ftype only
names a *default* type; `llama_tensor_get_type` in llama.cpp's `src/llama-quant.cpp` then moves
individual tensors up or down (the output head to Q6_K, some `attn_v` / `ffn_down` layers to Q6_K,
...) and finally replaces a type whose block does not divide the row length (Q4_K needs rows that
are a multiple of 256; Qwen2.5-0.5B's hidden size 896 is not, so most of its "Q4_K_M" file is Q5_0).

This module re-derives those rules as a pure function of (recipe, tensor name, shape, model
context). It was written from llama.cpp commit 007dbbf3fd17eefe9b47fee45f48f7ba5e62b714
(`src/llama-quant.cpp`: `tensor_allows_quantization`, `llama_tensor_get_type_impl`,
`tensor_type_fallback`, `llama_ftype_get_default_type`) and assumes what `llama-quantize` does by
default: no imatrix unless `RecipeContext.has_imatrix`, no `--pure`, no `--tensor-type`,
`--output-tensor-type` or `--token-embedding-type` overrides, output tensor quantized.

Where this pure function can differ from llama.cpp
---------------------------------------------------
llama.cpp decides some tensors with running counters that it increments per tensor seen, in the
loader's order (layer number, then name). Here the index is the layer number parsed from the name:

* `attn_v`-like tensors (`attn_v`, fused `attn_qkv`, MLA `attn_kv_b`) use the counter
  `i_attention_wv` over `n_attention_wv` = the number of such tensors in the file. With one per
  layer in every layer this is the layer number. Hybrid models whose attention sits in only some
  layers (Jamba, Granite-hybrid, Qwen3-Next, ...) number them 0..n_attention_wv-1 in llama.cpp; pass
  `n_attention_wv` for the right denominator, but the index here is still the layer number.
* `ffn_down` in a dense model (n_experts <= 1) uses the counter `i_ffn_down` over `n_layers`: equal to
  the layer number when every layer has exactly one `ffn_down`. With n_experts > 1 llama.cpp itself
  parses the layer from the name, so MoE models (`ffn_down_exps` + `ffn_down_shexp` in one layer)
  are exact here.
* The IQ1/IQ2 recipes test `ffn_down` with the raw counter even for MoE models; a MoE layer with
  both `ffn_down_exps` and `ffn_down_shexp` advances it twice, which the layer number does not model.
* "70B" (`LLM_TYPE_70B`, which raises some `attn_v` from Q3_K/Q4_K to Q5_K) is set per architecture by
  llama.cpp's loader; here: llama with 80 layers and GQA (not 8-expert), qwen2/deci with 80, jais2
  with 68 layers.

Tensors llama.cpp does not quantize keep the type they have in the source GGUF. For those this
module assumes a file made by `convert_hf_to_gguf.py`: F32 for 1-D tensors, norms, biases,
`ffn_gate_inp`, positional embeddings, SSM conv1d and the like; other (rare) unquantizable 2-D
tensors are reported as the recipe's type for float recipes and "f16" otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from ridgeline.errors import RidgelineError

__all__ = [
    "RECIPES",
    "RecipeContext",
    "is_recipe",
    "tensor_type",
    "use_more_bits",
    "allows_quantization",
    "tensor_category",
    "RECIPE_ALIASES",
]

#: `llama-quantize` type name (lower-case) -> the ftype's default ggml type (llama_ftype_get_default_type)
RECIPES: dict[str, str] = {
    # uniform "legacy" and float types
    "f32": "f32",
    "f16": "f16",
    "bf16": "bf16",
    "q8_0": "q8_0",
    "q5_1": "q5_1",
    "q5_0": "q5_0",
    "q4_1": "q4_1",
    "q4_0": "q4_0",
    "q1_0": "q1_0",
    "mxfp4_moe": "mxfp4",
    "nvfp4": "nvfp4",
    # k-quant mixtures
    "q6_k": "q6_k",
    "q5_k_m": "q5_k",
    "q5_k_s": "q5_k",
    "q4_k_m": "q4_k",
    "q4_k_s": "q4_k",
    "q3_k_l": "q3_k",
    "q3_k_m": "q3_k",
    "q3_k_s": "q3_k",
    "q2_k": "q2_k",
    "q2_k_s": "q2_k",
    # i-quant / ternary mixtures
    "iq4_xs": "iq4_xs",
    "iq4_nl": "iq4_nl",
    "iq3_m": "iq3_s",
    "iq3_s": "iq3_s",
    "iq3_xs": "iq3_s",
    "iq3_xxs": "iq3_xxs",
    "iq2_m": "iq2_s",
    "iq2_s": "iq2_xs",
    "iq2_xs": "iq2_xs",
    "iq2_xxs": "iq2_xxs",
    "iq1_m": "iq1_m",
    "iq1_s": "iq1_s",
    "tq2_0": "tq2_0",
    "tq1_0": "tq1_0",
}

#: `llama-quantize` also accepts these names for the "_M" mixtures. They are *not* in RECIPES
#: (and `is_recipe` is False for them) because "q4_k" etc. are also plain ggml block types.
RECIPE_ALIASES: dict[str, str] = {"q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m"}

_FLOAT_TYPES = frozenset({"f32", "f16", "bf16"})

_IQ_LOW = frozenset({"iq2_xxs", "iq2_xs", "iq1_s", "iq2_s", "iq2_m", "iq1_m"})

#: tensor_type_fallback: types with 256-wide blocks -> a 32-wide replacement
_FALLBACK = {
    "iq1_s": "iq4_nl",
    "iq1_m": "iq4_nl",
    "iq2_xxs": "iq4_nl",
    "iq2_xs": "iq4_nl",
    "iq2_s": "iq4_nl",
    "iq3_xxs": "iq4_nl",
    "iq3_s": "iq4_nl",
    "iq4_xs": "iq4_nl",
    "q2_0": "q4_0",
    "q2_k": "q4_0",
    "q3_k": "q4_0",
    "tq1_0": "q4_0",
    "tq2_0": "q4_0",
    "q4_k": "q5_0",
    "q5_k": "q5_1",
    "q6_k": "q8_0",
}

_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class RecipeContext:
    """Model facts the recipe rules look at (llama.cpp reads them from the model's hparams)."""

    n_layers: int  # number of repeating blocks (GGUF block_count)
    n_experts: int = 0  # hparams.n_expert
    n_gqa: int = 1  # n_head / n_head_kv (of layer 0)
    has_output: bool = True  # False when the model ties embeddings (no output.weight tensor)
    arch: str = "llama"  # llama.cpp arch name ("falcon" changes some rules)
    n_attention_wv: int | None = None  # count of attn_v-like tensors (defaults to n_layers)
    has_imatrix: bool = False  # quantized with --imatrix (changes a few IQ3_XXS/IQ4/Q4_0/Q5_0 rules)


def is_recipe(name: str) -> bool:
    """True for a `llama-quantize` ftype name listed in RECIPES (case-insensitive)."""
    return isinstance(name, str) and name.strip().lower() in RECIPES


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's layer pattern for extra bits: the first and last eighth, and every third between.

    Uses C integer division; i_layer - n/8 is never negative in the third test (the first catches it).
    """
    eighth = n_layers // 8
    return i_layer < eighth or i_layer >= (7 * n_layers) // 8 or (i_layer - eighth) % 3 == 2


def tensor_category(name: str) -> str:
    """llama.cpp's `tensor_get_category`: a coarse role from substrings of the GGUF name."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (
        ("attn_qkv.weight", "attn_qkv"),
        ("attn_kv_b.weight", "attn_kv_b"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if key in name:
            return cat
    return "other"


def _ggml_n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing ggml dims (leading torch dims) of size 1 do not count."""
    ne = list(reversed(shape)) or [1]
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


# substrings that keep a tensor out of quantization (tensor_allows_quantization)
_NO_QUANT_SUBSTRINGS = (
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
)

# what convert_hf_to_gguf.py always stores as F32 (besides 1-D tensors, norms and non-".weight")
_F32_SUBSTRINGS = (
    "ffn_gate_inp",
    "position_embd.weight",
    "token_types.weight",
    "ssm_conv1d",
    "shortconv.conv",
    "time_mix_first",
    "time_mix_w1",
    "time_mix_w2",
    "time_mix_decay_w1",
    "time_mix_decay_w2",
    "time_mix_lerp_fused",
    "posnet.",
)


def allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    """llama.cpp's `tensor_allows_quantization` (default params): 2-D/3-D `...weight` tensors only."""
    if _ggml_n_dims(tuple(shape)) < 2:
        return False
    if not name.endswith("weight"):
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    return not any(s in name for s in _NO_QUANT_SUBSTRINGS)


def _source_type(name: str, shape: tuple[int, ...], default: str) -> str:
    """Type of an unquantized tensor in a convert_hf_to_gguf.py file (see module docstring)."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return "f32"
    if any(s in name for s in _F32_SUBSTRINGS):
        return "f32"
    return default if default in _FLOAT_TYPES else "f16"


def _block_size(type_name: str) -> int:
    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType[type_name.upper()]][0]
    except KeyError:
        if type_name == "q2_0":  # not in every gguf release; 64-wide blocks
            return 64
        raise RidgelineError(f"unknown ggml type {type_name!r}") from None


def _fallback(type_name: str, ncols: int, name: str) -> str:
    """tensor_type_fallback: replace a type whose block does not divide the row length."""
    if ncols % _block_size(type_name) == 0:
        return type_name
    repl = _FALLBACK.get(type_name)
    if repl is None:
        raise RidgelineError(
            f"{name}: row length {ncols} is not a multiple of the {type_name} block "
            f"({_block_size(type_name)}) and llama.cpp defines no fallback for {type_name}"
        )
    if ncols % _block_size(repl) != 0:
        return "f16"
    return repl


def _layer_of(name: str) -> int:
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else 0


def _is_70b(ctx: RecipeContext) -> bool:
    arch = ctx.arch.lower()
    if arch == "llama":
        return ctx.n_layers == 80 and ctx.n_gqa != 1 and ctx.n_experts != 8
    if arch in ("qwen2", "deci"):
        return ctx.n_layers == 80
    if arch == "jais2":
        return ctx.n_layers == 68
    return False


def _mixture_type(ftype: str, new: str, name: str, ncols: int, ncount3: int, ctx: RecipeContext) -> str:
    """llama_tensor_get_type_impl for one tensor (before the shape fallback)."""
    cat = tensor_category(name)
    falcon = ctx.arch.lower() == "falcon"
    n_expert = ctx.n_experts
    gqa = ctx.n_gqa
    layer = _layer_of(name)
    n_wv = ctx.n_attention_wv if ctx.n_attention_wv is not None else ctx.n_layers
    n_layers = ctx.n_layers
    imatrix = ctx.has_imatrix

    if cat == "output" or (cat == "token_embd" and not ctx.has_output):
        if ftype == "mxfp4_moe" or falcon or ncols % _block_size(new) != 0:
            return "q8_0"
        if ftype in ("iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq2_s", "iq2_m", "iq1_m"):
            return "q5_k"
        return new if new == "q8_0" else "q6_k"

    if ftype == "mxfp4_moe":
        # expert tensors (3-D) -> MXFP4, everything else Q8_0 (bailingmoe3 special case omitted:
        # its 3-D MLA projections would stay Q8_0)
        expert_role = cat in ("ffn_up", "ffn_gate", "ffn_down")
        if ncount3 > 1 and (ctx.arch.lower() != "bailingmoe3" or expert_role):
            return "mxfp4"
        return "q8_0"

    if cat == "token_embd":
        if ftype in ("iq2_xxs", "iq2_xs", "iq1_s", "iq1_m"):
            return "q2_k"
        if ftype in ("iq2_s", "iq2_m", "iq3_xxs"):
            return "iq3_s"
        if ftype in ("tq1_0", "tq2_0", "q2_0"):
            return "q4_k"
        return new

    attn_v_like = cat in ("attn_v", "attn_qkv", "attn_kv_b")

    if ftype in _IQ_LOW:
        iq3 = ftype in ("iq2_s", "iq2_m")
        if attn_v_like:
            if gqa >= 4 or n_expert >= 4:
                return "q4_k"
            return "iq3_s" if iq3 else "q2_k"
        if n_expert == 8 and cat == "attn_k":
            return "q4_k"
        if cat == "ffn_down":
            # llama.cpp: running counter i_ffn_down < n_ffn_down/8 (see module docstring)
            if layer < n_layers // 8:
                return "iq3_s" if iq3 else "q2_k"
            return new
        if cat == "attn_output":
            if n_expert == 8:
                return "q5_k"
            if ftype in ("iq1_s", "iq1_m"):
                return "iq2_xxs"
            if iq3:
                return "iq3_s"
        return new

    if attn_v_like:
        i = layer
        if ftype == "q2_k":
            new = "q4_k" if gqa >= 4 else "q3_k"
        elif ftype == "q2_k_s" and gqa >= 4:
            new = "q4_k"
        elif ftype == "iq3_xxs":
            new = "q4_k" if gqa >= 4 else ("iq3_s" if not imatrix else "iq3_xxs")
        elif ftype in ("iq3_xs", "iq3_s") and gqa >= 4:
            new = "q4_k"
        elif ftype == "iq3_m":
            new = "q4_k"
        elif ftype == "q3_k_m":
            new = "q5_k" if i < 2 else "q4_k"
        elif ftype == "q3_k_l":
            new = "q5_k"
        elif ftype in ("iq4_nl", "iq4_xs") and gqa >= 4:
            new = "q5_k"
        elif ftype in ("q4_k_m", "q5_k_m") and use_more_bits(i, n_wv):
            new = "q6_k"
        elif ftype == "q4_k_s" and i < 4:
            new = "q5_k"
        if _is_70b(ctx) and new in ("q3_k", "q4_k"):
            new = "q5_k"
        if n_expert == 8:
            new = "q8_0"
        return new

    if cat == "attn_k":
        if n_expert == 8:
            return "q8_0"
        if ftype == "iq3_xs":
            return "iq3_xxs"
        if ftype == "iq3_xxs":
            return "iq2_s"
        return new

    if cat == "attn_q":
        if ftype == "iq3_xs":
            return "iq3_xxs"
        if ftype == "iq3_xxs":
            return "iq2_s"
        return new

    if cat == "ffn_down":
        i, n = layer, n_layers
        if ftype == "q2_k":
            return "q3_k"
        if ftype == "q2_k_s":
            return "q4_k" if i < n // 8 else new
        if ftype == "iq3_xxs" and not imatrix:
            return "q4_k" if i < n // 8 else "q3_k"
        if ftype == "q3_k_m":
            if i < n // 16:
                return "q5_k"
            return "q4_k" if (not falcon or use_more_bits(i, n)) else "q3_k"
        if ftype == "iq3_m" and (i < n // 8 or (n_expert == 8 and use_more_bits(i, n))):
            return "q4_k"
        if ftype == "q3_k_l":
            return "q4_k" if falcon else "q5_k"
        if ftype == "q4_k_m":
            if falcon:
                if i < n // 16:
                    return "q6_k"
                return "q5_k" if use_more_bits(i, n) else "q4_k"
            return "q6_k" if use_more_bits(i, n) else new
        if i < n // 8 and ftype in ("iq4_nl", "iq4_xs") and not imatrix:
            return "q5_k"
        if ftype == "q5_k_m" and use_more_bits(i, n):
            return "q6_k"
        if ftype == "q4_k_s" and not falcon and i < n // 8:
            return "q5_k"
        if ftype in ("q4_0", "q5_0") and imatrix and i < n // 8:
            return "q4_1" if ftype == "q4_0" else "q5_1"
        return new

    if cat == "attn_output":
        if not falcon:
            if n_expert == 8:
                if ftype in (
                    "q2_k", "iq3_xs", "iq3_xxs", "q3_k_s", "q3_k_m", "iq4_nl",
                    "q4_k_s", "q4_k_m", "iq3_s", "iq3_m", "iq4_xs",
                ):
                    return "q5_k"
                return new
            return {
                "q2_k": "q3_k",
                "iq3_xxs": "iq3_s",
                "q3_k_m": "q4_k",
                "q3_k_l": "q5_k",
                "iq3_m": "q4_k",
            }.get(ftype, new)
        return "q4_k" if ftype == "q3_k_l" else new

    # (attn_qkv is attn_v-like and handled above, as in llama.cpp's if/else chain, so the
    # "fused attn_qkv -> Q5_K/Q6_K" branch there is never reached.)

    if cat in ("ffn_gate", "ffn_up"):
        if ftype == "iq3_xs" and n_layers // 8 <= layer < (7 * n_layers) // 8:
            return "iq3_xxs"
        return new

    return new


def tensor_type(recipe: str, name: str, shape: tuple[int, ...], ctx: RecipeContext) -> str:
    """ggml type name (lower-case, e.g. 'q6_k', 'q5_0', 'f32', 'f16') llama.cpp would give this tensor.

    `shape` is the torch/numpy shape: the row length (ggml ne[0]) is shape[-1]; 3-D expert tensors are
    (n_expert, rows, row_length). Raises RidgelineError for an unknown recipe, or when llama.cpp itself
    would refuse (a row length that no fallback type divides for a legacy type such as Q8_0).
    """
    key = recipe.strip().lower() if isinstance(recipe, str) else ""
    key = RECIPE_ALIASES.get(key, key)
    if key not in RECIPES:
        raise RidgelineError(
            f"unknown llama.cpp quantization recipe {recipe!r}; expected one of {', '.join(sorted(RECIPES))}"
        )
    default = RECIPES[key]
    shape = tuple(int(d) for d in shape)
    if not allows_quantization(name, shape):
        return _source_type(name, shape, default)
    if default in _FLOAT_TYPES:
        # llama.cpp applies the mixture rules and shape fallbacks only to quantized default types
        return default
    ncols = shape[-1]
    ncount3 = shape[0] if len(shape) >= 3 else 1
    chosen = _mixture_type(key, default, name, ncols, ncount3, ctx)
    return _fallback(chosen, ncols, name)
