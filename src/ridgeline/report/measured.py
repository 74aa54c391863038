"""Measured runs for people: tables, roofline points and sweep rows from bench results (JSON dicts).

Everything here reads the JSON that `ridgeline bench` writes, so a saved results file renders the
same as a fresh run.
"""

from __future__ import annotations

from typing import Any, Sequence

from rich.table import Table

from ridgeline.report.plot import Point, Roof


def run_label(r: dict) -> str:
    """'torch bf16', 'torch-hf fp32', 'torch bf16 · rtn int8_pc (_weight_int8pack_mm)' or 'llama.cpp Q4_1'."""
    p = r["params"]
    if p["backend"] == "llamacpp":
        return f"llama.cpp {r.get('weights', '').upper()}".strip()
    from ridgeline.eval.run import transform_labels

    weights = r.get("weights", p["dtype"])
    label = f"torch{'-hf' if r['impl'].startswith('transformers') else ''} {p['dtype']}"
    # a quantized model: its weight precision (method, format, kernel or "emulated") after the activations' dtype
    parts = [label] + ([] if weights == p["dtype"] else [weights])
    return " · ".join(parts + transform_labels(p.get("kv"), p.get("window"), p.get("kv_heads")))


def _roof(r: dict, role: str) -> dict | None:
    return next((x for x in r.get("roofline", []) if x["role"] == role), None)


def flat_rows(results: Sequence[dict]) -> list[dict[str, Any]]:
    """One flat row per result: parameters, medians, Φ per roof, prediction error (CSV, sweep plots)."""
    rows = []
    for r in results:
        p, s = r["params"], r["summary"]
        sc = p["scenario"]
        row = {"model": r["model"]["name"], "run": run_label(r), "backend": p["backend"], "impl": r["impl"],
               "dtype": p["dtype"], "scenario": sc["name"], "prompt": sc["prompt"], "generate": sc["generate"],
               "threads": r["threads"], "layers": r["model"].get("layers"),
               "ttft_s": s["ttft_s"]["median"], "prefill_tokens_per_s": s["prefill_tokens_per_s"]["median"],
               "decode_tokens_per_s": s["decode_tokens_per_s"]["median"],
               "decode_tokens_per_s_min": s["decode_tokens_per_s"]["min"],
               "decode_tokens_per_s_max": s["decode_tokens_per_s"]["max"],
               "decode_s_per_token": s["decode_s_per_token"]["median"], "repeats": p["repeats"]}
        w = r.get("workload")
        if w:
            row["decode_bytes_per_token"] = w["decode_bytes_per_token"]
            row["decode_intensity"] = w["decode_flops_per_token"] / w["decode_bytes_per_token"]
        for role, key in (("probe", "probe"), ("catalogue", "catalogue")):
            x = _roof(r, role)
            if not x:
                continue
            n = max(sc["generate"], 1)
            row[f"phi_prefill_{key}"] = x["prefill"]["phi"]["median"]
            row[f"phi_decode_{key}"] = x["decode"]["phi"]["median"]
            row[f"bw_util_decode_{key}"] = x["decode"]["bandwidth_utilisation"]["median"]
            row[f"predicted_decode_s_per_token_{key}"] = x["decode"]["predicted_s"] / n
            row[f"predicted_decode_tokens_per_s_{key}"] = n / x["decode"]["predicted_s"] if x["decode"]["predicted_s"] else None
            row[f"decode_error_{key}"] = x["decode"]["prediction_error"]
            row[f"flags_{key}"] = "; ".join(x["prefill"]["phi_above_1"] + x["decode"]["phi_above_1"])
        rows.append(row)
    return rows


def _phi(v: float | None) -> str:
    if v is None:
        return "-"
    return f"[red]{v:.2f}![/red]" if v > 1 else f"{v:.2f}"


def bench_table(results: Sequence[dict], title: str = "measured runs") -> Table:
    """Medians with spread, Φ against the probe (measured) and catalogue roofs, prediction error."""
    rows = flat_rows(results)
    t = Table(title=title, title_justify="left", caption="Φ and BW (bandwidth utilisation) against the probe roof; "
              "pred = predicted decode ms/token on it; err = |pred − measured| / measured; cat = Φ decode against "
              "the catalogue roof", caption_justify="left")
    for c in ("run", "scenario", "thr", "L", "TTFT", "pp tok/s", "tg tok/s", "tg min–max", "ms/tok", "OI/tok",
              "Φ pp", "Φ tg", "BW", "pred", "err", "Φ tg cat"):
        t.add_column(c, justify="left" if c in ("run", "scenario") else "right", no_wrap=True)

    def opt(key: str, fmt: str) -> str:
        return format(r[key], fmt) if r.get(key) is not None else "-"

    for r in rows:
        t.add_row(r["run"], r["scenario"], str(r["threads"]), str(r["layers"] or "-"), f"{r['ttft_s'] * 1e3:.1f} ms",
                  f"{r['prefill_tokens_per_s']:.0f}", f"{r['decode_tokens_per_s']:.1f}",
                  f"{r['decode_tokens_per_s_min']:.1f}–{r['decode_tokens_per_s_max']:.1f}",
                  f"{r['decode_s_per_token'] * 1e3:.2f}", opt("decode_intensity", ".2f"),
                  _phi(r.get("phi_prefill_probe")), _phi(r.get("phi_decode_probe")), opt("bw_util_decode_probe", ".0%"),
                  f"{r['predicted_decode_s_per_token_probe'] * 1e3:.2f}" if r.get("predicted_decode_s_per_token_probe") else "-",
                  opt("decode_error_probe", ".0%"), _phi(r.get("phi_decode_catalogue")))
    return t


def phi_warnings(results: Sequence[dict]) -> list[str]:
    """Every Φ > 1 with its suspect term: a modelling error, not a result."""
    out = []
    for r in results:
        for x in r.get("roofline", []):
            for ph in ("prefill", "decode"):
                for flag in x[ph]["phi_above_1"]:
                    out.append(f"{run_label(r)} {r['params']['scenario']['name']} {ph} vs {x['role']} roof "
                               f"({x['device']}): Φ = {x[ph]['phi']['median']:.2f} > 1 — {flag}")
    return out


def measured_points(results: Sequence[dict], analytic: bool = True) -> list[Point]:
    """Roofline points: each run's prefill and decode at the Workload's intensity and the achieved FLOP/s;
    with `analytic`, the prediction (per-operator time on the probe roof) beside each."""
    pts, labelled = [], set()
    for r in results:
        x = _roof(r, "probe") or (r.get("roofline") or [None])[0]
        if x is None:
            continue
        label = run_label(r)
        for ph in ("prefill", "decode"):
            d = x[ph]
            first = (label, ph) not in labelled  # one label per series and phase keeps the plot readable
            labelled.add((label, ph))
            pts.append(Point(ph, d["intensity"], d["achieved_flops"], f"measured {label}", annotate=first))
            if analytic and d["predicted_s"] > 0:
                pts.append(Point(ph, d["intensity"], d["flops"] / d["predicted_s"], f"analytic ({x['role']} roof)",
                                 annotate=False))
    return pts


def result_roofs(results: Sequence[dict]) -> list[Roof]:
    """The catalogue roof (solid) and the probe roof (dashed) the results were placed on: the gap between
    them is the potential region."""
    roofs = {}
    for r in results:
        for x in r.get("roofline", []):
            key = (x["role"], x["device"], x["peak_dtype"])
            if key not in roofs:
                style = "--" if x["role"] == "probe" else "-"
                roofs[key] = Roof(f"{x['role']} roof {x['peak_dtype']}: {x['device_name']}", x["bandwidth_Bps"],
                                  x["peak_flops"], style, group=x["peak_dtype"])
    return sorted(roofs.values(), key=lambda r: (r.group, r.style != "-"))  # per dtype: catalogue, then probe


def sweep_rows(results: Sequence[dict]) -> list[dict[str, Any]]:
    """Flat rows with the measured and predicted decode tok/s side by side (depth and thread sweeps)."""
    rows = flat_rows(results)
    for r in rows:
        r["measured"] = r["decode_tokens_per_s"]
        r["predicted (probe roof)"] = r.get("predicted_decode_tokens_per_s_probe")
        r["predicted (catalogue roof)"] = r.get("predicted_decode_tokens_per_s_catalogue")
    return rows
