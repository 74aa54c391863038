"""The techniques table for people and files: a rich table, one flat record (JSON rows and CSV from the same
definition), the projection matrix as a heat map, measured-vs-literature bars and a section of the HTML report.

A cell whose value is absent shows a short form of its reason (the records keep the whole reason): never blank.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from rich.table import Table as RichTable

from ridgeline.io import write_json, write_text
from ridgeline.report.html import Column, Report
from ridgeline.report.plot import save_figure
from ridgeline.report.tables import si
from ridgeline.report.techniques import FIELDS, Row, Table

#: the flat record's columns, in order (JSON rows and CSV share them)
FLAT_COLUMNS = ("key", "technique", "family", "headline", "baseline", "literature", "literature_low", "literature_high",
                *(k for k, _, _ in FIELDS), "measured_headline", "predicted_headline", "outside_band", "explanation",
                "notes", "sources")


def short_reason(why: str) -> str:
    """A reason in a few words for a table cell ('missing medusa.json', 'partial record', 'n/a', 'not measured')."""
    if " missing " in why:
        return "missing " + why.split("benchmarks/results/", 1)[-1].split(" ", 1)[0]
    if "partial" in why:
        return "partial record"
    if why.startswith("not applicable"):
        return "n/a"
    if why.startswith("not predicted"):
        return "not predicted"
    return "not measured"


def fmt_value(kind: str, v: float) -> str:
    """A value as the table prints it: ×1.50, 163 MB, 33.3, +1.2 %."""
    if kind == "x":
        return f"×{v:.2f}" if v < 100 else f"×{v:.0f}"
    if kind == "B":
        return si(v, "B")
    if kind == "%":
        return f"{v:+.1%}" if abs(v) < 1 else f"×{1 + v:.3g}"
    return f"{v:.4g}"


def cell(row: Row, key: str, kind: str) -> str:
    """The text of one value cell: the value, or the short reason it is absent."""
    v = row.values.get(key)
    return fmt_value(kind, v) if v is not None else short_reason(row.why.get(key, "not measured"))


def flat_row(row: Row) -> dict[str, Any]:
    """One row as the flat record: values (the whole reason text where absent), sources joined as 'field=source'."""
    out: dict[str, Any] = {}
    j = row.to_json()
    for c in FLAT_COLUMNS:
        if c in row.values:
            out[c] = row.values[c] if row.values[c] is not None else row.why.get(c, "not measured")
        elif c == "notes":
            out[c] = "; ".join(row.notes)
        elif c == "sources":
            out[c] = "; ".join(f"{k}={v}" for k, v in row.sources.items())
        else:
            out[c] = j[c]
    return out


def table_json(t: Table) -> dict[str, Any]:
    """techniques.json: every row (flat and in full), the projection matrix, the host and the records read."""
    return {"kind": "ridgeline.techniques", "host": t.host, "host_why": t.host_why, "records": list(t.records),
            "columns": list(FLAT_COLUMNS), "rows": [flat_row(r) for r in t.rows],
            "details": [r.to_json() for r in t.rows], "devices": list(t.devices), "matrix": t.matrix,
            "machine": t.machine}


def rows_csv(t: Table) -> str:
    """The flat rows as CSV (the same columns and values as techniques.json's `rows`)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(FLAT_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in t.rows:
        w.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in flat_row(r).items()})
    return buf.getvalue()


def technique_table(t: Table) -> RichTable:
    """The rich table: measured speedups, memory, quality, the seed's figure and the prediction on this host."""
    tab = RichTable(title=f"Techniques on {t.host or 'this machine'}: measured against each record's own baseline, "
                          "beside the survey seed and the roofline")
    heads = [("technique", None), ("prefill ×", "prefill_speedup"), ("decode ×", "decode_speedup"),
             ("memory ÷", "memory_ratio"), ("Δppl", "ppl_change"), ("cloze", "cloze"), ("MC", "mc"),
             ("seed", None), ("pred. ×", None)]
    for h, _ in heads:
        tab.add_column(h, justify="left" if h in ("technique", "seed") else "right", overflow="fold")
    kinds = {k: kind for k, _, kind in FIELDS}
    for r in t.rows:
        pred = "predicted_prefill" if r.headline == "prefill" else "predicted_decode"
        cells = [r.technique + (" ⚠" if r.outside_band() else "")]
        cells += [cell(r, k, kinds[k]) for _, k in heads[1:7]]
        cells += [r.literature, cell(r, pred, "x")]
        tab.add_row(*cells)
    tab.caption = ("⚠ measured headline more than 2× from the seed's figure (explained below); pred. = the roofline's "
                   "speedup of the headline phase on this host")
    return tab


def explanations(t: Table) -> list[str]:
    """'technique: sentence' for every row outside the seed's band."""
    return [f"{r.technique}: {r.explanation}" for r in t.rows if r.explanation]


def plot_matrix(t: Table, out: str | Path) -> list[Path]:
    """The projection matrix as a heat map (log2 colour scale centred at ×1; grey where a cell has a reason)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r.technique for r in t.rows]
    cols = list(t.devices)
    data = np.full((len(names), len(cols)), np.nan)
    for i, r in enumerate(t.rows):
        for j, c in enumerate(cols):
            v = t.matrix.get(r.key, {}).get(c)
            if isinstance(v, (int, float)) and v > 0:
                data[i, j] = math.log2(v)
    fig, ax = plt.subplots(figsize=(2.0 + 1.3 * len(cols), 1.5 + 0.36 * len(names)))
    lim = max(1.0, float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0)
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
    for i in range(len(names)):
        for j in range(len(cols)):
            v = data[i, j]
            ax.text(j, i, f"×{2 ** v:.2f}" if np.isfinite(v) else "n/a", ha="center", va="center", fontsize=7,
                    color="white" if np.isfinite(v) and abs(v) > lim * 0.6 else "black")
    ax.set_xticks(range(len(cols)), [c.replace("accel:", "") + (" (sim.)" if c.startswith("accel:") else "")
                                     for c in cols], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.colorbar(im, ax=ax, label="log2 predicted speedup of the headline phase")
    ax.set_title("Predicted speedup per technique and device (Workload IR; the accelerator simulated)", fontsize=9)
    fig.tight_layout()
    paths = save_figure(fig, out)
    plt.close(fig)
    return paths


def plot_literature(t: Table, out: str | Path) -> list[Path]:
    """Measured headline speedup, the roofline's prediction on this host and the seed's figure, per technique."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in t.rows if r.measured_headline is not None or r.literature_low is not None
            or r.predicted_headline is not None]
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.4 * len(rows)))
    h = 0.27
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        for k, (v, colour, label) in enumerate(((r.measured_headline, "#1f77b4", "measured here"),
                                                (r.predicted_headline, "#ff7f0e", "roofline, this host"),
                                                (r.literature_high, "#2ca02c", "survey seed"))):
            if v is not None and v > 0:  # from ×1 outwards: a slowdown points left
                ax.barh(y + (1 - k) * h, v - 1, h, left=1, color=colour,
                        label=None if label in ax.get_legend_handles_labels()[1] else label)
        if r.literature_low is not None and r.literature_high is not None and r.literature_low != r.literature_high:
            ax.plot([r.literature_low, r.literature_high], [y - h] * 2, "k-", lw=1)
    ax.set_yticks(range(len(rows)), [r.technique for r in reversed(rows)], fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("speedup of the headline phase (×, log scale; the seed's range as a black line)")
    ax.grid(True, axis="x", which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    paths = save_figure(fig, out)
    plt.close(fig)
    return paths


def write_technique_outputs(t: Table, out: str | Path, plots: bool = True) -> list[Path]:
    """techniques.json, techniques.csv and (with `plots`) the heat map and the bars (PNG + SVG) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [write_json(out / "techniques.json", table_json(t)), write_text(out / "techniques.csv", rows_csv(t))]
    if plots:
        files += plot_matrix(t, out / "techniques_matrix")
        files += plot_literature(t, out / "techniques_vs_literature")
    return files


def add_section(rep: Report, t: Table, figures: Sequence[tuple[Path, str]] = (), note: str = "") -> None:
    """The techniques section of an HTML report: three narrow tables, the explanations and the figures."""
    kinds = {k: kind for k, _, kind in FIELDS}
    rep.heading("Techniques: measured, the survey's figures, and the roofline's projection")
    if note:
        rep.para(note, "note")
    rep.para("Each speedup is against the baseline its record interleaved (named per row in techniques.json); "
             "prefill × = baseline time / technique time, decode × = tokens/s ratio (throughput for the serving rows). "
             "A cell with no number names why.", "note")
    groups = ((("prefill_speedup", "decode_speedup", "weights_bytes", "kv_bytes", "memory_ratio"),
               "measured speed against the record's own baseline, and memory (weights + KV; memory ÷ = baseline / "
               "technique)"),
              (("ppl", "ppl_change", "cloze", "mc"), "measured quality: held-out perplexity and its change, cloze "
               "and multiple-choice accuracy where the record has them"))
    headers = {k: h for k, h, _ in FIELDS}
    for keys, caption in groups:
        rows = [{"technique": r.technique, **{k: cell(r, k, kinds[k]) for k in keys}} for r in t.rows]
        rep.table(rows, [Column("technique", "technique", left=True)] + [Column(headers[k], k) for k in keys],
                  caption=caption)
    compare = []
    for r in t.rows:
        pred = "predicted_prefill" if r.headline == "prefill" else "predicted_decode"
        key = "prefill_speedup" if r.headline == "prefill" else "decode_speedup"
        compare.append({"technique": r.technique, "headline": r.headline, "measured": cell(r, key, "x"),
                        "predicted": cell(r, pred, "x"), "seed": r.literature,
                        "note": "emulated" if any(n.startswith("emulated") for n in r.notes) else "-",
                        "band": "outside 2×" if r.outside_band() else "within" if r.literature_low and
                        r.measured_headline is not None else "-"})
    rep.table(compare, [Column("technique", "technique", left=True), Column("phase", "headline", left=True),
                        Column("measured", "measured"), Column(f"roofline ({t.host or 'host'})", "predicted"),
                        Column("survey seed", "seed", left=True), Column("vs seed", "band", left=True),
                        Column("note", "note", left=True)],
              caption="the headline phase is the one the seed's figure is about; emulated = no kernel for the format "
                      "here (its speed says nothing about a kernel's)")
    for text in explanations(t):
        rep.para(text)
    for svg, caption in figures:
        rep.figure(svg, caption)


def markdown_table(record: dict) -> str:
    """techniques.json's flat rows as a Markdown table (the README's): values, or the short reason they are absent."""
    kinds = {k: kind for k, _, kind in FIELDS}

    def md(row: dict, key: str, kind: str) -> str:
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return fmt_value(kind, float(v))
        return short_reason(str(v)) if v else "-"

    lines = ["| technique | prefill × | decode × | memory ÷ | Δppl | survey seed | roofline here | vs seed |",
             "|---|---:|---:|---:|---:|---|---:|---|"]
    for r in record["rows"]:
        pred = "predicted_prefill" if r["headline"] == "prefill" else "predicted_decode"
        band = "outside 2×" if r["outside_band"] else ("within 2×" if r["literature_low"] is not None and isinstance(
            r.get("measured_headline"), (int, float)) else "-")
        lines.append(f"| {r['technique']} | {md(r, 'prefill_speedup', 'x')} | {md(r, 'decode_speedup', 'x')} | "
                     f"{md(r, 'memory_ratio', 'x')} | {md(r, 'ppl_change', kinds['ppl_change'])} | {r['literature']} | "
                     f"{md(r, pred, 'x')} | {band} |")
    return "\n".join(lines) + "\n"
