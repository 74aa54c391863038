"""`ridgeline eval`: perplexity, cloze and multiple-choice accuracy, one row per variant."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ridgeline.cli.common import (app, check_outputs, command, console, csv_list, dumps, int_list, note, variants,
                                  write_record, writing)
from ridgeline.cli.progress import progress


def reporter(cfg, report):
    """The progress callback of one variant; the perplexity task's first report (its size) also says how long it
    will take at least, by the roofline, before any work."""
    from ridgeline.eval import estimate

    def on_progress(what: str, done: int, total: int) -> None:
        if what == "ppl" and done == 0:
            seconds = estimate(cfg, total)
            bound = f", at least {seconds:.0f} s by the roofline" if seconds is not None else ""
            note(f"{cfg.label}: perplexity over {total} windows of {cfg.context} tokens"
                 f"{bound} (--max-tokens sets the size, 'all' for the whole text)")
        report(f"{cfg.label} {what}", done, total)

    return on_progress


@app.command("eval")
@command
def eval_(
    models: list[str] = typer.Argument(..., help="models to compare: the bundled model (smollm2-135m), a catalogue id, .gguf, folder or hub id"),
    tasks: str = typer.Option("ppl", "--tasks", help="comma list: ppl, cloze, and multiple-choice tasks as NAME=FILE or NAME with --task-dir (arc_easy, arc_challenge, hellaswag, piqa, social_iqa, winogrande, openbookqa, commonsense_qa, mmlu)"),
    task_dir: Optional[Path] = typer.Option(None, "--task-dir", help="folder holding <task>.jsonl files in the public data sets' formats"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16, or a comma list (one variant each)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="documents per multiple-choice task / cloze items"),
    batch_size: int = typer.Option(8, "--batch-size", help="sequences per forward pass"),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="text for ppl/cloze: default the held-out split of the bundled corpus; a text file; or hf:<dataset id>"),
    context: int = typer.Option(1024, "--context", help="perplexity window (tokens)"),
    stride: int = typer.Option(512, "--stride", help="perplexity stride: tokens newly scored per window"),
    max_tokens: str = typer.Option("16384", "--max-tokens", help="perplexity: score the first N tokens of the text, or 'all' (the whole held-out split is 371,296 tokens of the bundled model, about 40 minutes on 2 cores)"),
    num_fewshot: int = typer.Option(0, "--num-fewshot", help="few-shot examples (MMLU layout)"),
    kv: Optional[str] = typer.Option(None, "--kv", help="KV-cache formats for ppl, comma list (kivi2, kivi4, harmonia, bfp32m4, none): each window streams through the cache in chunks of 128"),
    window: Optional[str] = typer.Option(None, "--window", help="sliding-window attention of W keys, comma list with 'none' (a perplexity-vs-W curve)"),
    kv_heads: Optional[str] = typer.Option(None, "--kv-heads", help="GQA: mean-pool K/V heads to G (any divisor of the query heads; no uptraining), comma list"),
    as_json: bool = typer.Option(False, "--json", help="print the records as JSON"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the records (JSON) here"),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="write the quality table as CSV here"),
) -> None:
    """Measure quality: perplexity, cloze and multiple-choice accuracy (lm-eval scoring), one row per variant."""
    from ridgeline.eval import EvalConfig, check_context, parse_tasks, prepare_eval, run_eval
    from ridgeline.io import write_text
    from ridgeline.loader import check_model
    from ridgeline.report import quality_rows, quality_table
    from ridgeline.roofline import rows_to_csv

    check_outputs(out=(out, "file"), csv=(csv_out, "file"))
    names, files = parse_tasks(tasks, task_dir)
    cap = None if max_tokens.strip().lower() == "all" else int_list(max_tokens, "--max-tokens")[0]
    configs = [EvalConfig(m, names, files, d, limit=limit, batch_size=batch_size, corpus=corpus, context=context,
                          stride=stride, max_tokens=cap, num_fewshot=num_fewshot, variant=v)
               for m in models for d in csv_list(dtype, "--dtype") for v in variants(kv, window, kv_heads)]
    # every model, task file and the corpus checked before the first load
    specs = {m: check_model(m) for m in dict.fromkeys(models)}
    prepared = prepare_eval(configs[0])
    for cfg in configs:
        check_context(cfg, specs[cfg.model])
    records = []
    with progress("eval") as report:
        for cfg in configs:
            records.append(run_eval(cfg, progress=reporter(cfg, report), prepared=prepared))
    payload = {"kind": "ridgeline.eval.results", "records": records}
    rows = quality_rows(records)
    write_record(out, payload)
    if csv_out is not None:
        with writing(csv_out):
            write_text(csv_out, rows_to_csv(rows, list(dict.fromkeys(k for r in rows for k in r))))
    if as_json:
        console.print_json(dumps(payload))
    else:
        console.print(quality_table(rows))
