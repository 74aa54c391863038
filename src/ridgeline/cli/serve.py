"""`ridgeline serve-bench`: a request trace through the paged-KV continuous-batching engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ridgeline.cli.common import (DEVICE_FILE, app, check_outputs, command, console, device_files, dumps, err_console,
                                  finite, say, token_range, write_record, writing)
from ridgeline.cli.progress import progress
from ridgeline.errors import RidgelineError


def serve_plot(placed: list[dict], dev: Any, dtype: str, stem: Path, model: str) -> list[Path]:
    """Measured engine decode steps and the analytic batch-decode points on the device roofline."""
    from ridgeline.report import Point, Roof, plot_roofline

    if not placed:
        return []
    roofs = [Roof(f"{dev.name} {dtype}", dev.bandwidth_Bps, dev.peak_flops.get(dtype) or max(dev.peak_flops.values()))]
    points = [Point(f"B={p['batch']}", p["intensity"], p["flops"] / p["predicted_step_s"],
                    "analytic decode (analyze --batch B)") for p in placed]
    points += [Point(f"B={p['batch']}", p["intensity"], p["achieved_flops"], f"measured engine {dtype}")
               for p in placed]
    with writing(stem):
        return plot_roofline(roofs, points, stem, title=f"{model}: engine decode steps by batch size")


def _trace(requests: Optional[Path], synthetic: Optional[int], rate: float, prompt_len: str, output_len: str,
           seed: int) -> tuple[list, dict]:
    """The trace (read from --requests, or synthetic) and its description for the record."""
    from ridgeline.engine import load_trace, synthetic_trace

    if requests is not None:
        return load_trace(requests), {"file": str(requests)}
    plen, olen = token_range(prompt_len, "--prompt-len"), token_range(output_len, "--output-len")
    trace = synthetic_trace(synthetic, rate, plen, olen, seed)
    return trace, {"synthetic": synthetic, "rate": rate, "prompt_len": plen, "output_len": olen, "seed": seed}


@app.command("serve-bench")
@command
def serve_bench(
    model: str = typer.Argument("smollm2-135m", help="the bundled model (smollm2-135m), a catalogue id, a .gguf, a model folder or a hub id"),
    requests: Optional[Path] = typer.Option(None, "--requests", help="JSON-lines trace: arrival, prompt|prompt_ids|prompt_len, max_tokens per line"),
    synthetic: Optional[int] = typer.Option(None, "--synthetic", help="N synthetic requests (Poisson arrivals, log-uniform lengths)"),
    rate: float = typer.Option(1.0, "--rate", help="synthetic arrivals per second ('inf': all at once)"),
    prompt_len: str = typer.Option("32:512", "--prompt-len", help="synthetic prompt lengths MIN:MAX"),
    output_len: str = typer.Option("16:128", "--output-len", help="synthetic output lengths MIN:MAX"),
    seed: int = typer.Option(0, "--seed", help="synthetic trace seed"),
    offline: bool = typer.Option(False, "--offline", help="queue every request at once (throughput), ignoring arrival times"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 or bf16 (weights, activations and KV pool)"),
    block_size: int = typer.Option(16, "--block-size", help="tokens per KV block"),
    num_blocks: int = typer.Option(512, "--num-blocks", help="KV blocks in the pool"),
    max_batched_tokens: int = typer.Option(512, "--max-batched-tokens", help="token budget per step (prefill chunks + decode tokens)"),
    max_num_seqs: int = typer.Option(64, "--max-num-seqs", help="sequences running at once"),
    prefix_caching: bool = typer.Option(False, "--prefix-caching/--no-prefix-caching", help="reuse KV blocks of identical prompt prefixes"),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="torch threads (default: torch's choice)"),
    window: Optional[int] = typer.Option(None, "--window", help="sliding-window attention of W keys (the paged attention masks older keys)"),
    kv_heads: Optional[int] = typer.Option(None, "--kv-heads", help="GQA: K/V heads mean-pooled to G before serving (smaller KV blocks)"),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="place decode steps on this device's roofline ('local' after `ridgeline probe`, or a catalogue id)"),
    as_json: bool = typer.Option(False, "--json", help="print the record as JSON"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the record (JSON) here"),
    plot_stem: Optional[Path] = typer.Option(None, "--plot", help="with --device: write STEM.png/.svg, measured batch-decode steps beside analyze --batch B"),
    device_file: Optional[Path] = DEVICE_FILE,
) -> None:
    """Replay a request trace through the paged-KV continuous-batching engine: throughput, TTFT, ITL, KV use, waste."""
    from ridgeline.arch import Variant
    from ridgeline.engine import EngineConfig, serve_trace
    from ridgeline.report import serve_tables
    from ridgeline.specs import get_device

    check_outputs(out=(out, "file"), plot=(plot_stem, "stem"))
    if (requests is None) == (synthetic is None):
        raise RidgelineError("serve-bench needs exactly one of --requests FILE or --synthetic N")
    if plot_stem is not None and device is None:
        raise RidgelineError("--plot places decode steps on a roofline: give --device too")
    config = EngineConfig(num_blocks=num_blocks, block_size=block_size, max_batched_tokens=max_batched_tokens,
                          max_num_seqs=max_num_seqs, prefix_caching=prefix_caching)
    trace, trace_info = _trace(requests, synthetic, rate, prompt_len, output_len, seed)
    dev = get_device(device, device_files(device_file)) if device is not None else None
    with progress("serving requests") as report:
        run = serve_trace(model, trace, config=config, dtype=dtype, variant=Variant(None, window, kv_heads),
                          device=dev, realtime=not offline, threads=threads, trace_info=trace_info,
                          progress=lambda done, total: report("finished", done, total))
    if run.result.interrupted:  # Ctrl-C: a partial run is not a result, so nothing is written
        done = len({r["id"] for r in run.result.requests})
        err_console.print(f"interrupted after {done} of {len(trace)} requests finished; nothing written")
        raise typer.Exit(130)
    write_record(out, run.record)
    if as_json:
        console.print_json(dumps(run.record))
    else:
        for t in serve_tables(run.record):
            console.print(t)
    if plot_stem is not None:
        for p in serve_plot(run.placed or [], dev, dtype, plot_stem, model):
            say(f"wrote {p}", stderr=as_json)


def demo_serve(out: Path) -> tuple[dict, list[Path]]:
    """The demo's serving step: 8 Poisson-arriving requests through the engine, decode steps placed on the local
    roof; serve.json in `out`."""
    from ridgeline.engine import serve_trace, synthetic_trace
    from ridgeline.io import write_json
    from ridgeline.report import serve_tables
    from ridgeline.specs import get_device

    trace = synthetic_trace(8, 1.0, (32, 256), (16, 48), seed=0)
    local = get_device("local")
    info = {"synthetic": 8, "rate": 1.0, "prompt_len": [32, 256], "output_len": [16, 48], "seed": 0}
    with progress("serving") as report:
        run = serve_trace("smollm2-135m", trace, device=local, trace_info=info,
                          progress=lambda d, t: report("finished", d, t))
    if run.result.interrupted:  # Ctrl-C while serving: stop the demo, write no partial serve.json
        raise KeyboardInterrupt
    for t in serve_tables(run.record):
        console.print(t)
    with writing(out):
        write_json(out / "serve.json", finite(run.record))
    return run.record, serve_plot(run.placed or [], local, "fp32", out / "serve_roofline", "smollm2-135m")
