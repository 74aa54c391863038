"""`ridgeline techniques`: the survey's speedup table from the benchmark records (torch-free): every technique measured
against its record's own baseline, the seed's figure, the roofline's prediction here and on the seed devices."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ridgeline.cli.common import JSON, app, command, console, dumps, say, writing
from ridgeline.errors import RidgelineError

#: what `--out` receives (each file replaced alone; nothing else in the folder is touched)
OUT_FILES = ("techniques.json", "techniques.csv", *(f"{stem}{ext}" for stem in ("techniques_matrix",
                                                                               "techniques_vs_literature")
                                                    for ext in (".png", ".svg")))


def _check_out(out: Optional[Path]) -> None:
    from ridgeline.io import check_output

    if out is None:
        return
    if out.exists() and (out.is_symlink() or not out.is_dir()):
        raise RidgelineError(f"--out {out} exists and is not a folder; pass a results folder")
    for name in OUT_FILES:
        check_output(out / name, "file", "--out")


@app.command()
@command
def techniques(
    results: Path = typer.Option(Path("benchmarks/results"), "--results", "-r",
                                 help="folder of benchmark records (quant.json, kv.json, serve.json, ...)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for techniques.json, techniques.csv and the "
                                       "heat map and literature plots"),
    host: Optional[str] = typer.Option(None, "--host", help="device the 'predicted here' column uses (default: the "
                                       "catalogue entry of the records' machine)"),
    as_json: bool = JSON,
) -> None:
    """Every technique's measured speedup, memory and quality beside the survey's figure and the roofline's projection."""
    from ridgeline.report import build_techniques, read_records, technique_explanations, technique_table
    from ridgeline.report import write_technique_outputs, techniques_json

    _check_out(out)
    table = build_techniques(read_records(results), host)
    files = []
    if out is not None:
        with writing(out):
            files = write_technique_outputs(table, out)
    if as_json:
        print(dumps(techniques_json(table)))
        return
    console.print(technique_table(table))
    for text in technique_explanations(table):
        say(f"⚠ {text}")
    for f in files:
        say(f"wrote {f}")


def demo_techniques(report, out: Path) -> None:
    """The demo's techniques section (seconds): the committed benchmark records when this is a checkout, else
    predictions only on the probed machine; the table printed, its files written into `out`, the section added."""
    from ridgeline.report import (add_techniques_section, build_techniques, committed_results, read_records,
                                  technique_table, write_technique_outputs)

    folder = committed_results()
    records = read_records(folder) if folder else {}
    table = build_techniques(records, None if records else "local")
    console.print(technique_table(table))
    with writing(out):
        files = write_technique_outputs(table, out)
    captions = {"techniques_matrix": "Predicted speedup of each technique's headline phase on the seed devices and "
                                     "the simulated Harmonia design (grey: not applicable, with the reason in "
                                     "techniques.json)",
                "techniques_vs_literature": "Measured here, the roofline's prediction for this host, and the survey "
                                            "seed's figure"}
    figures = [(p, captions[p.stem]) for p in files if p.suffix == ".svg"]
    where = (f"Measured rows come from the committed benchmark records in {folder} ({', '.join(table.records)}), "
             f"measured on {table.machine.get('cpu', '?')} ({table.machine.get('cores', '?')} cores); `ridgeline "
             "techniques --results DIR` rebuilds this table from other records." if records else
             "No benchmark records here (not a checkout): predictions only, on the probed machine.")
    add_techniques_section(report, table, figures, where)
