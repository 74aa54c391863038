"""The calibration-free methods: RTN, LLM.int8() (and plain W8A8), MX/BFP, and llama.cpp's GGUF recipes.

Each is a handler of the registry (`@register_handler(Config)`); GPTQ (`sequential.py`) and SmoothQuant
(`smoothquant.py`) register themselves the same way.
"""

from __future__ import annotations

from torch import nn

from ridgeline.quant.config import BFPConfig, GGUFConfig, LLMInt8Config, RTNConfig
from ridgeline.quant.intq import check_weight, rtn
from ridgeline.quant.linear import EmulatedLinear, QuantLinear, W8A8Linear, from_int_quant
from ridgeline.quant.modules import bias_of, float_weight, set_module, target_linears
from ridgeline.quant.registry import QuantizeContext, register_handler


def _replace_each(model: nn.Module, include_lm_head: bool, ctx: QuantizeContext | None,
                  make) -> dict[str, QuantLinear]:
    """Swap every target linear for `make(fqn, module)`, reporting progress."""
    targets = target_linears(model, include_lm_head)
    new = {}
    for i, (fqn, m) in enumerate(targets.items()):
        new[fqn] = make(fqn, m)
        set_module(model, fqn, new[fqn])
        if ctx is not None:
            ctx.report(i + 1, len(targets), fqn)
    return new


@register_handler(RTNConfig)
def quantize_rtn(model: nn.Module, config: RTNConfig, ctx: QuantizeContext) -> dict[str, QuantLinear]:
    """Round-to-nearest integer codes, on the CPU kernels where the format has one."""
    return _replace_each(model, config.include_lm_head, ctx, lambda fqn, m: from_int_quant(
        rtn(float_weight(m, fqn), config.bits, config.group, config.sym, what=fqn), bias_of(m), kernel=config.kernel))


def quantize_w8a8(model: nn.Module, threshold: float | None, include_lm_head: bool,
                  ctx: QuantizeContext | None) -> dict[str, QuantLinear]:
    """int8 per-channel weights × int8 per-token activations; with a threshold, LLM.int8()'s outlier columns."""
    return _replace_each(model, include_lm_head, ctx, lambda fqn, m: W8A8Linear.from_quant(
        rtn(float_weight(m, fqn), 8, 0, True, what=fqn), bias_of(m), threshold))


@register_handler(LLMInt8Config)
def quantize_llm_int8(model: nn.Module, config: LLMInt8Config, ctx: QuantizeContext) -> dict[str, QuantLinear]:
    """LLM.int8(): W8A8 through `torch._int_mm`, outlier input columns in floating point."""
    return quantize_w8a8(model, config.threshold, config.include_lm_head, ctx)


@register_handler(BFPConfig)
def quantize_bfp(model: nn.Module, config: BFPConfig, ctx: QuantizeContext) -> dict[str, QuantLinear]:
    """MX/BFP weights (and optionally activations), emulated: no kernel for these formats here."""
    return _replace_each(model, config.include_lm_head, ctx, lambda fqn, m: EmulatedLinear.from_weight(
        float_weight(m, fqn), config.weight_format, bias_of(m), config.act_format))


@register_handler(GGUFConfig)
def quantize_gguf(model: nn.Module, config: GGUFConfig, ctx: QuantizeContext) -> dict[str, QuantLinear]:
    """Each tensor gets the ggml type llama.cpp's recipe gives it; weights pass through the exact codecs."""
    from ridgeline.quant.codec import decode, encode
    from ridgeline.quant.gguf_names import gguf_name, recipe_context
    from ridgeline.specs import tensor_type

    rctx = recipe_context(model)
    floats: dict[str, str] = {}

    def make(fqn: str, m: nn.Linear) -> nn.Module:
        w = float_weight(m, fqn)
        ggml_type = tensor_type(config.recipe, gguf_name(fqn), tuple(w.shape), rctx)
        if ggml_type not in ("f32", "f16", "bf16"):
            return EmulatedLinear.from_weight(w, ggml_type, bias_of(m))
        floats[gguf_name(fqn)] = ggml_type
        if ggml_type != "f32":
            m.weight.data = decode(encode(w, ggml_type), ggml_type, w.shape).to(m.weight.dtype)
        return m

    new = {fqn: m for fqn, m in _replace_each(model, False, ctx, make).items() if isinstance(m, QuantLinear)}
    if config.include_embeddings:
        floats.update(_quantize_embeddings(model, config.recipe, rctx))
    ctx.manifest["float_tensors"] = floats
    return new


def _quantize_embeddings(model: nn.Module, recipe: str, rctx) -> dict[str, str]:
    """llama.cpp stores token_embd (and output, or token_embd again when tied) in a recipe type, and both the
    lookup and the logits read the quantized values: replacing the float values by the decoded ones emulates
    exactly that. The dequantized values stay in the model's float dtype."""
    from ridgeline.quant.codec import decode, encode
    from ridgeline.specs import tensor_type

    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    floats = {}
    for name, mod in (("token_embd.weight", embed), ("output.weight", None if tied else head)):
        if mod is None:
            continue
        w = mod.weight.detach().float()
        check_weight(w, name)
        # with tied embeddings the context says there is no output tensor: token_embd gets the output rules
        ggml_type = tensor_type(recipe, name, tuple(w.shape), rctx)
        if ggml_type != "f32":
            mod.weight.data = decode(encode(w, ggml_type), ggml_type, w.shape).to(mod.weight.dtype)
        floats[name] = ggml_type + (" (stored dequantized)" if ggml_type != "f32" else "")
    return floats
