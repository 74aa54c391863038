"""Every quantization method on the bundled model: held-out perplexity, model bytes, quantization wall
time and decode tok/s through the torch backend, all in one run (so the speed ratios share a machine state).

Targets (benchmark, not test): int8 weight-only decode >= 1.8x bf16, int4 >= 2.5x bf16; GPTQ W4 g128
perplexity < RTN W4 g128; whole-model GPTQ W4 g128 <= 5 minutes on 2 cores. Writes
benchmarks/results/quant.json.
Run: .venv/bin/python benchmarks/quant.py [--only rtn-w4-g128,...] [--ppl-tokens 8192] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import machine_info, portable  # noqa: E402

from ridgeline.corpus import corpus_info, load_corpus  # noqa: E402
from ridgeline.eval.perplexity import PerplexityConfig, perplexity  # noqa: E402
from ridgeline.io import write_json  # noqa: E402
from ridgeline.loader import load_model  # noqa: E402
from ridgeline.quant import make_config, quantize_, save_quantized  # noqa: E402

#: name -> make_config options (None: the unquantized model in that dtype)
VARIANTS: dict[str, dict | None] = {
    "fp32": None,
    "bf16": None,
    "rtn-w8": dict(method="rtn", bits=8),
    "rtn-w8+head": dict(method="rtn", bits=8, include_lm_head=True),
    "rtn-w4-g128": dict(method="rtn", bits=4, group=128),
    "rtn-w4-g128+head": dict(method="rtn", bits=4, group=128, include_lm_head=True),
    "rtn-w4-g64": dict(method="rtn", bits=4, group=64),
    "rtn-w4-g32": dict(method="rtn", bits=4, group=32),
    "rtn-w3-g128": dict(method="rtn", bits=3, group=128),
    "gptq-w4-g128": dict(method="gptq", bits=4, group=128),
    "gptq-w4-g128-actorder": dict(method="gptq", bits=4, group=128, act_order=True, static_groups=True),
    "llm_int8": dict(method="llm_int8"),
    "smoothquant": dict(method="smoothquant", alpha_search=True),
    "bfp-mxint8": dict(method="bfp", weight_format="mxint8", act_format="mxint8"),
    "bfp-mxfp4-w-mxint8-a": dict(method="bfp", weight_format="mxfp4", act_format="mxint8"),
    "bfp-bfp32m4": dict(method="bfp", weight_format="bfp32m4", act_format="bfp32m8"),
    "gguf-q8_0": dict(method="gguf", recipe="q8_0"),
    "gguf-q4_0": dict(method="gguf", recipe="q4_0"),
    "gguf-q4_k_m": dict(method="gguf", recipe="q4_k_m"),
}


def _decode_rounds(paths: dict[str, tuple[str, str]], scenario: str, rounds: int) -> dict[str, dict]:
    """Decode tok/s of every saved model through the torch backend, as `ridgeline bench` runs it.

    All models stay loaded and the runs interleave (one repeat of each variant per round), so a slow spell
    of this shared machine hits every variant alike instead of whichever ran during it."""
    import dataclasses
    import os

    from ridgeline.measure.bench import BenchConfig, load_runner, run_bench
    from ridgeline.measure.phi import place, weights_label
    from ridgeline.measure.stats import cpu_model
    from ridgeline.specs.device import host_device
    from ridgeline.specs.scenario import parse_scenario

    sc = parse_scenario(scenario)
    cfgs = {name: BenchConfig(model=path, backend="torch", dtype=dtype, scenario=sc, repeats=1, warmup=2)
            for name, (path, dtype) in paths.items()}
    loaded = {name: load_runner(cfg, sc.prompt + sc.generate + 1) for name, cfg in cfgs.items()}
    records: dict = {}
    try:
        for r in range(rounds):
            for name, cfg in cfgs.items():
                rec = run_bench(dataclasses.replace(cfg, warmup=2 if r == 0 else 0), loaded[name])
                records[name] = rec if name not in records else dataclasses.replace(
                    records[name], samples=records[name].samples + rec.samples)
    finally:
        for one in loaded.values():
            one.close()
    roof = host_device(cpu_model(), os.cpu_count())
    out = {}
    for name, record in records.items():
        row = {"impl": record.impl, "weights": weights_label(record),
               "decode_tokens_per_s": record.decode_tokens_per_s.to_json(), "ttft_s": record.ttft.to_json()}
        if roof is not None:  # Φ against this host's catalogue roof, with the stored formats' bytes
            phi = place(record, roof, "catalogue")
            row.update(phi_decode_catalogue=phi.decode.phi.median,
                       predicted_decode_s_per_token=phi.decode.predicted_s / sc.generate)
        out[name] = row
    return out


def kernel_times(repeats: int = 20) -> dict:
    """Batch-1 matmul time per decoded token of the bundled model's projections: bf16 `F.linear` vs the int8
    and int4 kernels, each layer's weights distinct (30 layers: working sets far above the 32 MiB L3)."""
    import statistics

    import torch
    import torch.nn.functional as F

    from ridgeline.quant.intq import rtn
    from ridgeline.quant.linear import Int4Linear, Int8Linear

    layer_shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # fused qkv, o, fused gate/up, down
    head = (49152, 576)
    gen = torch.Generator().manual_seed(0)
    out: dict = {}
    for kind in ("bf16", "int8", "int4_g128"):
        mods = []
        for shape in layer_shapes * 30 + [head]:
            w = torch.randn(*shape, generator=gen) * 0.02
            if kind == "bf16":
                mods.append(lambda x, w=w.bfloat16(): F.linear(x, w))
            elif kind == "int8":
                mods.append(Int8Linear.from_quant(rtn(w, 8, 0, True)).forward)
            else:
                mods.append(Int4Linear.from_quant(rtn(w, 4, 128, False)).forward)
        xs = {k: torch.randn(1, k, dtype=torch.bfloat16) for k in (576, 1536)}
        args = [xs[576 if shape[1] == 576 else 1536] for shape in layer_shapes * 30 + [head]]
        times = []
        for r in range(repeats + 3):
            t0 = time.perf_counter()
            for f, x in zip(mods, args):
                f(x)
            if r >= 3:
                times.append(time.perf_counter() - t0)
        out[kind] = {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
                     "max_ms": max(times) * 1e3, "repeats": repeats}
        del mods
    base = out["bf16"]["median_ms"]
    for kind in ("int8", "int4_g128"):
        out[kind]["speedup_vs_bf16"] = base / out[kind]["median_ms"]
    return {"what": "all 121 projections of one decode step (30 layers x fused qkv, o, fused gate/up, down, "
                    "plus lm_head), batch 1, bf16 activations", "per_token": out}


def main() -> None:
    """Quantize, save and reload each variant (perplexity), then measure decode speeds interleaved."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma list of variants (default: all)")
    ap.add_argument("--ppl-tokens", type=int, default=8192)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--scenario", default="128:64")
    ap.add_argument("--repeats", type=int, default=5, help="decode rounds (one repeat of every variant each)")
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--calib-seq", type=int, default=256)
    ap.add_argument("--kernels-only", action="store_true",
                    help="only (re)measure the matmul-kernel table and merge it into an existing quant.json")
    args = ap.parse_args()
    import torch

    result_path = Path(__file__).parent / "results" / "quant.json"
    if args.kernels_only:
        import json

        record = json.loads(result_path.read_text())
        record["kernels"] = kernel_times()
        record["kernels"]["machine"] = machine_info()
        write_json(result_path, portable(record))
        print(json.dumps(record["kernels"]["per_token"], indent=1))
        return

    from ridgeline.quant import CalibrationConfig

    names = args.only.split(",") if args.only else list(VARIANTS)
    text = load_corpus("eval").text
    ppl_cfg = PerplexityConfig(context=args.context, stride=args.context, batch_size=4, max_tokens=args.ppl_tokens)
    calib = CalibrationConfig(n_samples=args.calib_samples, seq_len=args.calib_seq)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="ridgeline-quant-bench-"))
    for name in names:
        opts = VARIANTS[name]
        row: dict = {"variant": name}
        if opts is None:
            path, dtype = "smollm2-135m", name
            model, tok = load_model(path, dtype)
            row.update(bytes=sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values()))
        else:
            model, tok = load_model("smollm2-135m", "fp32")
            config = make_config(**opts, calibration=calib)
            t0 = time.perf_counter()
            manifest = quantize_(model, config, tokenizer=tok)
            row["quantize_s"] = time.perf_counter() - t0
            path, dtype = str(tmp / name), "bf16"
            save_quantized(model, tok, path)
            del model
            gc.collect()
            model, tok = load_model(path, dtype)  # float parameters (embedding, norms) in bf16, as decode runs
            row.update(config=manifest["config"], formats=manifest["formats"], kernels=manifest["kernels"],
                       emulated=manifest["emulated"], bits_per_quantized_weight=manifest["bits_per_quantized_weight"],
                       bytes=manifest["quantized_bytes"] + manifest["float_params"] * 2)
        t0 = time.perf_counter()
        result = perplexity(model, tok, text, ppl_cfg)
        row.update(ppl=result.token_perplexity, ppl_tokens=result.tokens, ppl_s=time.perf_counter() - t0)
        del model
        gc.collect()
        row["path"], row["dtype"] = path, dtype
        rows.append(row)
        print(f"{name:24s} ppl {row['ppl']:8.3f}  {row['bytes'] / 1e6:7.1f} MB  quantize {row.get('quantize_s', 0):6.1f} s",
              flush=True)
    speeds = _decode_rounds({r["variant"]: (r.pop("path"), r.pop("dtype")) for r in rows}, args.scenario, args.repeats)
    for row in rows:
        row.update(speeds[row["variant"]])
        print(f"{row['variant']:24s} decode {row['decode_tokens_per_s']['median']:6.1f} tok/s "
              f"({row['decode_tokens_per_s']['min']:.1f}-{row['decode_tokens_per_s']['max']:.1f})", flush=True)
    by = {r["variant"]: r for r in rows}
    bf16 = by.get("bf16", {}).get("decode_tokens_per_s", {}).get("median")

    def speedup(v: str) -> float | None:
        return by[v]["decode_tokens_per_s"]["median"] / bf16 if bf16 and v in by else None

    targets = {
        "int8_weight_only_speedup": {v: speedup(v) for v in ("rtn-w8", "rtn-w8+head")}, "int8_target": 1.8,
        "int4_speedup": {v: speedup(v) for v in ("rtn-w4-g128", "rtn-w4-g128+head")}, "int4_target": 2.5,
        "gptq_ppl_below_rtn_w4_g128": (by["gptq-w4-g128"]["ppl"] < by["rtn-w4-g128"]["ppl"]
                                       if "gptq-w4-g128" in by and "rtn-w4-g128" in by else None),
        "gptq_w4_g128_seconds": by.get("gptq-w4-g128", {}).get("quantize_s"), "gptq_seconds_target": 300,
    }
    record = {
        "benchmark": "quant", "model": "smollm2-135m (bundled)", "threads": torch.get_num_threads(),
        "settings": vars(args), "corpus": corpus_info(), "rows": rows, "targets": targets,
        "note": "perplexity: held-out split, disjoint windows of `context` tokens; decode: torch backend (lean "
                "path), bf16 activations, median of repeats; quantized float parameters (embedding, norms) in "
                "bf16; 'emulated' rows dequantize then matmul (no kernel for that format here)",
        "machine": machine_info(),
    }
    record["kernels"] = kernel_times()
    out = write_json(result_path, portable(record))
    print(f"targets: {targets}\n-> {out}")


if __name__ == "__main__":
    main()
