"""Training Medusa-1 heads by self-distillation on a frozen base (`ridgeline medusa train`).

Objective: L = sum_k w_k CE(head_k(h_t), y_{t,k}) / sum_k w_k with w_k = decay^k (k = 1..K, decay 0.8), y the
base's greedy tokens (`medusa_data`); only the heads train. With a draft vocabulary (default: the 8192 most
frequent tokens of the calibration stream and the targets) the cross-entropy runs over those classes only, as
the heads will draft (a target outside them is masked). Optimizers: AdamW on every head parameter, or
`torch.optim.Muon` on the 2-D ResBlock weights (`adjust_lr_fn='match_rms_adamw'`, so one learning rate serves
both) and AdamW on the biases and, for untied heads, the vocabulary projections (as for embeddings and LM
heads in Muon recipes). Linear warm-up, then cosine to `min_lr_ratio`. One step = `batch_size` positions drawn
without replacement (a fresh seeded permutation per epoch), so a resumed run sees the same batches.

Interrupting: Ctrl-C during the data generation stops with nothing written; during training it is deferred to
the end of the step in progress, then the state (heads, optimizer moments, step, losses, and the cached data)
is written to `<out>.ckpt/` (also every `checkpoint_every` steps) and the run returns `interrupted`;
`resume=True` continues from there with the same batches. A finished run writes the heads folder (with rank
accuracies on held-out sequences of the calibration split) atomically and removes the checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ridgeline.errors import RidgelineError
from ridgeline.io import atomic_folder, deferred_sigint
from ridgeline.engine import (MedusaHeads, base_info, check_structure, coverage, frequent_tokens, load_heads, rank_accuracy,
                              save_heads)
from ridgeline.train.medusa_data import IGNORE, DistillData, corpus_stream, distill_data
from ridgeline.train.uptrain import OPTIMIZERS, SCHEDULES, lr_factor

Progress = Callable[[str, int, int], None]
CHECKPOINT_STATE, CHECKPOINT_DATA, CHECKPOINT_META = "state.safetensors", "data.safetensors", "state.json"
RANKS = 10  # rank accuracies recorded per head (the tree search reads them)


@dataclass(frozen=True)
class MedusaConfig:
    """Heads, self-distillation data and the optimisation of one training run."""

    heads: int = 4
    layers: int = 1
    tied: bool = True
    sequences: int = 256  # greedy continuations generated from calibration prompts
    prompt_len: int = 32
    generate: int = 128  # tokens generated per sequence
    gen_batch: int = 32
    held_out: int = 16  # sequences kept for the rank accuracies (not trained on)
    epochs: float = 1.0
    batch_size: int = 256  # positions per step
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    warmup: int = 10
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    decay: float = 0.8
    grad_clip: float | None = 1.0
    checkpoint_every: int = 50
    draft_vocab: int = 8192  # heads train on and draft from the most frequent tokens (0: the whole vocabulary)
    seed: int = 0

    def __post_init__(self) -> None:
        check_structure(self.heads, self.layers)
        for name in ("sequences", "prompt_len", "gen_batch", "batch_size", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RidgelineError(f"medusa {name} must be an integer >= 1, got {v!r}")
        if isinstance(self.generate, bool) or not isinstance(self.generate, int) or self.generate <= self.heads:
            raise RidgelineError(f"medusa generate must be an integer > heads ({self.heads}), got {self.generate!r}")
        if not isinstance(self.held_out, int) or not 0 <= self.held_out < self.sequences:
            raise RidgelineError(f"medusa held_out must be an integer in [0, sequences), got {self.held_out!r}")
        for name, v in (("epochs", self.epochs), ("lr", self.lr)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise RidgelineError(f"medusa {name} must be a finite number > 0, got {v!r}")
        if not (isinstance(self.decay, (int, float)) and 0 < self.decay <= 1):
            raise RidgelineError(f"medusa loss decay must be in (0, 1], got {self.decay!r}")
        if self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup < 0:
            raise RidgelineError("medusa weight_decay >= 0, min_lr_ratio in [0, 1] and warmup >= 0 are required")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise RidgelineError(f"medusa grad_clip must be > 0 or None, got {self.grad_clip!r}")
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise RidgelineError(f"medusa {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if isinstance(self.draft_vocab, bool) or not isinstance(self.draft_vocab, int) or self.draft_vocab < 0:
            raise RidgelineError(f"medusa draft_vocab must be an integer >= 0 (0: whole vocabulary), "
                                 f"got {self.draft_vocab!r}")
        if self.positions < self.batch_size:
            raise RidgelineError(f"{self.positions} training positions are fewer than a batch of {self.batch_size}")

    @property
    def positions(self) -> int:
        """Training positions: (sequences - held_out) x generate."""
        return (self.sequences - self.held_out) * self.generate

    @property
    def steps(self) -> int:
        """Optimizer steps: epochs x positions / batch_size, rounded up."""
        return max(1, math.ceil(self.epochs * self.positions / self.batch_size))

    def loss_weights(self) -> list[float]:
        """w_k = decay^k for heads k = 1..K."""
        return [self.decay ** k for k in range(1, self.heads + 1)]


@dataclass
class MedusaReport:
    """What a run did: losses per step, tokens, times, held-out accuracies; where the heads (or checkpoint) went."""

    config: MedusaConfig
    losses: list[float]
    head_losses: list[list[float]]
    data: dict
    train_seconds: float
    train_cpu_seconds: float
    interrupted: bool
    out: Path | None
    checkpoint: Path | None
    accuracy: dict = field(default_factory=dict)

    @property
    def steps_done(self) -> int:
        """Completed optimizer steps."""
        return len(self.losses)

    def to_json(self) -> dict:
        """The training record (also in the manifest)."""
        return {"config": asdict(self.config), "steps": self.steps_done, "positions_seen": self.steps_done *
                self.config.batch_size, "data": self.data, "train_seconds": self.train_seconds,
                "train_cpu_seconds": self.train_cpu_seconds,
                "losses": self.losses, "head_losses": self.head_losses, "interrupted": self.interrupted}


def _optimizers(heads: MedusaHeads, cfg: MedusaConfig) -> list[torch.optim.Optimizer]:
    params = [p for p in heads.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return [torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)]
    matrices = [m.linear.weight for blocks in heads.blocks for m in blocks]
    ids = {id(p) for p in matrices}
    rest = [p for p in params if id(p) not in ids]
    opts: list[torch.optim.Optimizer] = [torch.optim.Muon(matrices, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                          adjust_lr_fn="match_rms_adamw")]
    return opts + [torch.optim.AdamW(rest, lr=cfg.lr, weight_decay=cfg.weight_decay)]


class MedusaTrainer:
    """The optimisation state of one run over fixed positions x [N, d] and labels y [N, K]."""

    def __init__(self, heads: MedusaHeads, x: torch.Tensor, y: torch.Tensor, cfg: MedusaConfig) -> None:
        self.heads, self.x, self.y, self.cfg = heads, x, heads.draft_index(y), cfg  # labels as draft-vocab indices
        self.opts = _optimizers(heads, cfg)
        self.weights = cfg.loss_weights()
        self.losses: list[float] = []
        self.head_losses: list[list[float]] = []
        self.seconds = 0.0
        self.cpu_seconds = 0.0  # process CPU time: wall time inflates on a shared machine, this does not
        self._perm: tuple[int, torch.Tensor] | None = None

    @property
    def step(self) -> int:
        """Completed steps."""
        return len(self.losses)

    def batch(self, step: int) -> torch.Tensor:
        """Position indices of `step`: a slice of epoch (step // steps_per_epoch)'s seeded permutation."""
        B, N = self.cfg.batch_size, self.x.shape[0]
        per_epoch = N // B
        epoch, i = divmod(step, per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(N, generator=gen))
        return self._perm[1][i * B:(i + 1) * B]

    def train_step(self) -> None:
        """One optimizer step on the next batch; appends its weighted loss and per-head cross-entropies."""
        cfg, idx = self.cfg, self.batch(self.step)
        factor = lr_factor(self.step, cfg)
        for opt in self.opts:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * factor
            opt.zero_grad(set_to_none=True)
        h, y = self.x[idx], self.y[idx]
        total_w = sum(self.weights)
        loss, per_head = 0.0, []
        for k, block in enumerate(self.heads.blocks):  # one head's [B, vocab] logits alive at a time
            if not bool((y[:, k] != IGNORE).any()):
                per_head.append(float("nan"))
                continue
            ce = F.cross_entropy(self.heads.draft_logits(block(h), k), y[:, k], ignore_index=IGNORE)
            (ce * (self.weights[k] / total_w)).backward()
            per_head.append(float(ce.detach()))
            loss += float(ce.detach()) * self.weights[k] / total_w
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in self.heads.parameters() if p.requires_grad], cfg.grad_clip)
        for opt in self.opts:
            opt.step()
        self.losses.append(loss)
        self.head_losses.append(per_head)

    def run(self, progress: Progress | None = None, checkpoint: Callable[[], None] | None = None) -> bool:
        """Train until cfg.steps; True if interrupted (Ctrl-C, or KeyboardInterrupt from `progress`) between steps."""
        self.heads.train()
        with deferred_sigint() as stop_requested:
            while self.step < self.cfg.steps:
                if stop_requested():
                    return True
                t0, c0 = time.perf_counter(), time.process_time()
                self.train_step()
                self.seconds += time.perf_counter() - t0
                self.cpu_seconds += time.process_time() - c0
                if checkpoint is not None and self.step % self.cfg.checkpoint_every == 0 and self.step < self.cfg.steps:
                    checkpoint()
                if progress is not None:
                    try:
                        progress(f"training (loss {self.losses[-1]:.3f})", self.step, self.cfg.steps)
                    except KeyboardInterrupt:
                        return True
            return bool(stop_requested()) and self.step < self.cfg.steps

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON) of the heads and optimizers, enough to resume."""
        tensors = {f"heads.{k}": v.detach().contiguous() for k, v in self.heads.state_dict().items()}
        groups = []
        for i, opt in enumerate(self.opts):
            sd = opt.state_dict()
            scalars: dict[str, dict] = {}
            for pid, st in sd["state"].items():
                for key, val in st.items():
                    if isinstance(val, torch.Tensor):
                        tensors[f"opt{i}.{pid}.{key}"] = val.detach().contiguous()
                    else:
                        scalars.setdefault(str(pid), {})[key] = val
            groups.append({"param_groups": sd["param_groups"], "scalars": scalars})
        meta = {"losses": self.losses, "head_losses": self.head_losses, "seconds": self.seconds,
                "cpu_seconds": self.cpu_seconds, "optimizers": groups}
        return tensors, meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Load what `state` wrote."""
        self.heads.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("heads.")})
        for i, (opt, saved) in enumerate(zip(self.opts, meta["optimizers"])):
            state: dict[int, dict] = {}
            for key, val in tensors.items():
                if key.startswith(f"opt{i}."):
                    _, pid, name = key.split(".", 2)
                    state.setdefault(int(pid), {})[name] = val
            for pid, scalars in saved["scalars"].items():
                state.setdefault(int(pid), {}).update(scalars)
            opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        self.losses, self.head_losses = list(meta["losses"]), [list(h) for h in meta["head_losses"]]
        self.seconds, self.cpu_seconds = float(meta["seconds"]), float(meta.get("cpu_seconds", 0.0))


def _write_checkpoint(folder: Path, trainer: MedusaTrainer, data: dict[str, torch.Tensor], meta: dict) -> None:
    """The run's state into `folder` (atomic; the data file is copied over from the previous checkpoint)."""
    from safetensors.torch import save_file

    tensors, state = trainer.state()
    previous = folder / CHECKPOINT_DATA
    with atomic_folder(folder) as tmp:
        if previous.is_file():
            shutil.copyfile(previous, tmp / CHECKPOINT_DATA)
        else:
            save_file(data, str(tmp / CHECKPOINT_DATA))
        save_file(tensors, str(tmp / CHECKPOINT_STATE))
        (tmp / CHECKPOINT_META).write_text(json.dumps({**meta, **state}) + "\n")


def _read_checkpoint(folder: Path, cfg: MedusaConfig, base: dict) -> tuple[dict, dict, dict]:
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / CHECKPOINT_META).read_text())
        state, data = load_file(str(folder / CHECKPOINT_STATE)), load_file(str(folder / CHECKPOINT_DATA))
    except Exception as exc:  # noqa: BLE001 -- missing files, bad JSON, bad safetensors: one message
        raise RidgelineError(f"cannot resume from {folder}: {' '.join(str(exc).split())[:160]}") from None
    if meta.get("base", {}).get("weights_sha256") != base["weights_sha256"]:
        raise RidgelineError(f"the checkpoint {folder} was made for another base model "
                             f"({meta.get('base', {}).get('name')})")
    saved = {k: v for k, v in meta.get("config", {}).items() if k != "epochs"}
    if saved != {k: v for k, v in asdict(cfg).items() if k != "epochs"}:
        diff = sorted(k for k in saved if saved.get(k) != asdict(cfg).get(k))
        raise RidgelineError(f"the checkpoint {folder} was made with other settings ({', '.join(diff)}); "
                             "resume with the same options (only --epochs may change)")
    return meta, state, data


def checkpoint_path(out: str | Path) -> Path:
    """Where an interrupted run keeps its state: `<out>.ckpt` beside the output folder."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def train_medusa(model: Any, tokenizer: Any, out: str | Path, cfg: MedusaConfig | None = None,
                 progress: Progress | None = None, resume: bool = False, corpus: str | None = None) -> MedusaReport:
    """Self-distil Medusa heads for `model` on the calibration split and write them to `out` (see the docstring)."""
    cfg = cfg or MedusaConfig()
    out, ckpt = Path(out), checkpoint_path(out)
    if not out.parent.is_dir():
        raise RidgelineError(f"cannot write {out}: folder {out.parent} does not exist")
    if ckpt.exists() and not resume:
        raise RidgelineError(f"{ckpt} holds an interrupted run: pass --resume to continue it, or delete it")
    if resume and not ckpt.is_dir():
        raise RidgelineError(f"nothing to resume: {ckpt} does not exist")
    model.requires_grad_(False)
    if progress:
        progress("hashing the base weights", 0, 1)
    base = base_info(model)
    heads = MedusaHeads(base["hidden_size"], base["vocab_size"], cfg.heads, cfg.layers, cfg.tied)
    heads.attach(model.lm_head.weight.float() if model.lm_head.weight.dtype != torch.float32 else model.lm_head.weight,
                 init_untied=True)
    if resume:
        meta, state, tensors = _read_checkpoint(ckpt, cfg, base)
        data_info = meta["data"]
    else:
        stream = corpus_stream(tokenizer, "calib", corpus)
        dd = distill_data(model, stream, cfg.sequences, cfg.prompt_len, cfg.generate, cfg.gen_batch, cfg.seed,
                          progress)
        data_info = {**dd.info, "split": "calib" if corpus is None else corpus}
        train, val = dd.split(cfg.held_out)
        (x, y), (xv, yv) = train.positions(cfg.heads), val.positions(cfg.heads)
        tensors = {"x": x.contiguous(), "y": y.contiguous(), "x_val": xv.contiguous(), "y_val": yv.contiguous()}
        if cfg.draft_vocab:
            tensors["vocab"] = frequent_tokens(y, base["vocab_size"], cfg.draft_vocab, extra=stream)
    heads.restrict(tensors.get("vocab"))
    trainer = MedusaTrainer(heads, tensors["x"], tensors["y"], cfg)
    if resume:
        trainer.restore(state, meta)
    meta = {"config": asdict(cfg), "base": base, "data": data_info}
    save = lambda: _write_checkpoint(ckpt, trainer, tensors, meta)  # noqa: E731
    interrupted = trainer.run(progress, save)
    report = MedusaReport(cfg, trainer.losses, trainer.head_losses, data_info, trainer.seconds, trainer.cpu_seconds,
                          interrupted, None, None)
    if interrupted:
        save()
        report.checkpoint = ckpt
        return report
    heads.eval()
    heads.restrict(tensors.get("vocab"))  # untied heads: fresh copies of their trained rows
    acc = rank_accuracy(heads, tensors["x_val"], tensors["y_val"], RANKS) if tensors["x_val"].numel() else None
    report.accuracy = _accuracy_json(acc, int(tensors["x_val"].shape[0]), cfg.held_out)
    report.accuracy.update(_vocab_json(heads, tensors["y_val"]))
    heads_out = heads.requires_grad_(False)
    save_heads(heads_out, out, base, {"training": report.to_json(), "accuracy": report.accuracy})
    report.out = out
    shutil.rmtree(ckpt, ignore_errors=True)
    return report


def _accuracy_json(acc: torch.Tensor | None, positions: int, sequences: int) -> dict:
    if acc is None:
        return {}
    rows = acc.tolist()
    return {"rank": rows, "top1": [r[0] for r in rows], "top5": [sum(r[:5]) for r in rows], "positions": positions,
            "data": f"{sequences} held-out greedy continuations of calibration prompts (not trained on)"}


def _vocab_json(heads: MedusaHeads, labels: torch.Tensor) -> dict:
    n = None if heads.draft_vocab is None else int(heads.draft_vocab.numel())
    return {"draft_vocab": n, "draft_vocab_coverage": coverage(heads.draft_vocab, labels)}


def accuracy_report(heads: MedusaHeads, data: DistillData, ranks: int = RANKS) -> dict:
    """Rank, top-1 and top-5 accuracies of `heads` (within their draft vocabulary) on every position of `data` that
    has a target, and the share of targets the draft vocabulary covers."""
    x, y = data.positions(heads.num_heads)
    out = _accuracy_json(rank_accuracy(heads, x, y, ranks), int(x.shape[0]), int(data.tokens.shape[0]))
    return {**out, **_vocab_json(heads, y)}



def heads_accuracy(model: Any, tokenizer: Any, heads_dir: str | Path, split: str = "eval", sequences: int = 16,
                   prompt_len: int = 32, generate: int = 128, seed: int = 1, progress: Progress | None = None,
                   corpus: str | None = None) -> dict:
    """Per-head rank / top-1 / top-5 accuracy of saved heads on the base's greedy continuations of `sequences`
    prompts from a corpus split (default: the held-out eval documents)."""
    heads, manifest = load_heads(heads_dir, model)
    dd = distill_data(model, corpus_stream(tokenizer, split, corpus), sequences, prompt_len, generate,
                      min(sequences, 16), seed, progress)
    return {**accuracy_report(heads, dd), "split": split if corpus is None else corpus, "heads": heads.num_heads,
            "prompt_len": prompt_len, "generate": generate, "seconds": dd.info["seconds"],
            "trained_for": manifest["base"].get("name")}
