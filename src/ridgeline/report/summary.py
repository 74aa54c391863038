"""The demo's HTML summary: machine roofs, analytic predictions, measured runs with Φ, sweeps and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ridgeline.report.html import Column, Report
from ridgeline.report.measured import contention_warnings, phi_warnings
from ridgeline.report.tables import si


def _ms(x: float) -> str:
    return f"{x * 1e3:.2f}"


def _f1(x: float) -> str:
    return f"{x:.1f}"


def _phi(x: float) -> str:
    return f"{x:.2f}" + (" (>1!)" if x > 1 else "")


def _pct(x: float) -> str:
    return f"{x:.0%}"


def summary_report(title: str, probe: dict | None, predictions: Sequence[dict], bench_rows: Sequence[dict],
                   plots: Sequence[tuple[Path, str]], notes: Sequence[str] = (),
                   quality: Sequence[dict] = ()) -> Report:
    """Build the page: `probe` (ProbeResult JSON), analytic `predictions` (analyze JSON), bench rows
    (`ridgeline.measure.flat_rows`), (svg, caption) plots, and evaluation records for the quality table."""
    rep = Report(title)
    for n in notes:
        rep.para(n, "note")
    if probe:
        rep.heading("This machine's roofs (ridgeline probe)")
        rows = [{"kernel": k, **v} for k, v in probe["bandwidth_Bps"].items()]
        rep.table(rows, [Column("kernel", "kernel", left=True), Column("median", "median", lambda v: si(v, "B/s")),
                         Column("min", "min", lambda v: si(v, "B/s")), Column("max", "max", lambda v: si(v, "B/s")),
                         Column("repeats", "n")],
                  caption="copy counts 1 read + 1 write, triad 2 reads + 1 write; the roof is the best sample of a read kernel")
        rows = [{"dtype": k, "size": probe["gemm_sizes"][k], **v} for k, v in probe["gemm_flops"].items()]
        rep.table(rows, [Column("GEMM dtype", "dtype", left=True), Column("n", "size"),
                         Column("median", "median", lambda v: si(v, "FLOP/s")),
                         Column("min", "min", lambda v: si(v, "FLOP/s")), Column("max", "max", lambda v: si(v, "FLOP/s")),
                         Column("repeats", "n")], caption="the compute roof per dtype is its best sample")
        rows = [{"dtype": k, **v} for k, v in probe.get("gemv_Bps", {}).items()]
        rep.table(rows, [Column("GEMV weights", "dtype", left=True), Column("median", "median", lambda v: si(v, "B/s")),
                         Column("min", "min", lambda v: si(v, "B/s")), Column("max", "max", lambda v: si(v, "B/s")),
                         Column("repeats", "n")],
                  caption="batch-1 matrix-vector (decode's kernel), weight bytes per second; predictions stream "
                          "weights at this rate, Φ uses the memory roof")
        for w in probe.get("warnings", []):
            rep.para(f"warning: {w}", "warn")
        m = probe["machine"]
        rep.para(f"{m['cpu']}, {m['cores']} cores, {probe['threads']} threads; Python {m['python']}; "
                 + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v), "note")
    if predictions:
        rep.heading("Analytic roofline (prediction)")
        rows = []
        for p in predictions:
            ph = p["phases"]
            rows.append({"device": p["device"]["name"], "scenario": p["scenario"]["name"],
                         "precision": f"{p['precision']['weights']} / {p['precision']['compute']}",
                         "ttft": p["ttft_s"], "decode": ph["decode"]["tokens_per_s"],
                         "oi_prefill": ph["prefill"]["intensity"], "oi_decode": ph["decode"]["intensity"],
                         "bound": f"{ph['prefill']['bound']} / {ph['decode']['bound']}",
                         "memory": p["memory"]["total_bytes"]})
        rep.table(rows, [Column("device", "device", left=True), Column("scenario", "scenario", left=True),
                         Column("weights / compute", "precision", left=True),
                         Column("TTFT ms", "ttft", _ms), Column("decode tok/s", "decode", _f1),
                         Column("OI prefill", "oi_prefill", _f1), Column("OI decode", "oi_decode", lambda v: f"{v:.2f}"),
                         Column("bound (prefill / decode)", "bound", left=True),
                         Column("memory", "memory", lambda v: si(v, "B", 1024))])
    if bench_rows:
        rep.heading("Measured runs and Φ")
        # two tables of a few columns each: one wide table needed horizontal scrolling on a laptop screen
        rep.table(bench_rows, [Column("run", "run", left=True), Column("scenario", "scenario", left=True),
                               Column("threads", "threads"), Column("layers", "layers"),
                               Column("TTFT ms", "ttft_s", _ms), Column("prefill tok/s", "prefill_tokens_per_s", _f1),
                               Column("decode tok/s", "decode_tokens_per_s", _f1),
                               Column("min", "decode_tokens_per_s_min", _f1),
                               Column("max", "decode_tokens_per_s_max", _f1),
                               Column("busy", "contended", lambda v: "⚠ yes" if v else "")],
                  caption="speed: medians over repeats (min-max of decode tok/s); busy = other processes or a "
                          "drifting roof during the run")
        rep.table(bench_rows, [Column("run", "run", left=True), Column("scenario", "scenario", left=True),
                               Column("OI/token", "decode_intensity", lambda v: f"{v:.2f}"),
                               Column("Φ prefill", "phi_prefill_probe", _phi),
                               Column("Φ decode", "phi_decode_probe", _phi),
                               Column("BW util", "bw_util_decode_probe", _pct),
                               Column("pred. ms/tok", "predicted_decode_s_per_token_probe", _ms),
                               Column("meas. ms/tok", "decode_s_per_token", _ms),
                               Column("error", "decode_error_probe", _pct),
                               Column("Φ decode cat.", "phi_decode_catalogue", _phi)],
                  caption="on the roofline: Φ = achieved / attainable FLOP/s at the phase's operational intensity "
                          "(OI in FLOP/byte) on the probe roof (cat. = the catalogue roof); error = |predicted - "
                          "measured| / measured decode time per token")
        for w in phi_warnings(bench_rows):
            rep.para(f"modelling error: {w}", "warn")
        for w in contention_warnings(bench_rows):
            rep.para(f"contended: {w}", "warn")
        first = bench_rows[0]
        rep.para(f"load and warm-up are excluded from phase times: load {first['load_s']:.1f} s, "
                 f"warm-up {first['warmup_s']:.1f} s for the first run", "note")
    if quality:
        from ridgeline.report.quality import quality_columns, quality_rows

        rep.heading("Quality (per variant)")
        rows = quality_rows(quality)
        cols = [Column("variant", "variant", left=True)] + [
            Column(header, key, lambda v, f=f: format(v, f)) for key, header, f in quality_columns(rows)]
        ppl = next((r for r in rows if "ppl" in r), None)
        rep.table(rows, cols, caption=(f"perplexity over {ppl['ppl_tokens']} held-out tokens, context "
                                       f"{ppl['ppl_context']}, stride {ppl['ppl_stride']}" if ppl else ""))
    for svg, caption in plots:
        rep.figure(svg, caption)
    return rep

