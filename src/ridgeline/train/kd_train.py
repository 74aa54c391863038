"""The KD training loop: a student (with LoRA adapters or fully fine-tuned) against cached teacher top-k logits.

One step takes the sequences `batch_order(...)[step]` (seeded epochs, a pure function of the step), runs the
student, and minimises `kd_loss` (KL at temperature T, optionally mixed with CE; padding masked) with AdamW
or Muon + AdamW (`optim.py`) at the warm-up + cosine learning rate of that step. Dropout draws from a
generator seeded by (seed, step), so a step's result depends only on the weights and optimizer state before it.

Checkpoints and resuming: with a `state_dir`, the trainable tensors, the optimizer state (safetensors) and the
step and losses (JSON) are written every `checkpoint_every` steps and when the run is interrupted, as one
folder replaced atomically (`ridgeline.io.atomic_folder`): an interruption never leaves a half-written state.
A later call with the same `state_dir` and config continues from the saved step; the result equals an
uninterrupted run (the test compares the weights). A Ctrl-C (SIGINT in the main thread) or a KeyboardInterrupt
raised by the progress callback stops the loop between steps; the state is saved and KeyboardInterrupt is
re-raised for the caller (the pipeline) to stop.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ridgeline.errors import RidgelineError
from ridgeline.io import atomic_folder, deferred_sigint
from ridgeline.train.kd import KDLossConfig, TopK, bucket_kl, kd_loss
from ridgeline.train.kd_data import KDData, batch_order
from ridgeline.train.lora import LoRAConfig, add_lora
from ridgeline.train.optim import MUON_LR_ADJUST, OPTIMIZERS, lr_at, make_optimizers, split_parameters

Progress = Callable[[str, int, int], None]  # (what, done, total)
STATE_FILES = ("trainable.safetensors", "optimizer.safetensors", "state.json")


@dataclass(frozen=True)
class KDTrainConfig:
    """One KD run: optimizer, learning rate and schedule, budget, loss, adapters (None = full fine-tuning)."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    steps: int = 60
    batch_size: int = 4
    warmup: int = 6
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    loss: KDLossConfig = field(default_factory=KDLossConfig)
    lora: LoRAConfig | None = field(default_factory=LoRAConfig)
    muon_on: str = "all"  # Muon on LoRA A and B ('all'), B only ('b') or nothing ('none')
    seed: int = 0
    checkpoint_every: int = 0  # steps between training-state checkpoints (0: only when interrupted)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise RidgelineError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RidgelineError(f"KD {name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise RidgelineError(f"KD lr must be a finite number > 0, got {self.lr!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0 or not isinstance(self.checkpoint_every, int) \
                or self.checkpoint_every < 0:
            raise RidgelineError("KD warmup and checkpoint_every must be integers >= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise RidgelineError(f"KD grad_clip must be > 0 or None, got {self.grad_clip!r}")

    def to_json(self) -> dict:
        """JSON form, with the Muon learning-rate rule named."""
        d = asdict(self)
        d["lora"] = self.lora.to_json() if self.lora else None
        d["full_finetune"] = self.lora is None
        d["muon_lr_adjust"] = MUON_LR_ADJUST if self.optimizer == "muon" else None
        return d


@dataclass(frozen=True)
class KDTrainResult:
    """What a run did: losses per step, tokens, seconds, parameter counts and the optimizer split."""

    losses: tuple[float, ...]
    kl: tuple[float, ...]
    tokens_seen: int
    seconds: float
    resumed_from: int
    trainable: int
    total: int
    split: dict

    def to_json(self) -> dict:
        """JSON form (first/last loss, not every step)."""
        return {"steps": len(self.losses), "first_loss": self.losses[0] if self.losses else None,
                "last_loss": self.losses[-1] if self.losses else None, "losses": list(self.losses),
                "tokens_seen": self.tokens_seen, "seconds": self.seconds, "resumed_from": self.resumed_from,
                "trainable_params": self.trainable, "total_params": self.total, "optimizer_split": self.split}


def prepare_student(student: nn.Module, config: KDTrainConfig) -> tuple[nn.Module, list[tuple[str, nn.Parameter]]]:
    """The model to train (LoRA-wrapped or the student itself) and its named trainable parameters."""
    if config.lora is not None:
        model = add_lora(student, config.lora, config.seed)
    else:
        model = student
        for p in model.parameters():
            p.requires_grad_(True)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return model, named


def _save_state(state_dir: Path, named: list[tuple[str, nn.Parameter]], opts: list[torch.optim.Optimizer],
                step: int, losses: list[float], kls: list[float], fingerprint: dict) -> None:
    from safetensors.torch import save_file

    with atomic_folder(state_dir) as tmp:
        save_file({n: p.detach().contiguous() for n, p in named}, str(tmp / STATE_FILES[0]))
        tensors = {}
        for j, opt in enumerate(opts):
            for idx, st in opt.state_dict()["state"].items():
                for key, value in st.items():
                    tensors[f"{j}.{idx}.{key}"] = value.detach().contiguous()
        save_file(tensors, str(tmp / STATE_FILES[1]))
        (tmp / STATE_FILES[2]).write_text(json.dumps({"step": step, "losses": losses, "kl": kls,
                                                      "fingerprint": fingerprint}) + "\n")


def _load_state(state_dir: Path, named: list[tuple[str, nn.Parameter]], opts: list[torch.optim.Optimizer],
                fingerprint: dict) -> tuple[int, list[float], list[float]]:
    """Restore a saved state into the parameters and optimizers; (step, losses, kl), or (0, [], []) if none."""
    from safetensors.torch import load_file

    if not all((state_dir / f).is_file() for f in STATE_FILES):
        return 0, [], []
    meta = json.loads((state_dir / STATE_FILES[2]).read_text())
    if meta.get("fingerprint") != json.loads(json.dumps(fingerprint)):
        raise RidgelineError(f"{state_dir} holds the training state of a different run (config or data changed); "
                             "remove it or use another output folder")
    weights = load_file(str(state_dir / STATE_FILES[0]))
    if sorted(weights) != sorted(n for n, _ in named):
        raise RidgelineError(f"{state_dir}: saved trainable tensors do not match the model's")
    with torch.no_grad():
        for n, p in named:
            p.copy_(weights[n])
    saved = load_file(str(state_dir / STATE_FILES[1]))
    for j, opt in enumerate(opts):
        sd = opt.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in saved.items():
            oj, idx, name = key.split(".", 2)
            if int(oj) == j:
                state.setdefault(int(idx), {})[name] = value
        sd["state"] = state
        opt.load_state_dict(sd)
    return int(meta["step"]), list(meta["losses"]), list(meta["kl"])


def _batch(data: KDData, rows: list[int]) -> tuple[torch.Tensor, TopK, torch.Tensor, torch.Tensor]:
    ids = data.ids[rows]
    return ids[:, :-1], TopK(data.top_ids[rows].long(), data.top_logits[rows]), ids[:, 1:], data.mask[rows]


def _step(model: nn.Module, opts: list[torch.optim.Optimizer], params: list[nn.Parameter], data: KDData,
          rows: list[int], factor: float, config: KDTrainConfig, step: int) -> tuple[float, float]:
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = config.lr * factor
        opt.zero_grad(set_to_none=True)
    inputs, teacher, labels, mask = _batch(data, rows)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed * 1000003 + step)  # dropout: a function of (seed, step) only
        logits = model(input_ids=inputs, use_cache=False).logits
    loss, parts = kd_loss(logits, teacher, labels, mask, config.loss)
    loss.backward()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    for opt in opts:
        opt.step()
    return float(loss.detach()), parts.get("kl", float("nan"))


def train_kd(student: nn.Module, data: KDData, config: KDTrainConfig, state_dir: str | Path | None = None,
             progress: Progress | None = None) -> tuple[nn.Module, KDTrainResult]:
    """Distil into `student` (in place; LoRA-wrapped if configured) and return (trained model, result)."""
    if len(data) == 0:
        raise RidgelineError("no KD data to train on")
    model, named = prepare_student(student, config)
    params = [p for _, p in named]
    opts = make_optimizers(model, named, config.optimizer, config.lr, config.weight_decay, config.muon_on)
    muon, adamw = split_parameters(model, named, config.muon_on) if config.optimizer == "muon" else ([], named)
    split = {"muon": [n for n, _ in muon], "adamw": [n for n, _ in adamw]}
    fingerprint = {"config": config.to_json(), "data": [len(data), data.tokens]}
    state = Path(state_dir) if state_dir is not None else None
    start, losses, kls = _load_state(state, named, opts, fingerprint) if state else (0, [], [])
    order = batch_order(len(data), config.steps, config.batch_size, config.seed)
    t0 = time.perf_counter()
    step = start
    model.train()
    try:
        with deferred_sigint() as stop:
            for step in range(start, config.steps):
                if stop():
                    raise KeyboardInterrupt
                loss, kl = _step(model, opts, params, data, order[step], lr_at(step, config.steps, config.warmup,
                                 config.min_lr_ratio), config, step)
                losses.append(loss)
                kls.append(kl)
                done = step + 1
                if state and config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                    _save_state(state, named, opts, done, losses, kls, fingerprint)
                if progress is not None:
                    progress(f"{config.optimizer} step loss {loss:.3f}", done, config.steps)
            step = config.steps
    except KeyboardInterrupt:
        if state is not None:
            _save_state(state, named, opts, len(losses), losses, kls, fingerprint)
        raise
    finally:
        model.eval()
        for p in params:
            p.grad = None
    trainable, total = sum(p.numel() for p in params), sum(p.numel() for p in {id(q): q for q in model.parameters()}.values())
    tokens = sum(int(data.mask[rows].sum()) for rows in order[start:])
    return model, KDTrainResult(tuple(losses), tuple(kls), tokens, time.perf_counter() - t0, start, trainable,
                                total, split)


def heldout_quality(model: nn.Module, heldout: KDData, batch_size: int = 4, vocab: int | None = None) -> dict:
    """Held-out token perplexity and KL to the teacher (T = 1, top-k + tail bucket) in one pass over the windows."""
    nll = kl = 0.0
    n = 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(heldout), batch_size):
                rows = list(range(start, min(start + batch_size, len(heldout))))
                ids = heldout.ids[rows].to(device)
                logits = model(input_ids=ids[:, :-1], use_cache=False).logits.float()
                if vocab is not None:
                    logits = logits[..., :vocab]
                mask = heldout.mask[rows].reshape(-1)
                flat = logits.reshape(-1, logits.shape[-1])[mask]
                nll += float(torch.nn.functional.cross_entropy(flat, ids[:, 1:].reshape(-1)[mask], reduction="sum"))
                k = heldout.top_ids.shape[-1]
                tl = heldout.top_logprobs()[rows].reshape(-1, k)[mask]
                kl += float(bucket_kl(flat, heldout.top_ids[rows].reshape(-1, k)[mask], tl).sum())
                n += int(mask.sum())
    finally:
        model.train(was_training)
    return {"ppl": math.exp(nll / n), "nll_per_token": nll / n, "kl": kl / n, "tokens": n}


def with_seed(config: KDTrainConfig, seed: int) -> KDTrainConfig:
    """The same run with another seed."""
    return replace(config, seed=seed)
