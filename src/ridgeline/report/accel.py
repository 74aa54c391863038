"""Tables and plots of simulated accelerators (`ridgeline.accel`): per-operator and per-phase results, design
comparisons, area, design-space Pareto fronts, FPGA/HLS estimates. The device tables (`report.tables`) and the
roofline plot (`report.plot`) render an accelerator result too, through `accel.to_prediction`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rich.table import Table

from ridgeline.io import atomic_path, write_json
from ridgeline.report.tables import seconds, si

if TYPE_CHECKING:
    from ridgeline.accel import AccelReport, AccelResult, Exploration


def _joules(pj: float) -> str:
    return si(pj * 1e-12, "J")


def accel_phase_table(r: AccelResult) -> Table:
    """Prefill and decode on one design: time, throughput, energy by part, DRAM bytes, MACs, utilisation."""
    d = r.design
    t = Table(title=f"{r.workload.model.name} on {d.name} ({d.rows}×{d.cols} PEs, {d.clock_hz / 1e9:g} GHz, "
                    f"{r.area_mm2:.2f} mm² at {d.node_nm:g} nm) — {r.workload.scenario.label}; weights "
                    f"{r.workload.precision.weights}, KV {r.workload.precision.kv}, activations "
                    f"{d.formats.linear_acts}/{d.formats.attention_acts}; mapping objective {r.objective}")
    t.add_column("")
    t.add_column("prefill", justify="right")
    t.add_column("decode", justify="right")
    rows = [("time", lambda p: seconds(p.time_s)), ("tokens/s", lambda p: f"{p.tokens_per_s:.4g}"),
            ("energy", lambda p: _joules(p.energy)),
            ("energy / token", lambda p: _joules(p.energy / p.tokens) if p.tokens else "-")]
    rows += [(f"  {part}", lambda p, part=part: _joules(p.energy_pj[part]))
             for part in ("mac", "sram", "dram", "vector", "converter", "leakage")]
    rows += [(f"DRAM {k.replace('_', ' ')}", lambda p, k=k: si(p.dram[k], "B"))
             for k in ("weights", "activations", "kv_read", "kv_write")]
    rows += [("MACs", lambda p: si(p.macs)),
             ("array utilisation", lambda p: f"{p.macs / max(p.time_s * d.clock_hz * d.pes, 1e-30):.1%}")]
    for label, fn in rows:
        t.add_row(label, fn(r.prefill), fn(r.decode) if r.decode.steps else "-")
    return t


def accel_operator_table(r: AccelResult, phase: str) -> Table:
    """Every operator of one phase on the design: cycles, utilisation, DRAM, energy, mapping, PE mode, bound."""
    ph = r.prefill if phase == "prefill" else r.decode
    d = r.design
    t = Table(title=f"{phase} on {d.name}: operators (totals over the phase; × = layers sharing the row)")
    cols = ("layers", "operator", "×", "MACs", "cycles", "time", "util", "DRAM", "energy", "mapping", "PE mode",
            "bound")
    for c in cols:
        t.add_column(c, justify="left" if c in ("layers", "operator", "mapping", "PE mode", "bound") else "right")
    group = None
    for o in ph.ops:
        if group is not None and o.group != group:
            t.add_section()
        label = "" if o.group == group else o.group.removeprefix("layers ")
        group = o.group
        util = o.macs / (o.cycles * d.pes) if o.cycles and o.macs else 0.0
        t.add_row(label, o.name, str(o.count), si(o.macs), si(o.cycles), seconds(o.time_s),
                  f"{util:.0%}" if o.macs else "-", si(o.dram_bytes, "B"), _joules(o.energy), o.mapping, o.mode,
                  o.bound)
    return t


def accel_area_table(results: list[AccelResult]) -> Table:
    """Area by unit (mm²) of each design."""
    t = Table(title="area by unit (mm², cost model at each design's node)")
    t.add_column("design")
    units = list(dict.fromkeys(u for r in results for u in r.area_um2))
    for u in units + ["PEs", "µm²/PE", "total"]:
        t.add_column(u.replace("_", " "), justify="right")
    for r in results:
        cells = [f"{r.area_um2.get(u, 0.0) / 1e6:.3f}" for u in units]
        pe = r.area_um2["pe_array"] / r.design.pes
        t.add_row(r.design.name, *cells, str(r.design.pes), f"{pe:.0f}", f"{r.area_mm2:.3f}")
    return t


def accel_compare_table(rep: AccelReport) -> Table:
    """Designs side by side with speedup, area efficiency and energy efficiency over the baseline."""
    sc = rep.results[0].workload.scenario
    t = Table(title=f"{rep.results[0].workload.model.name}, {sc.label}: designs against {rep.baseline} "
                    "(ratios > 1 favour the design)")
    for c in ("design", "area mm²", "prefill", "decode", "energy", "speedup pre/dec/total",
              "area eff. pre/dec/total", "energy eff. pre/dec/total"):
        t.add_column(c, justify="left" if c == "design" else "right")
    for r, c in zip(rep.results, rep.comparisons):
        trip = lambda key: " / ".join(f"{c[p][key]:.2f}" if p in c else "-" for p in ("prefill", "decode", "total"))  # noqa: E731
        t.add_row(r.design.name, f"{r.area_mm2:.2f}", seconds(r.prefill.time_s), seconds(r.decode.time_s),
                  _joules(r.energy_pj), trip("speedup"), trip("area_efficiency"), trip("energy_efficiency"))
    return t


def accel_front_table(ex: Exploration, phase: str, limit: int = 12) -> Table:
    """The Pareto front of one phase (fastest first)."""
    lat, en = {"prefill": ("prefill_s", "prefill_j"), "decode": ("decode_s_per_token", "decode_j_per_token")}[phase]
    idx = sorted(ex.fronts[phase], key=lambda i: ex.points[i].metrics[lat])
    ok = sum(p.error is None for p in ex.points)
    t = Table(title=f"{phase} Pareto front: {len(idx)} of {ok} feasible points ({len(ex.points)} explored) — "
                    f"{ex.model}, {ex.scenario}" + (f"; showing {limit}" if len(idx) > limit else ""))
    keys = list(ex.axes)
    for c in keys + ["latency" + (" / token" if phase == "decode" else ""), "energy", "area mm²"]:
        t.add_column(c, justify="right")
    for i in idx[:limit]:
        p = ex.points[i]
        t.add_row(*(str(p.params[k]) for k in keys), seconds(p.metrics[lat]), si(p.metrics[en], "J"),
                  f"{p.metrics['area_mm2']:.2f}")
    return t


def accel_hls_table(hls: dict) -> Table:
    """Naive against explored HLS designs of one phase's GEMMs on an FPGA (the ScaleHLS-style ratio)."""
    t = Table(title=f"HLS estimate on {hls['device']}, {hls['pe']} lanes — {hls['model']} {hls['scenario']} "
                    f"{hls['phase']}: naive {seconds(hls['naive_s'])}, explored {seconds(hls['optimised_s'])}, "
                    f"×{hls['speedup']:.0f} (ScaleHLS reported ×{hls['scalehls_reported']:g} on its benchmarks)")
    for c in ("operator", "M×K×N", "naive tile", "tile", "unroll", "pipelined", "II", "DSP", "LUT", "BRAM36",
              "speedup"):
        t.add_column(c, justify="left" if c in ("operator", "pipelined") else "right")
    for o in hls["ops"]:
        b = o["optimised"]
        t.add_row(o["op"], "×".join(map(str, o["shape"])), "×".join(map(str, o["naive"]["tile"])),
                  "×".join(map(str, b["tile"])), "×".join(map(str, b["unroll"])), b["pipelined"], str(b["ii"]),
                  f"{b['dsp']:.0f}", f"{b['lut']:.0f}", str(b["bram36"]), f"×{o['speedup']:.0f}")
    return t


def plot_pareto(ex: Exploration, phase: str, out: str | Path) -> list[Path]:
    """Latency against energy (colour: area) of every point of one phase, its front drawn; and latency against
    area. Writes `out`.png and `out`.svg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lat, en = {"prefill": ("prefill_s", "prefill_j"), "decode": ("decode_s_per_token", "decode_j_per_token")}[phase]
    pts = [p for p in ex.points if p.error is None]
    x = np.array([p.metrics[lat] for p in pts])
    y = np.array([p.metrics[en] for p in pts])
    a = np.array([p.metrics["area_mm2"] for p in pts])
    front = [ex.points[i] for i in ex.fronts[phase]]
    fx = np.array([p.metrics[lat] for p in front])
    fy = np.array([p.metrics[en] for p in front])
    fa = np.array([p.metrics["area_mm2"] for p in front])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
    sc = ax1.scatter(x, y, c=a, s=6, cmap="viridis", norm=matplotlib.colors.LogNorm(), alpha=0.6)
    ax1.scatter(fx, fy, facecolors="none", edgecolors="red", s=30, label=f"Pareto front ({len(front)} points)")
    fig.colorbar(sc, ax=ax1, label="area (mm²)")
    ax2.scatter(x, a, c="grey", s=5, alpha=0.4, label="all points")
    ax2.scatter(fx, fa, facecolors="none", edgecolors="red", s=30, label="front (latency, energy, area)")
    unit = " per token" if phase == "decode" else ""
    for ax, ylab in ((ax1, f"energy{unit} (J)"), (ax2, "area (mm²)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{'TTFT' if phase == 'prefill' else 'latency'}{unit} (s)")
        ax.set_ylabel(ylab)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    fig.suptitle(f"{phase}: {len(pts)} design points, {ex.model} {ex.scenario}", fontsize=10)
    fig.tight_layout()
    paths = save_figure(fig, out)
    plt.close(fig)
    return paths


def save_figure(fig, out: str | Path) -> list[Path]:
    """Write a matplotlib figure as `out`.png and `out`.svg, each atomically."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix in (".png", ".svg") else out
    paths = []
    for ext in (".png", ".svg"):
        target = stem.parent / (stem.name + ext)
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext[1:], dpi=130)
        paths.append(target)
    return paths


def write_accel_outputs(rep: AccelReport, out_dir: str | Path, per_operator: bool = True) -> list[Path]:
    """accel.json (every design, its ratios, the fronts) and the Pareto and roofline plots, in `out_dir`."""
    from ridgeline.accel import result_json, to_prediction
    from ridgeline.report.plot import device_roofs, plot_roofline, prediction_points  # same package

    out_dir = Path(out_dir)
    record = {"baseline": rep.baseline, "designs": [result_json(r, per_operator) for r in rep.results],
              "comparisons": list(rep.comparisons), "hls": list(rep.hls)}
    files: list[Path] = []
    ex = rep.exploration
    if ex is not None:
        record["exploration"] = {"model": ex.model, "scenario": ex.scenario, "axes": ex.axes,
                                 "points": len(ex.points), "feasible": sum(p.error is None for p in ex.points),
                                 "fronts": {ph: [{"params": ex.points[i].params, **ex.points[i].metrics} for i in idx]
                                            for ph, idx in ex.fronts.items()}}
        for phase in ("prefill", "decode"):
            files += plot_pareto(ex, phase, out_dir / f"pareto_{phase}")
    roofs, points = [], []
    for r in rep.results:
        p = to_prediction(r)
        roofs += device_roofs(p)
        points += [pt.__class__(f"{r.design.name} {pt.label}", pt.intensity, pt.flops_per_s, r.design.name)
                   for pt in prediction_points(p)]
    files += plot_roofline(roofs, points, out_dir / "accel_roofline",
                           title=f"{rep.results[0].workload.model.name} on the simulated designs (phases)")
    files.insert(0, write_json(out_dir / "accel.json", record))
    return files


def accel_demo_step(out_dir: str | Path, points: int = 200, progress: Callable[[str, int, int], None] | None = None):
    """A short accelerator step for the demo: the four bundled designs on the bundled model (512:64), a small
    design-space exploration around Harmonia, accel.json and the plots. Returns (report, tables, files)."""
    from ridgeline.accel import run

    rep = run("smollm2-135m", "512:64", explore_points=points, step_stride=8, progress=progress)
    tables = [accel_compare_table(rep), accel_area_table(list(rep.results))]
    if rep.exploration is not None:
        tables += [accel_front_table(rep.exploration, "prefill", 6), accel_front_table(rep.exploration, "decode", 6)]
    return rep, tables, write_accel_outputs(rep, out_dir)
