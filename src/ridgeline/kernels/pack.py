"""Pack a model's linear modules for the native kernels: nn.Linear and ridgeline.quant's quantized modules.

The quantized modules are read by duck typing — their class name and the stored buffers `quantize_`
leaves in them (what `state_dict` saves) — so this module imports nothing from ridgeline.quant and the
quant package may import kernels later without a cycle. Every value is taken as stored:

| module | stored | native format, activation |
|---|---|---|
| nn.Linear | fp32 / bf16 weight | f32 / bf16, float activations |
| Int8Linear | int8 codes, bf16 scale per row | int8 per channel, int8 activation blocks |
| W8A8Linear | int8 codes, fp32 scale per row | int8 per channel, one activation scale per row (exactly W8A8Linear's) |
| Int4Linear | torch's int4 pack + bf16 (scale, zero) per group | int4 with w = s·(q − 8) + zero, codes read back from the packed weight |
| EmulatedLinear (integer) | codes, fp16 scale and zero, optional g_idx | int4 / int8 per group or channel; act-order g_idx as a column permutation |
| EmulatedLinear (blocks) | ggml / MX / BFP bytes (qdata) | the same bytes repacked; act_format mxint8 reproduced exactly |

Anything else (other bit widths, LLM.int8() outlier thresholds, MX/BFP activation formats other than
mxint8, ggml types without a kernel) raises RidgelineError with a one-line reason, which callers record
and then run the module as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from ridgeline.errors import RidgelineError
from ridgeline.kernels.linear import PackedLinear, native_format


def _bias(module: nn.Module) -> torch.Tensor | None:
    b = getattr(module, "bias", None)
    return None if b is None else b.detach().float()


def _int4_codes(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes, scales and zeros of an Int4Linear: w = (q − 8)·scale + zero per group.

    torch's packed int4 layout is opaque, so the codes are read back through the kernel itself (its
    dequantization of the identity) and checked: re-dequantizing them must give the kernel's weight.
    """
    k, g = module.in_features, module.group
    w = module.dequantize().float()  # [n, k], the kernel's values (bf16-rounded)
    sz = module.scales_zeros.float()  # [groups, n, 2]
    scale, zero = sz[..., 0].t().contiguous(), sz[..., 1].t().contiguous()
    s_col = scale.repeat_interleave(g, dim=1)[:, :k]
    z_col = zero.repeat_interleave(g, dim=1)[:, :k]
    safe = torch.where(s_col != 0, s_col, torch.ones_like(s_col))
    q = torch.where(s_col != 0, torch.round((w - z_col) / safe + 8), torch.full_like(w, 8.0)).clamp(0, 15)
    back = ((q - 8) * s_col + z_col).bfloat16().float()
    if not torch.equal(back, w):
        raise RidgelineError("Int4Linear: could not read the int4 codes back from torch's packed weight")
    return q.to(torch.uint8), scale, zero


def _perm_from_g_idx(g_idx: torch.Tensor, group: int, k: int) -> torch.Tensor:
    """The column order that makes act-order groups contiguous; RidgelineError unless they are then runs of `group`."""
    perm = torch.sort(g_idx.long(), stable=True).indices
    if not torch.equal(g_idx.long()[perm], torch.arange(k) // group):
        raise RidgelineError(f"act-order groups are not runs of {group} columns in any column order; "
                             "no native kernel (quantize with static groups)")
    return perm


def pack_module(module: nn.Module, float_format: str | None = None) -> PackedLinear:
    """A PackedLinear computing what `module` computes (bias included); RidgelineError when no kernel fits.

    `float_format` ("f32" or "bf16") overrides the packing of plain nn.Linear weights (default: their dtype).
    """
    name = type(module).__name__
    bias = _bias(module)
    if isinstance(module, nn.Linear):
        if module.weight.dtype not in (torch.float32, torch.bfloat16) and float_format is None:
            raise RidgelineError(f"no native kernel for {module.weight.dtype} weights (use fp32 or bf16)")
        return PackedLinear.from_float(module.weight, float_format, bias)
    if name in ("Int8Linear", "W8A8Linear"):
        if getattr(module, "threshold", None) is not None:
            raise RidgelineError("LLM.int8() outlier columns (W8A8Linear threshold) have no native kernel")
        codes = (module.weight_int8.to(torch.int16) + 128).to(torch.uint8)
        scale = module.scales.float()[:, None]
        zero = torch.full_like(scale, 128.0)
        return PackedLinear.from_int(codes, scale, zero, 8, 0, bias=bias,
                                     act_mode="row" if name == "W8A8Linear" else "block")
    if name == "Int4Linear":
        codes, scale, zero = _int4_codes(module)
        return PackedLinear.from_int(codes, scale, torch.full_like(scale, 8.0), 4, module.group, mins=zero, bias=bias)
    if name == "EmulatedLinear":
        params = getattr(module, "int_params", None)
        if params is not None:
            bits, group = params["bits"], params["group"]
            if bits not in (4, 8):
                raise RidgelineError(f"no native kernel for {bits}-bit integer weights (4 and 8 bits have one)")
            k = module.in_features
            g = group or k
            if g % 32:
                raise RidgelineError(f"no native kernel for integer groups of {g} (multiples of 32 have one)")
            g_idx = getattr(module, "g_idx", None)
            perm = None if g_idx is None else _perm_from_g_idx(g_idx, g, k)
            return PackedLinear.from_int(module.codes, module.scale.float(), module.zero.float(), bits, group,
                                         perm=perm, bias=bias)
        act = getattr(module, "act_format", None)
        if act not in (None, "mxint8"):
            raise RidgelineError(f"no native kernel for {act} activations (int8 blocks and mxint8 have one)")
        fmt = native_format(module.fmt)
        return PackedLinear.from_blocks(module.qdata, fmt, (module.out_features, module.in_features), bias,
                                        "mxint8" if act == "mxint8" else "block")
    raise RidgelineError(f"no native kernel for {name} modules")
