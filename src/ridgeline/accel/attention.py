"""Fused attention (QKᵀ, softmax, PV) on the array, tiled flash-style over query and key blocks.

Per product (one sequence and one KV head; its `group` query heads share the K/V stream, rows ordered
position-major): for each query tile of Mq rows (outer loop), every key tile of Nk tokens the tile attends is
loaded (K and V), S = Q·Kᵀ runs on the array, the vector unit takes the softmax (and the converter turns P
into the attention activation format when that is BFP), then O += P·V runs on the array; Q and O stay in the
buffers for the whole key loop, so the scores never leave the chip. K and V are read once per query tile:
decode (one tile) reads the cache once; long prefills re-read it per query tile.

Causal masking skips key tiles wholly in a query tile's future (and, with a window, its distant past): query
tile i covering positions [p0, p1) of s new tokens after c cached ones needs keys [max(0, c + p0 − W + 1),
c + p1). Tiles straddling the diagonal are computed whole, as hardware does, so MACs exceed the workload's
causal FLOPs / 2 by the masked part of those tiles.

KV tiers (Harmonia's 8-bit sink/recent and 4-bit middle, KIVI's fp16 residual) are split per step into the
tokens held in each format: their bytes and their PE mode (pack, energy) differ; within a prefill query tile
the split follows the step's proportions (a stated approximation; decode is exact).

Per query tile: double-buffered, time = max(array, vector, converter, DRAM) over the tile's key loop; plus
the first tiles' loads and the last output's store. Dataflows of the two products are chosen per candidate
tiling (least cycles); tile sizes by the objective.
"""

from __future__ import annotations

from dataclasses import dataclass

from functools import reduce

import numpy as np

from ridgeline.accel.systolic import fold_cycles, sram_accesses
from ridgeline.accel.tiling import ArrayParams, candidates
from ridgeline.errors import RidgelineError


@dataclass(frozen=True)
class Tier:
    """One KV storage format as the array sees it: bytes per element, PE packing, pJ per MAC (QK and PV)."""

    k_bytes: float
    v_bytes: float
    pack_qk: int
    pack_pv: int
    qk_pj: float
    pv_pj: float


@dataclass(frozen=True)
class AttentionSpec:
    """One attention operator's products, formats and the units around the array."""

    m: int  # query rows per product (group · new tokens)
    group: int
    s: int  # new tokens per sequence
    d: int
    dv: int
    batch: float  # products per step (sequences × KV heads)
    window: int | None
    causal: bool
    q_bytes: float
    p_bytes: float
    out_bytes: float
    acc_bytes: float
    hi: Tier  # sink/recent (or residual) tokens
    lo: Tier  # the bulk
    softmax_ops: float
    vector_lanes: int
    vector_pj: float
    convert: bool  # P and Q pass the FP16→BFP converter
    convert_per_cycle: float
    convert_pj: float


@dataclass(frozen=True)
class AttentionCost:
    """Totals over the steps (one product; multiply by batch), and the time of each step."""

    step_cycles: np.ndarray
    cycles: float
    qk_cycles: float
    pv_cycles: float
    vector_cycles: float
    macs_qk: float
    macs_pv: float
    dram: dict[str, float]  # q, k, v, o bytes
    sram: tuple[float, float, float]  # input, weight, output buffer bytes
    energy: dict[str, float]  # pJ: qk, pv, sram, dram_q, dram_k, dram_v, dram_o, vector, converter
    conversions: float
    tile: tuple[int, int]
    dataflows: tuple[str, str]


def _keys(spec: AttentionSpec, c, n, i, Mq):
    """Keys query tile i (array) needs, per step: the causal/window range, at most the n tokens read."""
    if not spec.causal:
        return np.broadcast_to(n, np.broadcast(c, i, Mq).shape).astype(np.float64)
    p0 = np.floor(i * Mq / spec.group)
    p1 = np.minimum(np.ceil((i + 1) * Mq / spec.group), spec.s)
    hi = c + p1
    lo = np.maximum(0.0, c + p0 - spec.window + 1) if spec.window else 0.0
    return np.minimum(hi - lo, n)


def evaluate_attention(spec: AttentionSpec, ap: ArrayParams, contexts: np.ndarray, kv_tokens: np.ndarray,
                       k_hi: np.ndarray, v_hi: np.ndarray, objective: str = "latency") -> AttentionCost:
    """The best tiling of one attention product over steps with `contexts` cached and `kv_tokens` read;
    `k_hi`, `v_hi`: fraction of the keys / values held in the hi tier, per step."""
    R, C = ap.rows, ap.cols
    m, d, dv = spec.m, spec.d, spec.dv
    n_max = int(np.max(kv_tokens)) if np.size(kv_tokens) else 1
    db = 2 if ap.double_buffer else 1
    kb, vb = max(spec.hi.k_bytes, spec.lo.k_bytes), max(spec.hi.v_bytes, spec.lo.v_bytes)
    for bases in ((R, C), (8,)):  # array-sized tiles first; powers of two from 8 for small buffers
        mq_c, nk_c = np.meshgrid(candidates(m, bases), candidates(max(n_max, 1), bases), indexing="ij")
        Mq, Nk = mq_c.ravel().astype(np.float64), nk_c.ravel().astype(np.float64)
        fits = (((Mq * d * spec.q_bytes + Mq * Nk * spec.p_bytes) * db <= ap.input_bytes)
                & (Nk * (d * kb + dv * vb) * db <= ap.weight_bytes)
                & ((Mq * Nk + Mq * dv) * spec.acc_bytes * db <= ap.output_bytes))
        if fits.any():
            break
    else:
        raise RidgelineError(f"no attention tile fits the buffers (head dims {d}/{dv}, {m} query rows): even "
                             f"{int(Mq.min())} query rows × {int(Nk.min())} keys need more than input "
                             f"{ap.input_bytes} B / weight {ap.weight_bytes} B / output {ap.output_bytes} B")
    Mq, Nk = Mq[fits][:, None, None], Nk[fits][:, None, None]
    tm = np.ceil(m / Mq)
    i = np.arange(int(np.ceil(m / Mq.min())), dtype=np.float64)[None, None, :]
    c = np.asarray(contexts, dtype=np.float64)[None, :, None]
    n = np.asarray(kv_tokens, dtype=np.float64)[None, :, None]
    valid = i < tm
    count = np.where(valid, _keys(spec, c, n, i, Mq), 0.0)
    rows = np.broadcast_to(np.where(valid, np.minimum(Mq, m - i * Mq), 0.0), count.shape)
    fk, fv = np.asarray(k_hi)[None, :, None], np.asarray(v_hi)[None, :, None]
    kh, vh = np.round(count * fk), np.round(count * fv)
    parts_k = ((kh, spec.hi, spec.hi.pack_qk), (count - kh, spec.lo, spec.lo.pack_qk))
    parts_v = ((vh, spec.hi, spec.hi.pack_pv), (count - vh, spec.lo, spec.lo.pack_pv))

    # per dataflow: cycles and the four SRAM access counts of each product, summed over tiers and key tiles
    def product_costs(parts, shape):
        out = []
        for df in ap.dataflows:
            cyc, acc = 0.0, [0.0] * 4
            for cnt, _, pk in parts:
                for mult, t in ((cnt // Nk, Nk), (1.0, cnt % Nk)):  # the full key tiles, then the remainder
                    dims = shape(rows, t)
                    cyc = cyc + mult * fold_cycles(*dims, R, C, df, pk)
                    acc = [x + mult * y for x, y in zip(acc, sram_accesses(*dims, R, C, df, pk))]
            out.append((cyc, acc))
        best = np.stack([o[0].sum(axis=(1, 2)) for o in out]).argmin(axis=0)
        pick = lambda arrs: np.stack(arrs)[best, np.arange(len(best))]  # noqa: E731
        return ([ap.dataflows[b] for b in best], pick([o[0] for o in out]),
                [pick([o[1][q] for o in out]) for q in range(4)])

    df_qk, c_qk, a_qk = product_costs(parts_k, lambda r, t: (r, d, t))
    df_pv, c_pv, a_pv = product_costs(parts_v, lambda r, t: (r, t, dv))
    vec = spec.softmax_ops * rows * count / spec.vector_lanes
    conv_elems = (rows * count + rows * d) if spec.convert else np.zeros_like(count)
    conv = conv_elems / spec.convert_per_cycle if spec.convert else conv_elems
    d_q, d_o = rows * d * spec.q_bytes, rows * dv * spec.out_bytes
    d_k = sum(cnt * d * tier.k_bytes for cnt, tier, _ in parts_k)
    d_v = sum(cnt * dv * tier.v_bytes for cnt, tier, _ in parts_v)
    x = (d_q + d_o + d_k + d_v) / ap.dram_bpc
    work = reduce(np.maximum, [c_qk + c_pv, vec, conv])
    per_tile = np.maximum(work, x) if ap.double_buffer else work + x
    first = (np.minimum(Mq, m) * d * spec.q_bytes + np.minimum(Nk, n) * (d * kb + dv * vb)
             + np.minimum(Mq, m) * dv * spec.out_bytes) / ap.dram_bpc
    step = per_tile.sum(axis=2) + np.where(n[..., 0] > 0, first[..., 0], 0.0)

    # SRAM: both products' array accesses, the softmax's S read and P write, O accumulated across key
    # tiles (one more read and write per tile after the first), fills from and drains to DRAM
    ntiles = np.ceil(count / Nk)
    s_in = a_qk[0] * spec.q_bytes + a_pv[0] * spec.p_bytes + rows * count * spec.p_bytes + d_q
    k_avg = np.where(count > 0, d_k / np.maximum(count * d, 1), 0.0)  # bytes per element over the tiers
    v_avg = np.where(count > 0, d_v / np.maximum(count * dv, 1), 0.0)
    s_w = a_qk[1] * k_avg + a_pv[1] * v_avg + d_k + d_v
    s_out = ((a_qk[2] + a_qk[3] + a_pv[2] + a_pv[3] + 2 * rows * dv * np.maximum(ntiles - 1, 0)
              + rows * count) * spec.acc_bytes + d_o)
    macs_qk = [(rows * cnt * d, tier.qk_pj) for cnt, tier, _ in parts_k]
    macs_pv = [(rows * cnt * dv, tier.pv_pj) for cnt, tier, _ in parts_v]
    e = {"qk": sum(mm * pj for mm, pj in macs_qk), "pv": sum(mm * pj for mm, pj in macs_pv),
         "sram": s_in * ap.input_pj + s_w * ap.weight_pj + s_out * ap.output_pj,
         "dram_q": d_q * ap.dram_pj, "dram_k": d_k * ap.dram_pj, "dram_v": d_v * ap.dram_pj,
         "dram_o": d_o * ap.dram_pj, "vector": spec.softmax_ops * rows * count * spec.vector_pj,
         "converter": conv_elems * spec.convert_pj}
    tot = lambda a: np.asarray(a).sum(axis=(1, 2))  # noqa: E731
    time_total = step.sum(axis=1)
    energy_total = sum(tot(v) for v in e.values())
    j = int(np.lexsort((energy_total, time_total))[0] if objective == "latency"
            else np.lexsort((time_total, energy_total))[0])
    pick_ = lambda a: float(tot(a)[j])  # noqa: E731
    return AttentionCost(
        step_cycles=step[j].copy(), cycles=float(time_total[j]), qk_cycles=pick_(c_qk), pv_cycles=pick_(c_pv),
        vector_cycles=pick_(vec), macs_qk=pick_(sum(mm for mm, _ in macs_qk)),
        macs_pv=pick_(sum(mm for mm, _ in macs_pv)),
        dram={"q": pick_(d_q), "k": pick_(d_k), "v": pick_(d_v), "o": pick_(d_o)},
        sram=(pick_(s_in), pick_(s_w), pick_(s_out)), energy={k: pick_(v) for k, v in e.items()},
        conversions=pick_(conv_elems), tile=(int(Mq[j, 0, 0]), int(Nk[j, 0, 0])), dataflows=(df_qk[j], df_pv[j]))

