"""Rate control: the token budget, its split across prompt parts, and keeping the best tokens within it.

A rate r > 1 asks to keep round(n / r) of n tokens (at least 1); a budget B asks for B < n tokens directly.
The budget controller (LLMLingua) splits B over the parts of a prompt, instruction / context / question in
order: the instruction and question keep round(len / their rate) tokens each (rate 1: kept whole), and the
context gets the rest. A context smaller than its share leaves the surplus to the question, then the
instruction, so the total is exactly B whenever the prompt has B tokens.

`select` keeps exactly `budget` tokens of a part: protected tokens first, then whole units in order of their
mean score (highest first; ties go to the later unit) while they fit, then the best single tokens of units that
did not fit. The kept count is therefore exactly the budget, and the achieved rate n / B. Protection is a
priority bounded by the budget: when a part's protected tokens alone exceed its budget (a 4x budget of a play
whose every other line is a speaker's name), its highest-scoring protected tokens fill the budget and the
rest are dropped; `compress` reports how many (`protected_dropped`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ridgeline.errors import RidgelineError


def resolve_budget(n: int, rate: float | None = None, budget: int | None = None) -> tuple[int, float]:
    """(tokens to keep, requested rate) for a prompt of `n` tokens, from exactly one of `rate` and `budget`."""
    if n < 1:
        raise RidgelineError("the prompt is empty; pass at least one token to compress")
    if (rate is None) == (budget is None):
        raise RidgelineError("give exactly one of rate (e.g. 2 for 2x fewer tokens) and budget (tokens to keep)")
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 1:
            raise RidgelineError(f"compression rate must be a number > 1 (2 keeps half the tokens), got {rate!r}")
        keep = max(1, round(n / rate))
        if keep >= n:
            raise RidgelineError(f"a prompt of {n} token{'s' if n > 1 else ''} is too short to compress at rate {rate:g}")
        return keep, float(rate)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise RidgelineError(f"token budget must be an integer >= 1, got {budget!r}")
    if budget >= n:
        raise RidgelineError(f"token budget {budget} is not smaller than the prompt's {n} tokens; "
                             f"ask for fewer than {n} tokens (or a rate > 1)")
    return budget, n / budget


@dataclass(frozen=True)
class Parts:
    """Token counts of the instruction (prompt head) and question (prompt tail) and the rates they keep.

    The context is what lies between. LLMLingua's controller keeps instruction and question at a low rate
    (here whole by default) and compresses the context harder to meet the total.
    """

    instruction: int = 0
    question: int = 0
    instruction_rate: float = 1.0
    question_rate: float = 1.0

    def __post_init__(self) -> None:
        for name in ("instruction", "question"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise RidgelineError(f"{name} tokens must be an integer >= 0, got {v!r}")
        for name in ("instruction_rate", "question_rate"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 1:
                raise RidgelineError(f"{name} must be a number >= 1 (1 keeps the part whole), got {v!r}")


def part_budgets(n: int, budget: int, parts: Parts | None = None) -> list[tuple[int, int, int]]:
    """(start, end, tokens to keep) per non-empty part, instruction / context / question; budgets sum to `budget`."""
    parts = parts or Parts()
    if parts.instruction + parts.question > n:
        raise RidgelineError(f"instruction ({parts.instruction}) and question ({parts.question}) tokens exceed the "
                             f"prompt's {n} tokens")
    ni, nq = parts.instruction, parts.question
    nc = n - ni - nq
    bi = min(ni, round(ni / parts.instruction_rate)) if ni else 0
    bq = min(nq, round(nq / parts.question_rate)) if nq else 0
    if bi + bq > budget:
        raise RidgelineError(f"the instruction and question alone keep {bi + bq} tokens at their rates, more than "
                             f"the budget of {budget}; compress them harder or ask for a larger budget")
    bc = min(nc, budget - bi - bq)
    spare = budget - bi - bq - bc  # the context is smaller than its share: give the rest back to the other parts
    more_q = min(spare, nq - bq)
    bq, spare = bq + more_q, spare - more_q
    bi += min(spare, ni - bi)
    out = [(0, ni, bi), (ni, ni + nc, bc), (ni + nc, n, bq)]
    return [(s, e, b) for s, e, b in out if e > s]


def spread(budget: int, lengths: list[int]) -> list[int]:
    """Split `budget` over consecutive segments in proportion to their lengths, exactly (cumulative rounding)."""
    total = sum(lengths)
    if budget > total:
        raise RidgelineError(f"cannot keep {budget} of {total} tokens")
    out, done, acc = [], 0, 0
    for length in lengths:
        acc += length
        target = round(budget * acc / total) if total else 0
        out.append(min(length, target - done))
        done += out[-1]
    return out


def select(scores: np.ndarray, budget: int, protected: np.ndarray | None = None,
           units: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Boolean keep mask with exactly `budget` True: protected tokens, then the best units, then the best tokens."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    if not 0 <= budget <= n:
        raise RidgelineError(f"cannot keep {budget} of {n} tokens")
    keep = np.zeros(n, dtype=bool) if protected is None else np.asarray(protected, dtype=bool).copy()
    if keep.sum() > budget:  # the budget cannot hold every protected token: the best of them, exactly the budget
        prot = np.flatnonzero(keep)
        keep[:] = False
        keep[prot[np.lexsort((-prot, -scores[prot]))][:budget]] = True
        return keep
    left = budget - int(keep.sum())
    units = units if units is not None else [(i, i + 1) for i in range(n)]
    free = [(s, e, np.flatnonzero(~keep[s:e]) + s) for s, e in units]
    free = [(s, e, idx) for s, e, idx in free if idx.size]
    means = np.array([scores[idx].mean() for _, _, idx in free]) if free else np.zeros(0)
    # highest mean first; among equal scores the later unit first (recent text matters more to what follows)
    for j in np.lexsort((-np.arange(len(free)), -means)):
        idx = free[j][2]
        if idx.size <= left:
            keep[idx] = True
            left -= idx.size
        if left == 0:
            break
    if left:
        rest = np.flatnonzero(~keep)
        best = rest[np.lexsort((-rest, -scores[rest]))][:left]
        keep[best] = True
    return keep
