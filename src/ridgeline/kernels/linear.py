"""Packed weights for the native linear kernels, built from plain tensors and a format name.

A `PackedLinear` owns a weight repacked once into the kernels' streaming layout (16-row groups of
64-byte tiles, scales beside them; see csrc/packed.h) and computes y = x·Wᵀ (+ bias) for float32
activations of up to 16 rows per kernel call (longer inputs are cut into chunks of 16).

Sources, all taken bit for bit (no value changes):
* `from_float(w, "f32" | "bf16")`: float weights; bf16 activations are rounded to bf16 (torch's bf16
  matmul semantics, fp32 accumulation), fp32 weights take fp32 activations.
* `from_blocks(data, fmt, shape)`: the exact bytes `ridgeline.quant.codec.encode` writes for ggml types
  (q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, mxfp4), mxint8, and Harmonia's BFP (bfp32m4,
  bfp32m8): one row of blocks per output row.
* `from_int(codes, scale, zero, bits, group, mins=None, perm=None)`: integer codes q (uint8 [N, K]),
  w = scale·(q − zero) [+ mins] per (row, group); RTN/GPTQ codes, a ragged last group, and act-order
  through `perm` (packed column i reads input column perm[i]; groups are then contiguous).

Quantized formats quantize the activation per block of 32 to int8 (see `quantize_activation`) and run
int8 dot products (W8A8 / W4A8, as llama.cpp does). `act_mode` says how the int8 activation is scaled:
"block" (amax/127 per block of 32, the default), "row" (one scale per row: W8A8Linear's dynamic
per-token quantization, reproduced exactly) or "mxint8" (a power-of-two scale per block: exactly the
mxint8 activation fake quantization of EmulatedLinear's act_format="mxint8").
"""

from __future__ import annotations

import torch

from ridgeline.errors import RidgelineError
from ridgeline.kernels.runtime import native

#: native format names -> the C++ enum (csrc/packed.h)
FORMATS: dict[str, int] = {"f32": 0, "bf16": 1, "q8_0": 2, "q4_0": 3, "q4_1": 4, "q5_0": 5, "q5_1": 6, "q4_k": 7,
                           "q5_k": 8, "q6_k": 9, "mxfp4": 10, "mxint8": 11, "bfp32m4": 12, "bfp32m8": 13,
                           "int8": 14, "int4": 15}
#: formats `from_blocks` takes (byte codecs)
BLOCK_FORMATS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "mxfp4", "mxint8", "bfp32m4",
                 "bfp32m8")
#: registry spellings of the same formats
_ALIASES = {"fp32": "f32", "float32": "f32", "bfloat16": "bf16"}
_NAMES = {v: k for k, v in FORMATS.items()}
#: int8 activation scaling modes (csrc/act.h ActMode)
ACT_MODES: dict[str, int] = {"block": 0, "row": 1, "mxint8": 2}


def native_format(name: str) -> str:
    """The native kernel format for a registry / ggml format name; RidgelineError if there is none."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise RidgelineError(f"no native kernel for format {name!r}; native formats: {', '.join(FORMATS)}")
    return key


def _check_x(x: torch.Tensor, k: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != k:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise RidgelineError(f"native linear expects activations [..., {k}], got {shape}")
    return x.reshape(-1, k).to(torch.float32).contiguous()


class PackedLinear:
    """A weight in the native streaming layout; `self(x)` is x·Wᵀ (+ bias) in float32."""

    def __init__(self, handle: object, bias: torch.Tensor | None = None, act_mode: str = "block") -> None:
        """Wrap a packed handle from the native module (use the from_* constructors)."""
        if act_mode not in ACT_MODES:
            raise RidgelineError(f"act_mode must be one of {', '.join(ACT_MODES)}, got {act_mode!r}")
        code, n, k, nbytes = native().packed_info(handle)
        self.handle, self.fmt = handle, _NAMES[code]
        self.out_features, self.in_features, self.stream_bytes = int(n), int(k), int(nbytes)
        self.act_mode = act_mode
        self.bias = None if bias is None else bias.detach().to(torch.float32).contiguous()
        if self.bias is not None and self.bias.shape != (self.out_features,):
            raise RidgelineError(f"bias must have shape ({self.out_features},), got {tuple(self.bias.shape)}")

    @classmethod
    def from_float(cls, weight: torch.Tensor, fmt: str | None = None, bias: torch.Tensor | None = None) -> PackedLinear:
        """Float weights [N, K] as "f32" or "bf16" (default: the weight's own dtype, bf16 for bf16 else f32)."""
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            raise RidgelineError("from_float takes a 2-D floating-point weight [out_features, in_features]")
        fmt = native_format(fmt or ("bf16" if weight.dtype == torch.bfloat16 else "f32"))
        if fmt not in ("f32", "bf16"):
            raise RidgelineError(f"from_float packs f32 or bf16 weights, not {fmt}")
        w = weight.detach().to(torch.float32 if fmt == "f32" else torch.bfloat16).contiguous()
        n, k = w.shape
        return cls(native().pack_float(FORMATS[fmt], w.data_ptr(), n, k), bias)

    @classmethod
    def from_blocks(cls, data: bytes | torch.Tensor, fmt: str, shape: tuple[int, int],
                    bias: torch.Tensor | None = None, act_mode: str = "block") -> PackedLinear:
        """Codec bytes of a [N, K] weight in a block format (q8_0 ... q6_k, mxfp4, mxint8, bfp32m4/m8)."""
        fmt = native_format(fmt)
        if fmt not in BLOCK_FORMATS:
            raise RidgelineError(f"from_blocks takes a block format ({', '.join(BLOCK_FORMATS)}), not {fmt}")
        raw = (data.detach().contiguous().view(torch.uint8).reshape(-1) if isinstance(data, torch.Tensor)
               else torch.frombuffer(bytearray(data), dtype=torch.uint8))
        n, k = (int(s) for s in shape)
        from ridgeline.specs import get_format

        expected = get_format(fmt).tensor_bytes((n, k))
        if raw.numel() != expected:
            raise RidgelineError(f"{fmt} data for shape {(n, k)} must be {expected} bytes, got {raw.numel()}")
        return cls(native().pack_blocks(FORMATS[fmt], raw.data_ptr(), n, k), bias, act_mode)

    @classmethod
    def from_int(cls, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group: int,
                 mins: torch.Tensor | None = None, perm: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 act_mode: str = "block") -> PackedLinear:
        """Integer codes [N, K] (0 .. 2^bits − 1) with scale/zero [N, groups]: w = scale·(q − zero) [+ mins].

        `group` 0 means per channel; a group must be a multiple of 32. `perm` [K] reorders the columns
        before grouping (GPTQ act-order): packed column i is input column perm[i].
        """
        if bits not in (4, 8):
            raise RidgelineError(f"native integer kernels take 4- or 8-bit codes, got {bits}")
        if codes.dim() != 2:
            raise RidgelineError(f"integer codes must be 2-D [out, in], got {tuple(codes.shape)}")
        n, k = codes.shape
        g = k if group == 0 else int(group)
        ngroups = -(-k // g)
        if tuple(scale.shape) != (n, ngroups) or tuple(zero.shape) != (n, ngroups):
            raise RidgelineError(f"scale and zero must be [{n}, {ngroups}] for group {g}, got {tuple(scale.shape)} "
                                 f"and {tuple(zero.shape)}")
        c = codes.detach().to(torch.uint8).contiguous()
        s = scale.detach().to(torch.float32).contiguous()
        z = zero.detach().round().to(torch.int32).contiguous()
        m = None if mins is None else mins.detach().to(torch.float32).contiguous()
        p = None
        if perm is not None:
            p = perm.detach().to(torch.int32).contiguous()
            if p.shape != (k,) or not torch.equal(torch.sort(p).values, torch.arange(k, dtype=torch.int32)):
                raise RidgelineError(f"perm must be a permutation of range({k})")
        if m is not None and tuple(m.shape) != (n, ngroups):
            raise RidgelineError(f"mins must be [{n}, {ngroups}], got {tuple(m.shape)}")
        handle = native().pack_int(bits, c.data_ptr(), s.data_ptr(), z.data_ptr(), 0 if m is None else m.data_ptr(),
                                   0 if p is None else p.data_ptr(), n, k, g)
        out = cls(handle, bias, act_mode)
        out._perm = p  # kept for the reference path (quantize_activation) and for inspection
        return out

    @property
    def perm(self) -> torch.Tensor | None:
        """The act-order column permutation, if any."""
        return getattr(self, "_perm", None)

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., K] (any float dtype) -> y [..., N] float32 (into `out`, float32 [rows, N], if given)."""
        lead = x.shape[:-1]
        x2 = x if (x.dtype == torch.float32 and x.dim() == 2 and x.is_contiguous()
                   and x.shape[1] == self.in_features) else _check_x(x, self.in_features)
        rows, n = x2.shape[0], self.out_features
        if out is None:
            out = torch.empty(rows, n, dtype=torch.float32)
        elif out.dtype != torch.float32 or not out.is_contiguous() or out.numel() != rows * n:
            raise RidgelineError(f"out must be a contiguous float32 tensor of {rows} x {n} values")
        linear = native().linear
        bias = 0 if self.bias is None else self.bias.data_ptr()
        mode, xp, yp, k = ACT_MODES[self.act_mode], x2.data_ptr(), out.data_ptr(), self.in_features
        for m0 in range(0, rows, 16):
            linear(self.handle, xp + 4 * m0 * k, min(16, rows - m0), yp + 4 * m0 * n, bias, mode)
        return out.view(*lead, n)

    def __repr__(self) -> str:
        return (f"PackedLinear({self.fmt}, out_features={self.out_features}, in_features={self.in_features}, "
                f"stream_bytes={self.stream_bytes})")


def quantize_activation(x: torch.Tensor, act_mode: str = "block",
                        perm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The native int8 activation blocks of x [M, K] (K a multiple of 32): (codes int8 [M, K],
    scales float32 [M, K/32], code sums int32 [M, K/32]); x ≈ codes · scale per block."""
    x2 = x.detach().to(torch.float32).contiguous()
    if x2.dim() != 2 or x2.shape[1] % 32:
        raise RidgelineError(f"quantize_activation takes [M, K] with K a multiple of 32, got {tuple(x.shape)}")
    m, k = x2.shape
    q = torch.empty(m, k, dtype=torch.int8)
    d = torch.empty(m, k // 32, dtype=torch.float32)
    s = torch.empty(m, k // 32, dtype=torch.int32)
    p = None if perm is None else perm.to(torch.int32).contiguous()
    if act_mode not in ACT_MODES:
        raise RidgelineError(f"act_mode must be one of {', '.join(ACT_MODES)}, got {act_mode!r}")
    native().quantize_act(x2.data_ptr(), m, k, ACT_MODES[act_mode], 0 if p is None else p.data_ptr(), q.data_ptr(),
                          d.data_ptr(), s.data_ptr())
    return q, d, s
