"""Decode on the bundled model, measured and placed on the roofline: torch fp32, torch bf16, llama.cpp Q4_1.

One run: probe the machine (its measured roofs), then SISO-length decode for each backend with warm-up
and repeats, Φ against the probe's bandwidth roof, the bound (bandwidth / bytes per token), the
prediction error, and a torch profiler breakdown of a decode step (matmuls, attention, the rest,
and the Python/dispatch overhead no operator accounts for). Target (not a test): torch bf16 decode
Φ >= 0.7 against the measured bandwidth roof.
Run: .venv/bin/python benchmarks/decode.py [--repeats 5] [--scenario 128:128]
Writes benchmarks/results/decode.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import machine_info, portable  # noqa: E402

from ridgeline.io import write_json  # noqa: E402
from ridgeline.measure import (BenchConfig, BenchGrid, Roofs, flat_rows, llama_cpp_available, load_runner,  # noqa: E402
                               probe, probe_device, resolve_roofs, run_grid, torch_threads)
from ridgeline.specs import parse_scenario  # noqa: E402

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_int_mm")
ATTENTION = ("scaled_dot_product", "flash_attention", "aten::_efficient_attention", "aten::softmax")


def profile_decode(cfg: BenchConfig, steps: int = 32) -> dict:
    """Profile `steps` decode steps of one backend: self CPU time per category and the unaccounted rest."""
    from torch.profiler import ProfilerActivity, profile

    with torch_threads(cfg.threads):
        loaded = load_runner(cfg, cfg.scenario.prompt + steps + 1)
        runner = loaded.runner
        prompt = list(range(10, 10 + cfg.scenario.prompt))
        tok = runner.prefill(prompt)
        for _ in range(8):  # warm-up inside the same cache
            tok = runner.decode(tok)
        tok = runner.prefill(prompt)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                tok = runner.decode(tok)
            wall = time.perf_counter() - t0
    cats: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for e in prof.key_averages():
        name = e.key
        cat = ("matmul" if name in MATMUL else "attention" if any(a in name for a in ATTENTION) else "other ops")
        cats[cat] += e.self_cpu_time_total / 1e6
        counts[cat] += e.count
    ops_s = sum(cats.values())
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    per_step = {k: v / steps for k, v in cats.items()}
    return {"impl": runner.impl, "steps": steps, "wall_s_per_step": wall / steps, "self_cpu_s_per_step": per_step,
            "ops_per_step": {k: v / steps for k, v in counts.items()},
            "unaccounted_s_per_step": max(wall - ops_s, 0.0) / steps,
            "note": "profiler overhead inflates wall time; shares, not absolute times, are the point",
            "top_ops": [{"op": e.key, "calls_per_step": e.count / steps,
                         "self_cpu_us_per_step": e.self_cpu_time_total / steps} for e in top]}


def main() -> None:
    """Probe, bench, profile, write the record."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scenario", default="128:128")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    import torch

    sc = parse_scenario(args.scenario)
    threads = args.threads or torch.get_num_threads()
    t0 = time.perf_counter()
    roofs = probe(threads=threads, array_mib=512, repeats=7)
    local = probe_device(roofs, "probe-this-run")
    placement = Roofs(local, resolve_roofs("local", "auto").catalogue)
    grids = [BenchGrid(scenarios=[sc], dtypes=["fp32", "bf16"], threads=[threads], repeats=args.repeats),
             BenchGrid(scenarios=[sc], dtypes=["bf16"], threads=[threads], repeats=max(2, args.repeats // 2), impl="hf")]
    if llama_cpp_available():
        grids.append(BenchGrid(backends=["llamacpp"], scenarios=[sc], threads=[threads], repeats=args.repeats))
    records = [r for g in grids for r in run_grid(g, placement)]
    runs = []
    for res, row in zip(records, flat_rows(records)):
        n = sc.generate
        summary = {"run": f"{row['run']} ({row['impl']})",
                   "decode_tokens_per_s": res["summary"]["decode_tokens_per_s"],
                   "phi_decode_probe": row["phi_decode_probe"],
                   "bandwidth_utilisation": row["bw_util_decode_probe"],
                   "decode_bytes_per_token": row["decode_bytes_per_token"],
                   "bound_tokens_per_s": local.bandwidth_Bps / row["decode_bytes_per_token"],
                   "predicted_s_per_token": row["predicted_decode_s_per_token_probe"],
                   "measured_s_per_token": row["decode_s_per_token"],
                   "prediction_error": row["decode_error_probe"],
                   "phi_prefill_probe": row["phi_prefill_probe"],
                   "phi_decode_catalogue": row.get("phi_decode_catalogue"),
                   "phi_above_1": [f for f in (row["flags_prefill_probe"], row["flags_decode_probe"]) if f]}
        runs.append({"summary": summary, "record": res})
        print(f"{summary['run']}: {summary['decode_tokens_per_s']['median']:.1f} tok/s, Φ decode "
              f"{summary['phi_decode_probe']:.2f} (bound {summary['bound_tokens_per_s']:.0f} tok/s), prediction error "
              f"{summary['prediction_error']:.0%} over {n} tokens")
    after = probe(threads=threads, array_mib=512, repeats=7)  # the roofs drift on a shared VM: say how much
    drift = {"read_Bps_before": roofs.read_bandwidth, "read_Bps_after": after.read_bandwidth,
             "gemv_bf16_Bps_before": roofs.gemv["bf16"].max, "gemv_bf16_Bps_after": after.gemv["bf16"].max}
    print(f"read roof {roofs.read_bandwidth / 1e9:.1f} GB/s before the runs, {after.read_bandwidth / 1e9:.1f} after")
    profiles = [profile_decode(BenchConfig("smollm2-135m", "torch", sc, "bf16", threads=threads, impl=i))
                for i in ("lean", "hf")]
    for p in profiles:
        print(f"profile {p['impl']}: wall {p['wall_s_per_step'] * 1e3:.2f} ms/step; "
              + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in p["self_cpu_s_per_step"].items())
              + f"; unaccounted {p['unaccounted_s_per_step'] * 1e3:.2f} ms")
    bf16 = next(r["summary"] for r in runs if r["summary"]["run"].startswith("torch bf16 (ridgeline"))
    record = {
        "benchmark": "decode", "model": "smollm2-135m (bundled SmolLM2-135M-Instruct Q4_1 GGUF)",
        "scenario": sc.to_json(), "threads": threads, "repeats": args.repeats,
        "probe": roofs.to_json(), "roof_drift": drift,
        "catalogue_roof": placement.catalogue.id if placement.catalogue else None,
        "runs": [r["summary"] for r in runs], "profiles": profiles,
        "target": {"torch_bf16_phi_decode_probe": 0.7, "measured": bf16["phi_decode_probe"],
                   "met": bf16["phi_decode_probe"] >= 0.7},
        "records": [r["record"] for r in runs], "machine": machine_info(),
        "wall_s": time.perf_counter() - t0,
    }
    out = write_json(Path(__file__).parent / "results" / "decode.json", portable(record))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
