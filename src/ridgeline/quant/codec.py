"""One entry point for the byte codecs: ggml block types (`ggml.py`) and MX / BFP (`mx.py`)."""

from __future__ import annotations

import torch

from ridgeline.errors import RidgelineError
from ridgeline.specs import get_format


def _family(fmt: str) -> tuple[str, str]:
    """(family, canonical name) of a format; families with a byte codec only."""
    f = get_format(fmt)
    if f.family in ("ggml", "mx", "bfp") or f.name in ("fp32", "fp16", "bf16"):
        return f.family, f.name
    raise RidgelineError(f"format {fmt!r} has no byte codec; integer formats are stored as codes + scales "
                         "(ridgeline.quant.intq.rtn), byte codecs cover ggml types, MX and BFP")


def _ggml_name(name: str) -> str:
    return {"fp32": "f32", "fp16": "f16"}.get(name, name)


def encode(x: torch.Tensor, fmt: str) -> bytes:
    """Encode a 2-D float tensor (rows = x.shape[0]) into `fmt`'s exact storage bytes."""
    family, name = _family(fmt)
    if family in ("mx", "bfp"):
        from ridgeline.quant import mx

        return mx.encode(x, name)
    from ridgeline.quant import ggml

    return ggml.encode(x, _ggml_name(name))


def decode(data: bytes, fmt: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Decode `fmt` bytes back to an fp32 tensor of `shape`."""
    family, name = _family(fmt)
    if family in ("mx", "bfp"):
        from ridgeline.quant import mx

        return mx.decode(data, name, tuple(shape))
    from ridgeline.quant import ggml

    return ggml.decode(data, _ggml_name(name), tuple(shape))


def check_act_format(fmt: str, row: int) -> None:
    """Raise unless `fmt` is an MX/BFP format whose block divides an activation row of `row` elements."""
    f = get_format(fmt)
    if f.family not in ("mx", "bfp"):
        raise RidgelineError(f"activation format {fmt!r} must be an MX or BFP format (e.g. mxint8, bfp32m8)")
    f.check_row(row, "activations")


def fake_quantize_act(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Quantize-dequantize activations in an MX/BFP format along the last dimension (emulated)."""
    from ridgeline.quant import mx

    return mx.fake_quantize(x.float(), get_format(fmt).name, axis=-1)
