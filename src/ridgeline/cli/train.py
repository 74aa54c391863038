"""`ridgeline gqa`: MHA/GQA conversion with uptraining, measured stage by stage."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ridgeline.cli.common import app, check_outputs, command, console, dumps, err_console, say, write_record, writing
from ridgeline.cli.progress import progress


@app.command()
@command
def gqa(
    model: str = typer.Argument("smollm2-135m", help="model to convert: the bundled model (smollm2-135m), .gguf, folder or hub id"),
    kv_heads: int = typer.Option(..., "--kv-heads", help="KV heads after conversion: any divisor of the query heads (fewer: pooling, more: exact expansion)"),
    steps: int = typer.Option(30, "--steps", help="uptraining budget in optimizer steps (each batch-size x seq-len calibration tokens)"),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, or muon (torch.optim.Muon on the 2-D block weights, AdamW on the rest)"),
    lr: float = typer.Option(1e-4, "--lr", help="peak learning rate (warm-up, then cosine)"),
    seq_len: int = typer.Option(256, "--seq-len", help="tokens per training sequence"),
    batch_size: int = typer.Option(2, "--batch-size", help="sequences per step"),
    train: str = typer.Option("all", "--train", help="parameters to train: all, attention or kv (k_proj/v_proj)"),
    context: int = typer.Option(512, "--context", help="perplexity window (tokens)"),
    eval_tokens: int = typer.Option(4096, "--eval-tokens", help="held-out tokens scored at each stage"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="save the uptrained model here (a transformers folder)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    report_out: Optional[Path] = typer.Option(None, "--report", help="write the report (JSON) here"),
) -> None:
    """MHA/GQA conversion: mean-pool K/V heads, uptrain on calibration text, report ppl and KV bytes per stage."""
    from ridgeline.loader import check_model, load_model
    from ridgeline.report import gqa_table
    from ridgeline.train import UptrainConfig, check_gqa_run, convert_to_gqa, save_model

    check_outputs(out=(out, "folder"), report=(report_out, "file"))
    config = UptrainConfig(steps=steps, seq_len=seq_len, batch_size=batch_size, lr=lr, optimizer=optimizer,
                           train=train, warmup=max(1, steps // 10))
    check_gqa_run(check_model(model), kv_heads, config, context, eval_tokens)
    lm, tok = load_model(model, "fp32")
    with progress("gqa") as report:
        rep = convert_to_gqa(lm, tok, kv_heads, config, context, eval_tokens, progress=report)
    record = {"kind": "ridgeline.gqa", "model": model, "kv_heads": kv_heads, "stages": rep.rows,
              "uptrain": rep.uptrain, "eval": rep.eval_settings}
    if out is not None:
        with writing(out):
            save_model(lm, tok, out)
        record["saved"] = str(out)
    write_record(report_out, record)
    if as_json:
        console.print_json(dumps(record))
        return
    console.print(gqa_table(record))
    if rep.uptrain["interrupted"]:
        err_console.print("uptraining was interrupted; the last stage is the model after the completed steps")
    if out is not None:
        say(f"wrote {out} (loads in transformers; `ridgeline eval {out}`)")
