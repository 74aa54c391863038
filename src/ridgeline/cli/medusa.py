"""`ridgeline medusa train|accuracy|tree`: Medusa heads trained by self-distillation, their accuracy, their tree."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ridgeline.cli.common import app, command, console, dumps, err_console, say, write_record
from ridgeline.cli.progress import progress

medusa_app = typer.Typer(no_args_is_help=True, help="Medusa heads: train (self-distillation), accuracy, tree.")
app.add_typer(medusa_app, name="medusa")

MODEL = typer.Argument("smollm2-135m", help="the base model: the bundled model (smollm2-135m), a .gguf, a folder or a hub id")
HEADS_DIR = typer.Argument(..., help="a heads folder written by `ridgeline medusa train`")
THREADS = typer.Option(None, "--threads", "-t", help="torch threads (default: torch's setting)")
CORPUS = typer.Option(None, "--corpus", help="a UTF-8 text file (or hf:<dataset>) instead of the default corpus' split")


def _load(model: str):
    from ridgeline.loader import load_model

    lm, tok = load_model(model, "fp32")
    return lm.requires_grad_(False), tok


@medusa_app.command("train")
@command
def train(
    model: str = MODEL,
    heads: int = typer.Option(..., "--heads", help="K heads; head k predicts token t+1+k (1..16)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the heads (heads.safetensors + medusa.json)"),
    layers: int = typer.Option(1, "--layers", help="ResBlocks per head"),
    untied: bool = typer.Option(False, "--untied", help="a vocabulary projection per head (initialised from lm_head) instead of the shared lm_head"),
    sequences: int = typer.Option(256, "--sequences", help="calibration prompts the base continues greedily (self-distillation data)"),
    prompt_len: int = typer.Option(32, "--prompt-len", help="tokens per calibration prompt"),
    generate: int = typer.Option(128, "--generate", help="tokens the base generates per prompt"),
    held_out: int = typer.Option(16, "--held-out", help="sequences kept out of training for the rank accuracies"),
    epochs: float = typer.Option(1.0, "--epochs", help="passes over the training positions"),
    batch_size: int = typer.Option(256, "--batch-size", help="positions per optimizer step"),
    lr: float = typer.Option(1e-3, "--lr", help="peak learning rate (warm-up, then cosine)"),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, or muon (torch.optim.Muon on the 2-D ResBlock weights, AdamW on the rest)"),
    draft_vocab: int = typer.Option(8192, "--draft-vocab", help="heads train on and draft from the N most frequent tokens of the calibration text and targets (0: the whole vocabulary)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from OUT.ckpt"),
    corpus: Optional[str] = CORPUS,
    threads: Optional[int] = THREADS,
    as_json: bool = typer.Option(False, "--json", help="print the training record as JSON"),
) -> None:
    """Train Medusa-1 heads on a frozen base by self-distillation on the calibration split (interruptible, resumable)."""
    from ridgeline.measure import torch_threads
    from ridgeline.train import MedusaConfig, train_medusa

    cfg = MedusaConfig(heads=heads, layers=layers, tied=not untied, sequences=sequences, prompt_len=prompt_len,
                       generate=generate, held_out=held_out, epochs=epochs, batch_size=batch_size, lr=lr,
                       optimizer=optimizer, draft_vocab=draft_vocab)
    with torch_threads(threads):
        lm, tok = _load(model)
        with progress("medusa") as report:
            rep = train_medusa(lm, tok, out, cfg, report, resume=resume, corpus=corpus)
    record = {"kind": "ridgeline.medusa.train", **rep.to_json(), "accuracy": rep.accuracy,
              "out": str(rep.out) if rep.out else None, "checkpoint": str(rep.checkpoint) if rep.checkpoint else None}
    if as_json:
        console.print_json(dumps(record))
    elif rep.out is not None:
        _render_training(rep)
    if rep.interrupted:
        err_console.print(f"interrupted after step {rep.steps_done}/{cfg.steps}; state saved in {rep.checkpoint} "
                          "(rerun with --resume)")
        raise typer.Exit(130)


def _render_training(rep) -> None:
    d = rep.data
    say(f"self-distillation data: {d['sequences']} x {d['generate']} generated tokens in {d['seconds']:.0f} s; "
        f"training: {rep.steps_done} steps x {rep.config.batch_size} positions in {rep.train_seconds:.0f} s; "
        f"loss {rep.losses[0]:.3f} -> {rep.losses[-1]:.3f}")
    console.print(_accuracy_table(rep.accuracy, "held-out accuracy (calibration split, not trained on)"))
    say(f"wrote {rep.out}")


def _accuracy_table(acc: dict, title: str):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in ("head", "predicts", "top-1", "top-5", "rank 0..4"):
        t.add_column(c, justify="right" if c != "rank 0..4" else "left")
    for k, (t1, t5, ranks) in enumerate(zip(acc["top1"], acc["top5"], acc["rank"]), start=1):
        t.add_row(str(k), f"t+{k + 1}", f"{t1:.1%}", f"{t5:.1%}", " ".join(f"{r:.2f}" for r in ranks[:5]))
    return t


@medusa_app.command("accuracy")
@command
def accuracy(
    model: str = MODEL,
    heads_dir: Path = HEADS_DIR,
    split: str = typer.Option("eval", "--split", help="corpus split the prompts come from: eval (held-out documents) or calib"),
    sequences: int = typer.Option(16, "--sequences", help="prompts the base continues greedily"),
    generate: int = typer.Option(128, "--generate", help="tokens generated per prompt"),
    corpus: Optional[str] = CORPUS,
    threads: Optional[int] = THREADS,
    as_json: bool = typer.Option(False, "--json", help="print the record as JSON"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="also write the record (JSON) here"),
) -> None:
    """Per-head top-1 / top-5 (and per-rank) accuracy on the base's own greedy continuations of held-out text."""
    from ridgeline.measure import torch_threads
    from ridgeline.train import heads_accuracy

    with torch_threads(threads):
        lm, tok = _load(model)
        with progress("accuracy") as report:
            acc = heads_accuracy(lm, tok, heads_dir, split, sequences, generate=generate, progress=report,
                                 corpus=corpus)
    record = {"kind": "ridgeline.medusa.accuracy", "model": model, "heads_dir": str(heads_dir), **acc}
    write_record(out, record)
    if as_json:
        console.print_json(dumps(record))
        return
    console.print(_accuracy_table(acc, f"{acc['positions']} positions of {sequences} greedy continuations ({split})"))


@medusa_app.command("tree")
@command
def tree(
    model: str = MODEL,
    heads_dir: Path = HEADS_DIR,
    impl: str = typer.Option("auto", "--impl", help="the path whose verify cost is measured: auto (native where it "
                             "runs, else lean), native, lean or hf"),
    max_tokens: int = typer.Option(24, "--max-tokens", help="largest verification considered (root + nodes)"),
    repeats: int = typer.Option(5, "--repeats", "-r", help="timed repeats per size (medians)"),
    threads: Optional[int] = THREADS,
    as_json: bool = typer.Option(False, "--json", help="print the record as JSON"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the record (JSON, with the tree: usable as --tree FILE)"),
) -> None:
    """Measure the verify-cost curve t(m)/t(1) on this machine and choose the sparse tree for these heads."""
    from ridgeline.engine import medusa_tree
    from ridgeline.measure import torch_threads

    with torch_threads(threads):
        lm, tok = _load(model)
        with progress("measuring the verify-cost curve"):
            info = medusa_tree(lm, tok, str(heads_dir), impl, max_tokens, repeats)
    record = {"kind": "ridgeline.medusa.tree", "model": model, "heads_dir": str(heads_dir), **info}
    write_record(out, record)
    if as_json:
        console.print_json(dumps(record))
        return
    _render_tree(info)


def _render_tree(info: dict) -> None:
    from rich.table import Table

    choice = info["tree_choice"]
    t = Table(title="tree size from the measured verify cost (relative to one plain decode step)", title_justify="left")
    for c in ("verified", "nodes", "cost t(m)/t(1)", "expected tokens/step", "expected speedup"):
        t.add_column(c, justify="right")
    for r in choice["sizes"]:
        mark = " *" if r["nodes"] == choice["nodes"] else ""
        t.add_row(str(r["verify_tokens"]), str(r["nodes"]), f"{r['relative_cost']:.2f}", f"{r['expected_tokens']:.2f}",
                  f"{r['expected_speedup']:.2f}{mark}")
    console.print(t)
    say(f"chosen tree ({choice['nodes']} nodes, depth {info['tree_depth']}): {info['tree']}")
