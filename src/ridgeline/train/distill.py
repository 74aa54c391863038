"""`run_distill`: the KD + LoRA + Muon + GPTQ pipeline of arXiv 2601.09865, end to end on one machine.

teacher ─► student (pruned by a measured criterion, or given) ─► KD on cached teacher top-k logits (calibration
text + teacher continuations; LoRA or full fine-tuning; AdamW or Muon; several seeds) ─► adapters merged ─► GPTQ /
RTN. Every stage is evaluated (held-out ppl, KL to the teacher, cloze, next-line MC, the seed benchmarks when
their files are given), checkpointed atomically (`distill_stages`), and skipped when a rerun finds it done;
training resumes mid-run from its last saved state. At the end every stage's decode speed is measured on the
chosen `ridgeline.measure` path, in rounds interleaved across stages, and the tables are written
(`distill_report`: stages.json, stages.csv, report.html).

Files in the output folder: run.json (the config; a rerun with a different one is refused), data/ (the KD data
with the teacher's top-k, the held-out targets), stages/<name>/ (checkpoints and records), train_state/<name>/
(the state of an interrupted KD run), search/ (Optuna studies), speed.json, stages.json, stages.csv, report.html.
Warnings (a student no smaller than its teacher) and notes (vocabularies padded) are returned, never printed.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ridgeline.errors import RidgelineError
from ridgeline.io import write_json
from ridgeline.train.distill_config import DistillConfig
from ridgeline.train.distill_report import DistillResult, write_outputs
from ridgeline.train.distill_stages import (RunContext, Stage, cleanup, describe, evaluate_model, load_stage_model,
                                            plan_stages, stage_record, write_stage, write_teacher_record)

Progress = Callable[[str, int, int], None]  # (what, done, total)


def check_tokenizers(teacher_tok: Any, student_tok: Any, teacher_vocab: int, student_vocab: int) -> tuple[int | None, list[str]]:
    """Refuse tokenizers that differ; (shared logit size when padding differs, else None; notes)."""
    tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
    if tv != sv:
        diff = sorted(set(tv.items()) ^ set(sv.items()))[:2]
        raise RidgelineError(f"teacher and student tokenizers differ ({len(tv)} vs {len(sv)} tokens; e.g. "
                             f"{', '.join(repr(t) for t, _ in diff)}); KD needs the same vocabulary")
    for attr in ("bos_token_id", "eos_token_id"):
        if getattr(teacher_tok, attr, None) != getattr(student_tok, attr, None):
            raise RidgelineError(f"teacher and student tokenizers differ in {attr} ({getattr(teacher_tok, attr)} vs "
                                 f"{getattr(student_tok, attr)}); KD needs the same tokenizer")
    if teacher_vocab == student_vocab:
        return None, []
    if len(tv) > min(teacher_vocab, student_vocab):
        raise RidgelineError(f"the tokenizer has {len(tv)} tokens but an LM head has only "
                             f"{min(teacher_vocab, student_vocab)} rows")
    shared = min(teacher_vocab, student_vocab)
    return shared, [f"vocabulary sizes differ only by padding (teacher {teacher_vocab}, student {student_vocab}, "
                    f"tokenizer {len(tv)}): the teacher's logits are cut to the first {shared} ids and its "
                    "distribution is padded with zeros on the student's extra ids"]


def _check_run_file(out: Path, config: DistillConfig) -> None:
    """Write run.json, or refuse when the folder holds a run with a different config."""
    path = out / "run.json"
    mine = json.loads(json.dumps(config.to_json(), default=str))
    if path.is_file():
        theirs = json.loads(path.read_text()).get("config")
        if theirs != mine:
            keys = sorted(k for k in set(mine) | set(theirs or {}) if (theirs or {}).get(k) != mine.get(k))
            raise RidgelineError(f"{out} holds a distillation run with a different config ({', '.join(keys)} "
                                 "differ); use another --out folder or remove it")
        return
    write_json(path, {"kind": "ridgeline.distill.run", "config": mine})


def _data(ctx: RunContext, teacher: Any, vocab: int | None) -> None:
    """The KD data set (cached in data/train.safetensors), built with the teacher when missing."""
    from ridgeline.train.kd_data import build_kd_data, load_kd_data, save_kd_data

    path = ctx.out / "data" / "train.safetensors"
    fp = {"teacher": ctx.config.teacher, "data": ctx.config.data.to_json(), "vocab": vocab}
    ctx.data = load_kd_data(path, fp)
    if ctx.data is None:
        ctx.data = build_kd_data(teacher, ctx.tokenizer, ctx.config.data, vocab, ctx.progress, ctx.calib_stream)
        save_kd_data(ctx.data, path, fp)


def _context(config: DistillConfig, out: Path, teacher: Any, tok: Any, vocab: int | None,
             progress: Progress | None) -> RunContext:
    """Held-out targets (cached), the MC task, GPTQ calibration windows and the calibration stream."""
    from ridgeline.corpus import load_corpus
    from ridgeline.eval import build_cloze, build_next_line_task
    from ridgeline.train.kd_data import heldout_targets, load_kd_data, random_windows, save_kd_data, tokenize_split

    ev = config.eval
    calib = tokenize_split(tok, "calib")
    path = out / "data" / "heldout.safetensors"
    fp = {"teacher": config.teacher, "windows": ev.heldout_windows, "length": ev.heldout_len, "topk": ev.heldout_topk,
          "vocab": vocab}
    held = load_kd_data(path, fp)
    if held is None:
        held = heldout_targets(teacher, tok, ev.heldout_windows, ev.heldout_len, ev.heldout_topk, vocab, progress)
        save_kd_data(held, path, fp)
    # GPTQ's windows: the same as quant.calibration_ids(CalibrationConfig(n, seq_len, seed=0)) draws
    return RunContext(config, out, tok, held, build_next_line_task(n=ev.mc_items),
                      random_windows(calib, config.gptq_samples, config.gptq_seq_len, 0),
                      cloze=build_cloze(load_corpus("eval").text, ev.cloze_items), calib_stream=calib,
                      progress=progress)


def _build_student(ctx: RunContext, stage: Stage, teacher: Any) -> dict:
    from ridgeline.arch import prune_depth, prune_width
    from ridgeline.loader import load_model
    from ridgeline.train.kd_data import random_windows

    spec = ctx.config.student
    build: dict[str, Any] = {"student": spec.label}
    if spec.model:
        student = load_model(spec.model, "fp32")[0]
    else:
        student = copy.deepcopy(teacher)
        ids = random_windows(ctx.calib_stream, ctx.config.prune_sequences, ctx.config.prune_seq_len, 1)
        build["depth"] = prune_depth(student, ids, spec.drop, spec.criterion, progress=ctx.progress).to_json()
        if spec.width:
            build["width"] = prune_width(student, ids, spec.width).to_json()
    return write_stage(ctx, stage, student, {"build": build, **describe(student),
                                             "quality": evaluate_model(student, ctx, stage.name)})


def _build_quant(ctx: RunContext, stage: Stage, teacher: Any) -> dict:
    from ridgeline.quant import CalibrationConfig, quantize_

    model = copy.deepcopy(teacher) if stage.parent == "teacher" else load_stage_model(ctx, stage.parent)
    calib = CalibrationConfig(n_samples=ctx.config.gptq_samples, seq_len=ctx.config.gptq_seq_len)
    report = (lambda d, t, w: ctx.report(f"{stage.name}: {w}", d, t)) if ctx.progress else None
    manifest = quantize_(model, stage.quant.config(calib), calibration=ctx.gptq_ids, progress=report)
    build = {"method": manifest["config"], "seconds": manifest["seconds"], "emulated": manifest["emulated"],
             "calibration_tokens": int(ctx.gptq_ids.numel()) if stage.quant.method == "gptq" else 0}
    return write_stage(ctx, stage, model, {"build": build, **describe(model),
                                           "quality": evaluate_model(model, ctx, stage.name)}, quantized=True)


def apply_hyper(train: Any, hyper: dict) -> Any:
    """The training config with searched hyperparameters (lr, temperature, alpha, rank) applied."""
    if not hyper:
        return train
    loss = replace(train.loss, temperature=hyper.get("temperature", train.loss.temperature),
                   alpha=hyper.get("alpha", train.loss.alpha))
    lora = train.lora
    if lora is not None and "rank" in hyper:
        lora = replace(lora, rank=int(hyper["rank"]), alpha=2.0 * int(hyper["rank"]))
    return replace(train, lr=hyper.get("lr", train.lr), loss=loss, lora=lora)


def _build_kd(ctx: RunContext, stage: Stage) -> dict:
    from ridgeline.train.kd_train import train_kd
    from ridgeline.train.lora import adapter_state, merge_lora

    cfg = replace(apply_hyper(ctx.config.train, ctx.hyper.get(stage.optimizer, {})),
                  optimizer=stage.optimizer, seed=stage.seed)
    state = ctx.out / "train_state" / stage.name
    state.parent.mkdir(parents=True, exist_ok=True)
    student = load_stage_model(ctx, "student")
    report = (lambda w, d, t: ctx.report(f"{stage.name}: {w}", d, t)) if ctx.progress else None
    model, result = train_kd(student, ctx.data, cfg, state, report)
    adapters = adapter_state(model)
    merged = merge_lora(model) if cfg.lora is not None else model
    build = {"train": cfg.to_json(), "result": result.to_json(), "data_tokens": ctx.data.tokens}
    record = write_stage(ctx, stage, merged, {"build": build, **describe(merged),
                                              "quality": evaluate_model(merged, ctx, stage.name)},
                         extra={"adapter.safetensors": adapters} if cfg.lora is not None else None)
    cleanup(state)
    return record


def run_distill(config: DistillConfig, out: str | Path, progress: Progress | None = None) -> DistillResult:
    """Run (or resume) every stage of `config` in folder `out`; see the module docstring."""
    from ridgeline.loader import load_model
    from ridgeline.train.search import search_hyperparameters

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_run_file(out, config)
    teacher, tok = load_model(config.teacher, "fp32")
    vocab, notes = None, []
    if config.student.model:
        s_model, s_tok = load_model(config.student.model, "fp32")
        vocab, notes = check_tokenizers(tok, s_tok, teacher.config.vocab_size, s_model.config.vocab_size)
        del s_model
    ctx = _context(config, out, teacher, tok, vocab, progress)
    ctx.notes += notes
    stages = plan_stages(config)
    records: dict[str, dict] = {}
    for i, stage in enumerate(stages):
        ctx.report(f"stage {stage.name}", i, len(stages))
        rec = stage_record(ctx, stage)
        if rec is None and stage.kind == "kd" and ctx.data is None:
            _data(ctx, teacher, vocab)
            if config.search.trials:
                ctx.hyper = search_hyperparameters(ctx, teacher, config.search)
        if rec is None:
            rec = _build_stage(ctx, stage, teacher)
        records[stage.name] = rec
        if stage.kind == "student":
            _student_warning(ctx, records["teacher"], rec)
    del teacher
    speed = measure_speed(ctx, stages) if config.speed.enabled else {}
    return write_outputs(ctx, stages, records, speed, time.perf_counter() - t0)


def _build_stage(ctx: RunContext, stage: Stage, teacher: Any) -> dict:
    if stage.kind == "teacher":
        return write_teacher_record(ctx, stage, {"build": {"model": ctx.config.teacher}, **describe(teacher),
                                                 "quality": evaluate_model(teacher, ctx, stage.name)})
    if stage.kind == "student":
        return _build_student(ctx, stage, teacher)
    if stage.kind == "quant":
        return _build_quant(ctx, stage, teacher)
    return _build_kd(ctx, stage)


def _student_warning(ctx: RunContext, teacher: dict, student: dict) -> None:
    if student["params"] >= teacher["params"]:
        ctx.warnings.append(f"the student ({ctx.config.student.label}, {student['params']:,} parameters) is no "
                            f"smaller than the teacher ({ctx.config.teacher}, {teacher['params']:,} parameters)")


def measure_speed(ctx: RunContext, stages: list[Stage]) -> dict:
    """Decode and prefill tokens/s of every stage: one repeat per stage per round, rounds interleaved."""
    from ridgeline.measure import BenchConfig, run_bench, summarize
    from ridgeline.specs import Scenario

    sp = ctx.config.speed
    sources = {s.name: ctx.config.teacher if s.kind == "teacher" else str(ctx.stage_dir(s.name) / "model")
               for s in stages}
    runs: dict[str, list] = {name: [] for name in sources}
    total = sp.rounds * len(sources)
    for r in range(sp.rounds):
        for j, (name, src) in enumerate(sources.items()):
            ctx.report(f"speed round {r + 1}: {name}", r * len(sources) + j, total)
            cfg = BenchConfig(model=src, scenario=Scenario(sp.prompt, sp.generate), dtype="fp32", impl=sp.impl,
                              repeats=1, warmup=1, threads=sp.threads)
            runs[name].append(run_bench(cfg))
    out = {}
    for name, recs in runs.items():
        decode = summarize([x.decode_tokens_per_s.median for x in recs])
        prefill = summarize([x.prefill_tokens_per_s.median for x in recs])
        out[name] = {"decode_tokens_per_s": decode.to_json(), "prefill_tokens_per_s": prefill.to_json(),
                     "impl": recs[0].impl, "threads": recs[0].threads, "rounds": len(recs)}
    settings = {"impl": sp.impl, "scenario": f"{sp.prompt}:{sp.generate}", "rounds": sp.rounds,
                "per_round": "1 warm-up + 1 timed repeat after loading", "order": "stages interleaved in every round"}
    write_json(ctx.out / "speed.json", {"settings": settings, "stages": out})
    return {"settings": settings, "stages": out}
