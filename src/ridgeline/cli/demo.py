"""`ridgeline demo`: the main job on the bundled model, step by step, into one results folder.

probe → analyze (and simulated accelerators) → bench (torch fp32/bf16, llama.cpp; depth and thread sweeps) →
int8/int4 quantization → quality (KV formats too) → serving (paged KV, continuous batching) → report.html, with the
techniques table from the committed benchmark records. Each
step is a function that calls the library and renders its part; the command strings them together.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Optional

import typer

from ridgeline.cli.common import app, command, console, csv_list, finite, int_list, layer_list, note, writing
from ridgeline.cli.progress import progress
from ridgeline.cli.measure import render_bench, run_bench_grid, run_probe
from ridgeline.cli.serve import demo_serve
from ridgeline.cli.techniques import OUT_FILES as TECHNIQUE_FILES, demo_techniques
from ridgeline.errors import RidgelineError

#: the default demo (a reduced RooflineBench grid, about 5 minutes on 2 idle cores) and `--full` (about 12)
SIZES = {False: {"grid": "128:32,512:32,128:96", "repeats": 2, "depths": "2,16,all", "max_tokens": 768,
                 "cloze_items": 16, "bf16": False, "probe_repeats": 3, "llamacpp_threads": False},
         True: {"grid": "128:64,512:64,128:256", "repeats": 3, "depths": "2,8,16,all", "max_tokens": 4096,
                "cloze_items": 50, "bf16": True, "probe_repeats": 5, "llamacpp_threads": True}}
#: what the demo writes into its results folder (each file replaced alone; nothing else there is touched)
DEMO_FILES = ("report.html", "bench.json", "bench.csv", "quality.json", "serve.json", "probe.json", "analyze.json",
              *(f"{stem}{ext}" for stem in ("roofline", "roofline_analytic", "serve_roofline", "depth_layers",
                                            "threads_threads") for ext in (".png", ".svg")), *TECHNIQUE_FILES)


def _sizes(full: bool, scenarios: Optional[str], repeats: Optional[int], depths: Optional[str]) -> tuple[dict, list]:
    """The demo's sizes (default or --full, options given override them) and its scenario grid."""
    from ridgeline.specs import parse_scenario

    size = {**SIZES[full], **{k: v for k, v in (("repeats", repeats), ("depths", depths)) if v is not None}}
    return size, [parse_scenario(x) for x in csv_list(scenarios or size["grid"], "--scenarios")]


def _check_out(out: Path) -> None:
    """The results folder may hold other files (they are left alone); the demo's own names there must be regular
    files it can replace, and probing must be able to save `local`."""
    from ridgeline.io import check_output, user_dir

    if out.exists() and (out.is_symlink() or not out.is_dir()):
        raise RidgelineError(f"--out {out} exists and is not a folder; pass a results folder")
    for name in DEMO_FILES:
        check_output(out / name, "file", "--out")
    check_output(user_dir() / "devices" / "local.json", "file", "the saved device")


def _analyze(spec, grid, probe, local, out: Path):
    """Predictions of fp32, bf16 and the GGUF as stored on the probed roof, and the bundled accelerator designs at
    the longest prompt (simulated: `ridgeline accel`); probe.json and analyze.json."""
    from ridgeline.accel import run
    from ridgeline.io import write_json
    from ridgeline.report import accel_compare_table, device_roofs, plot_roofline, prediction_points, summary_table
    from ridgeline.roofline import predict, prediction_json
    from ridgeline.specs import Precision

    precisions = (Precision("fp32", "fp32", "fp32"), Precision("bf16", "bf16", "bf16"),
                  Precision("stored", "fp32", "fp16", compute="int8"))
    predictions = [predict(spec, local, sc, precision=p) for p in precisions for sc in grid]
    bf16 = predictions[len(grid)]  # bf16 at the first scenario
    console.print(summary_table(bf16))
    accel = run(spec, max(grid, key=lambda sc: sc.prompt))
    console.print(accel_compare_table(accel))
    with writing(out):
        write_json(out / "probe.json", finite({"device": local.to_json(), "probe": probe.to_json()}))
        write_json(out / "analyze.json", finite({"predictions": [prediction_json(p, per_operator=True)
                                                                 for p in predictions],
                                                 "accelerators": accel.comparisons}))
        plot = plot_roofline(device_roofs(bf16, ("fp32", "int8")), prediction_points(bf16, True),
                             out / "roofline_analytic",
                             title=f"{spec.name} · {grid[0].label} · bf16 on {local.name} (analytic)")
    return predictions, plot


def _bench(grid, repeats: int, depths: str, threads: list[int], llamacpp: bool, llamacpp_threads: bool):
    """The main grid (torch, and llama.cpp with `llamacpp`), the depth sweep and the thread sweep (llama.cpp in it
    only with `llamacpp_threads`), measured and placed on the local roof."""
    from ridgeline.measure import BenchGrid, resolve_roofs

    backends = ["torch"] + (["llamacpp"] if llamacpp else [])
    thread_backends = backends if llamacpp_threads else ["torch"]

    roofs = resolve_roofs("local", "auto")
    main = run_bench_grid(BenchGrid(backends=backends, scenarios=grid, dtypes=["fp32", "bf16"], repeats=repeats),
                          roofs)
    render_bench(main)
    short = dict(scenarios=grid[:1], dtypes=["bf16"], repeats=max(2, repeats - 1))
    depth = run_bench_grid(BenchGrid(layers=layer_list(depths), **short), roofs, "depth sweep")
    thread = run_bench_grid(BenchGrid(backends=thread_backends, threads=threads, **short), roofs, "thread sweep")
    render_bench(depth, "depth sweep (first k layers)")
    render_bench(thread, "thread sweep")
    return main, depth, thread


def _quantize(grid, repeats: int, folder: Path) -> tuple[list[dict], list[str]]:
    """RTN int8 and int4-g128 (lm_head too) through the CPU kernels, saved to `folder`, then measured."""
    from ridgeline.loader import load_model
    from ridgeline.measure import BenchGrid, resolve_roofs
    from ridgeline.quant import make_config, param_bytes, quantize_, save_quantized
    from ridgeline.report import quant_table

    variants = {"rtn-w8": make_config("rtn", bits=8, include_lm_head=True),
                "rtn-w4-g128": make_config("rtn", bits=4, group=128, include_lm_head=True)}
    results = []
    for name, config in variants.items():
        model, tok = load_model("smollm2-135m", "fp32")
        before = param_bytes(model)
        manifest = quantize_(model, config)
        save_quantized(model, tok, folder / name)
        del model
        console.print(quant_table(manifest, before, name))
        grid_q = BenchGrid(model=str(folder / name), scenarios=grid[:1], dtypes=["bf16"], repeats=repeats)
        results += run_bench_grid(grid_q, resolve_roofs("local", "auto"), name)
    render_bench(results, f"quantized, torch bf16 activations, {grid[0].label}")
    return results, list(variants)


def _quality(folder: Path, names: list[str], max_tokens: int, cloze_items: int, bf16: bool) -> list[dict]:
    """Held-out perplexity and cloze of fp32, bf16 (only with `bf16`, --full: slow on CPUs without bf16 matmul) and
    the quantized folders; perplexity through KV formats."""
    from ridgeline.arch import Variant
    from ridgeline.eval import EvalConfig, run_eval
    from ridgeline.report import quality_rows, quality_table

    evals = [("smollm2-135m", d, "", Variant()) for d in ("fp32", "bf16")[:2 if bf16 else 1]]
    evals += [(str(folder / name), "bf16", name, Variant()) for name in names]
    evals += [("smollm2-135m", "fp32", "", Variant(kv=kv)) for kv in ("kivi4", "kivi2", "harmonia")]
    quality = []
    with progress("eval") as report:
        for model, dtype, name, variant in evals:
            ppl_only = bool(variant.kv)
            cfg = EvalConfig(model, ("ppl",) if ppl_only else ("ppl", "cloze"), dtype=dtype, name=name, context=512,
                             stride=256, max_tokens=max_tokens, cloze_items=cloze_items, batch_size=4,
                             variant=variant)
            quality.append(run_eval(cfg, progress=lambda what, i, n, v=cfg.label: report(f"{v} {what}", i, n)))
    console.print(quality_table(quality_rows(quality)))
    return quality


def _write(out: Path, title: str, probe, predictions, main, depth, thread, quality, plots) -> None:
    """bench.json, quality.json, bench.csv, the measured and sweep plots, and report.html."""
    from ridgeline.io import write_json, write_text
    from ridgeline.measure import flat_rows
    from ridgeline.report import bench_plots
    from ridgeline.report import summary_report
    from ridgeline.roofline import prediction_json, rows_to_csv

    with writing(out):
        write_json(out / "bench.json", finite({"kind": "ridgeline.bench.results", "results": main,
                                               "depth_sweep": depth, "thread_sweep": thread}))
        write_json(out / "quality.json", finite({"kind": "ridgeline.eval.results", "records": quality}))
        rows = finite(flat_rows(main + depth + thread))
        write_text(out / "bench.csv", rows_to_csv(rows, list(dict.fromkeys(k for r in rows for k in r))))
        figures = [(next(p for p in bench_plots(flat_rows(main), out / "roofline") if p.suffix == ".svg"),
                    "Measured prefill and decode points (filled) and the analytic prediction (hollow) on the "
                    "catalogue (solid) and probe (dashed) roofs")] + plots
        for runs, stem, caption in ((depth, "depth", "Depth sweep: decode tok/s of the first k layers, measured and "
                                     "predicted"), (thread, "threads", "Thread sweep: decode tok/s, measured and predicted")):
            figures += [(p, caption) for p in bench_plots(flat_rows(runs), out / stem, roofline=False)
                        if p.suffix == ".svg"]
        notes = ["Scenarios (prompt:generated): prefill of exactly P tokens, then N decode steps on the same cache; "
                 "greedy, EOS ignored. Φ is against the probe's measured roof; the catalogue roof is this host's "
                 "catalogue entry."]
        report = summary_report(title, probe.to_json(), [prediction_json(p) for p in predictions], rows, figures,
                                notes=notes, quality=quality)
        demo_techniques(report, out)  # the survey's table from the committed records: seconds
        write_text(out / "report.html", report.render())


@app.command()
@command
def demo(
    out: Path = typer.Option(Path("results/demo"), "--out", "-o", help="results folder"),
    full: bool = typer.Option(False, "--full", help=f"the larger demo (about 12 minutes on 2 cores): grid "
                              f"{SIZES[True]['grid']}, 3 repeats, depths 2,8,16,all, 4096 perplexity tokens, 50 cloze "
                              "items, bf16 perplexity and cloze, llama.cpp in the thread sweep"),
    scenarios: Optional[str] = typer.Option(None, "--scenarios", help=f"the grid (P:N comma list; default "
                                            f"{SIZES[False]['grid']})"),
    repeats: Optional[int] = typer.Option(None, "--repeats", "-r", help="timed repeats per run (default 2)"),
    depths: Optional[str] = typer.Option(None, "--depths", help="depth sweep (first k layers, torch bf16; default "
                                         "2,16,all)"),
    thread_list: Optional[str] = typer.Option(None, "--threads", help="thread sweep (default: 1 and torch's default)"),
    llamacpp: bool = typer.Option(True, "--llamacpp/--no-llamacpp", help="include the llama.cpp backend"),
) -> None:
    """The main job on the bundled model: probe → analyze → bench (torch fp32/bf16, llama.cpp) → int8/int4 quantization
    → quality (KV formats too) → serving (paged KV, continuous batching) → HTML; about 5 minutes on 2 cores."""
    import torch

    from ridgeline.measure import llama_cpp_available
    from ridgeline.report import probe_table
    from ridgeline.specs import bundled_gguf, load_spec

    _check_out(out)
    size, grid = _sizes(full, scenarios, repeats, depths)
    repeats, depths = size["repeats"], size["depths"]
    gguf, default = bundled_gguf(), torch.get_num_threads()  # default: the threads runs without --threads use
    spec = load_spec(gguf)
    threads = int_list(thread_list, "--threads") if thread_list else sorted({1, default})
    if llamacpp and not llama_cpp_available():
        note("llama-cpp-python is not installed (pip install 'ridgeline[llamacpp]'); skipping the llama.cpp backend")
        llamacpp = False
    console.rule(f"[bold]ridgeline demo: {spec.name} ({spec.param_count() / 1e6:.1f} M params, {gguf.name})")
    console.print("scenarios (prompt:generated tokens): " + ", ".join(s.label for s in grid)
                  + f"; depth sweep {depths} layers and thread sweep {threads} at {grid[0].label}", highlight=False)
    console.rule("1. probe: this machine's roofs")
    for t in [t for t in threads if t != default]:  # roofs for the thread sweep (kept as local-<n>t)
        run_probe(t, 256, size["probe_repeats"], save=True)
    probe, local, _ = run_probe(default, 256, size["probe_repeats"], save=True)  # the default roof, saved as `local`
    console.print(probe_table(probe))
    console.rule("2. analyze: the analytic roofline on the probed roofs; simulated accelerators")
    predictions, analytic_plot = _analyze(spec, grid, probe, local, out)
    console.rule("3. bench: measured runs (load and warm-up excluded)")
    main, depth, thread = _bench(grid, repeats, depths, threads, llamacpp, size["llamacpp_threads"])
    console.rule("4. quantize: int8 and int4 weight-only (lm_head too) on the CPU kernels, measured like the rest")
    folder = Path(tempfile.mkdtemp(prefix="ridgeline-demo-"))
    try:
        quantized, names = _quantize(grid, repeats, folder)
        console.rule("5. quality: held-out perplexity and cloze per variant")
        quality = _quality(folder, names, size["max_tokens"], size["cloze_items"], size["bf16"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    console.rule("6. serve: 8 requests (Poisson arrivals) through the paged-KV continuous-batching engine")
    _, serve_plots = demo_serve(out)
    console.rule("7. results")
    plots = [(analytic_plot[1], "Analytic roofline, every operator of the bf16 run")] + [
        (p, "Serving: the engine's decode-only steps by batch size (measured) beside analyze --batch B")
        for p in serve_plots if p.suffix == ".svg"]
    _write(out, f"ridgeline demo: {spec.name} on {local.name}", probe, predictions, main + quantized, depth, thread,
           quality, plots)
    console.print(f"results in {out}/: {', '.join(n for n in DEMO_FILES if not n.endswith('.png'))} (and .png "
                  "copies of the figures)", highlight=False, markup=False)
