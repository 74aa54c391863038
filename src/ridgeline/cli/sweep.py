"""`ridgeline sweep`: the analytic roofline over models × depths × scenarios × batches × formats × devices."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ridgeline.cli.common import (ACTS, DEVICE_FILE, KV, app, check_outputs, command, console, csv_list, device_files,
                                  dumps, err_console, finite, int_list, writing)


def _axes(model: str, device: str, scenario: Optional[str], prompt: Optional[str], generate: Optional[str],
          batch: str, layers: Optional[str], weights: str, acts: str, kv: Optional[str], device_file: Optional[Path]):
    """The sweep's axes from the option texts."""
    from ridgeline.roofline import SweepAxes, default_kv
    from ridgeline.specs import Scenario, catalogue, get_device, load_spec, parse_scenario

    extra = device_files(device_file)
    devs = (tuple(catalogue(extra).values()) if device.strip().lower() == "all"
            else tuple(get_device(d, extra) for d in csv_list(device, "--device")))
    scenarios = [parse_scenario(s) for s in csv_list(scenario, "--scenario")] if scenario else []
    if prompt or generate:
        scenarios += [Scenario(p, n) for p in int_list(prompt or "128", "--prompt")
                      for n in int_list(generate or "128", "--generate")]
    return SweepAxes(models=tuple(load_spec(m) for m in csv_list(model, "--model")), devices=devs,
                     scenarios=tuple(scenarios or [parse_scenario("SISO")]),
                     weights=tuple(w.lower() for w in csv_list(weights, "--weights")),
                     layers=tuple(int_list(layers, "--layers")) if layers else (None,),
                     batches=tuple(int_list(batch, "--batch")), acts=acts, kv=default_kv(acts, kv))


def _table(rows: list[dict], wall: float) -> Table:
    from ridgeline.report import seconds, si

    t = Table(title=f"sweep: {len(rows)} rows in {seconds(wall)}")
    shown = ("model", "layers", "device", "scenario", "batch", "weights", "ttft_s", "decode_tokens_per_s",
             "decode_intensity", "decode_bound", "memory_bytes", "fits")
    for c in shown:
        t.add_column(c)
    for r in rows:
        first = [escape(str(r[c])) for c in shown[:6]]
        if r.get("error"):
            t.add_row(*first, f"[red]{escape(r['error'])}[/red]", *[""] * 5)
            continue
        t.add_row(*first, seconds(r["ttft_s"]), f"{r['decode_tokens_per_s']:.4g}" if r["decode_tokens_per_s"] else "-",
                  f"{r['decode_intensity']:.3g}" if r["decode_intensity"] is not None else "-",
                  r["decode_bound"], si(r["memory_bytes"], "B"), "yes" if r["fits"] else "[red]no[/red]")
    return t


@app.command()
@command
def sweep(
    model: str = typer.Option(..., "--model", "-m", help="comma-separated models (files or catalogue ids)"),
    device: str = typer.Option("all", "--device", "-d", help="comma-separated device ids, or 'all'"),
    scenario: Optional[str] = typer.Option(None, "--scenario", "-s", help="comma-separated scenarios (SISO,LISO,... or P:N)"),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="comma-separated prompt lengths (crossed with --generate)"),
    generate: Optional[str] = typer.Option(None, "--generate", help="comma-separated generated lengths"),
    batch: str = typer.Option("1", "--batch", "-b", help="comma-separated batch sizes"),
    layers: Optional[str] = typer.Option(None, "--layers", help="comma-separated depths (first N layers)"),
    weights: str = typer.Option("bf16", "--weights", "-w", help="comma-separated weight formats or recipes"),
    acts: str = ACTS,
    kv: Optional[str] = KV,
    as_json: bool = typer.Option(False, "--json", help="print JSON rows"),
    as_csv: bool = typer.Option(False, "--csv", help="print CSV rows"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write rows to this file: CSV if it ends in .csv, else JSON"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="also plot --y against --x to this PNG/SVG stem"),
    x: str = typer.Option("prompt", "--x", help="sweep column on the plot's x axis (a name from the CSV header)"),
    y: str = typer.Option("decode_tokens_per_s", "--y", help="numeric sweep column on the plot's y axis"),
    device_file: Optional[Path] = DEVICE_FILE,
) -> None:
    """Sweep the roofline over models, depths, scenarios, batches, formats and devices."""
    from rich.progress import Progress

    from ridgeline.io import write_json, write_text
    from ridgeline.report import plot_sweep
    from ridgeline.roofline import check_plot_axes, rows_to_csv, run_sweep, varying_columns

    check_outputs(out=(out, "file"), plot=(plot, "stem"))
    axes = _axes(model, device, scenario, prompt, generate, batch, layers, weights, acts, kv, device_file)
    if plot:
        check_plot_axes(x, y)
    start = time.perf_counter()
    # the progress bar only on a terminal: elsewhere rich would still leave a blank line on stderr
    with Progress(console=err_console, transient=True,
                  disable=as_json or as_csv or not err_console.is_terminal) as bar:
        task = bar.add_task("sweep", total=axes.size)
        rows = finite(run_sweep(axes, progress=lambda n: bar.advance(task, n)))
    wall = time.perf_counter() - start
    if out:
        with writing(out):
            if out.suffix.lower() == ".csv":
                write_text(out, rows_to_csv(rows))
            else:
                write_json(out, {"rows": rows, "wall_time_s": wall})
    if plot:
        with writing(plot):
            plot_sweep(rows, x, y, plot, group_by=varying_columns(rows, x), title=f"{y} vs {x}")
    if as_json:
        print(dumps({"rows": rows, "wall_time_s": wall}))
    elif as_csv:
        sys.stdout.write(rows_to_csv(rows))
    else:
        console.print(_table(rows, wall))
