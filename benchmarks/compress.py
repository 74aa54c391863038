"""Prompt compression on the bundled model: quality, TTFT with and without the compressor, KV bytes, break-even.

Quality (held-out windows of the Shakespeare eval split; contexts 512, 1024, 2048 = the last L tokens of each
window, so every length shares the true continuation): for rates 2x and 4x and every method (truncate, random,
selective, lingua, learned, scrl) the ΔNLL (nats/token) of the next 64 tokens given the compressed context
against the full one, cloze accuracy on a word inside them, the rate achieved (target model's tokens).
The budget controller keeps the last half of the budget verbatim for every method but truncate (see
ridgeline.compress.evaluate); `random` goes through the same controller, so it separates what the controller
buys from what the scoring buys.

Timing (the part that takes the machine-wide lock /tmp/ridgeline-timing.lock itself, with `uptime` before and
after: do not wrap the script in flock, it would wait on itself): TTFT of the full prompt = one prefill through
`ridgeline.measure`'s lean path (the fastest torch path here: static cache, fused projections); TTFT with a
compressor = the compressor's own time (compress(...).compressor_s: scoring and selection on the transformers
fp32 model or the scorer) + the lean prefill of the kept ids. Prompt lengths 256..2048; rounds interleave every
system (full, each method x rate); medians and spread. The break-even prompt length per method and rate is
where the measured speedup crosses 1 (log-linear between the bracketing lengths). The roofline's prediction of
the same trade on catalogue devices (analyze --compress R --compressor self / self:K) is recorded beside it.

Scorers: --scorer/--scrl folders from `ridgeline compress train`; without them the script trains both first
(cached in $RIDGELINE_HOME/compress/, resumed if interrupted).
Targets (reported, not asserted): at 2x the best method within +0.10 nats/token of the full context and
recovering >= 60 % of the gap between truncation and the full context; TTFT including the compressor >= 1.5x
faster than the full prompt at 2048 tokens.
Writes benchmarks/results/compress.json (--out).
Run: .venv/bin/python benchmarks/compress.py [--quick] [--samples 12] [--lengths 512,1024,2048] [--rates 2,4]
     [--timing-lengths 256,512,1024,2048] [--rounds 3] [--threads 2] [--scorer DIR --scrl DIR] [--out PATH]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import LOCK, machine_info, record_path, say, timing_lock, uptime  # noqa: E402

from ridgeline.io import user_dir, write_json  # noqa: E402

MODEL = "smollm2-135m"
METHODS = ("truncate", "random", "selective", "lingua", "learned", "scrl")
DEVICES = ("epyc-zen4-2vcpu", "jetson-orin-nano-super-8g", "rtx-3090")






# ---------------------------------------------------------------------------------------------------------
# scorers


def scorers(model, tok, args) -> tuple[Path, Path, dict]:
    """The learned and SCRL scorer folders (trained here unless given) and their training records."""
    from ridgeline.compress import SCRLConfig, ScorerTrainConfig, read_scorer_manifest, train_scorer, train_scrl

    if args.scorer and args.scrl:
        learned, scrl = Path(args.scorer), Path(args.scrl)
    else:
        base = Path(tempfile.mkdtemp(prefix="compress-quick-")) if args.quick else user_dir() / "compress"
        base.mkdir(parents=True, exist_ok=True)
        learned, scrl = base / "learned", base / "scrl"
        lcfg = (ScorerTrainConfig(windows=12, context=128, holdout=4, steps=10, checkpoint_every=5) if args.quick
                else ScorerTrainConfig())
        rcfg = SCRLConfig(steps=3, eval_every=3, checkpoint_every=3) if args.quick else SCRLConfig()
        for folder, fn in ((learned, lambda r: train_scorer(model, tok, learned, lcfg, r, progress)),
                           (scrl, lambda r: train_scrl(model, tok, learned, scrl, rcfg, r, progress))):
            res = fn((folder / "scorer.json").is_file())
            if res.interrupted:
                raise SystemExit(f"training {res.stage} was interrupted; rerun to resume it")
    records = {}
    for name, folder in (("learned", learned), ("scrl", scrl)):
        rec = read_scorer_manifest(folder)
        r = rec.get("record") or {}
        records[name] = {"folder": record_path(folder), "layers": rec["layers"], "head_hidden": rec["head_hidden"],
                         "config": r.get("config"), "steps": r.get("step"), "labels": r.get("labels"),
                         "curve": r.get("curve")}
    return learned, scrl, records


def progress(what: str, done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        say(f"{what}: {done}/{total}")


def method_configs(learned: Path, scrl: Path, model) -> dict:
    from ridgeline.compress import SCRL, Learned, load_scorer, method_config

    out = {m: method_config(m) for m in METHODS if m not in ("learned", "scrl")}
    out["learned"] = Learned(load_scorer(learned, model))
    out["scrl"] = SCRL(load_scorer(scrl, model))
    return out


# ---------------------------------------------------------------------------------------------------------
# timing


def kv_bytes(model, tokens: int) -> int:
    """K and V bytes the lean path's static fp32 cache holds for `tokens` tokens."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * tokens * 4


def timing(model, tok, methods: dict, args) -> dict:
    """TTFT of the full prompt and of compressor + kept prompt, per length, rate and method, interleaved rounds."""
    import torch

    from ridgeline.compress import compress
    from ridgeline.compress.quality import corpus_samples
    from ridgeline.measure import BenchConfig, load_runner
    from ridgeline.specs import Scenario

    lengths = args.timing_lengths
    sample = corpus_samples(tok, 1, max(lengths), 64, seed=args.seed + 1)[0]
    loaded = load_runner(BenchConfig(MODEL, "torch", Scenario(max(lengths), 1), "fp32", threads=args.threads,
                                     impl="lean"), max(lengths) + 2)
    runner = loaded.runner
    systems = [("full", None, None)] + [(m, r, cfg) for r in args.rates for m, cfg in methods.items()]
    samples: dict[tuple, list[dict]] = {}
    for length in lengths:
        prompt = sample.context_of(length)
        for rnd in range(args.rounds + 1):  # round 0 warms up
            for name, rate, cfg in systems:
                if name == "full":
                    comp_s, kept = 0.0, list(prompt.ids)
                else:
                    from ridgeline.compress.evaluate import controller_parts

                    parts = None if name == "truncate" else controller_parts(length, rate, 0.5)
                    res = compress(prompt, cfg, rate=rate, model=model, tokenizer=tok,
                                   parts=parts if parts and parts.question else None)
                    comp_s, kept = res.compressor_s, list(res.kept_ids)
                t0 = time.perf_counter()
                runner.prefill(kept)
                prefill_s = time.perf_counter() - t0
                if rnd:
                    samples.setdefault((length, rate, name), []).append(
                        {"compressor_s": comp_s, "prefill_s": prefill_s, "ttft_s": comp_s + prefill_s,
                         "kept": len(kept)})
        say(f"timed {length} tokens")
    loaded.close()
    rows = []
    for (length, rate, name), xs in samples.items():
        ttft = [x["ttft_s"] for x in xs]
        full = statistics.median(x["ttft_s"] for x in samples[(length, None, "full")])
        med = statistics.median(ttft)
        rows.append({"length": length, "rate": rate, "method": name, "kept_tokens": xs[0]["kept"],
                     "ttft_s_median": med, "ttft_s_min": min(ttft), "ttft_s_max": max(ttft),
                     "compressor_s_median": statistics.median(x["compressor_s"] for x in xs),
                     "prefill_s_median": statistics.median(x["prefill_s"] for x in xs),
                     "speedup_vs_full": full / med, "kv_bytes_fp32": kv_bytes(model, xs[0]["kept"]),
                     "samples": xs})
    return {"impl": runner.impl, "threads": args.threads or torch.get_num_threads(), "rounds": args.rounds,
            "warmup_rounds": 1, "prompt": {"title": sample.title, "offset": sample.offset}, "rows": rows,
            "break_even": break_even(rows, lengths)}


def break_even(rows: list[dict], lengths: list[int]) -> list[dict]:
    """Per method and rate: the prompt length where the measured TTFT speedup crosses 1."""
    out = []
    keys = sorted({(r["method"], r["rate"]) for r in rows if r["method"] != "full"}, key=str)
    for method, rate in keys:
        pts = sorted((r["length"], r["speedup_vs_full"]) for r in rows if r["method"] == method and r["rate"] == rate)
        value, note = None, f"not reached up to {lengths[-1]} tokens"
        if pts[0][1] >= 1:
            note = f"faster at every measured length (from {pts[0][0]} tokens)"
        else:
            for (l0, s0), (l1, s1) in zip(pts, pts[1:]):
                if s0 < 1 <= s1:  # log-linear in the length between the bracketing points
                    t = (1 - s0) / (s1 - s0)
                    value = round(math.exp(math.log(l0) + t * (math.log(l1) - math.log(l0))))
                    note = f"interpolated between {l0} and {l1} tokens"
                    break
        out.append({"method": method, "rate": rate, "break_even_tokens": value, "note": note,
                    "speedups": {str(l): s for l, s in pts}})
    return out


# ---------------------------------------------------------------------------------------------------------
# the roofline's view and the targets


def predictions(rates: list[float]) -> list[dict]:
    from ridgeline.roofline import compression_summary, predict

    out = []
    for dev in DEVICES:
        for rate in rates:
            for comp in (None, "self", "self:4"):
                s = compression_summary(predict(MODEL, dev, "2048:64", acts="fp32", compress=rate, compressor=comp))
                out.append({"device": dev, "rate": rate, "compressor": comp or "none (free)", **s})
    return out


def targets(summary: list[dict], timed: dict | None, length: int) -> dict:
    """The issue's targets at 2x, from the quality summary and the timings."""
    rows = [r for r in summary if r["rate"] == 2.0 and r["length"] == length]
    trunc = next((r for r in rows if r["method"] == "truncate"), None)
    cand = [r for r in rows if r["method"] not in ("full", "truncate")]
    if not cand or trunc is None:
        return {}
    best = min(cand, key=lambda r: r["delta_nll"])
    out = {"length": length, "best_method": best["method"], "best_delta_nll": best["delta_nll"],
           "best_delta_nll_se": best["delta_nll_se"], "truncate_delta_nll": trunc["delta_nll"],
           "gap_recovered": best["gap_recovered"],
           "within_0.10_nats": best["delta_nll"] <= 0.10,
           "recovers_60pct_of_gap": best["gap_recovered"] is not None and best["gap_recovered"] >= 0.6}
    if timed:
        speed = {r["method"]: r["speedup_vs_full"] for r in timed["rows"] if r["length"] == length
                 and r["rate"] == 2.0}
        out["ttft_speedup_at_2x"] = speed
        out["ttft_1.5x_met_by"] = sorted(m for m, s in speed.items() if s >= 1.5)
        out["best_quality_method_ttft_speedup"] = speed.get(best["method"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 sample, short contexts, tiny training")
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--lengths", default="512,1024,2048")
    ap.add_argument("--rates", default="2,4")
    ap.add_argument("--timing-lengths", default="256,512,1024,2048")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, the cores)")
    ap.add_argument("--scorer", default=None)
    ap.add_argument("--scrl", default=None)
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "compress.json"))
    args = ap.parse_args()
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.rates = [float(x) for x in args.rates.split(",")]
    args.timing_lengths = [int(x) for x in args.timing_lengths.split(",")]
    if args.quick:
        args.samples, args.lengths, args.timing_lengths, args.rounds = 1, [256, 512], [256, 512], 1

    import torch

    from ridgeline.compress import CorpusEvalConfig, corpus_eval
    from ridgeline.loader import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    start = {"uptime": uptime(), "machine": machine_info()}
    t0 = time.perf_counter()
    model, tok = load_model(MODEL, "fp32")
    learned, scrl, training = scorers(model, tok, args)
    methods = method_configs(learned, scrl, model)
    say("quality")
    config = CorpusEvalConfig(lengths=tuple(args.lengths), rates=tuple(args.rates), samples=args.samples,
                              seed=args.seed)
    quality = corpus_eval(model, tok, {k: v for k, v in methods.items() if k != "truncate"}, config, progress)
    timed, lock = None, {}
    if not args.no_timing:
        with timing_lock():
            lock["uptime_before"] = uptime()
            timed = timing(model, tok, methods, args)
            lock["uptime_after"] = uptime()
    record = {
        "kind": "ridgeline.benchmark.compress", "model": MODEL, "quick": args.quick,
        "machine": start["machine"], "uptime_start": start["uptime"], "timing_lock": {"path": LOCK, **lock},
        "uptime_end": uptime(), "wall_s": time.perf_counter() - t0, "threads": torch.get_num_threads(),
        "scorers": training,
        "quality": {k: quality[k] for k in ("config", "methods", "samples", "summary", "items")},
        "timing": timed, "predicted": predictions(args.rates),
        "targets": {str(L): targets(quality["summary"], timed, L) for L in args.lengths},
    }
    write_json(args.out, record)
    say(f"wrote {args.out}")
    for r in quality["summary"]:
        gap = "" if r["gap_recovered"] is None else f"gap {r['gap_recovered']:+.0%}"
        print(f"{r['length']:>5} {r['rate'] or '-':>4} {r['method']:<10} ΔNLL {r['delta_nll']:+.4f} ± "
              f"{r['delta_nll_se']:.4f}  cloze {r['cloze_accuracy']:.2f}  rate {r['rate_achieved_mean']:.3f} {gap}")
    if timed:
        for r in timed["rows"]:
            print(f"TTFT {r['length']:>5} {r['rate'] or '-':>4} {r['method']:<10} {r['ttft_s_median'] * 1e3:8.1f} ms "
                  f"(compressor {r['compressor_s_median'] * 1e3:7.1f}) x{r['speedup_vs_full']:.2f}")
        for b in timed["break_even"]:
            print(f"break-even {b['method']:<10} {b['rate']:g}x: {b['break_even_tokens']} ({b['note']})")


if __name__ == "__main__":
    main()
