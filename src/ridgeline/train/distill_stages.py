"""The stages of a distillation run and how each is built, evaluated and checkpointed.

Stages, in order: the teacher; GPTQ-only of the teacher (one per quantization); the student before KD
(pruned from the teacher, or loaded); GPTQ-only of the student; then for every optimizer and seed the KD
student (adapters merged) and its quantized versions. Every stage but the teacher is a checkpoint folder
`stages/<name>/` holding `model/` (a transformers folder of safetensors, or a `ridgeline.quant` quantized
folder), `stage.json` (what was built, how, and its quality) and, for KD stages, `adapter.safetensors`.
The folder is written to a temporary sibling and renamed into place, so it exists complete or not at all:
a run resumes by skipping every stage whose folder exists, and later stages load their parents from disk.

Quality of a stage (`evaluate_model`): held-out token perplexity and KL to the teacher (T = 1, top-k plus a
tail bucket) on fixed windows of the held-out split, in one pass; cloze accuracy (LAMBADA-style, held-out);
the next-line multiple-choice task (held-out, lm-eval-identical scoring); the seed benchmarks' local files.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ridgeline.errors import RidgelineError
from ridgeline.io import atomic_folder
from ridgeline.train.distill_config import DistillConfig, QuantSpec

Progress = Callable[[str, int, int], None]  # (what, done, total)
STAGE_FILE = "stage.json"


@dataclass(frozen=True)
class Stage:
    """One row of the run: what it is and which stage it starts from."""

    name: str
    kind: str  # teacher | student | kd | quant
    parent: str | None = None
    optimizer: str | None = None
    seed: int | None = None
    quant: QuantSpec | None = None

    def to_json(self) -> dict:
        """JSON form."""
        return {"stage": self.name, "kind": self.kind, "parent": self.parent, "optimizer": self.optimizer,
                "seed": self.seed, "quant": self.quant.name if self.quant else None}


def plan_stages(config: DistillConfig) -> list[Stage]:
    """Every stage of the run, parents before children."""
    stages = [Stage("teacher", "teacher")]
    stages += [Stage(f"teacher+{q.name}", "quant", "teacher", quant=q) for q in config.quantize]
    stages.append(Stage("student", "student", "teacher"))
    stages += [Stage(f"student+{q.name}", "quant", "student", quant=q) for q in config.quantize]
    for opt in config.optimizers:
        for seed in range(config.seeds):
            name = f"kd-{opt}-s{seed}"
            stages.append(Stage(name, "kd", "student", optimizer=opt, seed=seed))
            stages += [Stage(f"{name}+{q.name}", "quant", name, quant=q) for q in config.quantize]
    return stages


@dataclass
class RunContext:
    """What every stage shares: the config, folders, tokenizer, cached data and evaluation sets."""

    config: DistillConfig
    out: Path
    tokenizer: Any
    heldout: Any  # KDData: held-out windows with the teacher's top-k
    mc_task: Any  # eval Task: next-line multiple choice
    gptq_ids: Any  # calibration token ids [n, seq] for GPTQ
    cloze: Any = None  # cloze items of the held-out split
    data: Any = None  # KDData for training (built lazily: only KD stages need it)
    calib_stream: Any = None  # the calibration split as one token stream
    hyper: dict[str, dict] = field(default_factory=dict)  # optimizer -> searched hyperparameters
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    progress: Progress | None = None

    def stage_dir(self, name: str) -> Path:
        """The checkpoint folder of a stage."""
        return self.out / "stages" / name

    def report(self, what: str, done: int, total: int) -> None:
        """Progress, if anyone listens."""
        if self.progress is not None:
            self.progress(what, done, total)


def stage_record(ctx: RunContext, stage: Stage) -> dict | None:
    """The saved record of a finished stage, or None."""
    path = ctx.stage_dir(stage.name) / STAGE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def load_stage_model(ctx: RunContext, name: str) -> Any:
    """A stage's model, loaded from its checkpoint (the teacher from its reference)."""
    from ridgeline.loader import load_model

    if name == "teacher":
        return load_model(ctx.config.teacher, "fp32")[0]
    folder = ctx.stage_dir(name) / "model"
    if not folder.is_dir():
        raise RidgelineError(f"stage {name} has no checkpoint in {folder}; it must be built first")
    return load_model(folder, "fp32")[0]


def model_bytes(model: Any) -> float:
    """Bytes of the weights as held: quantized codes and scales plus float parameters, or the float parameters."""
    from ridgeline.quant import param_bytes

    manifest = getattr(model, "ridgeline_quant", None)
    if manifest:
        return float(manifest["quantized_bytes"] + manifest["float_bytes"])
    return param_bytes(model)


def param_count(model: Any) -> int:
    """Parameters, quantized weights included, tied tensors once."""
    manifest = getattr(model, "ridgeline_quant", None)
    if manifest:
        return int(manifest["quantized_params"] + manifest["float_params"])
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def folder_bytes(folder: Path) -> int:
    """Bytes of the safetensors files in a folder (the checkpoint on disk)."""
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))


def evaluate_model(model: Any, ctx: RunContext, what: str) -> dict:
    """Held-out ppl and KL, cloze, next-line MC and the seed benchmarks (when their files are given)."""
    from ridgeline.eval import EvalConfig, evaluate_cloze, evaluate_next_line, run_eval, task_files_from_dir
    from ridgeline.train.kd_train import heldout_quality

    ev = ctx.config.eval
    tok = ctx.tokenizer
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    ctx.report(f"{what}: held-out ppl and KL", 0, 3)
    out["heldout"] = heldout_quality(model, ctx.heldout, batch_size=max(1, ev.batch_size // 2))
    ctx.report(f"{what}: cloze", 1, 3)
    cloze = evaluate_cloze(model, tok, ctx.cloze, batch_size=ev.batch_size)
    out["cloze"] = {"n": cloze.n, "accuracy": cloze.accuracy, "word_perplexity": cloze.word_perplexity}
    ctx.report(f"{what}: next-line multiple choice", 2, 3)
    mc = evaluate_next_line(model, tok, ctx.mc_task, batch_size=ev.batch_size)
    out["next_line"] = {"n": mc.n, "acc": mc.acc, "acc_norm": mc.acc_norm, "metric": mc.metric}
    if ev.task_dir:
        present = tuple(t for t in ev.tasks if any((Path(ev.task_dir) / f"{t}{x}").is_file() for x in (".jsonl", ".json")))
        if present:
            files = task_files_from_dir(ev.task_dir, present)
            rec = run_eval(EvalConfig(model=what, tasks=present, task_files=files, limit=ev.task_limit,
                                      batch_size=ev.batch_size), model=model, tokenizer=tok)
            out["tasks"] = {t: {"metric": r["metric"], "value": r["value"], "n": r["n"]}
                            for t, r in rec["tasks"].items()}
    out["eval_seconds"] = time.perf_counter() - t0
    return out


def write_stage(ctx: RunContext, stage: Stage, model: Any, record: dict, quantized: bool = False,
                extra: dict[str, Any] | None = None) -> dict:
    """Checkpoint a stage atomically: model/ (safetensors), stage.json and extra safetensors files."""
    from safetensors.torch import save_file

    from ridgeline.loader import quiet_transformers
    from ridgeline.quant import save_quantized

    folder = ctx.stage_dir(stage.name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(folder) as tmp:
        if quantized:
            save_quantized(model, ctx.tokenizer, tmp / "model")
        else:
            with quiet_transformers():
                model.save_pretrained(tmp / "model")
                ctx.tokenizer.save_pretrained(tmp / "model")
        for name, tensors in (extra or {}).items():
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / name))
        record = {**stage.to_json(), **record, "file_bytes": folder_bytes(tmp)}
        (tmp / STAGE_FILE).write_text(json.dumps(record, indent=1, default=str) + "\n")
    return record


def write_teacher_record(ctx: RunContext, stage: Stage, record: dict) -> dict:
    """The teacher's folder holds only its record (its weights are the input, not a checkpoint)."""
    folder = ctx.stage_dir(stage.name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(folder) as tmp:
        record = {**stage.to_json(), **record, "file_bytes": None}
        (tmp / STAGE_FILE).write_text(json.dumps(record, indent=1, default=str) + "\n")
    return record


def describe(model: Any) -> dict:
    """Size facts of a model: layers, MLP width, parameters, bytes as held, weight precision."""
    from ridgeline.quant import precision_label

    cfg = model.config
    return {"layers": cfg.num_hidden_layers, "intermediate": getattr(cfg, "intermediate_size", None),
            "params": param_count(model), "model_bytes": model_bytes(model), "weights": precision_label(model)}


def cleanup(path: Path) -> None:
    """Remove a finished stage's training state (a folder of files)."""
    if path.is_dir():
        for f in path.iterdir():
            f.unlink()
        os.rmdir(path)
