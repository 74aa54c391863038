"""Optimizers for distillation: AdamW alone, or `torch.optim.Muon` on 2-D hidden matrices + AdamW on the rest.

The split (`split_parameters`): Muon orthogonalises matrix updates, so it takes only 2-D parameters; the
embedding and the LM head are 2-D but are not hidden matrices (one row per token), so they go to AdamW with
the norms and biases, as in Keller Jordan's and Moonshot's recipes. LoRA's A [r, in] and B [out, r] are 2-D
hidden matrices; `muon_on` chooses which of them Muon gets: 'all' (A and B), 'b' (B only, A to AdamW:
OneTrainer's choice, A having an extreme aspect ratio) or 'none' (Muon gets nothing: AdamW everywhere).

Learning rate: Muon runs with `adjust_lr_fn='match_rms_adamw'` (Moonshot, arXiv 2502.16982): its update of an
A×B matrix is scaled by 0.2·√max(A, B), which gives it the RMS of an AdamW update, so both optimizers share one
peak learning rate, weight decay and schedule (the "original" Keller scaling √max(1, A/B) would need a Muon
lr 5-20× AdamW's). The schedule is a linear warm-up to the peak, then cosine to `min_lr_ratio` of it.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ridgeline.errors import RidgelineError

OPTIMIZERS = ("adamw", "muon")
MUON_ON = ("all", "b", "none")
MUON_LR_ADJUST = "match_rms_adamw"


def split_parameters(model: nn.Module, named: Iterable[tuple[str, nn.Parameter]],
                     muon_on: str = "all") -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(Muon's, AdamW's) named trainable parameters: 2-D hidden matrices vs embeddings, head, norms, biases."""
    if muon_on not in MUON_ON:
        raise RidgelineError(f"muon_on must be one of {', '.join(MUON_ON)}, got {muon_on!r}")
    embeds = set()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, get, lambda: None)()
        if module is not None and getattr(module, "weight", None) is not None:
            embeds.add(id(module.weight))
    muon, adamw, seen = [], [], set()
    for name, p in named:
        if id(p) in seen:  # tied weights: one optimizer, once
            continue
        seen.add(id(p))
        lora_a = ".lora_A." in name
        lora_b = ".lora_B." in name
        hidden = p.dim() == 2 and id(p) not in embeds and ".lora_embedding_" not in name
        wanted = muon_on == "all" or (muon_on == "b" and lora_b) or (muon_on == "b" and not lora_a and not lora_b)
        (muon if hidden and wanted else adamw).append((name, p))
    return muon, adamw


def make_optimizers(model: nn.Module, named: list[tuple[str, nn.Parameter]], optimizer: str, lr: float,
                    weight_decay: float = 0.0, muon_on: str = "all") -> list[torch.optim.Optimizer]:
    """[AdamW] or [Muon, AdamW] (either may be absent when it gets no parameters) over `named`."""
    if optimizer not in OPTIMIZERS:
        raise RidgelineError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if optimizer == "adamw":
        return [torch.optim.AdamW([p for _, p in named], lr=lr, weight_decay=weight_decay)]
    muon, adamw = split_parameters(model, named, muon_on)
    opts: list[torch.optim.Optimizer] = []
    if muon:
        opts.append(torch.optim.Muon([p for _, p in muon], lr=lr, weight_decay=weight_decay,
                                     adjust_lr_fn=MUON_LR_ADJUST))
    if adamw:
        opts.append(torch.optim.AdamW([p for _, p in adamw], lr=lr, weight_decay=weight_decay))
    return opts


def lr_at(step: int, steps: int, warmup: int, min_lr_ratio: float = 0.1) -> float:
    """Learning-rate multiplier at `step` (0-based): linear warm-up, then cosine down to `min_lr_ratio`."""
    warmup = min(warmup, steps - 1)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    t = (step - warmup) / max(1, steps - 1 - warmup)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
