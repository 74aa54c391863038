"""Tables and aggregates of a distillation run: a flat row per stage, seed statistics, JSON, CSV and HTML.

Aggregates over seeds are means with 95 % Student-t confidence half-widths (t quantile for n − 1 degrees of
freedom; none for one seed). Quantization drop = quality lost by quantizing a KD model, positive = worse:
perplexity as the relative increase after/before − 1, KL as after − before, accuracies as before − after.
Muon vs AdamW compares the drops seed by seed (the same seed gives both the same data order and adapter
initialisation): difference = drop(Muon) − drop(AdamW), negative = Muon loses less, as the seed paper claims.
Gap recovery = (ppl(student) − ppl(KD)) / (ppl(student) − ppl(teacher)), also in log-perplexity (nats).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ridgeline.io import write_json, write_text

@dataclass(frozen=True)
class DistillResult:
    """A finished run: one flat row per stage, the nested records, aggregates, speed, warnings and files."""

    rows: list[dict]
    records: list[dict]
    summary: dict
    speed: dict
    warnings: list[str]
    notes: list[str]
    files: dict[str, str]
    settings: dict

    def to_json(self) -> dict:
        """The run as one JSON document."""
        return {"kind": "ridgeline.distill", "settings": self.settings, "rows": self.rows, "summary": self.summary,
                "speed": self.speed, "stages": self.records, "warnings": self.warnings, "notes": self.notes,
                "files": self.files}



#: two-sided 95 % Student-t quantiles by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
METRICS = (("ppl", "held-out ppl"), ("kl", "KL to teacher"), ("mc_acc_norm", "next-line MC acc_norm"),
           ("cloze_acc", "cloze acc"))


def t95(df: int) -> float:
    """The 95 % two-sided t quantile (the nearest tabulated df at or below; 1.96 beyond 30)."""
    if df > 30:
        return 1.96
    return _T95[max(k for k in _T95 if k <= df)]


def mean_ci(values: list[float]) -> dict:
    """Mean, 95 % CI half-width (None for one value), n and the values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "ci95": None, "n": 0, "values": []}
    half = t95(len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else None
    return {"mean": statistics.fmean(vals), "ci95": half, "n": len(vals), "values": vals}


def flat_row(rec: dict, speed: dict | None) -> dict:
    """One stage as a flat row (the CSV and table columns)."""
    q, build = rec["quality"], rec.get("build", {})
    row = {k: rec.get(k) for k in ("stage", "kind", "optimizer", "seed", "quant", "layers", "intermediate",
                                   "params", "model_bytes", "file_bytes", "weights")}
    row.update(ppl=q["heldout"]["ppl"], kl=q["heldout"]["kl"], cloze_acc=q["cloze"]["accuracy"],
               mc_acc_norm=q["next_line"]["acc_norm"], mc_acc=q["next_line"]["acc"])
    row.update({f"task_{t}": v["value"] for t, v in q.get("tasks", {}).items()})
    if speed:
        d = speed["decode_tokens_per_s"]
        row.update(decode_tok_s=d["median"], decode_tok_s_min=d["min"], decode_tok_s_max=d["max"],
                   prefill_tok_s=speed["prefill_tokens_per_s"]["median"], speed_impl=speed["impl"])
    row["train_s"] = build.get("result", {}).get("seconds") if rec["kind"] == "kd" else None
    row["quantize_s"] = build.get("seconds") if rec["kind"] == "quant" else None
    row["eval_s"] = q.get("eval_seconds")
    return row


def _drop(metric: str, before: float, after: float) -> float:
    if metric == "ppl":
        return after / before - 1
    if metric == "kl":
        return after - before
    return before - after


def _verdict(d: dict, what: str) -> str:
    if d["mean"] is None:
        return f"{what}: no data"
    if d["ci95"] is None:
        return f"{what}: one seed only, no confidence interval (difference {d['mean']:+.4g})"
    lo, hi = d["mean"] - d["ci95"], d["mean"] + d["ci95"]
    if hi < 0:
        return f"{what}: Muon loses less under quantization than AdamW (difference {d['mean']:+.4g} ± {d['ci95']:.2g}): the seed's claim holds here"
    if lo > 0:
        return f"{what}: Muon loses more under quantization than AdamW (difference {d['mean']:+.4g} ± {d['ci95']:.2g}): the seed's claim is refuted here"
    return (f"{what}: no difference distinguishable from seed noise (difference {d['mean']:+.4g} ± {d['ci95']:.2g}, "
            f"{d['n']} seeds): the seed's claim is neither confirmed nor refuted at this scale")


def summarize_run(rows: list[dict], optimizers: list[str], quants: list[str]) -> dict:
    """Gap recovery, quantization drops per optimizer, Muon vs AdamW, the pipeline vs GPTQ-only, size and speed."""
    by = {r["stage"]: r for r in rows}
    teacher, student = by["teacher"], by["student"]
    out: dict[str, Any] = {"gap_recovery": {}, "quantization_drop": {}, "muon_vs_adamw": {}, "pipeline_vs_quant_only": {}}
    kd = {o: sorted((r for r in rows if r["kind"] == "kd" and r["optimizer"] == o), key=lambda r: r["seed"])
          for o in optimizers}
    gap, lgap = student["ppl"] - teacher["ppl"], math.log(student["ppl"] / teacher["ppl"])
    for o, runs in kd.items():
        out["gap_recovery"][o] = {"ppl": mean_ci([(student["ppl"] - r["ppl"]) / gap for r in runs]) if gap else None,
                                  "log_ppl": mean_ci([math.log(student["ppl"] / r["ppl"]) / lgap for r in runs])
                                  if lgap else None}
    for q in quants:
        out["quantization_drop"][q] = {}
        drops: dict[str, dict[str, dict[int, float]]] = {}
        for o, runs in kd.items():
            entry = {}
            for m, _ in METRICS:
                pairs = [(r, by.get(f"{r['stage']}+{q}")) for r in runs]
                pairs = [(a, b) for a, b in pairs if b is not None and a[m] is not None and b[m] is not None]
                drops.setdefault(o, {})[m] = {a["seed"]: _drop(m, a[m], b[m]) for a, b in pairs}
                entry[m] = {"before": mean_ci([a[m] for a, _ in pairs]), "after": mean_ci([b[m] for _, b in pairs]),
                            "drop": mean_ci(list(drops[o][m].values()))}
            out["quantization_drop"][q][o] = entry
        if "adamw" in drops and "muon" in drops:
            out["muon_vs_adamw"][q] = {}
            for m, label in METRICS:
                seeds = sorted(set(drops["adamw"][m]) & set(drops["muon"][m]))
                d = mean_ci([drops["muon"][m][s] - drops["adamw"][m][s] for s in seeds])
                out["muon_vs_adamw"][q][m] = {**d, "verdict": _verdict(d, f"{label} ({q})")}
        base = by.get(f"student+{q}")
        if base is not None:
            out["pipeline_vs_quant_only"][q] = {}
            for o, runs in kd.items():
                finals = [by[f"{r['stage']}+{q}"] for r in runs if f"{r['stage']}+{q}" in by]
                ppl, mc = mean_ci([f["ppl"] for f in finals]), mean_ci([f["mc_acc_norm"] for f in finals])
                out["pipeline_vs_quant_only"][q][o] = {
                    "ppl": {"pipeline": ppl, "quant_only": base["ppl"],
                            "better": ppl["mean"] is not None and ppl["mean"] < base["ppl"]},
                    "mc_acc_norm": {"pipeline": mc, "quant_only": base["mc_acc_norm"],
                                    "better": mc["mean"] is not None and mc["mean"] > base["mc_acc_norm"]}}
    out["size_speed"] = _size_speed(rows, teacher)
    out["final_vs_teacher"] = {}
    for q in quants:  # the seed's "2x smaller, up to 50 % lower per-token latency", measured here
        finals = [out["size_speed"][r["stage"]] for r in rows if r["kind"] == "quant" and r["stage"].startswith("kd-")
                  and r["stage"].endswith(f"+{q}")]
        out["final_vs_teacher"][q] = {"bytes_ratio": mean_ci([f["bytes_ratio"] for f in finals]),
                                      "speedup": mean_ci([f.get("speedup") for f in finals]),
                                      "latency_reduction": mean_ci([f.get("latency_reduction") for f in finals])}
    return out


def _size_speed(rows: list[dict], teacher: dict) -> dict:
    """Every stage's bytes and decode speed relative to the teacher (the seed's '2x smaller, 50 % lower latency')."""
    out = {}
    for r in rows:
        entry = {"bytes_ratio": teacher["model_bytes"] / r["model_bytes"] if r.get("model_bytes") else None}
        if r.get("decode_tok_s") and teacher.get("decode_tok_s"):
            entry["speedup"] = r["decode_tok_s"] / teacher["decode_tok_s"]
            entry["latency_reduction"] = 1 - teacher["decode_tok_s"] / r["decode_tok_s"]
        out[r["stage"]] = entry
    return out


def rows_csv(rows: list[dict]) -> str:
    """The rows as CSV (columns: the union of keys, in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def html_report(result: Any) -> str:
    """The run as a self-contained HTML page (`ridgeline.report.Report`)."""
    from ridgeline.report import Column, Report

    s = result.settings
    rep = Report(f"ridgeline distill: {s['config']['teacher']} -> {s['config']['student']['label']}")
    rep.heading("Distillation: KD + LoRA + Muon + GPTQ, stage by stage")
    for w in result.warnings:
        rep.para(f"warning: {w}", "warn")
    for n in result.notes:
        rep.para(f"note: {n}", "note")
    cols = [Column("stage", "stage", left=True), Column("layers", "layers"),
            Column("params", "params", lambda v: f"{v / 1e6:.1f} M"),
            Column("bytes", "model_bytes", lambda v: f"{v / 2**20:.1f} MiB"), Column("weights", "weights", left=True),
            Column("ppl", "ppl", lambda v: f"{v:.2f}"), Column("KL", "kl", lambda v: f"{v:.3f}"),
            Column("cloze", "cloze_acc", lambda v: f"{v:.3f}"), Column("MC acc_norm", "mc_acc_norm", lambda v: f"{v:.3f}"),
            Column("decode tok/s", "decode_tok_s", lambda v: f"{v:.1f}")]
    rep.table(result.rows, cols, caption=s.get("caption", ""))
    rep.heading("Quantization drop: AdamW vs Muon")
    rows = []
    for q, per in result.summary["quantization_drop"].items():
        for o, entry in per.items():
            for m, label in METRICS:
                d = entry[m]["drop"]
                rows.append({"q": q, "o": o, "m": label, "before": entry[m]["before"]["mean"],
                             "after": entry[m]["after"]["mean"], "drop": d["mean"], "ci": d["ci95"]})
    rep.table(rows, [Column("quantization", "q", left=True), Column("optimizer", "o", left=True),
                     Column("metric", "m", left=True), Column("before", "before", _fmt), Column("after", "after", _fmt),
                     Column("drop", "drop", lambda v: f"{v:+.4g}"), Column("± 95 % CI", "ci", lambda v: f"{v:.2g}")])
    for per in result.summary["muon_vs_adamw"].values():
        for d in per.values():
            rep.para(d["verdict"])
    for line in summary_lines(result.summary):
        rep.para(line)
    return rep.render()


def summary_lines(summary: dict) -> list[str]:
    """Plain sentences: gap recovery and the pipeline against quantization alone."""
    lines = []
    for o, g in summary["gap_recovery"].items():
        if g["ppl"] and g["ppl"]["mean"] is not None:
            ci = f" ± {g['ppl']['ci95']:.0%}" if g["ppl"]["ci95"] is not None else ""
            lines.append(f"KD with {o} recovers {g['ppl']['mean']:.0%}{ci} of the perplexity gap between the pruned "
                         f"student and the teacher ({g['log_ppl']['mean']:.0%} in log-perplexity)")
    for q, f in summary.get("final_vs_teacher", {}).items():
        if f["bytes_ratio"]["mean"] is not None:
            speed = (f", decode {f['speedup']['mean']:.2f}x the teacher's tokens/s (per-token latency "
                     f"{-f['latency_reduction']['mean']:+.0%})" if f["speedup"]["mean"] is not None else "")
            lines.append(f"KD student + {q}: {f['bytes_ratio']['mean']:.2f}x smaller than the teacher{speed}")
    for q, per in summary["pipeline_vs_quant_only"].items():
        for o, e in per.items():
            lines.append(f"KD ({o}) + {q} vs {q} of the student alone: ppl {e['ppl']['pipeline']['mean']:.2f} vs "
                         f"{e['ppl']['quant_only']:.2f} ({'better' if e['ppl']['better'] else 'not better'}), MC "
                         f"acc_norm {e['mc_acc_norm']['pipeline']['mean']:.3f} vs {e['mc_acc_norm']['quant_only']:.3f} "
                         f"({'better' if e['mc_acc_norm']['better'] else 'not better'})")
    return lines


def write_outputs(ctx: Any, stages: list, records: dict[str, dict], speed: dict, seconds: float) -> Any:
    """stages.json, stages.csv and report.html in the run folder; returns the DistillResult."""
    cfg = ctx.config
    rows = [flat_row(records[s.name], speed.get("stages", {}).get(s.name)) for s in stages]
    summary = summarize_run(rows, list(cfg.optimizers), [q.name for q in cfg.quantize])
    out: Path = ctx.out
    files = {"json": str(out / "stages.json"), "csv": str(out / "stages.csv"), "html": str(out / "report.html"),
             "stages": str(out / "stages")}
    settings = {"config": cfg.to_json(), "seconds": seconds, "data": ctx.data.info if ctx.data is not None else None,
                "heldout": ctx.heldout.info, "next_line": dict(ctx.mc_task.info, n=len(ctx.mc_task.docs)),
                "hyperparameters": ctx.hyper, "speed": speed.get("settings"),
                "caption": "held-out ppl and KL on fixed held-out windows (teacher top-k + tail bucket, T = 1); "
                           "MC: next-line, acc_norm; decode tok/s: median over interleaved rounds"}
    result = DistillResult(rows, [records[s.name] for s in stages], summary, speed, list(ctx.warnings),
                           list(ctx.notes), files, settings)
    write_json(files["json"], result.to_json())
    write_text(files["csv"], rows_csv(rows))
    write_text(files["html"], html_report(result))
    return result
