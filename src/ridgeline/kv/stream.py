"""Streaming negative log-likelihood: feed a text through a KV cache chunk by chunk.

A plain perplexity window attends to full-precision keys and values of every earlier token; a compressed
cache (KIVI, Harmonia, a rolling window) only changes what *later* chunks see. Scoring chunk by chunk
through the cache measures the quality the cache actually delivers at decode time.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ridgeline.errors import RidgelineError


def stream_losses(model: Any, ids: torch.Tensor, cache: Any, chunk: int = 64,
                  progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Per-token NLL (nats, float64) of tokens 1..T-1 of `ids` [1, T], fed `chunk` tokens at a time through `cache`."""
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise RidgelineError(f"streaming scores one sequence of shape [1, T], got {tuple(ids.shape)}")
    if chunk < 1:
        raise RidgelineError(f"chunk must be >= 1 token, got {chunk}")
    T = ids.shape[1]
    losses = []
    with torch.inference_mode():
        for start in range(0, T - 1, chunk):
            end = min(start + chunk, T - 1)  # the last token is only a target
            pos = torch.arange(start, end, device=ids.device)[None]
            logits = model(input_ids=ids[:, start:end], position_ids=pos, cache=cache,
                           use_cache=True).logits[0]
            losses.append(F.cross_entropy(logits.float(), ids[0, start + 1:end + 1], reduction="none").double())
            if progress is not None:
                progress(end, T - 1)
    return torch.cat(losses) if losses else torch.zeros(0, dtype=torch.float64)


def stream_nll(model: Any, ids: torch.Tensor, cache: Any, chunk: int = 64,
               progress: Callable[[int, int], None] | None = None) -> tuple[float, int]:
    """Summed NLL (nats) and count of tokens 1..T-1 of `ids` [1, T], fed `chunk` tokens at a time through `cache`."""
    losses = stream_losses(model, ids, cache, chunk, progress)
    return losses.sum().item(), losses.numel()
