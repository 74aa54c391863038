"""Replay a request trace through the engine in real time and summarise serving metrics.

Requests join at their arrival times (seconds after the start); between arrivals the engine steps
whenever it has work. Per request: time to first token (from its scheduled arrival), inter-token
latencies, end-to-end latency. Per step: batch composition and wall time, KV blocks in use and the slots
that hold KV, so waste = (allocated - used) / allocated slots.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ridgeline.arch import Variant
from ridgeline.engine.engine import Engine, EngineConfig, StepStats
from ridgeline.engine.trace import TraceRequest, prompt_tokens
from ridgeline.errors import RidgelineError, Terminated


@dataclass(frozen=True)
class ServeResult:
    """Everything a replay measured: per-request timelines and per-step statistics."""

    requests: list[dict]  # id, arrival, prompt_tokens, output_tokens, ttft_s, itl_s, e2e_s, finish_reason
    steps: list[StepStats]
    seconds: float  # first arrival to last token
    block_size: int
    num_blocks: int
    kv_bytes_per_slot: int
    preemptions: int
    prefix_hits: int
    prefix_queries: int
    interrupted: bool = False


def replay(engine: Engine, trace: Sequence[TraceRequest], prompts: Sequence[Sequence[int]],
           progress: Callable[[int, int], None] | None = None, realtime: bool = True) -> ServeResult:
    """Feed `trace` (with its prompt ids) to `engine` at the arrival times; step until all finish.

    With `realtime` False every request is queued at once (offline throughput). Ctrl-C stops the replay
    and returns what finished, marked `interrupted`.
    """
    order = sorted(range(len(trace)), key=lambda i: trace[i].arrival)
    ids: dict[str, int] = {}
    t0 = time.perf_counter()
    nxt, done, interrupted = 0, 0, False
    try:
        while nxt < len(order) or engine.has_work():
            now = time.perf_counter() - t0
            while nxt < len(order) and (not realtime or trace[order[nxt]].arrival <= now):
                i = order[nxt]
                rid = engine.add_request(prompts[i], trace[i].params(), request_id=trace[i].request_id or f"r{i}",
                                         arrival=t0 + (trace[i].arrival if realtime else 0.0))
                ids[rid] = i
                nxt += 1
            if engine.has_work():
                for out in engine.step():
                    if out.finish_reason is not None and engine.pending[out.request_id] == 0:
                        done += 1
                        if progress is not None:
                            progress(done, len(trace))
            else:
                time.sleep(max(0.0, trace[order[nxt]].arrival - (time.perf_counter() - t0)))
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):  # SIGTERM stops the run; only Ctrl-C returns what finished
            raise
        interrupted = True
    rows = []
    for rid, seqs in engine.finished.items():
        for s in seqs:
            times = s.token_times
            rows.append({"id": rid, "sample": s.index, "arrival_s": s.arrival - t0, "prompt_tokens": s.prompt_len,
                         "output_tokens": len(s.output), "ttft_s": times[0] - s.arrival,
                         "itl_s": [b - a for a, b in zip(times, times[1:])], "e2e_s": times[-1] - s.arrival,
                         "finish_reason": s.finish_reason})
    end = max((s.token_times[-1] for seqs in engine.finished.values() for s in seqs), default=t0)
    c = engine.cache
    return ServeResult(rows, list(engine.stats), end - t0, engine.config.block_size, engine.config.num_blocks,
                       c.nbytes // (engine.config.num_blocks * engine.config.block_size), engine.preemptions,
                       engine.blocks.hits, engine.blocks.queries, interrupted)


def _pct(xs: Sequence[float]) -> dict[str, float | None]:
    if not len(xs):
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    a = np.asarray(xs, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def summarize(r: ServeResult) -> dict[str, Any]:
    """Throughput, latency percentiles, KV memory in use and waste of a replay."""
    out_tokens = sum(x["output_tokens"] for x in r.requests)
    B = r.block_size
    alloc = np.array([s.blocks_used * B for s in r.steps], dtype=np.float64)
    used = np.array([s.slots_used for s in r.steps], dtype=np.float64)
    held = np.array([max(s.blocks_held, s.blocks_used) * B for s in r.steps], dtype=np.float64)
    busy = alloc > 0
    waste = float((alloc[busy] - used[busy]).sum() / alloc[busy].sum()) if busy.any() else 0.0
    return {
        "requests": len({x["id"] for x in r.requests}),
        "output_tokens": out_tokens,
        "prompt_tokens": sum(x["prompt_tokens"] for x in r.requests if x["sample"] == 0),
        "seconds": r.seconds,
        "throughput_tokens_per_s": out_tokens / r.seconds if r.seconds > 0 else None,
        "requests_per_s": len(r.requests) / r.seconds if r.seconds > 0 else None,
        "ttft_s": _pct([x["ttft_s"] for x in r.requests]),
        "itl_s": _pct([t for x in r.requests for t in x["itl_s"]]),
        "e2e_s": _pct([x["e2e_s"] for x in r.requests]),
        "steps": len(r.steps),
        "step_s": _pct([s.seconds for s in r.steps]),
        "max_running": max((s.running for s in r.steps), default=0),
        "kv_pool_bytes": r.num_blocks * B * r.kv_bytes_per_slot,
        # held while each step ran (a request finishing in its only step still held its blocks then)
        "kv_in_use_bytes": {"peak": float(held.max(initial=0) * r.kv_bytes_per_slot),
                            "mean": float(held[held > 0].mean() * r.kv_bytes_per_slot) if (held > 0).any() else 0.0},
        # slot-weighted over the busy steps: (allocated - holding KV) / allocated
        "kv_waste": waste,
        "preemptions": r.preemptions,
        "prefix_cache_hit_rate": r.prefix_hits / r.prefix_queries if r.prefix_queries else None,
        "interrupted": r.interrupted,
    }


def decode_points(steps: Sequence[StepStats]) -> list[dict[str, Any]]:
    """Decode-only steps grouped by batch size: count, median and spread of the step time, mean context."""
    groups: dict[int, list[StepStats]] = {}
    for s in steps:
        if s.decode_seqs and not s.prefill_tokens:
            groups.setdefault(s.decode_seqs, []).append(s)
    out = []
    for b, ss in sorted(groups.items()):
        t = np.array([s.seconds for s in ss])
        out.append({"batch": b, "steps": len(ss), "step_s": float(np.median(t)), "step_s_min": float(t.min()),
                    "step_s_max": float(t.max()), "mean_context": float(np.mean([s.decode_context / b for s in ss]))})
    return out


def place_decode_points(points: Sequence[dict[str, Any]], spec: Any, precision: Any, device: Any) -> list[dict]:
    """Each batch size's measured decode step beside the roofline's prediction of the same batch decode step.

    The step is the Workload of `Scenario(prompt=mean context, generate=1, batch=B)`'s decode phase: the
    same FLOPs and bytes `ridgeline analyze --batch B` counts, so measured and analytic points share an
    intensity and differ only in FLOP/s.
    """
    from ridgeline.roofline import build_workload, evaluate
    from ridgeline.specs import Scenario

    out = []
    for p in points:
        sc = Scenario(max(1, round(p["mean_context"])), 1, batch=p["batch"])
        dec = evaluate(build_workload(spec, sc, precision), device).decode
        out.append({**p, "flops": dec.flops, "bytes": dec.bytes, "intensity": dec.intensity,
                    "predicted_step_s": dec.time_s, "bound": dec.bound,
                    "achieved_flops": dec.flops / p["step_s"], "phi": dec.time_s / p["step_s"]})
    return out


def serve_record(result: ServeResult, config: Any, model_name: str, dtype: str, trace_info: dict,
                 placed: list[dict] | None = None, variant: Variant | None = None) -> dict[str, Any]:
    """The JSON record of a serve-bench run: every parameter that produced it, the summary and the raw data."""
    import torch

    from ridgeline.measure import machine_info

    variant = variant or Variant()
    return {
        "kind": "ridgeline.serve.results",
        "model": model_name, "dtype": dtype, "trace": trace_info,
        "transforms": {"window": variant.window, "kv_heads": variant.kv_heads},
        "engine": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "machine": {**machine_info(), "threads": torch.get_num_threads()},
        "summary": summarize(result),
        "decode_roofline": placed if placed is not None else decode_points(result.steps),
        "requests": result.requests,
        "steps": [dataclasses.asdict(s) for s in result.steps],
    }


@dataclass(frozen=True)
class ServeRun:
    """A served trace: the replay's measurements, the decode steps placed on a roofline, and the JSON record."""

    result: ServeResult
    placed: list[dict] | None
    record: dict[str, Any]


def _check_before_loading(model: str, trace: Sequence[TraceRequest], config: EngineConfig, dtype: str,
                          variant: Variant) -> None:
    """From the model's shapes alone: token ids inside its vocabulary, requests inside its positions, and a KV
    pool that fits in memory."""
    from ridgeline.engine.trace import check_trace
    from ridgeline.loader import check_fits, check_model

    spec = check_model(model)
    if spec is None:  # a hub id: checked once loaded
        return
    spec = variant.apply_spec(spec)
    check_trace(trace, spec.vocab, spec.max_position)
    per_slot = sum(spec.kv_elements_per_token(layer) for layer in spec.layers) * (4 if dtype == "fp32" else 2)
    check_fits(per_slot * config.num_blocks * config.block_size,
               f"a KV pool of {config.num_blocks} blocks of {config.block_size} tokens")


def serve_trace(model: str, trace: Sequence[TraceRequest], *, config: EngineConfig | None = None,
                dtype: str = "fp32", variant: Variant | None = None, device: Any = None, realtime: bool = True,
                threads: int | None = None, trace_info: dict | None = None,
                progress: Callable[[int, int], None] | None = None) -> ServeRun:
    """Load `model`, serve `trace` through a paged-KV engine and summarise it (what `ridgeline serve-bench` does).

    Every request is checked against the pool before anything runs; `device` (a DeviceSpec) places the
    decode-only steps on its roofline; `variant` pools K/V heads or sets a sliding window before serving.
    """
    from ridgeline.corpus import prompt_text
    from ridgeline.loader import load_model
    from ridgeline.measure import Watch, torch_threads
    from ridgeline.specs import Precision, load_spec

    config, variant = config or EngineConfig(), variant or Variant()
    if dtype not in ("fp32", "bf16"):
        raise RidgelineError(f"dtype must be fp32 or bf16, got {dtype!r}")
    if variant.kv is not None:
        raise RidgelineError("the engine stores KV blocks in the model's dtype; --kv formats run in bench and eval")
    variant.check(dtype)
    _check_before_loading(model, trace, config, dtype, variant)
    with torch_threads(threads):
        lm, tok = load_model(model, dtype)
        lm = variant.apply(lm)
        encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        corpus = encode(prompt_text())
        prompts = [prompt_tokens(r, encode, corpus, offset=97 * i) for i, r in enumerate(trace)]
        engine = Engine(lm, config)
        for i, (r, p) in enumerate(zip(trace, prompts)):  # refuse the whole trace before running any of it
            engine.check_request(p, r.params(), f"request {r.request_id or i + 1}")
        with Watch() as watch:
            result = replay(engine, trace, prompts, progress, realtime=realtime)
        placed = None
        if device is not None:
            spec = variant.apply_spec(load_spec(model))
            placed = place_decode_points(decode_points(result.steps), spec, Precision(dtype, dtype, dtype), device)
        record = serve_record(result, config, model, dtype, trace_info or {}, placed, variant)
        record["contention"] = watch.result.to_json()
    return ServeRun(result, placed, record)
