"""Harmonia against three baselines on simulated accelerators; the accuracy side from the emulation.

Part 1 (analytic, no timing): the bundled designs (fp16, figna-w4a16, anda-bfp-linear, harmonia; see
src/ridgeline/accel/data/designs, equal area within 1.5 %) on six catalogue models at 2048, 4096, 8192 and
16384 prompt tokens followed by `--generate` decode steps: per design time, energy and area per phase, and
Harmonia's speedup, area efficiency and energy efficiency over each baseline, beside the seed's figures
(arXiv 2602.04595: 3.08x speed, 3.84x area efficiency, 2.03x energy efficiency on average over 8 LLMs; 2.50-4.14x
speed and 1.54-3.35x energy over 2048-16384 tokens). Then a sensitivity sweep: each main modelling assumption
changed alone, on a subset of models and lengths, and how far it moves the mean ratios.
Part 2: naive against explored HLS designs of the bundled model's GEMMs on an FPGA (the survey's ScaleHLS x768.1).
Part 3: design-space exploration throughput (>= 10,000 points, 2 workers) and its Pareto fronts (wall time
measured: run under `flock /tmp/ridgeline-timing.lock`).
Part 4 (torch, CPU-heavy): perplexity of the bundled model under Harmonia's scheme (BFP activations in every
linear layer + the Harmonia KV tiers) against fp32, beside the seed's 0.3 % average accuracy loss.

Writes benchmarks/results/accel.json (--out). Run:
  flock /tmp/ridgeline-timing.lock .venv/bin/python benchmarks/accel.py [--parts sim,hls,dse,ppl]
      [--generate 128] [--dse-points 10000] [--ppl-tokens 4096] [--ppl-context 512] [--out PATH] [--merge]
The perplexity part takes the longest (emulated BFP activations and the Harmonia cache streamed chunk by chunk:
~10-30 min on a busy 2-core machine); --parts sim,hls,dse takes ~5 min.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import machine_info, portable  # noqa: E402

from ridgeline.accel import (DEFAULT_AXES, DESIGNS, Design, PEMode, apply, design_workload, explore,  # noqa: E402
                             get_design, hls_compare, ratios, simulate)
from ridgeline.io import write_json  # noqa: E402
from ridgeline.specs import Scenario, catalogue_spec  # noqa: E402

MODELS = ("llama-3.1-8b", "llama-3.2-3b", "mistral-7b", "qwen3-0.6b", "qwen3-1.7b", "smollm2-135m")
LENGTHS = (2048, 4096, 8192, 16384)
SEED = {"speedup": 3.08, "speedup_max": 4.62, "area_efficiency": 3.84, "area_efficiency_max": 5.05,
        "energy_efficiency": 2.03, "energy_efficiency_max": 3.90, "speedup_range_2k_16k": [2.50, 4.14],
        "energy_range_2k_16k": [1.54, 3.35], "kv_fraction_of_fp16": 0.3125, "accuracy_loss": 0.003,
        "source": "Harmonia, arXiv 2602.04595 (abstract and reviews): against FIGNA/Anda-class accelerators, 8 LLMs"}
METRICS = ("speedup", "area_efficiency", "energy_efficiency")
PRIOR = ("figna-w4a16", "anda-bfp-linear")  # the seed's comparison set (FIGNA-, Anda-class accelerators)


def _geomean(xs: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in xs)) if xs else float("nan")


def _evaluate(designs: dict[str, Design], models, lengths, generate: int, stride: int = 1) -> list[dict]:
    rows = []
    for model in models:
        spec = catalogue_spec(model)
        for L in lengths:
            sc = Scenario(L, generate)
            res = {name: simulate(design_workload(spec, sc, d), d, step_stride=stride) for name, d in designs.items()}
            h = res["harmonia"]
            row = {"model": model, "prompt": L, "generate": generate, "designs": {}}
            for name, r in res.items():
                row["designs"][name] = {"area_mm2": r.area_mm2, "prefill_s": r.prefill.time_s,
                                        "decode_s": r.decode.time_s, "total_s": r.total_s,
                                        "prefill_j": r.prefill.energy * 1e-12, "decode_j": r.decode.energy * 1e-12,
                                        "energy_j": r.energy_pj * 1e-12}
            row["harmonia_vs"] = {b: ratios(h, res[b]) for b in res if b != "harmonia"}
            rows.append(row)
    return rows


def _summary(rows: list[dict], phase: str = "total") -> dict:
    """Harmonia's ratios over all baselines (and over the FIGNA- and Anda-class ones, the seed's comparison set),
    models and lengths: geometric and arithmetic means, max; per baseline; per length over the seed's set (the
    2048-16384 ranges)."""
    out: dict = {}
    for key, bases_ in (("all_baselines", None), ("prior_accelerators", PRIOR)):
        vals = {m: [r["harmonia_vs"][b][phase][m] for r in rows for b in r["harmonia_vs"] if not bases_ or b in bases_]
                for m in METRICS}
        if all(vals.values()):
            out[key] = {m: {"geomean": _geomean(v), "mean": statistics.fmean(v), "max": max(v), "min": min(v)}
                        for m, v in vals.items()}
    bases = list(rows[0]["harmonia_vs"])
    out["per_baseline"] = {b: {m: _geomean([r["harmonia_vs"][b][phase][m] for r in rows]) for m in METRICS}
                           for b in bases}
    lengths = sorted({r["prompt"] for r in rows})
    use = [b for b in bases if b in PRIOR] or bases  # per length: the seed's comparison set
    per_len = {L: {m: _geomean([r["harmonia_vs"][b][phase][m] for r in rows if r["prompt"] == L for b in use])
                   for m in METRICS} for L in lengths}
    out["per_length"] = per_len
    out["range_over_lengths"] = {m: [min(v[m] for v in per_len.values()), max(v[m] for v in per_len.values())]
                                 for m in METRICS}
    return out


def _side_by_side(summary: dict) -> dict:
    """Ours (end to end, Harmonia over the FIGNA- and Anda-class baselines, geometric mean over models and
    lengths; per-length geometric means for the ranges) beside the seed's figures."""
    ours = summary["total"]["prior_accelerators"]
    rng = summary["total"]["range_over_lengths"]
    return {"speedup": {"ours": ours["speedup"]["geomean"], "ours_max": ours["speedup"]["max"],
                        "seed": SEED["speedup"], "seed_max": SEED["speedup_max"]},
            "area_efficiency": {"ours": ours["area_efficiency"]["geomean"], "ours_max": ours["area_efficiency"]["max"],
                                "seed": SEED["area_efficiency"], "seed_max": SEED["area_efficiency_max"]},
            "energy_efficiency": {"ours": ours["energy_efficiency"]["geomean"],
                                  "ours_max": ours["energy_efficiency"]["max"], "seed": SEED["energy_efficiency"],
                                  "seed_max": SEED["energy_efficiency_max"]},
            "speedup_range_2k_16k": {"ours": rng["speedup"], "seed": SEED["speedup_range_2k_16k"]},
            "energy_range_2k_16k": {"ours": rng["energy_efficiency"], "seed": SEED["energy_range_2k_16k"]}}


def _variants() -> dict[str, dict[str, Design]]:
    """The bundled designs with one assumption changed at a time."""
    base = {n: get_design(n) for n in DESIGNS}
    with_all = lambda f: {n: f(d) for n, d in base.items()}  # noqa: E731

    def packed(d: Design) -> Design:
        if d.name != "harmonia":
            return d
        return d.with_(modes=tuple(PEMode(m.a, m.b, 2 if m.b.width <= 5 else 1) for m in d.modes))

    def int8_weights(d: Design) -> Design:
        return apply(d, {"weights": "int8_pc"}) if d.name != "fp16" else d

    return {
        "bundled (equal area)": base,
        "equal PE count (every array 32x32)": with_all(lambda d: d.with_(rows=32, cols=32)),
        "flat arrays (rows / 4, cols x 4: same PEs, 4x the GEMV width)": with_all(
            lambda d: d.with_(rows=max(d.rows // 4, 1), cols=d.cols * 4)),
        "FP16 accumulation in float PEs": with_all(lambda d: d.with_(accumulator_bits=16) if any(
            m.has_float for m in d.modes) else d),
        "DRAM 34 GB/s (half)": with_all(lambda d: d.with_(dram_Bps=34e9)),
        "DRAM 136 GB/s (double)": with_all(lambda d: d.with_(dram_Bps=136e9)),
        "buffers 1 MiB each (4x)": with_all(lambda d: d.with_(input={"bytes": 1 << 20}, weight={"bytes": 1 << 20},
                                                              output={"bytes": 1 << 20})),
        "INT8 weights (baselines 2-3 and Harmonia)": with_all(int8_weights),
        "Harmonia PE packs two 4-bit products per cycle": with_all(packed),
    }


def part_sim(generate: int) -> dict:
    t0 = time.perf_counter()
    designs = {n: get_design(n) for n in DESIGNS}
    rows = _evaluate(designs, MODELS, LENGTHS, generate)
    out = {"designs": {n: {"pes": d.pes, "array": [d.rows, d.cols], "modes": [m.label for m in d.modes],
                           "formats": vars(d.formats)} for n, d in designs.items()},
           "rows": rows, "summary": {ph: _summary(rows, ph) for ph in ("prefill", "decode", "total")}}
    out["side_by_side"] = _side_by_side(out["summary"])
    sens = {}
    sub_models, sub_lengths = ("llama-3.1-8b", "qwen3-0.6b"), (2048, 16384)
    for name, ds in _variants().items():
        vrows = _evaluate(ds, sub_models, sub_lengths, generate, stride=4)
        sens[name] = {ph: {k: v for k, v in _summary(vrows, ph).items() if k in ("all_baselines", "prior_accelerators")}
                      for ph in ("prefill", "decode", "total")}
        sens[name]["harmonia_area_mm2"] = vrows[0]["designs"]["harmonia"]["area_mm2"]
        sens[name]["fp16_area_mm2"] = vrows[0]["designs"]["fp16"]["area_mm2"]
    out["sensitivity"] = {"models": sub_models, "prompts": sub_lengths, "decode_step_stride": 4, "variants": sens}
    out["seconds"] = time.perf_counter() - t0
    return out


def part_hls(generate: int) -> dict:
    spec = catalogue_spec("smollm2-135m")
    out = {}
    for pe in ("fp16xfp16", "bfp8xint4"):
        w = design_workload(spec, Scenario(512, generate), get_design("fp16"))
        for phase in ("prefill", "decode"):
            r = hls_compare(w, "zcu102", pe, phase)
            out[f"{pe} {phase}"] = {k: r[k] for k in ("device", "pe", "phase", "model", "scenario", "naive_s",
                                                    "optimised_s", "speedup", "scalehls_reported")}
            out[f"{pe} {phase}"]["ops"] = [{k: o[k] for k in ("op", "shape", "speedup", "naive", "optimised")}
                                            for o in r["ops"][:3]]
    return out


def part_dse(points: int, workers: int) -> dict:
    spec = catalogue_spec("smollm2-135m")
    t0 = time.perf_counter()
    ex = explore(get_design("harmonia"), spec, Scenario(512, 64), DEFAULT_AXES, samples=points, workers=workers,
                 step_stride=8)
    wall = time.perf_counter() - t0
    fronts = {ph: [{"params": ex.points[i].params, **ex.points[i].metrics} for i in idx]
              for ph, idx in ex.fronts.items()}
    return {"model": "smollm2-135m", "scenario": "512:64", "points": len(ex.points),
            "feasible": sum(p.error is None for p in ex.points), "workers": workers, "wall_s": wall,
            "points_per_s": len(ex.points) / wall, "axes": ex.axes, "front_sizes": {k: len(v) for k, v in fronts.items()},
            "fronts": fronts}


def part_ppl(tokens: int, context: int) -> dict:
    """Perplexity of the bundled model: fp16 (the reference, as in the seed), fp32, Harmonia KV only, the full
    scheme with 8-bit and 4-bit weights."""
    import torch

    from ridgeline.arch import Variant
    from ridgeline.eval import EvalConfig, run_eval
    from ridgeline.loader import load_model
    from ridgeline.quant import BFPConfig, quantize_

    torch.manual_seed(0)
    # (name, BFP (weights, activations) formats, KV format, dtype); the seed compares against FP16, so the fp16
    # model is the reference of `relative_change` (fp32 beside it shows what fp16 itself costs)
    variants = [("fp16", None, None, "fp16"), ("fp32", None, None, "fp32"), ("fp32 + Harmonia KV", None, "harmonia"),
                ("Harmonia scheme: BFP activations + bfp32m8 weights + Harmonia KV", ("bfp32m8", "bfp32m8"), "harmonia"),
                ("Harmonia scheme, 4-bit weights (mxint4) + Harmonia KV", ("mxint4", "bfp32m8"), "harmonia")]
    out, ref = {}, None
    for name, quant, kv, *dtype in variants:
        dtype = dtype[0] if dtype else "fp32"
        model, tok = load_model("smollm2-135m", dtype)
        if quant:
            quantize_(model, BFPConfig(weight_format=quant[0], act_format=quant[1]))
        t0 = time.perf_counter()
        rec = run_eval(EvalConfig(model="smollm2-135m", tasks=("ppl",), dtype=dtype, context=context,
                                  stride=context, max_tokens=tokens, variant=Variant(kv=kv)), model=model,
                       tokenizer=tok)
        ppl = rec["tasks"]["ppl"]
        value = ppl["token_perplexity"]
        ref = ref or value
        out[name] = {"token_perplexity": value, "relative_change": value / ref - 1.0, "tokens": ppl.get("tokens"),
                     "wall_s": time.perf_counter() - t0, "weights": rec["model"]["weights"], "kv": kv, "dtype": dtype}
    return {"model": "smollm2-135m", "context": context, "stride": context, "max_tokens": tokens,
            "reference": "fp16", "variants": out, "seed_accuracy_loss": SEED["accuracy_loss"],
            "note": "perplexity change, not the seed's LongBench accuracy; activations of Q and the attention "
                    "probabilities are not quantized by the emulation (BFPConfig covers linear layers); "
                    "BFPConfig takes MX/BFP weights, so INT4 weights are stood in for by mxint4 (4-bit "
                    "sign-magnitude with a shared exponent per 32)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="sim,hls,dse,ppl")
    ap.add_argument("--generate", type=int, default=128)
    ap.add_argument("--dse-points", type=int, default=10000)
    ap.add_argument("--dse-workers", type=int, default=2)
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--ppl-context", type=int, default=512)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "accel.json"))
    ap.add_argument("--merge", action="store_true", help="keep the other parts of an existing --out file")
    args = ap.parse_args()
    parts = args.parts.split(",")
    record = {"kind": "ridgeline.benchmark.accel", "seed": SEED}
    if args.merge and Path(args.out).exists():
        import json

        record.update(json.loads(Path(args.out).read_text()))
    record.setdefault("runs", {})
    record["runs"][",".join(parts)] = {"machine": machine_info(), "args": vars(args)}
    if "sim" in parts:
        record["simulation"] = part_sim(args.generate)
    if "hls" in parts:
        record["hls"] = part_hls(args.generate)
    if "dse" in parts:
        record["dse"] = part_dse(args.dse_points, args.dse_workers)
    if "ppl" in parts:
        record["perplexity"] = part_ppl(args.ppl_tokens, args.ppl_context)
    record["runs"][",".join(parts)]["machine_after"] = machine_info()
    write_json(args.out, portable(record))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
