"""Roofline and sweep plots (matplotlib, headless), written to PNG and SVG atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ridgeline.io import atomic_path
from ridgeline.roofline import Prediction


@dataclass(frozen=True)
class Roof:
    """One roof: memory slope `bandwidth_Bps` up to the ridge, then `peak_flops` (labelled)."""

    label: str
    bandwidth_Bps: float
    peak_flops: float
    style: str = "-"  # matplotlib line style; measured roofs are drawn dashed
    group: str = ""  # roofs of one group (e.g. a dtype) share a colour; catalogue vs probe fill the gap


@dataclass(frozen=True)
class Point:
    """A point on the roofline plot: operational intensity and FLOP/s."""

    label: str
    intensity: float
    flops_per_s: float
    series: str  # legend group, e.g. "analytic prefill", "measured torch bf16"
    annotate: bool = True


def prediction_points(p: Prediction, operators: bool = False) -> list[Point]:
    """Phase points (and optionally one point per operator) of an analytic prediction."""
    pts = []
    for ph in (p.prefill, p.decode):
        if ph.steps and ph.time_s > 0:
            pts.append(Point(ph.name, ph.intensity, ph.flops / ph.time_s, f"analytic {ph.name}"))
        if operators:
            for o in ph.ops:
                if o.flops > 0 and o.bytes > 0 and o.time_s > 0:
                    pts.append(Point(o.name, o.intensity, o.flops / o.time_s, f"{ph.name} operators",
                                     annotate=ph.name == "decode"))
    return pts


def device_roofs(p: Prediction, dtypes: Sequence[str] = ()) -> list[Roof]:
    """The device's roof for the workload's compute dtype, plus other dtypes' ceilings if asked."""
    d = p.device
    roofs = [Roof(f"{d.name} {p.peak_dtype} ({d.provenance.kind})", d.bandwidth_Bps, p.peak_flops)]
    for dt in dtypes:
        if dt in d.peak_flops and dt != p.peak_dtype:
            roofs.append(Roof(f"{dt} peak", d.bandwidth_Bps, d.peak_flops[dt], ":"))
    return roofs


def plot_roofline(roofs: Sequence[Roof], points: Sequence[Point], out: str | Path, title: str = "") -> list[Path]:
    """Draw roofs (with ridge points) and labelled points; write `out`.png and `out`.svg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ois = [p.intensity for p in points if p.intensity > 0] + [r.peak_flops / r.bandwidth_Bps for r in roofs]
    lo, hi = min(ois + [0.1]) / 4, max(ois + [100.0]) * 4
    x = np.logspace(np.log10(lo), np.log10(hi), 256)
    fig, ax = plt.subplots(figsize=(9, 6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = list(dict.fromkeys(r.group or r.label for r in roofs if r.style != ":"))
    curve = lambda r: np.minimum(r.peak_flops, x * r.bandwidth_Bps)  # noqa: E731
    for r in roofs:
        c = colors[groups.index(r.group or r.label) % len(colors)] if r.style != ":" else "grey"
        ridge = r.peak_flops / r.bandwidth_Bps
        # the ridge's value goes into the legend, not beside the dot: ridges of several roofs sit close
        # together and their annotations overlapped
        label = f"{r.label} (ridge {ridge:.3g} FLOP/B)" if r.style != ":" else r.label
        ax.plot(x, curve(r), r.style, color=c, lw=2 if r.style != ":" else 1, label=label)
        if r.style != ":":
            ax.plot([ridge], [r.peak_flops], "o", color=c, ms=5)
    filled = False
    for g in groups:  # the potential region: between the catalogue (solid) and the probe (dashed) roof
        pair = [r for r in roofs if (r.group or r.label) == g and r.style != ":"]
        solid, dashed = [r for r in pair if r.style == "-"], [r for r in pair if r.style != "-"]
        if solid and dashed:
            a, b = curve(solid[0]), curve(dashed[0])
            ax.fill_between(x, np.minimum(a, b), np.maximum(a, b), color=colors[groups.index(g) % len(colors)],
                            alpha=0.10, label=None if filled else "potential region (catalogue vs probe roof)")
            filled = True
    markers = "os^Dv<>P*X"
    series = list(dict.fromkeys(p.series for p in points))
    for i, s in enumerate(series):
        pts = [p for p in points if p.series == s]
        c = colors[(len(groups) + i) % len(colors)]
        hollow = s.startswith("analytic")
        ax.scatter([p.intensity for p in pts], [p.flops_per_s for p in pts], marker=markers[i % len(markers)],
                   s=40 if "operator" not in s else 14, zorder=3, label=s,
                   facecolors="none" if hollow else c, edgecolors=c)
        for (x0, y0), labels in _merge_labels(pts).items():
            ax.annotate(labels, (x0, y0), textcoords="offset points", xytext=(4, -10),
                        fontsize=7 if "operator" in s else 9, weight="normal" if "operator" in s else "bold")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operational intensity (FLOP/byte)")
    ax.set_ylabel("performance (FLOP/s)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    # the legend goes beside the axes, where it hides no point
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.set_size_inches(13, 6)
    fig.tight_layout()
    paths = _save(fig, out)
    plt.close(fig)
    return paths


def _merge_labels(points: Sequence[Point]) -> dict[tuple[float, float], str]:
    """One label per spot: points that coincide on a log-log plot share a joined label."""
    import math

    spots: dict[tuple[int, int], list[Point]] = {}
    for p in points:
        if p.annotate and p.intensity > 0 and p.flops_per_s > 0:
            key = (round(math.log10(p.intensity) * 40), round(math.log10(p.flops_per_s) * 40))
            spots.setdefault(key, []).append(p)
    out = {}
    for group in spots.values():
        names = list(dict.fromkeys(p.label for p in group))
        text = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
        out[(group[0].intensity, group[0].flops_per_s)] = text
    return out


def plot_sweep(rows: Sequence[dict[str, Any]], x: str, y: str | Sequence[str], out: str | Path,
               group_by: Sequence[str] = (), title: str = "", ylabel: str = "", logx: bool = True) -> list[Path]:
    """Line plot of column(s) `y` against `x`, one curve per `group_by` combination and y column
    (the first y column solid with markers, e.g. measured; the others dashed, e.g. predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ys = [y] if isinstance(y, str) else list(y)
    fig, ax = plt.subplots(figsize=(9, 6))
    curves: dict[tuple, list[tuple[float, float]]] = {}
    for r in rows:
        for col in ys:
            if r.get("error") or r.get(col) is None or r.get(x) is None:
                continue
            curves.setdefault((col, *(r.get(g) for g in group_by)), []).append((r[x], r[col]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = list(dict.fromkeys(k[1:] for k in curves))
    for (col, *key), pts in curves.items():
        pts.sort()
        label = ", ".join(f"{g}={v}" for g, v in zip(group_by, key))
        if len(ys) > 1:
            label = f"{label} · {col}" if label else col
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if col == ys[0] else "x--", ms=4,
                color=colors[groups.index(tuple(key)) % len(colors)], label=label or col)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or ys[0])
    xs = [p[0] for c in curves.values() for p in c]
    if logx and all(isinstance(v, (int, float)) and v > 0 for v in xs):
        ax.set_xscale("log", base=2)
    elif xs and all(isinstance(v, int) and not isinstance(v, bool) for v in xs):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # threads, layers: no 1.2 or 1.4 ticks
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.25)
    ax.set_title(title, fontsize=10)
    if len(curves) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths = _save(fig, out)
    plt.close(fig)
    return paths


def save_figure(fig: Any, out: str | Path) -> list[Path]:
    """Write a matplotlib figure to `out`.png and `out`.svg atomically (SVG text kept as text)."""
    return _save(fig, out)


def _save(fig, out: str | Path) -> list[Path]:
    import matplotlib

    out = Path(out)
    stem = out.with_suffix("") if out.suffix in (".png", ".svg") else out
    paths = []
    for ext in (".png", ".svg"):
        target = stem.parent / (stem.name + ext)  # not with_suffix: keep dots in the name (run.v1)
        # SVG text stays text (not glyph paths): smaller files, searchable, and tests can read the labels
        with atomic_path(target) as tmp, matplotlib.rc_context({"svg.fonttype": "none"}):
            fig.savefig(tmp, format=ext[1:], dpi=130)
        paths.append(target)
    return paths
