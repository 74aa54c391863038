"""Serving throughput on the bundled model: ridgeline's paged-KV engine vs transformers' continuous batching
(the `generate_batch` manager) vs sequential `generate`, on one synthetic trace, in one run.

All three serve the same requests (same prompts, same per-request output lengths, EOS ignored so every
system does the same work) queued at once: throughput = generated tokens / wall time, after a warm-up,
over `--repeats` rounds (engine and generate_batch alternate within a round; sequential generate, the
slow baseline, runs `--seq-repeats` times); median, min and max are reported. Then the engine
replays the trace in real time (Poisson arrivals) for TTFT / inter-token latency percentiles, KV memory
in use and waste. Greedy outputs of the three systems are compared token for token.

Targets (benchmark, not test): engine throughput >= generate_batch; KV waste < 4 %.
Writes benchmarks/results/serve.json.
Run: .venv/bin/python benchmarks/serve.py [--requests 24] [--rate 0.5] [--dtype fp32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from common import machine_info  # noqa: E402

from ridgeline.engine import Engine, EngineConfig, replay, summarize, synthetic_trace  # noqa: E402
from ridgeline.engine.serve import decode_points, place_decode_points  # noqa: E402
from ridgeline.engine.trace import prompt_tokens  # noqa: E402
from ridgeline.io import write_json  # noqa: E402
from ridgeline.loader import load_model  # noqa: E402
from ridgeline.corpus import prompt_text  # noqa: E402

OUT = Path(__file__).parent / "results" / "serve.json"


def run_engine(model, prompts, trace, config: EngineConfig, realtime: bool) -> tuple[dict, list[list[int]], object]:
    engine = Engine(model, config)
    result = replay(engine, trace, prompts, realtime=realtime)
    outs = [list(engine.completion(r.request_id).token_ids) for r in trace]
    return summarize(result), outs, result


def run_generate_batch(model, prompts, trace, block_size: int, num_blocks: int, max_batch_tokens: int):
    """transformers' continuous batching: the manager `generate_batch` drives, fed per-request lengths."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    gc = GenerationConfig(do_sample=False, max_new_tokens=max(r.max_tokens for r in trace), eos_token_id=None,
                          pad_token_id=0)
    cbc = ContinuousBatchingConfig(page_size=block_size, num_blocks=num_blocks, max_batch_tokens=max_batch_tokens)
    t0 = time.perf_counter()
    with model.continuous_batching_context_manager(generation_config=gc, continuous_batching_config=cbc,
                                                    block=True, timeout=5) as manager:
        ids = [manager.add_request(p, request_id=r.request_id, max_new_tokens=r.max_tokens)
               for p, r in zip(prompts, trace)]
        results = {}
        while len(results) < len(ids):
            res = manager.get_result(timeout=1)
            if res is not None and res.is_finished():
                results[res.request_id] = res
            elif res is None and not manager.is_running():
                raise RuntimeError("transformers' continuous batching thread stopped")
    seconds = time.perf_counter() - t0
    outs = [list(results[i].generated_tokens) for i in ids]
    return seconds, outs


def run_sequential(model, prompts, trace):
    t0 = time.perf_counter()
    outs = []
    for p, r in zip(prompts, trace):
        out = model.generate(torch.tensor([p]), max_new_tokens=r.max_tokens, min_new_tokens=r.max_tokens,
                             do_sample=False, pad_token_id=0)
        outs.append(out[0, len(p):].tolist())
    return time.perf_counter() - t0, outs


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    """Requests whose outputs are identical, and the mean length of the common prefix (float near-ties)."""
    same = sum(x == y for x, y in zip(a, b))
    prefix = []
    for x, y in zip(a, b):
        k = 0
        while k < min(len(x), len(y)) and x[k] == y[k]:
            k += 1
        prefix.append(k / max(1, len(x)))
    return {"identical_requests": same, "requests": len(a), "mean_common_prefix": sum(prefix) / len(prefix)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--rate", type=float, default=0.5, help="arrivals per second for the real-time replay")
    ap.add_argument("--prompt-len", default="32:512")
    ap.add_argument("--output-len", default="16:128")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--num-blocks", type=int, default=1024)
    ap.add_argument("--max-batched-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of engine and generate_batch")
    ap.add_argument("--seq-repeats", type=int, default=1, help="rounds of sequential generate")
    ap.add_argument("--device", default="local", help="roofline for the decode steps ('' to skip)")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    plen = tuple(int(x) for x in a.prompt_len.split(":"))
    olen = tuple(int(x) for x in a.output_len.split(":"))
    trace = synthetic_trace(a.requests, a.rate, plen, olen, seed=0)
    model, tok = load_model("smollm2-135m", a.dtype)
    encode = lambda t: tok(t, add_special_tokens=False)["input_ids"]
    corpus = encode(prompt_text())
    prompts = [prompt_tokens(r, encode, corpus, offset=97 * i) for i, r in enumerate(trace)]
    config = EngineConfig(num_blocks=a.num_blocks, block_size=a.block_size, max_batched_tokens=a.max_batched_tokens,
                          max_num_seqs=64)
    tokens = sum(r.max_tokens for r in trace)
    print(f"{len(trace)} requests, {sum(map(len, prompts))} prompt tokens, {tokens} to generate", file=sys.stderr)

    # warm-up: one short request through each system (allocator, kernels, the manager's thread)
    warm = trace[:2]
    run_engine(model, prompts[:2], warm, config, realtime=False)
    run_generate_batch(model, prompts[:2], warm, a.block_size, a.num_blocks, a.max_batched_tokens)

    times: dict[str, list[float]] = {"engine": [], "generate_batch": [], "sequential_generate": []}
    for i in range(max(a.repeats, a.seq_repeats)):
        if i < a.repeats:
            print(f"round {i + 1}: engine (offline) ...", file=sys.stderr)
            t0 = time.perf_counter()
            eng_summary, eng_out, _ = run_engine(model, prompts, trace, config, realtime=False)
            times["engine"].append(time.perf_counter() - t0)
            print(f"round {i + 1}: transformers generate_batch ...", file=sys.stderr)
            gb_s, gb_out = run_generate_batch(model, prompts, trace, a.block_size, a.num_blocks, a.max_batched_tokens)
            times["generate_batch"].append(gb_s)
        if i < a.seq_repeats:
            print(f"round {i + 1}: sequential generate ...", file=sys.stderr)
            seq_s, seq_out = run_sequential(model, prompts, trace)
            times["sequential_generate"].append(seq_s)
    produced = {"engine": sum(map(len, eng_out)), "generate_batch": sum(map(len, gb_out)),
                "sequential_generate": sum(map(len, seq_out))}
    rows = {}
    for k, ts in times.items():
        tput = sorted(produced[k] / t for t in ts)
        rows[k] = {"seconds": statistics.median(ts), "seconds_samples": ts, "output_tokens": produced[k],
                   "throughput_tokens_per_s": statistics.median(tput), "throughput_min": tput[0],
                   "throughput_max": tput[-1], "repeats": len(ts)}
    rows["engine"]["last_run"] = eng_summary
    print("engine (real-time replay) ...", file=sys.stderr)
    rt_summary, _, rt_result = run_engine(model, prompts, trace, config, realtime=True)
    points = decode_points(rt_result.steps)
    if a.device:
        from ridgeline.specs.device import get_device
        from ridgeline.specs import load_spec
        from ridgeline.specs.scenario import Precision

        points = place_decode_points(points, load_spec("smollm2-135m"), Precision(a.dtype, a.dtype, a.dtype),
                                     get_device(a.device))
    eng, gb = rows["engine"]["throughput_tokens_per_s"], rows["generate_batch"]["throughput_tokens_per_s"]
    record = {
        "benchmark": "serve", "machine": machine_info(), "model": "smollm2-135m", "dtype": a.dtype,
        "trace": {"requests": a.requests, "rate": a.rate, "prompt_len": plen, "output_len": olen, "seed": 0,
                  "prompt_tokens": sum(map(len, prompts)), "output_tokens": tokens},
        "engine_config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "throughput": rows,
        "engine_vs_generate_batch": eng / gb,
        "engine_vs_sequential": eng / rows["sequential_generate"]["throughput_tokens_per_s"],
        "outputs": {"engine_vs_sequential": agreement(eng_out, seq_out),
                    "generate_batch_vs_sequential": agreement(gb_out, seq_out)},
        "repeats": {"engine_and_generate_batch": a.repeats, "sequential_generate": a.seq_repeats, "warmup": 1},
        "realtime_replay": rt_summary,
        "decode_steps_on_roofline": points,
        "targets": {"engine_throughput_ge_generate_batch": eng >= gb,
                    "kv_waste_below_4pct": rt_summary["kv_waste"] < 0.04 and eng_summary["kv_waste"] < 0.04},
        "kv_waste": {"offline": eng_summary["kv_waste"], "realtime": rt_summary["kv_waste"]},
    }
    write_json(a.out, record)
    for k, r in rows.items():
        print(f"{k:22s} {r['throughput_tokens_per_s']:7.1f} tok/s ({r['throughput_min']:.1f}-{r['throughput_max']:.1f}, "
              f"{r['repeats']} runs, median {r['seconds']:.1f} s)")
    print(f"engine / generate_batch = {eng / gb:.2f}x; waste offline {eng_summary['kv_waste']:.2%}, "
          f"real-time {rt_summary['kv_waste']:.2%}; wrote {a.out}")


if __name__ == "__main__":
    main()
