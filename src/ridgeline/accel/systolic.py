"""The systolic array: cycles and SRAM accesses of one GEMM on an R × C array, per dataflow (SCALE-Sim's model).

A GEMM is A (m × k) · B (k × n). SCALE-Sim maps it as Sr × T by T × Sc (Samajdar et al., SCALE-Sim, and the
`scalesim` package 3.0.0, whose compute model this reproduces):

* output stationary (os): Sr = m on rows, Sc = n on columns, T = k streamed; a fold costs T + R + C − 2
  cycles (operands skewed in, outputs drained before the next fold);
* weight stationary (ws): Sr = k on rows, Sc = n, T = m; a fold costs 2R + C + T − 2 (R cycles to load the
  stationary block, skew and drain);
* input stationary (is): Sr = k on rows, Sc = m, T = n; a fold costs 2R + C + T − 2.

Folds = ⌈Sr/R⌉ · ⌈Sc/C⌉; folds run back to back (no overlap of one fold's drain with the next one's fill).
SCALE-Sim reports the 0-based index of the last cycle, i.e. our count − 1; nothing else differs.

A PE mode that does p products per cycle (`macs` > 1, narrower packed lanes) consumes p elements of the
reduction dimension per cycle: the GEMM runs as if k were ⌈k/p⌉.

SRAM accesses (elements) are SCALE-Sim's: every fold reads its stationary block once and every streamed
element once per fold; outputs are written once per fold that contributes to them (ws/is: one partial sum per
row-fold of k; os: once), and each partial sum after the first is also read back to be accumulated.
SCALE-Sim counts only the writes, and in os adds R + C per fold to them (its drain bookkeeping); the reads
of partial sums are ours. All functions take numbers or numpy arrays (broadcast).
"""

from __future__ import annotations

import numpy as np


def _ceil(a, b):
    return -(-np.asarray(a, dtype=np.float64) // b)


def fold_cycles(m, k, n, rows: int, cols: int, dataflow: str, pack: int = 1):
    """Cycles of an m × k × n GEMM on a rows × cols array (0 when any dimension is 0)."""
    m, k, n = (np.asarray(x, dtype=np.float64) for x in (m, k, n))
    k = _ceil(k, pack)
    if dataflow == "os":
        c = _ceil(m, rows) * _ceil(n, cols) * (k + rows + cols - 2)
    elif dataflow == "ws":
        c = _ceil(k, rows) * _ceil(n, cols) * (2 * rows + cols + m - 2)
    elif dataflow == "is":
        c = _ceil(k, rows) * _ceil(m, cols) * (2 * rows + cols + n - 2)
    else:
        raise ValueError(f"unknown dataflow {dataflow!r}")
    return np.where((m > 0) & (k > 0) & (n > 0), c, 0.0)


def psum_contributions(k, rows: int, dataflow: str, pack: int = 1):
    """How many partial sums each output element receives from the array for a reduction of length k."""
    return np.ones_like(np.asarray(k, dtype=np.float64)) if dataflow == "os" else _ceil(_ceil(k, pack), rows)


def sram_accesses(m, k, n, rows: int, cols: int, dataflow: str, pack: int = 1) -> tuple:
    """(A reads, B reads, C writes, C reads) in elements for one GEMM on the array."""
    m, k, n = (np.asarray(x, dtype=np.float64) for x in (m, k, n))
    if dataflow == "os":
        a, b = m * k * _ceil(n, cols), k * n * _ceil(m, rows)
    elif dataflow == "ws":
        a, b = m * k * _ceil(n, cols), k * n
    else:
        a, b = m * k, k * n * _ceil(m, cols)
    contrib = psum_contributions(k, rows, dataflow, pack)
    return a, b, m * n * contrib, m * n * (contrib - 1)
