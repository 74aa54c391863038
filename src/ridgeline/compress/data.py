"""Training windows for the learned scorer and SCRL: calibration text only, as fixed-size tensors.

A window is `context` tokens of the calibration split followed by its true `continuation` (corpus_samples,
disjoint, seeded). Stored per window: the ids, the continuation, the protected tokens, word starts, and two
things filled in as training goes (NaN until then): the LLMLingua labels (`targets`, the share of the label
rates at which lingua keeps the token: a soft keep label) and the full context's NLLs (`full_cont_nll`,
`full_ctx_nll`, nats/token, SCRL's reference). Everything is a tensor, so a checkpoint holds it in safetensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ridgeline.compress.quality import corpus_samples
from ridgeline.compress.units import protected_mask, unit_starts


def make_windows(tokenizer: Any, n: int, context: int, continuation: int, protect: Sequence[str], seed: int,
                 split: str = "calib", source: str | None = None) -> dict[str, torch.Tensor]:
    """`n` calibration windows as tensors (labels and reference NLLs still NaN)."""
    samples = corpus_samples(tokenizer, n, context, continuation, split, seed, source)
    return {
        "ids": torch.tensor([s.context.ids for s in samples], dtype=torch.long),
        "cont": torch.tensor([s.continuation.ids for s in samples], dtype=torch.long),
        "protected": torch.from_numpy(np.stack([protected_mask(s.context, protect) for s in samples])),
        "word_starts": torch.from_numpy(np.stack([unit_starts(s.context, "word") for s in samples])),
        "targets": torch.full((n, context), float("nan")),
        "full_cont_nll": torch.full((n,), float("nan"), dtype=torch.float64),
        "full_ctx_nll": torch.full((n,), float("nan"), dtype=torch.float64),
    }


def word_units(starts: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) ranges from a boolean word-start row."""
    idx = torch.nonzero(starts).flatten().tolist() or [0]
    if idx[0] != 0:
        idx = [0] + idx
    return list(zip(idx, idx[1:] + [starts.numel()]))
