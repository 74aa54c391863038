"""Float64 references of the native kernels, in plain torch: what each kernel must compute, and how close.

The native int8 activation quantization is replicated here bit for bit (float32 operations in the same
order), so a kernel's result is compared with `dequantized weight @ dequantized activation` summed in
float64 — the exact value of what the kernel is meant to compute — and the only allowed difference is
the kernel's own float32 rounding:

* quantized formats: every block of 32 columns contributes an exact int32 sum S times a float32 scale
  product (one rounding), added into one float32 accumulator with a fused multiply-add (one rounding),
  plus one more multiply-add for formats with a per-block minimum. Each rounding is at most 2^-24 of the
  magnitude it touches, and no partial sum exceeds sum_k |w_k·x_k|, so
  |y − y_ref| <= (2·blocks + 4) · 2^-24 · sum_k |w_k·x_k|   (`tolerance`)
  (the portable path, which does not fuse multiply-adds, rounds twice as often: the factor 2 covers it;
  decoding a weight to float32 first, as the codecs do, rounds once more per element: also covered).
* float weights: 4 partial float32 sums (k mod 4) or 1, then added: at most K + 4 roundings along any
  path, so |y − y_ref| <= (K + 4) · 2^-24 · sum_k |w_k·x_k|. bf16 activations are rounded to bf16 first
  (the reference does the same), and bf16 × bf16 products are exact in float32.
"""

from __future__ import annotations

import torch

from ridgeline.errors import RidgelineError

EPS32 = 2.0 ** -24


def quantize_activation_ref(x: torch.Tensor, act_mode: str = "block") -> tuple[torch.Tensor, torch.Tensor]:
    """The native activation quantization in torch: (int8 codes [M, K], float32 scales [M, K/32])."""
    x = x.to(torch.float32)
    m, k = x.shape
    if k % 32:
        raise RidgelineError(f"activation rows must be a multiple of 32 long, got {k}")
    xb = x.view(m, k // 32, 32)
    if act_mode == "mxint8":
        # OCP MXINT8 (microxcaling conventions): s = floor(log2 amax) in [-127, 127], codes
        # round_half_even(x * 2^(6 - s)) within +-127, scale 2^(s - 6); exact in float64
        amax = xb.abs().amax(dim=-1)
        _, e = torch.frexp(amax)
        shared = torch.where(amax > 0, e - 1, torch.full_like(e, -127)).clamp(-127, 127).double()
        q = torch.round(torch.ldexp(xb.double(), (6 - shared).unsqueeze(-1))).clamp(-127, 127).to(torch.int8)
        d = torch.ldexp(torch.ones_like(shared), shared - 6).float()
        return q.view(m, k), d
    if act_mode == "row":
        xs = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
        q = torch.round(x / xs).to(torch.int8)
        return q, xs.expand(m, k // 32).contiguous()
    amax = xb.abs().amax(dim=-1, keepdim=True)
    d = amax / 127.0
    # tensor / tensor is a correctly rounded division (a Python scalar / tensor is not, see quant.ggml)
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    q = torch.round(xb * inv).to(torch.int8)
    return q.view(m, k), d.view(m, k // 32)


def dequantize_activation(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """codes · scale per block of 32, float64."""
    m, k = q.shape
    return (q.double().view(m, k // 32, 32) * d.double().unsqueeze(-1)).view(m, k)


def activation(x: torch.Tensor, fmt: str, act_mode: str = "block", perm: torch.Tensor | None = None) -> torch.Tensor:
    """The activation values a kernel of format `fmt` multiplies by (float64), columns in packed order."""
    x = x.to(torch.float32)
    if perm is not None:
        x = x[:, perm.long()]
    if fmt == "f32":
        return x.double()
    if fmt == "bf16":
        return x.bfloat16().double()
    return dequantize_activation(*quantize_activation_ref(x, act_mode))


def reference(weight: torch.Tensor, x: torch.Tensor, fmt: str, act_mode: str = "block",
              perm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(y_ref, tolerance), both float64 [M, N], for dequantized weight [N, K] (input column order) and x [M, K]."""
    w = weight.double()
    if perm is not None:
        w = w[:, perm.long()]
    a = activation(x, fmt, act_mode, perm)
    y = a @ w.t()
    mag = a.abs() @ w.abs().t()
    k = w.shape[1]
    steps = k + 4 if fmt in ("f32", "bf16") else 2 * (k // 32) + 4
    return y, 2.0 * steps * EPS32 * mag
