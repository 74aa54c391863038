"""A GEMM tiled over the array and the three buffers: search over tile sizes, loop orders and dataflows.

The loop nest has one buffer level: tiles Mt × Kt × Nt are loaded from DRAM into the input (A), weight (B) and
output (C) buffers and run on the array as a sub-GEMM (`systolic`). The three tile loops run in one of six
orders (outer → inner). An operand's tile stays in its buffer until one of the loops it depends on moves, so
its DRAM traffic is its size, times the trip count of the loop it does not depend on (A: n, B: m) when a loop
it depends on moves inside that one. The output stays while k advances unless a loop it depends on moves
inside k; then partial sums spill to DRAM at the accumulator width and come back (tk − 1 extra writes and
reads).

Capacity: a tile must fit its buffer, twice over with double buffering (one tile computing while the next
loads). Time with double buffering: per tile, max(compute, DRAM transfer), with the transfers spread over the
tiles in proportion to their volume, plus the first tile's loads and the last tile's store; without it,
compute + transfer. Compute is throttled by a buffer whose array-side bandwidth cannot feed the array.
Energy = MACs × energy per MAC + SRAM bytes × energy per byte of each buffer's bank + DRAM bytes × energy per
byte. `objective` "latency" minimises time (energy breaks ties), "energy" the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations, product

import numpy as np

from ridgeline.accel.systolic import fold_cycles, psum_contributions, sram_accesses
from ridgeline.errors import RidgelineError

ORDERS = tuple("".join(p) for p in permutations("mkn"))


@dataclass(frozen=True)
class ArrayParams:
    """What the tiled model needs of a design (hashable, so searches are cached)."""

    rows: int
    cols: int
    input_bytes: int
    weight_bytes: int
    output_bytes: int
    input_bpc: float  # buffer bandwidth to the array, bytes per cycle
    weight_bpc: float
    output_bpc: float
    dram_bpc: float  # DRAM bytes per cycle
    input_pj: float  # per byte accessed
    weight_pj: float
    output_pj: float
    dram_pj: float
    double_buffer: bool
    dataflows: tuple[str, ...]


@dataclass(frozen=True)
class Operands:
    """Bytes per element of A, B, the output and a partial sum; the PE mode's packing and energy per MAC."""

    a: float
    b: float
    out: float
    acc: float
    pack: int = 1
    mac_pj: float = 0.0


@dataclass(frozen=True)
class GemmCost:
    """One GEMM (one product of a batch) at its best mapping."""

    cycles: float
    compute_cycles: float
    macs: float
    dram: tuple[float, float, float, float]  # A read, B read, C read (spills), C write
    sram: tuple[float, float, float]  # bytes accessed in the input, weight, output buffer
    energy: tuple[float, float, float]  # pJ: MACs, SRAM, DRAM
    tile: tuple[int, int, int]
    order: str
    dataflow: str

    @property
    def energy_pj(self) -> float:
        """All energy of the GEMM."""
        return sum(self.energy)


def candidates(d: int, bases: tuple[int, ...]) -> list[int]:
    """Tile sizes along a dimension of length d: base · 2^i below d, and d itself."""
    out = {d}
    for base in bases:
        t = base
        while t < d:
            out.add(t)
            t *= 2
    return sorted(out)


def _classes(d: int, t: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(size, count) of the full tiles and the remainder tile along a dimension, per candidate tile size."""
    return [(t, d // t), (d % t, (d % t > 0).astype(np.float64))]


def _moves(outer: str, deps: str) -> np.ndarray:
    """Per loop order (rows of ORDERS), for each loop in `deps`: whether it sits inside loop `outer`."""
    return np.array([[o.index(x) > o.index(outer) for x in deps] for o in ORDERS])


#: per order: which of an operand's loops run inside its irrelevant loop (A: m, k inside n; B: k, n inside m;
#: C: m, n inside k)
_A_INSIDE, _B_INSIDE, _C_INSIDE = _moves("n", "mk"), _moves("m", "kn"), _moves("k", "mn")


def _traffic(M: int, K: int, N: int, tm, tk, tn, op: Operands):
    """DRAM bytes (A, B, C read back, C written) of every loop order (rows) over the tile loops.

    An operand is fetched again on each iteration of its irrelevant loop only if some loop it depends on, inside
    that one, takes more than one trip (otherwise its tile never changes). The output spills across k the same
    way: only if a loop it depends on iterates inside k."""
    col = lambda flags, i: flags[:, i:i + 1]  # noqa: E731
    a_re = (col(_A_INSIDE, 0) & (tm > 1)) | (col(_A_INSIDE, 1) & (tk > 1))
    b_re = (col(_B_INSIDE, 0) & (tk > 1)) | (col(_B_INSIDE, 1) & (tn > 1))
    c_re = (col(_C_INSIDE, 0) & (tm > 1)) | (col(_C_INSIDE, 1) & (tn > 1))
    a = M * K * op.a * np.where(a_re, tn, 1)
    b = K * N * op.b * np.where(b_re, tm, 1)
    c_read = M * N * op.acc * np.where(c_re, tk - 1, 0)
    return a, b, c_read, M * N * op.out + c_read


@lru_cache(maxsize=65536)
def best_gemm(M: int, K: int, N: int, op: Operands, ap: ArrayParams, objective: str = "latency",
              tile: tuple[int, int, int] | None = None) -> GemmCost:
    """The best mapping of an M × K × N GEMM (raises if no tile fits the buffers).

    Tile sizes are multiples of the array's sides (times powers of two) and the full dimensions; buffers too
    small for those fall back to powers of two from 8. `tile` fixes the tile sizes (orders and dataflows are
    still searched)."""
    db = 2 if ap.double_buffer else 1
    for bases in (tuple(sorted({ap.rows, ap.cols})), (8,)):
        dims = ([[min(t, x)] for t, x in zip(tile, (M, K, N))] if tile else
                [candidates(M, bases), candidates(K, bases), candidates(N, bases)])
        Mt, Kt, Nt = (g.ravel() for g in np.meshgrid(*dims, indexing="ij"))
        fits = ((Mt * Kt * op.a * db <= ap.input_bytes) & (Kt * Nt * op.b * db <= ap.weight_bytes)
                & (Mt * Nt * op.acc * db <= ap.output_bytes))
        if fits.any():
            return _search(M, K, N, op, ap, objective, Mt[fits], Kt[fits], Nt[fits])
    mt, kt, nt = tile or (min(8, x) for x in (M, K, N))
    raise RidgelineError(
        f"no tile of a {M}×{K}×{N} GEMM fits the buffers: even {mt}×{kt}×{nt} needs {mt * kt * op.a * db:.0f} B of "
        f"input, {kt * nt * op.b * db:.0f} B of weight and {mt * nt * op.acc * db:.0f} B of output buffer"
        f"{' (double-buffered)' if db == 2 else ''}; the design has {ap.input_bytes}, {ap.weight_bytes} and "
        f"{ap.output_bytes} B")


def _search(M: int, K: int, N: int, op: Operands, ap: ArrayParams, objective: str, Mt, Kt, Nt) -> GemmCost:
    tm, tk, tn = -(-M // Mt), -(-K // Kt), -(-N // Nt)
    vol = float(M) * K * N
    macs = vol
    a, b, cr, cw = _traffic(M, K, N, tm, tk, tn, op)  # (orders, candidates)
    dram = a + b + cr + cw
    x = dram / ap.dram_bpc
    first = (Mt * Kt * op.a + Kt * Nt * op.b + Mt * Nt * op.out) / ap.dram_bpc
    e_dram = dram * ap.dram_pj
    classes = [(cm * ck * cn, mt, kt, nt) for (mt, cm), (kt, ck), (nt, cn)
               in product(_classes(M, Mt), _classes(K, Kt), _classes(N, Nt))]
    classes = [c for c in classes if np.any(c[0] > 0)]
    cnt = np.stack([c[0] for c in classes])  # (classes, candidates)
    share = np.stack([c[0] * c[1] * c[2] * c[3] for c in classes]) / vol
    best = None
    for df in ap.dataflows:
        c = np.stack([fold_cycles(mt, kt, nt, ap.rows, ap.cols, df, op.pack) for _, mt, kt, nt in classes])
        acc = np.stack([np.stack(sram_accesses(mt, kt, nt, ap.rows, ap.cols, df, op.pack)) for _, mt, kt, nt in classes])
        cyc = (cnt * c).sum(axis=0)
        sa = (cnt[:, None, :] * acc).sum(axis=0)
        # partial sums arriving across k tiles are accumulated in the output buffer too (os: one per k tile)
        contrib = sum(ck * psum_contributions(kt, ap.rows, df, op.pack) for kt, ck in _classes(K, Kt))
        sram_in, sram_w = sa[0] * op.a, sa[1] * op.b
        sram_out = M * N * (2 * contrib - 1) * op.acc
        busy = np.maximum(cyc, 1)
        throttle = np.maximum.reduce([np.ones_like(cyc), sram_in / ap.input_bpc / busy, sram_w / ap.weight_bpc / busy,
                                      sram_out / ap.output_bpc / busy])
        if ap.double_buffer:  # per class of tiles: max(compute, its share of the transfers), per order
            per_tile = x[:, None, :] * share[None] / np.maximum(cnt, 1)[None]
            t = (cnt[None] * np.maximum((c * throttle)[None], per_tile)).sum(axis=1) + first
        else:
            t = cyc * throttle + x
        e_sram = (sram_in + a) * ap.input_pj + (sram_w + b) * ap.weight_pj + (sram_out + cr + cw) * ap.output_pj
        e = macs * op.mac_pj + e_sram + e_dram
        flat_t, flat_e = t.ravel(), np.broadcast_to(e, t.shape).ravel()
        i = int((np.lexsort((flat_e, flat_t)) if objective == "latency" else np.lexsort((flat_t, flat_e)))[0])
        o, j = divmod(i, t.shape[1])
        score = (flat_t[i], flat_e[i]) if objective == "latency" else (flat_e[i], flat_t[i])
        if best is None or score < best[0]:
            sram = (sram_in[j] + a[o, j], sram_w[j] + b[o, j], sram_out[j] + cr[o, j] + cw[o, j])
            best = (score, GemmCost(float(flat_t[i]), float(cyc[j] * throttle[j]), macs,
                                    (float(a[o, j]), float(b[o, j]), float(cr[o, j]), float(cw[o, j])),
                                    tuple(float(v) for v in sram),
                                    (macs * op.mac_pj, float(e_sram[o, j]), float(e_dram[o, j])),
                                    (int(Mt[j]), int(Kt[j]), int(Nt[j])), ORDERS[o], df))
    return best[1]
