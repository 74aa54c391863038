"""The survey's speedup table, measured: every technique ridgeline implements, from the committed benchmark records,
with the roofline's prediction for this machine and the projection to the seed devices and the simulated Harmonia
design (`ridgeline.report.techniques`; `ridgeline techniques` prints the same table).

Default: no timing at all — reads benchmarks/results/*.json (quant, kv, serve, native, accel, and medusa, compress,
distill, combos when present; a missing or partial record becomes its rows' reason) and writes
benchmarks/results/techniques.json: the flat rows (every value or the reason it is absent; `sources` traces every
number to `file.json:key.path` or to the roofline's inputs), the full rows, the technique x device matrix, the
records read (with their machines and dates) and this machine and its versions.

`--measure` (opt-in, a few minutes; takes /tmp/ridgeline-timing.lock itself, so do not wrap it in flock) first
measures the three combinations the survey suggests, which no other record has, each in `--rounds` interleaved
rounds (the order rotates; median, min and max over rounds), and writes benchmarks/results/combos.json, which the
table then reads:
- SWA (W = 512) + GQA (1 KV head) against the unchanged model, fp32, 2048:32, on ridgeline's torch path (one timed
  repeat per round after one warm-up) -> `rows`;
- an int8 model in the paged engine -> `int8_paged`: one synthetic trace (`--serve-requests` requests, prompts
  16-128 and outputs 8-32 tokens, queued at once) served by sequential transformers `generate` of the fp32 model
  (the baseline), by the engine with the fp32 model, and by the engine with the same model after RTN int8
  (weight-only, per channel: `_weight_int8pack_mm`, as benchmarks/quant.py's rtn-w8); output tokens/s;
- Medusa on an int8 model -> `medusa_int8`: plain greedy of the fp32 model (the baseline), plain greedy of the int8
  model and Medusa greedy on the int8 model, on the lean path, over `--medusa-prompts` held-out prompts x
  `--medusa-tokens` tokens; decode tok/s and tokens per step. The heads in `--heads-dir` (benchmarks/medusa.py
  trains them) are checked against the fp32 model and reused unchanged on its int8 quantization; the tree is chosen
  from the int8 verifier's own cost curve. Without heads the part records why instead.

Run: .venv/bin/python benchmarks/techniques.py [--measure] [--rounds 3] [--threads 2] [--results DIR] [--out PATH]
                                               [--serve-requests 16] [--medusa-prompts 2] [--medusa-tokens 64]
                                               [--heads-dir ~/.cache/ridgeline/medusa/smollm2-135m-heads]
     .venv/bin/python benchmarks/techniques.py --markdown   # the README's table, from --out
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import LOCK, machine_info, record_path, say, timing_lock, uptime  # noqa: E402

from ridgeline.io import user_dir, write_json  # noqa: E402
from ridgeline.report import build_techniques, read_records, techniques_json, techniques_markdown  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2-135m"
HEADS = user_dir() / "medusa" / f"{MODEL}-heads"  # where benchmarks/medusa.py keeps them






def measure_swa_gqa(rounds: int, threads: int | None) -> dict:
    """SWA + GQA against the unchanged model, interleaved rounds; combos.json's `rows`."""
    from ridgeline.arch import Variant
    from ridgeline.measure import BenchConfig, run_bench
    from ridgeline.specs import Scenario

    variants = {"base": Variant(), "swa512+gqa1": Variant(window=512, kv_heads=1)}
    samples: dict[str, list[dict]] = {k: [] for k in variants}
    impls: dict[str, str] = {}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            say(f"round {r + 1}/{rounds}: {name}")
            # both on transformers' forward: a window needs its rolling-buffer cache there, and with the default
            # impl the unchanged model ran on the native kernels, so the ratio measured the path, not SWA + GQA
            rec = run_bench(BenchConfig(MODEL, "torch", Scenario(2048, 32), "fp32", threads=threads, repeats=1,
                                        warmup=1, variant=variants[name], impl="hf"))
            impls[name] = rec.impl
            samples[name].append({"ttft_s": rec.ttft.median, "decode_tokens_per_s": rec.decode_tokens_per_s.median})
    rows = []
    for name, xs in samples.items():
        row = {"variant": name, "impl": impls[name], "rounds": rounds}
        for key in ("ttft_s", "decode_tokens_per_s"):
            vals = [x[key] for x in xs]
            row[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "samples": vals}
        rows.append(row)
    return {"benchmark": "combos", "model": MODEL, "dtype": "fp32", "scenario": "2048:32", "rows": rows,
            "note": "interleaved rounds (order alternates), one timed repeat per round after one warm-up; "
                    "model load excluded"}


def _stat(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "samples": xs}


def _rotations(names: list[str], rounds: int):
    """(round, system) in interleaved order: the order rotates each round, so no system always runs first."""
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            yield r, name


def int8_models(heads_dir: Path) -> tuple:
    """The fp32 model, a second copy quantized in memory with RTN int8, the tokenizer, the int8 manifest, and the
    Medusa heads attached to the int8 copy (checked against it while still fp32) or why there are none."""
    from ridgeline.errors import RidgelineError
    from ridgeline.engine import load_heads
    from ridgeline.loader import load_model
    from ridgeline.quant import make_config, quantize_

    fp32, tok = load_model(MODEL, "fp32")
    int8, _ = load_model(MODEL, "fp32")
    for m in (fp32, int8):
        m.requires_grad_(False)
    heads, why = None, None
    if not (heads_dir / "medusa.json").is_file():
        why = f"no Medusa heads in {heads_dir} (train them with benchmarks/medusa.py)"
    else:
        try:  # the weights-hash check needs the unquantized weights; lm_head stays fp32, so the heads still fit
            heads = load_heads(heads_dir, int8)
        except RidgelineError as exc:
            why = f"the heads in {heads_dir} cannot be used: {exc}"
    manifest = quantize_(int8, make_config("rtn", bits=8))  # the same config as benchmarks/quant.py's rtn-w8
    return fp32, int8, tok, manifest, heads, why


def measure_int8_paged(fp32, int8, tok, manifest: dict, rounds: int, requests: int) -> dict:
    """The same trace through sequential generate (fp32), the engine (fp32) and the engine (int8); combos.json's
    `int8_paged`."""
    from serve import agreement, run_engine, run_sequential

    from ridgeline.corpus import prompt_text
    from ridgeline.engine import EngineConfig, synthetic_trace
    from ridgeline.engine.trace import prompt_tokens
    from ridgeline.quant import param_bytes

    plen, olen = (16, 128), (8, 32)
    trace = synthetic_trace(requests, 1.0, plen, olen, seed=0)  # arrivals unused: every request is queued at once
    encode = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    corpus = encode(prompt_text())
    prompts = [prompt_tokens(r, encode, corpus, offset=97 * i) for i, r in enumerate(trace)]
    config = EngineConfig(num_blocks=512, block_size=16, max_batched_tokens=512, max_num_seqs=64)

    def engine(model):
        t0 = time.perf_counter()
        _, outs, _ = run_engine(model, prompts, trace, config, realtime=False)
        return time.perf_counter() - t0, outs

    systems = {"fp32_sequential_generate": lambda: run_sequential(fp32, prompts, trace),
               "fp32_engine": lambda: engine(fp32), "int8_engine": lambda: engine(int8)}
    say("int8 in the paged engine: warm-up")
    run_sequential(fp32, prompts[:1], trace[:1])
    for model in (fp32, int8):
        run_engine(model, prompts[:2], trace[:2], config, realtime=False)
    seconds: dict[str, list[float]] = {k: [] for k in systems}
    outputs: dict[str, list[list[int]]] = {}
    for r, name in _rotations(list(systems), rounds):
        say(f"round {r + 1}/{rounds}: {name}")
        s, outputs[name] = systems[name]()
        seconds[name].append(s)
    rows = []
    for name, ts in seconds.items():
        produced = sum(map(len, outputs[name]))
        rows.append({"system": name, "output_tokens": produced, "seconds": _stat(ts),
                     "throughput_tokens_per_s": _stat([produced / t for t in ts])})
    tput = {row["system"]: row["throughput_tokens_per_s"]["median"] for row in rows}
    return {"baseline": "fp32_sequential_generate", "variant": "rtn-w8", "quant_config": manifest["config"],
            "kernels": manifest["kernels"], "emulated": manifest["emulated"],
            "trace": {"requests": requests, "prompt_len": plen, "output_len": olen, "seed": 0, "queued": "at once",
                      "prompt_tokens": sum(map(len, prompts)), "output_tokens": sum(r.max_tokens for r in trace)},
            "engine_config": {k: getattr(config, k) for k in config.__dataclass_fields__},
            "weights_bytes": {"fp32": param_bytes(fp32),
                              "int8": manifest["quantized_bytes"] + manifest["float_params"] * 4},
            "rows": rows,
            "int8_engine_vs_fp32_sequential": tput["int8_engine"] / tput["fp32_sequential_generate"],
            "int8_engine_vs_fp32_engine": tput["int8_engine"] / tput["fp32_engine"],
            "fp32_engine_vs_fp32_sequential": tput["fp32_engine"] / tput["fp32_sequential_generate"],
            "outputs": {"fp32_engine_vs_sequential": agreement(outputs["fp32_engine"],
                                                               outputs["fp32_sequential_generate"]),
                        "int8_engine_vs_fp32_engine": agreement(outputs["int8_engine"], outputs["fp32_engine"])},
            "note": "throughput = generated tokens / wall time of the whole trace (engine construction included); "
                    "the int8 model keeps its embedding, norms and tied lm_head in fp32 and runs its linear layers "
                    "through torch's int8 weight-only kernel; the KV pool is fp32 for both"}


def measure_medusa_int8(fp32, int8, tok, heads, rounds: int, prompts: int, tokens: int,
                        prompt_len: int = 64) -> dict:
    """Plain greedy (fp32, int8) and Medusa greedy (int8) on the lean path; combos.json's `medusa_int8`."""
    from medusa import held_out_prompts, make_verifier, plain_greedy, spec_run, summarize_system

    from ridgeline.engine import medusa_decoder
    from ridgeline.measure import prompt_ids

    heads_mod, manifest = heads
    max_len = prompt_len + tokens + 64
    v32, v8 = make_verifier("lean", fp32, max_len), make_verifier("lean", int8, max_len)
    encode = lambda t: tok(t, add_special_tokens=False).input_ids  # noqa: E731
    say("Medusa on int8: the tree from the int8 verifier's cost curve")
    decoder = medusa_decoder(v8, heads_mod, manifest, prompt_ids(encode, prompt_len + tokens // 2), "auto:24")
    held = held_out_prompts(tok, prompts, prompt_len)
    systems = {"fp32_greedy": lambda p, n: plain_greedy(v32, p, n), "int8_greedy": lambda p, n: plain_greedy(v8, p, n),
               "int8_medusa_greedy": lambda p, n: spec_run(decoder, p, n)}
    for name in systems:  # warm-up: one short run each
        systems[name](held[0], 16)
    runs: dict[str, list[list[dict]]] = {k: [] for k in systems}
    for r, name in _rotations(list(systems), rounds):
        say(f"round {r + 1}/{rounds}: {name}")
        runs[name].append([systems[name](p, tokens) for p in held])
    int8_tokens = [x["tokens"] for x in runs["int8_greedy"][0]]
    rows = [{"system": name, **summarize_system(runs[name], int8_tokens if name == "int8_medusa_greedy" else None)}
            for name in systems]
    rate = {row["system"]: row["decode_tokens_per_s"]["median"] for row in rows}
    medusa = next(row for row in rows if row["system"] == "int8_medusa_greedy")
    k, depth = int(decoder.info["verify_tokens"]), int(decoder.info["tree_depth"])
    return {"baseline": "fp32_greedy", "path": "lean", "variant": "rtn-w8", "prompts": prompts,
            "prompt_len": prompt_len, "tokens": tokens,
            "heads": {"trained_for": manifest.get("base", {}).get("name"), "heads": manifest["heads"],
                      "note": "trained on the fp32 model (weights hash checked) and reused unchanged on its int8 "
                              "quantization"},
            "tree": {key: decoder.info.get(key) for key in ("tree", "verify_tokens", "tree_depth",
                                                             "expected_tokens_per_step")},
            "rows": rows,
            "int8_medusa_vs_fp32_greedy": rate["int8_medusa_greedy"] / rate["fp32_greedy"],
            "int8_medusa_vs_int8_greedy": rate["int8_medusa_greedy"] / rate["int8_greedy"],
            "int8_greedy_vs_fp32_greedy": rate["int8_greedy"] / rate["fp32_greedy"],
            # what the roofline predicts with (tokens verified, tokens per step, heads run per step)
            "speculation": {"tokens": k, "accepted": min(float(k), medusa["tokens_per_step"]), "heads": depth},
            "note": "decode tok/s = tokens after the first / time after the prefill, per round over the prompts; "
                    "tokens per step count the base's own token; identical_to_greedy compares Medusa's output with "
                    "the int8 model's plain greedy output"}


def measure_combos(rounds: int, threads: int | None, requests: int = 16, medusa_prompts: int = 2,
                   medusa_tokens: int = 64, heads_dir: Path = HEADS) -> dict:
    """Every combination, interleaved rounds each; the combos.json record."""
    from ridgeline.measure import torch_threads

    record = measure_swa_gqa(rounds, threads)
    with torch_threads(threads) as used:
        fp32, int8, tok, manifest, heads, why = int8_models(heads_dir)
        record["threads"] = used
        record["int8_paged"] = measure_int8_paged(fp32, int8, tok, manifest, rounds, requests)
        if heads is None:
            say(f"Medusa on int8: not measured ({why})")
            record["medusa_int8"] = {"reason": why}
        else:
            record["medusa_int8"] = measure_medusa_int8(fp32, int8, tok, heads, rounds, medusa_prompts, medusa_tokens)
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, default=RESULTS / "techniques.json")
    ap.add_argument("--measure", action="store_true",
                    help="measure the combinations first (a few minutes; takes the timing lock)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--serve-requests", type=int, default=16, help="requests in the int8 paged-engine trace")
    ap.add_argument("--medusa-prompts", type=int, default=2, help="held-out prompts per round for Medusa on int8")
    ap.add_argument("--medusa-tokens", type=int, default=64, help="tokens generated per prompt for Medusa on int8")
    ap.add_argument("--heads-dir", type=Path, default=HEADS, help="Medusa heads of the bundled model")
    ap.add_argument("--markdown", action="store_true", help="print --out's table as Markdown (the README's) and stop")
    a = ap.parse_args()
    if a.markdown:
        import json

        print(techniques_markdown(json.loads(a.out.read_text())), end="")
        return
    start = {"uptime": uptime(), "machine": machine_info()}
    if a.measure:
        with timing_lock():
            before = uptime()
            combos = measure_combos(a.rounds, a.threads, a.serve_requests, a.medusa_prompts, a.medusa_tokens,
                                    a.heads_dir)
            combos |= {"machine": machine_info(), "uptime_before": before, "uptime_after": uptime(),
                       "timing_lock": LOCK}
        write_json(a.results / "combos.json", combos)
        say(f"wrote {a.results / 'combos.json'}")
    records = read_records(a.results)
    table = build_techniques(records)
    record = {"benchmark": "techniques", "machine": start["machine"], "uptime": start["uptime"],
              "results_folder": record_path(a.results),
              "records_read": {name: {"machine": rec.get("machine", {}).get("cpu") if isinstance(rec.get("machine"),
                                                                                                  dict) else None,
                                      "date": rec.get("machine", {}).get("date") if isinstance(rec.get("machine"),
                                                                                                dict) else None,
                                      "complete": rec.get("complete", True)}
                               for name, rec in records.items()},
              **techniques_json(table)}
    write_json(a.out, record)
    say(f"wrote {a.out}: {len(table.rows)} techniques, predicted on {table.host or table.host_why}")
    for r in table.rows:
        say(f"{r.technique:58s} measured {r.measured_headline if r.measured_headline is not None else '-'!s:>8.8s} "
            f"seed {r.literature}")


if __name__ == "__main__":
    main()
