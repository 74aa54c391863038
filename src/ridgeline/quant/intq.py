"""Integer weight quantization: b-bit codes per output channel or per group of input columns.

One convention serves RTN, GPTQ and the packed kernels: codes q ∈ [0, 2^b − 1] with a scale s and an
integer zero point z per (row, group), dequantized as ŵ = s·(q − z).

* symmetric: s = max|w| / (2^(b−1) − 1), z = 2^(b−1), so q − z ∈ [−2^(b−1), 2^(b−1) − 1] and the
  largest magnitude is exact (int8: s = amax/127, the signed code q − 128 is what `_weight_int8pack_mm`
  takes);
* asymmetric (GPTQ's Quantizer): the range [min(w, 0), max(w, 0)] is split into 2^b − 1 steps,
  s = (max − min)/(2^b − 1), z = round(−min/s).

Scales are rounded to fp16 before the codes are computed, because fp16 is what the format stores
(the registry's int formats count an fp16 scale, plus an fp16 zero when asymmetric): the codes are
then the nearest ones for the scale actually used. Rounding is torch.round (half to even), as GPTQ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ridgeline.errors import RidgelineError

#: bit widths this module packs
BITS = (2, 3, 4, 5, 6, 7, 8)


def check_weight(w: torch.Tensor, what: str = "weight") -> None:
    """Raise unless `w` is a finite 2-D floating tensor (what every quantizer here expects)."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise RidgelineError(f"{what}: expected a 2-D weight [out_features, in_features], got {shape}")
    if not w.is_floating_point():
        raise RidgelineError(f"{what}: expected a floating-point weight, got {w.dtype}")
    if not torch.isfinite(w).all():
        bad = int((~torch.isfinite(w)).sum())
        raise RidgelineError(f"{what}: {bad} NaN/inf values in the weight; quantization needs finite weights")


def check_group(cols: int, group: int, what: str = "weight") -> int:
    """The group length for rows of `cols` columns (0 means one group per row).

    A group that does not divide the row leaves a shorter last group, as GPTQ's reference does: common
    hidden sizes (576, 896, 2880) are not multiples of 128.
    """
    if not isinstance(group, int) or group < 0:
        raise RidgelineError(f"{what}: group size must be 0 (per-channel) or a positive integer, got {group!r}")
    return cols if group == 0 else group


def n_groups(cols: int, group: int) -> int:
    """Groups per row (the last may be shorter)."""
    g = check_group(cols, group)
    return -(-cols // g)


def check_bits(bits: int) -> None:
    """Raise unless `bits` is a supported integer width."""
    if bits not in BITS:
        raise RidgelineError(f"unsupported integer width {bits} bits; expected one of {', '.join(map(str, BITS))}")


def qparams(x: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of `x` [rows, n] (fp16-representable scale, integer zero), both [rows]."""
    x = x.float()
    maxq = 2**bits - 1
    if sym:
        amax = x.abs().amax(dim=1)
        scale = amax / (2 ** (bits - 1) - 1)
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        xmin = x.amin(dim=1).clamp(max=0)
        xmax = x.amax(dim=1).clamp(min=0)
        scale = (xmax - xmin) / maxq
    # an all-zero row: any scale reproduces it; 1 keeps the codes at the zero point
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).half().float()
    if torch.isinf(scale).any():
        raise RidgelineError("weights too large for an fp16 scale (|w| / levels > 65504)")
    scale = torch.where(scale > 0, scale, torch.full_like(scale, 2.0**-24))  # fp16 underflow: smallest subnormal
    if not sym:
        zero = torch.round(-xmin / scale).clamp(0, maxq)
    return scale, zero


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes clamp(round(x/s) + z, 0, 2^b − 1) as float (scale/zero broadcast against x)."""
    return torch.clamp(torch.round(x.float() / scale) + zero, 0, 2**bits - 1)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """s·(q(x) − z): the value the codes stand for (GPTQ's per-column quantize step)."""
    return scale * (quantize_codes(x, scale, zero, bits) - zero)


@dataclass
class IntQuant:
    """A quantized weight: codes [out, in] (uint8), scale and zero [out, in/group] (fp32 holding fp16 values)."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group: int  # 0: per-channel
    sym: bool
    #: group of each input column when groups are not contiguous (GPTQ act-order without static groups)
    g_idx: torch.Tensor | None = None

    @property
    def group_size(self) -> int:
        """Columns per group (the row length when per-channel)."""
        return self.group or self.codes.shape[1]

    def column_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero expanded to one column each, [out, in]."""
        if self.g_idx is not None:
            return self.scale[:, self.g_idx], self.zero[:, self.g_idx]
        g, cols = self.group_size, self.codes.shape[1]
        return (self.scale.repeat_interleave(g, dim=1)[:, :cols], self.zero.repeat_interleave(g, dim=1)[:, :cols])

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """ŵ = s·(q − z), expanded over each group."""
        scale, zero = self.column_params()
        return (scale * (self.codes.float() - zero)).to(dtype)

    @property
    def format_name(self) -> str:
        """The registry name of this storage format (e.g. int4_g128_asym)."""
        return f"int{self.bits}_{'pc' if self.group == 0 else f'g{self.group}'}{'' if self.sym else '_asym'}"


def _padded(w: torch.Tensor, g: int) -> torch.Tensor:
    """`w` with zero columns appended up to a whole number of groups (zeros leave both conventions' params alone)."""
    pad = -w.shape[1] % g
    return torch.nn.functional.pad(w, (0, pad)) if pad else w


def group_params(w: torch.Tensor, bits: int, group: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero [rows, n_groups] of every group of `w` [rows, cols] at once."""
    rows, cols = w.shape
    g = check_group(cols, group)
    wp = _padded(w.float(), g)
    scale, zero = qparams(wp.reshape(-1, g), bits, sym)
    return scale.view(rows, -1), zero.view(rows, -1)


def rtn(w: torch.Tensor, bits: int, group: int = 0, sym: bool = True, what: str = "weight") -> IntQuant:
    """Round-to-nearest quantization of a 2-D weight, per channel (group 0) or per group of input columns."""
    check_weight(w, what)
    check_bits(bits)
    rows, cols = w.shape
    g = check_group(cols, group, what)
    scale, zero = group_params(w.detach(), bits, group, sym)
    x = _padded(w.detach().float(), g).view(rows, -1, g)
    codes = quantize_codes(x, scale.unsqueeze(-1), zero.unsqueeze(-1), bits).view(rows, -1)[:, :cols]
    return IntQuant(codes.to(torch.uint8).contiguous(), scale, zero, bits, group, sym)
