"""`ridgeline distill`: prune (or load) a student, KD with LoRA and AdamW/Muon, quantize, evaluate every stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ridgeline.cli.common import app, command, console, csv_list, dumps, note, say
from ridgeline.cli.progress import progress


def _config(teacher: str, student: str, data: str, loss: str, temperature: float, alpha: float, optimizer: str,
            lora_rank: int, lora_alpha: Optional[float], lora_dropout: float, lora_targets: str, full: bool,
            muon_on: str, lr: float, steps: int, batch_size: int, seq_len: int, topk: int, quantize: str, seeds: int,
            task_dir: Optional[Path], heldout_windows: int, heldout_len: int, mc_items: int, cloze_items: int, speed_impl: str,
            no_speed: bool, search: int, search_steps: Optional[int]) -> Any:
    """The DistillConfig from the command's options."""
    from ridgeline.train import (DataConfig, DistillConfig, EvalSettings, KDTrainConfig, LoRAConfig, SearchSettings,
                                 SpeedSettings, StudentSpec, parse_data, parse_loss, parse_quantize)

    lora = None if full else LoRAConfig(rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout,
                                        targets=tuple(csv_list(lora_targets, "--lora-targets")))
    train = KDTrainConfig(lr=lr, steps=steps, batch_size=batch_size, warmup=max(1, steps // 10),
                          loss=parse_loss(loss, temperature, alpha), lora=lora, muon_on=muon_on,
                          checkpoint_every=max(1, steps // 4))
    return DistillConfig(
        teacher=teacher, student=StudentSpec.parse(student), data=parse_data(data, DataConfig(seq_len=seq_len, topk=topk)),
        train=train, optimizers=tuple(csv_list(optimizer, "--optimizer")), seeds=seeds, quantize=parse_quantize(quantize),
        eval=EvalSettings(heldout_windows=heldout_windows, heldout_len=heldout_len, mc_items=mc_items, cloze_items=cloze_items,
                          task_dir=str(task_dir) if task_dir else None),
        speed=SpeedSettings(impl=speed_impl, enabled=not no_speed), search=SearchSettings(trials=search, steps=search_steps))


def stage_table(result: Any) -> Any:
    """The stage table: size, quality and speed of every stage."""
    from rich.table import Table

    tasks = sorted({k for r in result.rows for k in r if k.startswith("task_")})
    t = Table(title=f"distill {result.settings['config']['teacher']} -> {result.settings['config']['student']['label']}"
                    f" ({result.settings['seconds'] / 60:.1f} min)")
    cols = ["stage", "layers", "params", "MiB", "ppl", "KL", "cloze", "MC", *[k[5:] for k in tasks], "tok/s", "train s"]
    for c in cols:
        t.add_column(c, justify="left" if c == "stage" else "right", no_wrap=c == "stage")
    f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in result.rows:
        t.add_row(r["stage"], str(r["layers"]), f"{r['params'] / 1e6:.1f}M", f(r["model_bytes"] / 2**20, ".1f"),
                  f(r["ppl"], ".2f"), f(r["kl"], ".3f"), f(r["cloze_acc"], ".3f"), f(r["mc_acc_norm"], ".3f"),
                  *[f(r.get(k), ".3f") for k in tasks], f(r.get("decode_tok_s"), ".1f"), f(r.get("train_s"), ".0f"))
    return t


def _render(result: Any, as_json: bool) -> None:
    from ridgeline.train import summary_lines

    for w in result.warnings:
        note(w, "warning")
    for n in result.notes:
        note(n)
    if as_json:
        console.print_json(dumps(result.to_json()))
        return
    console.print(stage_table(result))
    for per in result.summary["muon_vs_adamw"].values():
        for d in per.values():
            say(d["verdict"])
    for line in summary_lines(result.summary):
        say(line)
    say(f"wrote {result.files['json']}, {result.files['csv']}, {result.files['html']} and the checkpoints in "
        f"{result.files['stages']}")


@app.command()
@command
def distill(
    teacher: str = typer.Argument("smollm2-135m", help="teacher: the bundled model (smollm2-135m), .gguf, folder or hub id"),
    student: str = typer.Option("prune:10", "--student", help="prune:N[:cosine|span][,width:F] (drop N layers by a measured criterion, keep a fraction F of MLP channels) or a model sharing the teacher's tokenizer"),
    data: str = typer.Option("calib,synthetic:32", "--data", help="calib[:N] (calibration-split windows) and/or synthetic:N (teacher continuations through the paged engine)"),
    loss: str = typer.Option("kl", "--loss", help="kl (forward, T^2-scaled) or reverse-kl"),
    temperature: float = typer.Option(1.0, "--temperature", "-T", help="KD temperature"),
    alpha: float = typer.Option(1.0, "--alpha", help="weight of the KD term; 1 - alpha goes to cross-entropy on the labels"),
    optimizer: str = typer.Option("adamw,muon", "--optimizer", help="adamw and/or muon (torch.optim.Muon on 2-D hidden matrices, AdamW on the rest; one lr via match_rms_adamw)"),
    lora_rank: int = typer.Option(16, "--lora-rank", help="LoRA rank"),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="LoRA alpha (default 2 x rank)"),
    lora_dropout: float = typer.Option(0.0, "--lora-dropout", help="dropout on the adapter input"),
    lora_targets: str = typer.Option("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "--lora-targets", help="projections that get adapters"),
    full: bool = typer.Option(False, "--full", help="full fine-tuning instead of LoRA"),
    muon_on: str = typer.Option("all", "--muon-on", help="LoRA matrices Muon trains: all (A and B), b (B only), none"),
    lr: float = typer.Option(2e-3, "--lr", help="peak learning rate (warm-up, then cosine), shared by both optimizers"),
    steps: int = typer.Option(60, "--steps", help="optimizer steps per KD run"),
    batch_size: int = typer.Option(4, "--batch-size", help="sequences per step"),
    seq_len: int = typer.Option(128, "--seq-len", help="tokens trained per sequence"),
    topk: int = typer.Option(64, "--topk", help="teacher logits cached per position"),
    quantize: str = typer.Option("gptq-w4g128", "--quantize", help="final stages: gptq-w4g128, gptq-w3g128, rtn-w4g128 (comma list), or none"),
    seeds: int = typer.Option(3, "--seeds", help="KD runs per optimizer"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder: checkpoints, data cache, tables; rerun to resume"),
    task_dir: Optional[Path] = typer.Option(None, "--task-dir", help="folder with the seed benchmarks' local files (<task>.jsonl)"),
    heldout_windows: int = typer.Option(16, "--heldout-windows", help="held-out windows for ppl and KL"),
    heldout_len: int = typer.Option(256, "--heldout-len", help="tokens per held-out window"),
    mc_items: int = typer.Option(100, "--mc-items", help="next-line multiple-choice items"),
    cloze_items: int = typer.Option(64, "--cloze-items", help="cloze items"),
    speed_impl: str = typer.Option("auto", "--speed-impl", help="measured decode path for tok/s: auto (native where it runs, else lean), native, lean or hf"),
    no_speed: bool = typer.Option(False, "--no-speed", help="skip the decode-speed measurement"),
    search: int = typer.Option(0, "--search", help="Optuna trials per optimizer over lr, T, alpha and rank before the KD runs (needs ridgeline[search])"),
    search_steps: Optional[int] = typer.Option(None, "--search-steps", help="training steps per trial (default: half of --steps)"),
    as_json: bool = typer.Option(False, "--json", help="print the run as JSON"),
) -> None:
    """Distil, adapt, quantize: student -> KD (LoRA, AdamW/Muon, seeds) -> GPTQ, every stage measured and checkpointed."""
    from ridgeline.train import run_distill

    cfg = _config(teacher, student, data, loss, temperature, alpha, optimizer, lora_rank, lora_alpha, lora_dropout,
                  lora_targets, full, muon_on, lr, steps, batch_size, seq_len, topk, quantize, seeds, task_dir,
                  heldout_windows, heldout_len, mc_items, cloze_items, speed_impl, no_speed, search, search_steps)
    with progress("distill") as report:
        result = run_distill(cfg, out, progress=report)
    _render(result, as_json)
