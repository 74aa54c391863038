"""Quantized drop-in replacements for nn.Linear: real CPU kernels where torch has one, emulation otherwise.

| module | weights | kernel |
|---|---|---|
| Int8Linear | int8 per channel, symmetric | `torch._weight_int8pack_mm` (bf16 activations) |
| Int4Linear | int4 per group 32/64/128/256 | `torch._weight_int4pack_mm_for_cpu` (bf16 activations) |
| W8A8Linear | int8 per channel × int8 per token (dynamic); with a threshold, LLM.int8() outlier columns in float | `torch._int_mm` |
| EmulatedLinear | any int width/group, ggml block types, MX/BFP (+ optional MX/BFP activations) | none: dequantize, then `F.linear` |

Every module keeps its stored representation in persistent buffers (what `state_dict` saves), knows its
registry format (`weight_format`) and stored bytes, says which kernel runs it (`kernel`, "emulated" when
none), can rebuild an empty copy of itself from `spec()` (for loading), and can be concatenated along the
output rows with another of the same kind (`cat`), which the lean decode path uses to fuse q/k/v and
gate/up. Kernels that want bf16 activations get them: inputs in other dtypes are cast to bf16 and the
output cast back, so the arithmetic is the kernel's whatever dtype the model runs in.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ridgeline.errors import RidgelineError
from ridgeline.quant.intq import IntQuant

#: group sizes `_weight_int4pack_mm_for_cpu` accepts
INT4_KERNEL_GROUPS = (32, 64, 128, 256)


class QuantLinear(nn.Module):
    """Base class: y = x·Ŵᵀ + b with Ŵ held in a quantized form."""

    kernel: str = "emulated"
    #: persistent buffers indexed by output row along the given dim (for `cat`)
    row_dims: dict[str, int] = {}

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        """Record the shape; the bias (if any) stays in floating point."""
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @property
    def emulated(self) -> bool:
        """True when no fused kernel runs this module (dequantize-then-matmul)."""
        return self.kernel == "emulated"

    @property
    def weight_format(self) -> str:
        """Registry name of the stored weight format."""
        raise NotImplementedError

    def weight_bytes(self) -> int:
        """Bytes of the weight as its format stores it (the registry's count)."""
        from ridgeline.specs import get_format

        return get_format(self.weight_format).tensor_bytes((self.out_features, self.in_features))

    def dequantize(self) -> torch.Tensor:
        """The weight this module multiplies by, as an fp32 [out, in] tensor."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """Constructor arguments of an empty module of this shape (saved next to the weights)."""
        return {"class": type(self).__name__, "in_features": self.in_features,
                "out_features": self.out_features, "bias": self.bias is not None}

    @classmethod
    def empty(cls, spec: dict[str, Any]) -> QuantLinear:
        """A module with zero-filled buffers of the right shapes, ready for `load_state_dict`."""
        raise NotImplementedError

    @classmethod
    def cat(cls, modules: list[QuantLinear]) -> QuantLinear:
        """One module computing the outputs of `modules` concatenated (rows stacked in order)."""
        first = modules[0]
        if getattr(first, "g_idx", None) is not None:
            raise RidgelineError("cannot fuse act-order weights with per-column groups (g_idx); "
                                 "quantize with static groups to fuse")
        def key(m: QuantLinear) -> dict:  # everything but the row count must agree
            return {k: v for k, v in m.spec().items() if k not in ("out_features", "buffers")}

        for m in modules[1:]:
            if type(m) is not type(first) or key(m) != key(first):
                raise RidgelineError(f"cannot fuse {first.weight_format} with {m.weight_format} "
                                     f"({type(first).__name__} / {type(m).__name__})")
        spec = dict(first.spec(), out_features=sum(m.out_features for m in modules))
        out = cls.empty(spec)
        for name, dim in {**first.row_dims, **({"bias": 0} if first.bias is not None else {})}.items():
            setattr(out, name, torch.cat([getattr(m, name) for m in modules], dim=dim))
        return out

    def _finish(self, y: torch.Tensor, dtype: torch.dtype, lead: tuple[int, ...]) -> torch.Tensor:
        """Add the bias, cast back to the input dtype and restore the leading dimensions."""
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(dtype).view(*lead, self.out_features)

    def extra_repr(self) -> str:
        """Shape, format and kernel, as print(model) shows them."""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.weight_format}, kernel={self.kernel}, bias={self.bias is not None}")


class Int8Linear(QuantLinear):
    """int8 weight-only, symmetric per output channel, through `torch._weight_int8pack_mm`."""

    kernel = "_weight_int8pack_mm"
    row_dims = {"weight_int8": 0, "scales": 0}

    def __init__(self, weight_int8: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """weight_int8 [out, in] int8, scales [out] (stored bf16: the kernel wants the activation dtype)."""
        super().__init__(weight_int8.shape[1], weight_int8.shape[0], bias)
        self.register_buffer("weight_int8", weight_int8.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.to(torch.bfloat16).contiguous())

    @classmethod
    def from_quant(cls, q: IntQuant, bias: torch.Tensor | None = None) -> Int8Linear:
        """From an 8-bit symmetric per-channel IntQuant."""
        if q.bits != 8 or q.group != 0 or not q.sym or q.g_idx is not None:
            raise RidgelineError(f"Int8Linear needs int8 per-channel symmetric weights, not {q.format_name}")
        return cls((q.codes.to(torch.int16) - 128).to(torch.int8), q.scale[:, 0], bias)

    @property
    def weight_format(self) -> str:
        """int8 per channel, symmetric."""
        return "int8_pc"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """bf16 activations through the int8 weight-only kernel."""
        lead = x.shape[:-1]
        y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features).to(torch.bfloat16), self.weight_int8,
                                      self.scales)
        return self._finish(y, x.dtype, lead)

    def dequantize(self) -> torch.Tensor:
        """q·s with the bf16 scale the kernel uses."""
        return self.weight_int8.float() * self.scales.float()[:, None]

    @classmethod
    def empty(cls, spec: dict[str, Any]) -> Int8Linear:
        """Zero buffers of the spec's shape."""
        n, k = spec["out_features"], spec["in_features"]
        return cls(torch.zeros(n, k, dtype=torch.int8), torch.zeros(n), torch.zeros(n) if spec["bias"] else None)


class Int4Linear(QuantLinear):
    """int4 weight-only per group, through `torch._weight_int4pack_mm_for_cpu` (bf16 activations).

    The kernel dequantizes w = (q − 8)·scale + zero per group; our codes mean s·(q − z), so the kernel's
    zero is (8 − z)·s. Scales and zeros are bf16 [groups, out, 2] as the kernel wants them. When the group
    does not divide the input width (576 = 4.5 × 128) the packed weight gets zero-code columns up to a whole
    group and the activations are zero-padded to match: the padded products are exactly zero.
    """

    kernel = "_weight_int4pack_mm_for_cpu"
    row_dims = {"packed": 0, "scales_zeros": 1}

    def __init__(self, packed: torch.Tensor, scales_zeros: torch.Tensor, group: int, sym: bool, in_features: int,
                 bias: torch.Tensor | None = None) -> None:
        """packed uint8 [out, padded_in/2] from `_convert_weight_to_int4pack_for_cpu`, scales_zeros [groups, out, 2]."""
        super().__init__(in_features, packed.shape[0], bias)
        self.group, self.sym = group, sym
        self.pad = packed.shape[1] * 2 - in_features
        self.register_buffer("packed", packed.contiguous())
        self.register_buffer("scales_zeros", scales_zeros.to(torch.bfloat16).contiguous())

    @classmethod
    def from_quant(cls, q: IntQuant, bias: torch.Tensor | None = None) -> Int4Linear:
        """From a 4-bit per-group IntQuant with contiguous groups of a size the kernel accepts."""
        if q.bits != 4 or q.group not in INT4_KERNEL_GROUPS or q.g_idx is not None or q.codes.shape[0] % 16:
            raise RidgelineError(f"Int4Linear needs int4 with contiguous groups of {INT4_KERNEL_GROUPS} and a "
                                 f"multiple of 16 output rows, not {q.format_name} with {q.codes.shape[0]} rows")
        n, k = q.codes.shape
        codes = q.codes.to(torch.int32)
        pad = q.scale.shape[1] * q.group - k
        if pad:
            codes = F.pad(codes, (0, pad), value=8)
        packed = torch._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
        sz = torch.stack([q.scale.t(), ((8 - q.zero) * q.scale).t()], dim=-1)
        return cls(packed, sz, q.group, q.sym, k, bias)

    @property
    def weight_format(self) -> str:
        """int4 per group, symmetric or asymmetric."""
        return f"int4_g{self.group}{'' if self.sym else '_asym'}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """bf16 activations through the int4 CPU kernel."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.pad:
            x2 = F.pad(x2, (0, self.pad))
        y = torch._weight_int4pack_mm_for_cpu(x2, self.packed, self.group, self.scales_zeros)
        return self._finish(y, x.dtype, lead)

    def dequantize(self) -> torch.Tensor:
        """The kernel's own view of the weight: the kernel applied to the identity."""
        eye = torch.eye(self.in_features + self.pad, dtype=torch.bfloat16)
        w = torch._weight_int4pack_mm_for_cpu(eye, self.packed, self.group, self.scales_zeros).float().t()
        return w[:, :self.in_features].contiguous()

    def spec(self) -> dict[str, Any]:
        """Shape plus group and symmetry."""
        return dict(super().spec(), group=self.group, sym=self.sym)

    @classmethod
    def empty(cls, spec: dict[str, Any]) -> Int4Linear:
        """Zero buffers of the spec's shape."""
        n, k, g = spec["out_features"], spec["in_features"], spec["group"]
        groups = -(-k // g)
        return cls(torch.zeros(n, groups * g // 2, dtype=torch.uint8), torch.zeros(groups, n, 2), g, spec["sym"], k,
                   torch.zeros(n) if spec["bias"] else None)


class W8A8Linear(QuantLinear):
    """int8 weights per channel × int8 activations per token (dynamic absmax) through `torch._int_mm`.

    With `threshold` set this is LLM.int8(): input columns where any token exceeds the threshold are
    taken out of the int8 product and multiplied in floating point (activations as they are, the weight
    columns dequantized from int8, as bitsandbytes does), then added.
    """

    kernel = "_int_mm"
    row_dims = {"weight_int8": 0, "scales": 0}

    def __init__(self, weight_int8: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
                 threshold: float | None = None) -> None:
        """weight_int8 [out, in] int8, fp32 scales [out]; threshold None: plain W8A8."""
        super().__init__(weight_int8.shape[1], weight_int8.shape[0], bias)
        self.threshold = threshold
        self.register_buffer("weight_int8", weight_int8.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.float().contiguous())

    @classmethod
    def from_quant(cls, q: IntQuant, bias: torch.Tensor | None = None, threshold: float | None = None) -> W8A8Linear:
        """From an 8-bit symmetric per-channel IntQuant."""
        if q.bits != 8 or q.group != 0 or not q.sym or q.g_idx is not None:
            raise RidgelineError(f"W8A8Linear needs int8 per-channel symmetric weights, not {q.format_name}")
        return cls((q.codes.to(torch.int16) - 128).to(torch.int8), q.scale[:, 0], bias, threshold)

    @property
    def weight_format(self) -> str:
        """int8 per channel, symmetric."""
        return "int8_pc"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize each token to int8, int8×int8→int32, rescale; outlier columns in float if thresholded."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()
        outliers = None
        if self.threshold is not None:
            cols = (x2.abs() > self.threshold).any(dim=0)
            if bool(cols.any()):
                outliers = cols.nonzero().squeeze(1)
                x_out = x2[:, outliers]
                x2 = x2.index_fill(1, outliers, 0.0)
        xs = x2.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
        xq = torch.round(x2 / xs).to(torch.int8)
        y = torch._int_mm(xq, self.weight_int8.t()).float() * xs * self.scales
        if outliers is not None:
            w_out = self.weight_int8[:, outliers].float() * self.scales[:, None]
            y = y + x_out @ w_out.t()
        return self._finish(y, x.dtype, lead)

    def dequantize(self) -> torch.Tensor:
        """q·s (activations are quantized at run time, so this is the weight side only)."""
        return self.weight_int8.float() * self.scales[:, None]

    def spec(self) -> dict[str, Any]:
        """Shape plus the outlier threshold."""
        return dict(super().spec(), threshold=self.threshold)

    @classmethod
    def empty(cls, spec: dict[str, Any]) -> W8A8Linear:
        """Zero buffers of the spec's shape."""
        n, k = spec["out_features"], spec["in_features"]
        return cls(torch.zeros(n, k, dtype=torch.int8), torch.zeros(n), torch.zeros(n) if spec["bias"] else None,
                   spec.get("threshold"))

    def extra_repr(self) -> str:
        """Adds the LLM.int8() threshold."""
        extra = f", threshold={self.threshold}" if self.threshold is not None else ", activations=int8 per token"
        return super().extra_repr() + extra


class EmulatedLinear(QuantLinear):
    """Any stored format without a kernel here: dequantize once into a cache, then `F.linear`.

    Integer formats keep codes (uint8, one per element), scale and zero; block formats (ggml, MX, BFP)
    keep their exact encoded bytes, one row of blocks per output row. `act_format` (an MX/BFP format)
    fake-quantizes the inputs too, along the input dimension. The dequantized weight is cached in the
    compute dtype on first use (not saved): emulation trades memory for speed, and says so.
    """

    kernel = "emulated"

    def __init__(self, in_features: int, out_features: int, fmt: str, buffers: dict[str, torch.Tensor],
                 bias: torch.Tensor | None = None, act_format: str | None = None,
                 int_params: dict[str, Any] | None = None) -> None:
        """`fmt` is the registry name; `buffers` the stored tensors (codes/scale/zero[/g_idx] or qdata)."""
        super().__init__(in_features, out_features, bias)
        self.fmt, self.act_format, self.int_params = fmt, act_format, int_params
        for name, value in buffers.items():
            self.register_buffer(name, value)
        self.row_dims = {name: 0 for name in buffers if name != "g_idx"}
        self._cache: torch.Tensor | None = None

    @classmethod
    def from_quant(cls, q: IntQuant, bias: torch.Tensor | None = None) -> EmulatedLinear:
        """From any IntQuant (codes uint8, fp16 scale and zero as the format stores them)."""
        buffers = {"codes": q.codes.to(torch.uint8), "scale": q.scale.half(), "zero": q.zero.half()}
        if q.g_idx is not None:
            buffers["g_idx"] = q.g_idx.to(torch.int32)
        n, k = q.codes.shape
        return cls(k, n, q.format_name, buffers, bias,
                   int_params={"bits": q.bits, "group": q.group, "sym": q.sym, "g_idx": q.g_idx is not None})

    @classmethod
    def from_weight(cls, w: torch.Tensor, fmt: str, bias: torch.Tensor | None = None,
                    act_format: str | None = None) -> EmulatedLinear:
        """Encode a float weight in a block format (ggml type, MX or BFP) and keep the bytes."""
        from ridgeline.quant.codec import encode

        n, k = w.shape
        data = encode(w.detach().float(), fmt)
        if len(data) % n:
            raise RidgelineError(f"format {fmt}: rows of {k} elements do not end on a byte boundary; "
                                 "use a block size whose blocks pack into whole bytes")
        qdata = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(n, len(data) // n)
        if act_format is not None:
            from ridgeline.quant.codec import check_act_format

            check_act_format(act_format, k)
        return cls(k, n, fmt, {"qdata": qdata}, bias, act_format)

    @property
    def weight_format(self) -> str:
        """The registry name given at construction."""
        return self.fmt

    def dequantize(self) -> torch.Tensor:
        """Decode the stored form to fp32 [out, in]."""
        if self.int_params is not None:
            g_idx = getattr(self, "g_idx", None)
            q = IntQuant(self.codes, self.scale.float(), self.zero.float(), self.int_params["bits"],
                         self.int_params["group"], self.int_params["sym"],
                         None if g_idx is None else g_idx.long())
            return q.dequantize()
        from ridgeline.quant.codec import decode

        return decode(self.qdata.numpy().tobytes(), self.fmt, (self.out_features, self.in_features))

    def _weight(self, dtype: torch.dtype) -> torch.Tensor:
        if self._cache is None or self._cache.dtype != dtype:
            self._cache = self.dequantize().to(dtype)
        return self._cache

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cache = None  # new stored weights: the dequantized copy is stale
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize activations if asked, then multiply by the dequantized weight."""
        if self.act_format is not None:
            from ridgeline.quant.codec import fake_quantize_act

            x = fake_quantize_act(x, self.act_format).to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self._weight(x.dtype), bias)

    def spec(self) -> dict[str, Any]:
        """Shape, format, stored buffer shapes and activation format."""
        shapes = {name: [list(b.shape), str(b.dtype).removeprefix("torch.")]
                  for name, b in self.named_buffers(recurse=False) if name != "bias" and b is not None}
        return dict(super().spec(), fmt=self.fmt, act_format=self.act_format, int_params=self.int_params,
                    buffers=shapes)

    @classmethod
    def empty(cls, spec: dict[str, Any]) -> EmulatedLinear:
        """Zero buffers of the spec's recorded shapes."""
        n = spec["out_features"]
        buffers = {}
        for name, (shape, dtype) in spec["buffers"].items():
            shape = list(shape)
            if name in ("codes", "scale", "zero", "qdata"):
                shape[0] = n  # `cat` changes the row count only
            buffers[name] = torch.zeros(shape, dtype=getattr(torch, dtype))
        return cls(spec["in_features"], n, spec["fmt"], buffers, torch.zeros(n) if spec["bias"] else None,
                   spec.get("act_format"), spec.get("int_params"))

    def extra_repr(self) -> str:
        """Adds the activation format."""
        return super().extra_repr() + (f", act_format={self.act_format}" if self.act_format else "")


#: module classes by name, for loading saved models
CLASSES: dict[str, type[QuantLinear]] = {c.__name__: c for c in (Int8Linear, Int4Linear, W8A8Linear, EmulatedLinear)}


def from_int_quant(q: IntQuant, bias: torch.Tensor | None = None, kernel: bool = True) -> QuantLinear:
    """The fastest module for an IntQuant: a kernel module when one fits its format, else emulated."""
    if kernel and q.g_idx is None:
        if q.bits == 8 and q.group == 0 and q.sym:
            return Int8Linear.from_quant(q, bias)
        if q.bits == 4 and q.group in INT4_KERNEL_GROUPS and q.codes.shape[0] % 16 == 0:  # the packer tiles N by 16
            return Int4Linear.from_quant(q, bias)
    return EmulatedLinear.from_quant(q, bias)


def module_from_spec(spec: dict[str, Any]) -> QuantLinear:
    """An empty module rebuilt from `QuantLinear.spec()` (raises on an unknown class)."""
    cls = CLASSES.get(spec.get("class", ""))
    if cls is None:
        raise RidgelineError(f"unknown quantized module class {spec.get('class')!r}; expected one of {', '.join(CLASSES)}")
    return cls.empty(spec)
