"""`ridgeline accel`: a model's scenario on simulated accelerators (torch-free): per-operator tables, the
designs against a baseline, and a design-space exploration with its Pareto plots."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ridgeline.cli.common import JSON, app, command, console, csv_list, dumps, say, writing
from ridgeline.cli.progress import progress
from ridgeline.errors import RidgelineError


def _axes(text: Optional[str]) -> Optional[dict]:
    """'rows=8,16;cols=32,64;kv=harmonia,bfp32m4' -> {"rows": (8, 16), ...} (numbers where they parse)."""
    if not text:
        return None
    out = {}
    for part in text.split(";"):
        name, sep, values = part.partition("=")
        if not sep or not values.strip():
            raise RidgelineError(f"--axes: expected name=v1,v2;name=... (e.g. rows=8,16;kv=harmonia), got {part!r}")
        items = csv_list(values, f"--axes {name.strip()}")
        out[name.strip()] = tuple(_number(v) for v in items)
    return out


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@app.command()
@command
def accel(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="config.json, model folder, .gguf file or catalogue id"),
    scenario: str = typer.Option("512:64", "--scenario", "-s", help="SISO, LISO, SILO, LILO or P:N (prompt:generated)"),
    designs: str = typer.Option("fp16,figna-w4a16,anda-bfp-linear,harmonia", "--design", "-d",
                                help="comma-separated bundled designs or TOML/JSON design files"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="design the ratios are taken against (default: the first)"),
    objective: str = typer.Option("latency", "--objective", help="what the mapping search minimises: latency or energy"),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="weight format for every design (default: each design's own)"),
    kv: Optional[str] = typer.Option(None, "--kv", help="KV-cache format for every design (default: each design's own)"),
    per_operator: bool = typer.Option(False, "--per-operator", help="print every operator of each design"),
    explore: int = typer.Option(0, "--explore", help="design points to explore around the last design (0: none)"),
    axes: Optional[str] = typer.Option(None, "--axes", help="exploration axes, e.g. 'rows=8,32;cols=64,256;kv=harmonia,bfp32m4' (default: all)"),
    workers: int = typer.Option(1, "--workers", help="processes evaluating design points"),
    fpga: Optional[str] = typer.Option(None, "--fpga", help="also estimate naive vs explored HLS designs of the GEMMs on this FPGA (zcu102, kv260)"),
    fpga_pe: str = typer.Option("bfp8xint4", "--fpga-pe", help="FPGA MAC lane type: fp16xfp16, int8xint8 or bfp8xint4"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for accel.json and the Pareto and roofline plots"),
    as_json: bool = JSON,
) -> None:
    """Simulate a model's prefill and decode on accelerator designs; compare them; explore the design space."""
    from ridgeline.accel import result_json, run
    from ridgeline.report import (accel_area_table, accel_compare_table, accel_front_table, accel_hls_table,
                                  accel_operator_table, accel_phase_table, write_accel_outputs)

    with progress("accel") as report:
        rep = run(model, scenario, csv_list(designs, "--design"), baseline, objective, weights, kv,
                  explore_points=explore, explore_workers=workers, axes=_axes(axes), fpga=fpga, fpga_pe=fpga_pe,
                  progress=report)
    files = []
    if out:
        with writing(out):
            files = write_accel_outputs(rep, out)
    if as_json:
        print(dumps({"designs": [result_json(r, per_operator) for r in rep.results], "comparisons": rep.comparisons,
                     "hls": rep.hls}))
        return
    for r in rep.results:
        console.print(accel_phase_table(r))
        if per_operator:
            console.print(accel_operator_table(r, "prefill"))
            console.print(accel_operator_table(r, "decode"))
    console.print(accel_compare_table(rep))
    console.print(accel_area_table(list(rep.results)))
    if rep.exploration is not None:
        console.print(accel_front_table(rep.exploration, "prefill"))
        console.print(accel_front_table(rep.exploration, "decode"))
    for h in rep.hls:
        console.print(accel_hls_table(h))
    for f in files:
        say(f"wrote {f}")
