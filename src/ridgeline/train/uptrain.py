"""Uptraining: a short continued pre-training after an architecture change (GQA paper: ~5 % of the steps).

The objective is plain next-token prediction on random windows of a token stream. Two optimizers:
- 'adamw': AdamW on every trained parameter.
- 'muon': `torch.optim.Muon` on the 2-D weight matrices of the blocks (it orthogonalizes matrix updates,
  so it takes only 2-D parameters) and AdamW on the rest: embeddings, the LM head (as in Keller Jordan's
  recipe and Moonshot's), norms and biases. Muon uses `adjust_lr_fn='match_rms_adamw'` so one learning
  rate and weight decay serve both groups.

Interrupting: a Ctrl-C (SIGINT, when uptrain runs in the main thread) is deferred to the end of the step
in progress, and a KeyboardInterrupt raised by the progress callback also lands between steps. Either way
`uptrain` stops there and returns what was done (`interrupted=True`): the weights are those after the
last completed optimizer step, never half-updated. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ridgeline.errors import RidgelineError, Terminated
from ridgeline.io import deferred_sigint

OPTIMIZERS = ("adamw", "muon")
TRAINABLE = ("all", "attention", "kv")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class UptrainConfig:
    """A fixed-budget uptraining run: steps × batch_size × seq_len tokens, optimizer, schedule, what to train."""

    steps: int = 100
    seq_len: int = 256
    batch_size: int = 4
    lr: float = 1e-4
    optimizer: str = "adamw"
    weight_decay: float = 0.0  # short continued training: no pull of pretrained weights towards zero
    warmup: int = 10
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    train: str = "all"  # 'all' (the GQA paper), 'attention' (self_attn only) or 'kv' (k_proj/v_proj only)
    grad_clip: float | None = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, hi in (("steps", 1 << 20), ("seq_len", 1 << 17), ("batch_size", 1 << 12)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
                raise RidgelineError(f"uptrain {name} must be an integer from 1 to {hi}, got {v!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise RidgelineError(f"uptrain warmup must be an integer >= 0 steps, got {self.warmup!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise RidgelineError(f"uptrain lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise RidgelineError(f"uptrain weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.min_lr_ratio, (int, float)) and 0 <= self.min_lr_ratio <= 1):
            raise RidgelineError(f"uptrain min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise RidgelineError(f"uptrain grad_clip must be > 0 or None, got {self.grad_clip!r}")
        for name, allowed in (("optimizer", OPTIMIZERS), ("train", TRAINABLE), ("schedule", SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise RidgelineError(f"uptrain {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class UptrainResult:
    """What a run did: the loss of every completed step, tokens trained on, wall seconds, whether it was cut short."""

    losses: tuple[float, ...]
    tokens_seen: int
    seconds: float
    interrupted: bool

    @property
    def steps_done(self) -> int:
        """Completed optimizer steps."""
        return len(self.losses)


def trainable_parameters(model: nn.Module, which: str) -> list[nn.Parameter]:
    """The parameters `which` ('all', 'attention', 'kv') selects, each once (tied weights included once)."""
    if which not in TRAINABLE:
        raise RidgelineError(f"train must be one of {', '.join(TRAINABLE)}, got {which!r}")
    if which == "all":
        return list(model.parameters())
    keep = ("self_attn.k_proj.", "self_attn.v_proj.") if which == "kv" else ("self_attn.",)
    params = [p for n, p in model.named_parameters() if any(k in n for k in keep)]
    if not params:
        raise RidgelineError(f"train={which!r} found no self_attn parameters: expected a llama-style causal LM")
    return params


def _optimizers(model: nn.Module, params: list[nn.Parameter], cfg: UptrainConfig) -> list[torch.optim.Optimizer]:
    """AdamW for everything, or Muon for the blocks' 2-D matrices and AdamW for the rest."""
    if cfg.optimizer == "adamw":
        return [torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)]
    embeds = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    matrices = [p for p in params if p.dim() == 2 and id(p) not in embeds]
    rest = [p for p in params if p.dim() != 2 or id(p) in embeds]
    opts: list[torch.optim.Optimizer] = []
    if matrices:
        opts.append(torch.optim.Muon(matrices, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     adjust_lr_fn="match_rms_adamw"))
    if rest:
        opts.append(torch.optim.AdamW(rest, lr=cfg.lr, weight_decay=cfg.weight_decay))
    return opts


def lr_factor(step: int, cfg: UptrainConfig) -> float:
    """Learning-rate multiplier at `step` (0-based): linear warmup, then cosine to min_lr_ratio (or constant)."""
    warmup = min(cfg.warmup, cfg.steps - 1)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if cfg.schedule == "constant":
        return 1.0
    t = (step - warmup) / max(1, cfg.steps - 1 - warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def _batch(ids: torch.Tensor, cfg: UptrainConfig, gen: torch.Generator) -> torch.Tensor:
    """batch_size random windows of seq_len + 1 tokens from the stream."""
    starts = torch.randint(0, ids.numel() - cfg.seq_len, (cfg.batch_size,), generator=gen)
    return torch.stack([ids[s:s + cfg.seq_len + 1] for s in starts.tolist()])


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of `batch` [B, T+1] (inputs: first T tokens, targets: last T)."""
    logits = model(input_ids=batch[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())


def _check_stream(ids: Any, cfg: UptrainConfig, model: nn.Module) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype not in (torch.int32, torch.int64):
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise RidgelineError(f"uptrain takes a 1-D integer tensor of token ids, got {shape}")
    if ids.numel() < cfg.seq_len + 1:
        raise RidgelineError(f"uptrain needs at least seq_len + 1 = {cfg.seq_len + 1} tokens, got {ids.numel()}")
    vocab = model.get_input_embeddings().num_embeddings
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise RidgelineError(f"token ids must lie in [0, {vocab}), got range [{int(ids.min())}, {int(ids.max())}]")
    return ids.long().to(next(model.parameters()).device)


def uptrain(model: nn.Module, ids: torch.Tensor, config: UptrainConfig | None = None,
            progress: Callable[[int, int, float], None] | None = None) -> UptrainResult:
    """Continue training `model` in place on windows of the token stream `ids`; progress(step, steps, loss).

    The model's train/eval mode and requires_grad flags are restored afterwards; see the module docstring
    for interruption.
    """
    cfg = config or UptrainConfig()
    ids = _check_stream(ids, cfg, model)
    params = trainable_parameters(model, cfg.train)
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    gen = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    interrupted = False
    t0 = time.perf_counter()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opts = _optimizers(model, params, cfg)
        model.train()
        with deferred_sigint() as stop_requested:
            for step in range(cfg.steps):
                if stop_requested():
                    interrupted = True
                    break
                losses.append(_step(model, opts, params, _batch(ids, cfg, gen), lr_factor(step, cfg), cfg))
                if progress is not None:
                    try:
                        progress(step + 1, cfg.steps, losses[-1])
                    except KeyboardInterrupt as exc:  # between steps: the weights are consistent
                        if isinstance(exc, Terminated):  # SIGTERM ends the run; only Ctrl-C stops early
                            raise
                        interrupted = True
                        break
            interrupted = interrupted or (stop_requested() and len(losses) < cfg.steps)
    finally:
        for p, flag in flags.items():
            p.grad = None
            p.requires_grad_(flag)
        model.train(was_training)
    return UptrainResult(tuple(losses), len(losses) * cfg.batch_size * cfg.seq_len,
                         time.perf_counter() - t0, interrupted)


def _step(model: nn.Module, opts: list[torch.optim.Optimizer], params: list[nn.Parameter], batch: torch.Tensor,
          factor: float, cfg: UptrainConfig) -> float:
    """One optimizer step at lr × factor; returns the batch loss before the update."""
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * factor
        opt.zero_grad(set_to_none=True)
    loss = lm_loss(model, batch)
    loss.backward()
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    for opt in opts:
        opt.step()
    return float(loss.detach())
