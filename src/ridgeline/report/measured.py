"""Measured runs for people: tables, roofline points and sweep rows from bench rows.

Everything here reads the flat rows of `ridgeline.measure.flat_rows` (one definition of the record), so a
saved results file renders the same as a fresh run. Keys ending in `_probe` describe the placement on the
probe (measured) roof, `_catalogue` on the host's catalogue roof. Rows of a fleet run may carry `node` (the
node's label): each node then gets its own roofs, colour and point series on the one roofline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.table import Table

from ridgeline.report.plot import Point, Roof

ROLES = ("probe", "catalogue")
FLAG_SEPARATOR = " | "  # as `ridgeline.measure.record` joins a phase's reasons for Φ > 1


def _phi(v: float | None) -> str:
    if v is None:
        return "-"
    return f"[red]{v:.2f}![/red]" if v > 1 else f"{v:.2f}"


def _opt(r: dict, key: str, fmt: str, scale: float = 1.0) -> str:
    return format(r[key] * scale, fmt) if r.get(key) is not None else "-"


def bench_table(rows: Sequence[dict], title: str = "measured runs") -> Table:
    """Medians with spread, Φ against the probe (measured) and catalogue roofs, prediction error."""
    t = Table(title=title, title_justify="left", caption="Φ and BW (bandwidth utilisation) against the probe roof; "
              "pred = predicted decode ms/token on it; err = |pred − measured| / measured; cat = Φ decode against "
              "the catalogue roof; ⚠ = the machine was busy during the run (see the notes)", caption_justify="left")
    for c in ("run", "scenario", "thr", "L", "TTFT", "pp tok/s", "tg tok/s", "tg min–max", "ms/tok", "OI/tok",
              "Φ pp", "Φ tg", "BW", "pred", "err", "Φ tg cat"):
        t.add_column(c, justify="left" if c in ("run", "scenario") else "right", no_wrap=True)
    for r in rows:
        t.add_row(("⚠ " if r.get("contended") else "") + r["run"], r["scenario"], str(r["threads"]), str(r["layers"] or "-"), f"{r['ttft_s'] * 1e3:.1f} ms",
                  f"{r['prefill_tokens_per_s']:.0f}", f"{r['decode_tokens_per_s']:.1f}",
                  f"{r['decode_tokens_per_s_min']:.1f}–{r['decode_tokens_per_s_max']:.1f}",
                  f"{r['decode_s_per_token'] * 1e3:.2f}", _opt(r, "decode_intensity", ".2f"),
                  _phi(r.get("phi_prefill_probe")), _phi(r.get("phi_decode_probe")),
                  _opt(r, "bw_util_decode_probe", ".0%"), _opt(r, "predicted_decode_s_per_token_probe", ".2f", 1e3),
                  _opt(r, "decode_error_probe", ".0%"), _phi(r.get("phi_decode_catalogue")))
    return t


def phi_warnings(rows: Sequence[dict]) -> list[str]:
    """Every Φ > 1 with its suspect term: a modelling error, not a result."""
    out = []
    for r in rows:
        for role in ROLES:
            for ph in ("prefill", "decode"):
                for flag in filter(None, (r.get(f"flags_{ph}_{role}") or "").split(FLAG_SEPARATOR)):
                    out.append(f"{r['run']} {r['scenario']} {ph} vs {role} roof ({r[f'roof_device_{role}']}): "
                               f"Φ = {r[f'phi_{ph}_{role}']:.2f} > 1 — {flag}")
    return out


def contention_warnings(rows: Sequence[dict]) -> list[str]:
    """Every run measured while the machine was busy, with why: its numbers are kept but not to be trusted."""
    return [f"{r['run']} {r['scenario']}: measured on a busy machine — {r['contention']}"
            for r in rows if r.get("contended")]


def error_line(r: dict) -> str | None:
    """'run scenario: decode X ms/token measured, Y predicted on the probe roof (error Z)', if it was placed."""
    if not r.get("predicted_decode_s_per_token_probe"):
        return None
    dev = r.get("roof_device_probe")
    # --device may name a catalogue device instead of this machine's probe: say whose roof it is
    roof = "the probe roof" if dev is None or str(dev).startswith("local") else f"the {dev} roof (--device)"
    return (f"{r['run']} {r['scenario']}: decode {r['decode_s_per_token'] * 1e3:.2f} ms/token measured, "
            f"{r['predicted_decode_s_per_token_probe'] * 1e3:.2f} predicted on {roof} "
            f"(error {r['decode_error_probe']:.0%})")


def _role(r: dict) -> str | None:
    return next((role for role in ROLES if r.get(f"roof_device_{role}") is not None), None)


def measured_points(rows: Sequence[dict], analytic: bool = True) -> list[Point]:
    """Roofline points: each run's prefill and decode at the Workload's intensity and the achieved FLOP/s;
    with `analytic`, the prediction (per-operator time on the probe roof) beside each."""
    pts, labelled = [], set()
    for r in rows:
        role = _role(r)
        if role is None:
            continue
        series = f"measured {r['node']} · {r['run']}" if r.get("node") else f"measured {r['run']}"
        for ph in ("prefill", "decode"):
            first = (series, ph) not in labelled  # one label per series and phase keeps the plot readable
            labelled.add((series, ph))
            oi = r[f"{ph}_intensity_{role}"]
            pts.append(Point(ph, oi, r[f"{ph}_achieved_flops_{role}"], series, annotate=first))
            predicted = r[f"{ph}_predicted_s_{role}"]
            if analytic and predicted > 0:
                where = f"{r['node']} · {role} roof" if r.get("node") else f"{role} roof"
                pts.append(Point(ph, oi, r[f"{ph}_flops_{role}"] / predicted, f"analytic ({where})",
                                 annotate=False))
    return pts


def result_roofs(rows: Sequence[dict]) -> list[Roof]:
    """The catalogue roof (solid) and the probe roof (dashed) the runs were placed on: the gap between
    them is the potential region. Rows with a `node` get their node's own pair (one colour per node and dtype)."""
    roofs = {}
    for r in rows:
        node = r.get("node")
        for role in ROLES:
            if r.get(f"roof_device_{role}") is None:
                continue
            dtype, name = r[f"roof_peak_dtype_{role}"], r[f"roof_name_{role}"]
            key = (node, role, r[f"roof_device_{role}"], dtype)
            if key not in roofs:
                label = f"{role} roof {dtype}: {name}"
                # a fleet's probe roof is already named "<node>: ..."; other roofs get the node in front
                roofs[key] = Roof(f"{node} · {label}" if node and not name.startswith(f"{node}:") else label,
                                  r[f"roof_bandwidth_Bps_{role}"], r[f"roof_peak_flops_{role}"],
                                  "--" if role == "probe" else "-", group=f"{node} {dtype}" if node else dtype)
    return sorted(roofs.values(), key=lambda r: (r.group, r.style != "-"))  # per dtype: catalogue, then probe


def sweep_rows(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """The rows with the measured and predicted decode tok/s side by side (depth and thread sweeps)."""
    return [{**r, "measured": r["decode_tokens_per_s"],
             "predicted (probe roof)": r.get("predicted_decode_tokens_per_s_probe"),
             "predicted (catalogue roof)": r.get("predicted_decode_tokens_per_s_catalogue")} for r in rows]


def bench_plots(rows: Sequence[dict], stem: Path, roofline: bool = True) -> list[Path]:
    """The roofline with measured and analytic points (STEM.png/.svg, unless `roofline` is False), and a sweep plot
    (STEM_layers, STEM_threads) for each of depth and threads that varies."""
    from ridgeline.report.plot import plot_roofline, plot_sweep

    if not rows:
        return []
    model = rows[0]["model"]
    nodes = len({r.get("node") for r in rows} - {None})
    paths = plot_roofline(result_roofs(rows), measured_points(rows), stem,
                          title=f"{model}: measured runs on the roofline" + (f" ({nodes} nodes)" if nodes else "")
                          ) if roofline else []
    swept = sweep_rows(rows)
    by = ("node", "run", "scenario") if any(r.get("node") for r in rows) else ("run", "scenario")
    for axis in ("layers", "threads"):
        if len({r[axis] for r in swept}) > 1:
            ys = ["measured", "predicted (probe roof)", "predicted (catalogue roof)"]
            paths += plot_sweep(swept, axis, ys, stem.parent / f"{stem.name}_{axis}", group_by=by,
                                title=f"{model}: decode tok/s vs {axis}, measured and analytic",
                                ylabel="decode tokens/s", logx=False)
    return paths
