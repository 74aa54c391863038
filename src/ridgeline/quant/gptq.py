"""GPTQ (Frantar et al. 2022): per-layer integer weight quantization with second-order error feedback.

For a linear layer y = W x with calibration inputs X, GPTQ quantizes W one input column at a time and
spreads each column's rounding error over the columns not yet quantized so that ‖(W − Ŵ)X‖² stays small.
The proxy Hessian is H = (2/n)·Σ x xᵀ over the n calibration tokens; the update for column i uses the
upper Cholesky factor U of H⁻¹ (row i of U is the "remaining" inverse Hessian after eliminating columns
< i), and columns are processed in lazy blocks so most of the work is one matrix product per block.

This is a re-derivation of the reference algorithm (IST-DASLab/gptq `GPTQ.fasterquant`), with the
quantization grid of `ridgeline.quant.intq` (fp16 scales, integer zero points, our symmetric convention),
so GPTQ and RTN produce the same storage (`IntQuant`) and differ only in the codes chosen:

1. dead inputs (diag H = 0: the input is always zero) get H_jj = 1 and W[:, j] = 0;
2. damping H += damp·mean(diag H)·I (reference `percdamp`, default 0.01);
3. act-order (`desc_act`): columns in descending diag H order; codes are put back in the original order;
4. U = upper Cholesky factor of H⁻¹, computed in float64 (cheap at layer sizes, avoids spurious failures)
   from one Cholesky factorization of the reversed H (see `_inverse_cholesky_upper`);
5. lazy blocks of `block_size` columns: for column i, q = quant(w), e = (w − q)/U_ii, the rest of the
   block gets w_k −= e·U_ik, and after the block the later columns get W[:, i2:] −= E·U[i1:i2, i2:];
6. groups: the (scale, zero) of a group is computed when its first column comes up, from the slice
   W[:, j:j+g] of the *outer* W, exactly as the reference. That slice has every earlier block's update but
   not the current block's intra-block updates (identical when g = block_size, slightly stale when
   g < block_size or the group starts mid-block). `static_groups` instead computes every group's params
   from the original W up front, so act-order keeps contiguous groups and needs no `g_idx`. A group
   size that does not divide in_features leaves a shorter last group (intq's convention, as the reference).

Deliberate differences from the reference: per-channel params are computed after dead columns are zeroed
(the reference computes them before, so a dead column's irrelevant weights widen the range); argsort is
stable (ties in diag H are ordered by column index, so results are deterministic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ridgeline.errors import RidgelineError
from ridgeline.quant.intq import (
    IntQuant,
    check_bits,
    check_group,
    check_weight,
    group_params,
    qparams,
    quantize_codes,
)


class HessianAccumulator:
    """Running H = (2/n)·Σ x xᵀ over the inputs of one linear layer (n = tokens seen so far).

    Each batch's Gram matrix xᵀx is computed in `dtype` (float32 by default: twice as fast as float64 on
    CPU, and its relative error ~1e-7 is far below the sampling noise of calibration) and added to a float64
    sum; the mean is formed only in `hessian()`. Summing in float64 and dividing once is the running mean
    of the reference without its repeated rescaling: the order in which batches arrive changes H only at
    float64 rounding level, however many there are (pass dtype=torch.float64 to make the batch split
    irrelevant too).
    """

    def __init__(self, in_features: int, dtype: torch.dtype = torch.float32) -> None:
        if not isinstance(in_features, int) or in_features < 1:
            raise RidgelineError(f"in_features must be a positive integer, got {in_features!r}")
        self.in_features = in_features
        self.dtype = dtype
        self._sum = torch.zeros(in_features, in_features, dtype=torch.float64)
        self._n = 0

    def add(self, x: torch.Tensor) -> None:
        """Add a batch of layer inputs [..., in_features] (every leading index is one token)."""
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.in_features:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise RidgelineError(f"layer inputs: expected shape [..., {self.in_features}], got {shape}")
        x = x.detach().reshape(-1, self.in_features).to(self.dtype)
        if x.shape[0] == 0:
            return
        if not torch.isfinite(x).all():
            raise RidgelineError("layer inputs contain NaN/inf; the calibration forward pass overflowed")
        self._sum += (x.T @ x).to(torch.float64)
        self._n += x.shape[0]

    @property
    def n_tokens(self) -> int:
        """Tokens added so far."""
        return self._n

    def hessian(self) -> torch.Tensor:
        """H = (2/n)·Σ x xᵀ, float64 [in_features, in_features]."""
        if self._n == 0:
            raise RidgelineError("no calibration inputs were added; run the calibration data through the layer first")
        return self._sum * (2.0 / self._n)


@dataclass
class GPTQResult:
    """What `gptq_quantize` returns: the quantized weight and the solver's diagnostics."""

    quant: IntQuant  # codes/scale/zero in the original column order (g_idx when groups are not contiguous)
    weight: torch.Tensor  # Ŵ = quant.dequantize(), float32 [out, in]
    loss: float  # the reference's Σ (w − q)²/U_ii² / 2 (its printed "error")
    dead_columns: int  # inputs with diag H = 0, set to zero weight
    perm: torch.Tensor | None = None  # act-order processing order (column perm[k] went k-th), else None


def gptq_quantize(w: torch.Tensor, H: torch.Tensor, *, bits: int, group: int = 0, sym: bool = False,
                  act_order: bool = False, static_groups: bool = False, damp: float = 0.01,
                  block_size: int = 128) -> GPTQResult:
    """Quantize `w` [out, in] with GPTQ given the proxy Hessian `H` [in, in] of its inputs."""
    check_weight(w)
    check_bits(bits)
    rows, cols = w.shape
    g = check_group(cols, group)
    grouped = group > 0
    static = static_groups and grouped  # per-channel has nothing to precompute
    if not isinstance(H, torch.Tensor) or H.dim() != 2 or tuple(H.shape) != (cols, cols):
        shape = tuple(H.shape) if isinstance(H, torch.Tensor) else type(H).__name__
        raise RidgelineError(f"Hessian: expected shape ({cols}, {cols}) for a weight with {cols} input columns, got {shape}")
    if not H.is_floating_point() or not torch.isfinite(H).all():
        raise RidgelineError("Hessian: expected finite floating-point values (NaN/inf in the calibration inputs?)")
    if not (isinstance(damp, (int, float)) and math.isfinite(damp) and damp >= 0):
        raise RidgelineError(f"damp must be a finite fraction >= 0 of mean(diag H), got {damp!r}")
    if not isinstance(block_size, int) or block_size < 1:
        raise RidgelineError(f"block_size must be a positive integer, got {block_size!r}")

    W = w.detach().float().clone()
    H = H.detach().to(torch.float64).clone()  # the factorizations run in float64; the sweep in float32

    # an input that is always zero has no curvature: any weight is "exact", so make it zero and give
    # H a unit diagonal there so the factorization sees a decoupled, well-conditioned column
    dead = torch.diagonal(H) == 0
    n_dead = int(dead.sum())
    if n_dead:
        H[dead, dead] = 1.0
        W[:, dead] = 0.0

    if static:
        # all group params from the original (dead-zeroed) W, in original column order
        static_scale, static_zero = (t.T.contiguous() for t in group_params(W, bits, group, sym))  # [n_groups, rows]
    elif not grouped:
        pc_scale, pc_zero = qparams(W, bits, sym)  # per channel: the whole row, independent of column order

    perm = None
    if act_order:
        # columns with the largest input energy first: their errors can still be compensated by the most columns
        perm = torch.argsort(torch.diagonal(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]

    # damping after the permutation, as the reference: the mean is then summed in processing order, which
    # keeps act-order bit-identical to running without it on a pre-permuted W and H
    H.diagonal().add_(damp * torch.diagonal(H).mean())
    U = _inverse_cholesky_upper(H).to(torch.float32)

    # work on Wᵀ: a column of W is then a contiguous row, and each rank-1 update touches contiguous memory
    Wt = W.T.contiguous()
    del W
    codes_t = torch.empty(cols, rows, dtype=torch.uint8)
    Qt = torch.empty(cols, rows, dtype=torch.float32)
    scales: list[torch.Tensor] = []
    zeros: list[torch.Tensor] = []
    loss = torch.zeros((), dtype=torch.float64)
    scale = zero = None
    if not grouped:
        scale, zero = pc_scale, pc_zero

    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = Wt[i1:i2].clone()  # the block; Wt[i1:i2] itself stays as it was at the block start
        E1 = torch.empty_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if static:
                k = int(perm[j]) // g if perm is not None else j // g
                scale, zero = static_scale[k], static_zero[k]
            elif grouped and j % g == 0:
                # the reference's slice of the outer W: current up to the start of this block only
                scale, zero = qparams(Wt[j:j + g].T, bits, sym)
                scales.append(scale)
                zeros.append(zero)
            x = W1[i]
            c = quantize_codes(x, scale, zero, bits)
            q = scale * (c - zero)  # = intq.fake_quantize, keeping the codes
            codes_t[j] = c.to(torch.uint8)
            Qt[j] = q
            e = (x - q) / U1[i, i]
            loss += torch.dot(e, e).double()
            if i + 1 < i2 - i1:
                W1[i + 1:].addr_(U1[i, i + 1:], e, alpha=-1.0)  # W1ᵀ[k] −= U_ik·e for k > i
            E1[i] = e
        if i2 < cols:
            Wt[i2:].addmm_(U[i1:i2, i2:].T, E1, alpha=-1.0)  # lazy update of all later columns at once

    if grouped and not static:
        scale_t, zero_t = torch.stack(scales, dim=1), torch.stack(zeros, dim=1)
    elif static:
        scale_t, zero_t = static_scale.T.contiguous(), static_zero.T.contiguous()
    else:
        scale_t, zero_t = pc_scale.unsqueeze(1), pc_zero.unsqueeze(1)

    g_idx = None
    if perm is not None:
        invperm = torch.argsort(perm)
        codes_t, Qt = codes_t[invperm], Qt[invperm]
        if grouped and not static:
            g_idx = invperm // g  # original column c was processed at position invperm[c], in group invperm[c] // g
    quant = IntQuant(codes_t.T.contiguous(), scale_t, zero_t, bits, group, sym, g_idx)
    return GPTQResult(quant, Qt.T.contiguous(), float(loss) / 2, n_dead, perm)


def _inverse_cholesky_upper(H: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H⁻¹ (UᵀU = H⁻¹, float64), raising RidgelineError unless H is positive definite.

    The reference computes it as cholesky → cholesky_inverse → cholesky(upper). With J the index reversal,
    the lower Cholesky factor L of JHJ gives H = (JLJ)(JLJ)ᵀ with JLJ upper triangular, so
    H⁻¹ = (JL⁻¹J)ᵀ(JL⁻¹J) and U = J·L⁻¹·J: one factorization and one triangular solve, 3-4× faster on
    CPU (LAPACK's potri is slow) and equal to the reference's U up to rounding (the factor is unique).
    """
    L, info = torch.linalg.cholesky_ex(H.flip(0, 1))
    if int(info) == 0:
        eye = torch.eye(H.shape[0], dtype=H.dtype)
        U = torch.linalg.solve_triangular(L, eye, upper=False).flip(0, 1)
    if int(info) != 0 or not torch.isfinite(U).all():
        raise RidgelineError("Hessian is not positive definite even after damping; increase damp "
                             "(e.g. 0.1) or add calibration data")
    return U


def layer_error(w: torch.Tensor, w_hat: torch.Tensor, X: torch.Tensor) -> float:
    """‖(W − Ŵ)Xᵀ‖² summed over tokens: X holds layer inputs as [..., in_features] (tokens × in), float64 sums."""
    if w.shape != w_hat.shape or w.dim() != 2:
        raise RidgelineError(f"layer_error: weights must be 2-D of equal shape, got {tuple(w.shape)} and {tuple(w_hat.shape)}")
    if X.shape[-1] != w.shape[1]:
        raise RidgelineError(f"layer_error: inputs must be [..., {w.shape[1]}] (tokens × in_features), got {tuple(X.shape)}")
    delta = (w.detach().double() - w_hat.detach().double())
    return float(((X.detach().reshape(-1, w.shape[1]).double() @ delta.T) ** 2).sum())
