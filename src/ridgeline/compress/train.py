"""Training the learned scorer (LLMLingua-2 style) on labels from the LLMLingua-style compressor.

1. Labels: every calibration window (data.py) is compressed by `LLMLingua` (no protected tokens, no parts:
   the labels say which *content* survives) at each of `label_rates`; a token's soft label is the share of
   those rates at which it is kept (1: kept even at 4x, 0.5: only at 2x, 0: dropped).
2. Training: binary cross-entropy of the scorer's keep logits against the soft labels, mean over tokens,
   AdamW, batches of windows drawn per step from a (seed, step) generator; the last `holdout` windows are never
   trained on and give the curve's held-out loss and its top-half agreement (of the tokens lingua keeps at the
   lowest label rate, the share the scorer also ranks in its top 1/rate).

Both stages checkpoint into the output folder (scorer, optimizer, windows and labels) and resume from it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ridgeline.compress.api import LLMLingua, compress
from ridgeline.compress.data import make_windows
from ridgeline.compress.lm import prefix_id
from ridgeline.compress.loop import Progress, load_optimizer, optimizer_tensors, run_steps, step_generator
from ridgeline.compress.prompt import encode_prompt
from ridgeline.compress.scorer import LearnedScorer, load_scorer, load_tensors, read_scorer_manifest, save_scorer
from ridgeline.errors import RidgelineError


@dataclass(frozen=True)
class ScorerTrainConfig:
    """Labels (windows of calibration text, lingua's rates) and the supervised run (steps, batch, lr, what trains)."""

    windows: int = 160
    context: int = 256
    continuation: int = 64
    label_rates: tuple[float, ...] = (2.0, 4.0)
    holdout: int = 16
    layers: int = 4
    head_hidden: int = 256
    trainable: str = "top"  # head | top (head + last layer + norm) | all
    steps: int = 300
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.0
    protect: tuple[str, ...] = ("newline", "speaker")  # stored with the windows for the SCRL stage
    checkpoint_every: int = 50
    seed: int = 0
    corpus: str | None = None  # a UTF-8 text file instead of the default corpus's calibration split

    def __post_init__(self) -> None:
        for name in ("windows", "context", "continuation", "layers", "steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RidgelineError(f"scorer training {name} must be an integer >= 1, got {v!r}")
        if not 0 <= self.holdout < self.windows:
            raise RidgelineError(f"holdout must be between 0 and windows - 1 ({self.windows - 1}), got {self.holdout}")
        if not self.label_rates or any(not r > 1 for r in self.label_rates):
            raise RidgelineError(f"label rates must be > 1, got {self.label_rates}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RidgelineError(f"lr must be a finite number > 0, got {self.lr}")


@dataclass(frozen=True)
class TrainResult:
    """What a training run did and where it is saved."""

    folder: Path
    stage: str
    steps_done: int
    steps: int
    interrupted: bool
    seconds: float
    curve: list[dict]


def label_window(model: Any, tokenizer: Any, ids: torch.Tensor, rates: tuple[float, ...]) -> torch.Tensor:
    """Soft keep labels of one window: the share of `rates` at which LLMLingua (no protection) keeps each token."""
    prompt = encode_prompt(tokenizer, ids.tolist())
    kept = torch.zeros(ids.numel())
    for rate in rates:
        r = compress(prompt, LLMLingua(protect=()), rate=rate, model=model, tokenizer=tokenizer)
        kept[list(r.kept_positions)] += 1.0
    return kept / len(rates)


def train_scorer(model: Any, tokenizer: Any, out: str | Path, config: ScorerTrainConfig = ScorerTrainConfig(),
                 resume: bool = False, progress: Progress | None = None) -> TrainResult:
    """Label calibration windows with lingua, then train the scorer; checkpoints in `out` (resumable)."""
    t0 = time.perf_counter()
    out = Path(out)
    state = _resume_or_start(model, tokenizer, out, config, resume)
    scorer, data, record = state["scorer"], state["data"], state["record"]
    opt = torch.optim.AdamW(scorer.trainable(config.trainable), lr=config.lr, weight_decay=config.weight_decay)
    if state["optimizer"] is not None:
        load_optimizer(opt, state["optimizer"], record["optimizer_groups"])

    def save(_: int) -> None:
        tensors, groups = optimizer_tensors(opt)
        record["optimizer_groups"] = groups
        save_scorer(scorer, out, record, {"optimizer.safetensors": tensors, "windows.safetensors": data})

    todo = torch.nonzero(torch.isnan(data["targets"][:, 0])).flatten().tolist()
    n_labelled = config.windows - len(todo)

    def label(i: int) -> dict:
        w = todo[i - n_labelled]
        data["targets"][w] = label_window(model, tokenizer, data["ids"][w], config.label_rates)
        return {}

    done, interrupted = run_steps(label, n_labelled, config.windows, save, 16, "labelling windows", progress)
    if interrupted:
        return TrainResult(out, "labels", 0, config.steps, True, time.perf_counter() - t0, record["curve"])
    prefix = prefix_id(tokenizer)

    def step(i: int) -> dict:
        row = _supervised_step(scorer, opt, data, config, prefix, i)
        if (i + 1) % 25 == 0 or i + 1 == config.steps:
            row.update(_heldout(scorer, data, config, prefix))
        record["curve"].append(row)
        record["step"] = i + 1
        return row

    done, interrupted = run_steps(step, record["step"], config.steps, save, config.checkpoint_every,
                                  "training scorer", progress)
    return TrainResult(out, "learned", done, config.steps, interrupted, time.perf_counter() - t0, record["curve"])


def _resume_or_start(model: Any, tokenizer: Any, out: Path, config: ScorerTrainConfig, resume: bool) -> dict:
    """The scorer, windows, record and optimizer tensors: from the checkpoint in `out`, or fresh."""
    if resume and (out / "scorer.json").is_file():
        record = read_scorer_manifest(out).get("record") or {}
        if record.get("stage") != "learned" or not same_run(record.get("config"), json_config(config)):
            raise RidgelineError(f"{out} holds a run with another configuration or stage; resume it with the same "
                                 "options (only the step count may change), or write to a new folder")
        record["config"] = json_config(config)
        return {"scorer": load_scorer(out, model).train(), "data": load_tensors(out, "windows.safetensors"),
                "record": record, "optimizer": load_tensors(out, "optimizer.safetensors")}
    if out.exists() and not resume and any(out.iterdir()) if out.is_dir() else out.exists():
        raise RidgelineError(f"{out} already exists; pass --resume to continue that run or choose a new folder")
    scorer = LearnedScorer.from_model(model, config.layers, config.head_hidden, config.seed)
    data = make_windows(tokenizer, config.windows, config.context, config.continuation, config.protect, config.seed,
                        source=config.corpus)
    record = {"stage": "learned", "config": json_config(config), "step": 0, "curve": [],
              "labels": {"method": "lingua (LLMLingua(protect=()), no parts)", "rates": list(config.label_rates),
                         "split": config.corpus or "calib", "windows": config.windows, "context": config.context}}
    return {"scorer": scorer.train(), "data": data, "record": record, "optimizer": None}


#: options a resumed run may change: how long it runs and how often it saves or evaluates
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "eval_every")


def same_run(saved: dict | None, now: dict) -> bool:
    """Whether a checkpoint's config and the one asked for describe the same run (up to RESUMABLE_CHANGES)."""
    strip = lambda c: {k: v for k, v in (c or {}).items() if k not in RESUMABLE_CHANGES}
    return saved is not None and strip(saved) == strip(now)


def json_config(config: Any) -> dict:
    """A config dataclass as JSON (tuples as lists), for manifests and resume checks."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def _supervised_step(scorer: LearnedScorer, opt: torch.optim.Optimizer, data: dict, config: ScorerTrainConfig,
                     prefix: int, step: int) -> dict:
    """One AdamW step on a batch of labelled training windows; the curve row."""
    gen = step_generator(config.seed, step)
    train_n = config.windows - config.holdout
    rows = torch.randint(0, train_n, (config.batch_size,), generator=gen)
    ids = torch.cat([torch.full((len(rows), 1), prefix), data["ids"][rows]], dim=1)
    scorer.train()
    opt.zero_grad(set_to_none=True)
    loss = F.binary_cross_entropy_with_logits(scorer(ids), data["targets"][rows])
    loss.backward()
    opt.step()
    return {"step": step + 1, "loss": float(loss.detach())}


@torch.no_grad()
def _heldout(scorer: LearnedScorer, data: dict, config: ScorerTrainConfig, prefix: int) -> dict:
    """Held-out BCE and agreement with lingua's kept tokens at its lowest label rate."""
    if not config.holdout:
        return {}
    rows = torch.arange(config.windows - config.holdout, config.windows)
    ids = torch.cat([torch.full((len(rows), 1), prefix), data["ids"][rows]], dim=1)
    scorer.eval()
    logits = scorer(ids)
    scorer.train()
    targets = data["targets"][rows]
    loss = F.binary_cross_entropy_with_logits(logits, targets)
    keep = round(config.context / min(config.label_rates))
    top = torch.zeros_like(targets, dtype=torch.bool).scatter_(1, logits.topk(keep, dim=1).indices, True)
    kept = targets > 0
    agree = (top & kept).sum() / kept.sum().clamp(min=1)
    return {"heldout_loss": float(loss), "heldout_agreement": float(agree)}


def agreement_baseline(data: dict, config: ScorerTrainConfig, seed: int = 0) -> float:
    """The agreement a random ranking gets (the share kept at the lowest rate): what training must beat."""
    rng = np.random.default_rng(seed)
    rows = range(config.windows - config.holdout, config.windows)
    keep = round(config.context / min(config.label_rates))
    hits = total = 0
    for r in rows:
        kept = (data["targets"][r] > 0).numpy()
        pick = rng.choice(config.context, keep, replace=False)
        hits += kept[pick].sum()
        total += kept.sum()
    return float(hits / max(total, 1))
