"""`ridgeline probe` and `ridgeline bench`: this machine's roofs, and measured runs placed on them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ridgeline.cli.common import (DEVICE_FILE, app, check_outputs, command, console, csv_list, device_files, dumps,
                                  int_list, layer_list, memory_limit_bytes, note, say, variants, write_record, writing)
from ridgeline.cli.progress import progress
from ridgeline.errors import RidgelineError


def run_probe(threads: Optional[int], array_mib: int, repeats: int, save: bool):
    """Run the probe with progress; save it as the 'local' device (and `local-<n>t`) when asked."""
    from ridgeline.io import check_output, user_dir
    from ridgeline.measure import probe, probe_device, probe_lock, save_device

    if save:  # a folder that cannot be written is found before minutes of measuring
        check_output(user_dir() / "devices" / "local.json", "file", "the saved device")
    with probe_lock(), progress("probe") as report:  # a second probe at once is refused, never saved
        result = probe(threads=threads, array_mib=array_mib, repeats=repeats, progress=report)
        device = probe_device(result)
        return result, device, save_device(device, result) if save else None


@app.command("probe")
@command
def probe_command(
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="torch threads (default: torch's setting)"),
    array_mib: int = typer.Option(512, "--array-mib", help="size of each bandwidth array, MiB (far above the LLC)"),
    repeats: int = typer.Option(7, "--repeats", "-r", help="timed repeats per kernel (after 2 warm-ups)"),
    save: bool = typer.Option(True, "--save/--no-save", help="save as the 'local' device for --device local"),
    as_json: bool = typer.Option(False, "--json", help="print the full probe record as JSON"),
) -> None:
    """Measure this machine's roofs: read/copy/triad bandwidth, GEMM peaks (fp32, bf16, fp16, int8), GEMV rates."""
    from ridgeline.report import probe_table

    result, device, path = run_probe(threads, array_mib, repeats, save)
    if as_json:
        console.print_json(dumps({"device": device.to_json(), "probe": result.to_json()}))
        return
    console.print(probe_table(result))
    for w in result.warnings:
        note(w, "warning")
    if path is not None:
        say(f"saved as device 'local' in {path}")


def wait_for_quiet(max_wait_s: float) -> None:
    """Wait (bounded) until other processes leave the cores alone; refuse to measure if they never do."""
    from ridgeline.measure import wait_until_quiet

    if not max_wait_s >= 0:
        raise RidgelineError(f"--require-quiet takes the seconds to wait (>= 0), got {max_wait_s}")
    state = wait_until_quiet(max_wait_s, on_wait=lambda c, waited: note(
        f"the machine is busy ({'; '.join(c.reasons)}); waited {waited:.0f} s of {max_wait_s:g}"))
    if state.contended:
        raise RidgelineError(f"--require-quiet: the machine stayed busy for {max_wait_s:g} s "
                             f"({'; '.join(state.reasons)}); not measuring")


def run_bench_grid(grid, roofs, label: str = "bench") -> list[dict]:
    """Run a bench grid with a progress bar, printing the roof notes first (speculative runs use the engine's
    runners)."""
    from ridgeline.measure import run_grid

    factory = None
    if any(s is not None for s in grid.specs):
        from ridgeline.engine import spec_runner as factory
    with progress(label) as report:
        return run_grid(grid, roofs, report, note, factory)


def spec_settings(spec: Optional[str], tree: str, accept: str) -> list:
    """--spec 'none,medusa:DIR,prompt-lookup,draft:8' -> [None, SpecSetting, ...]; no option -> [None]."""
    from ridgeline.measure import SpecSetting

    if spec is None:
        return [None]
    items = csv_list(spec, "--spec")
    medusa = [s.lower().startswith("medusa") for s in items]
    if tree != "auto" and not any(medusa):
        raise RidgelineError("--tree applies to medusa runs (prompt lookup and draft models verify a chain)")
    if not tree.startswith("auto"):
        from ridgeline.engine import parse_tree

        parse_tree(tree)  # a malformed tree is named before anything loads
    return [None if s.lower() == "none" else SpecSetting.parse(s, tree if m else "auto", accept)
            for s, m in zip(items, medusa)]


def spec_lines(rows: list[dict]) -> list[str]:
    """Per speculative run: tokens per verify step, the roofline's predicted speedup and, when the grid has the same
    run without speculation, the measured one."""
    plain = {(r["run"], r["scenario"], r["threads"], r["layers"]): r for r in rows if not r["spec"]}
    out = []
    for r in rows:
        if not r["spec"]:
            continue
        base = plain.get((r["run"].rsplit(" · ", 1)[0], r["scenario"], r["threads"], r["layers"]))
        measured = (f", measured {r['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}x plain decoding"
                    if base else "")
        predicted = r.get("predicted_speedup_probe") or r.get("predicted_speedup_catalogue")
        out.append(f"{r['run']} {r['scenario']}: {r['tokens_per_step']:.2f} tokens per verify step (the base's own "
                   f"token counted), {r['verified_per_step']:.1f} verified"
                   + (f"; roofline predicts {predicted:.2f}x" if predicted else "") + measured)
    return out


def render_bench(results: list[dict], title: str = "measured runs", plot_stem: Optional[Path] = None,
                 to_stderr: bool = False) -> list[Path]:
    """The bench table, each run's prediction error, Φ > 1 warnings, and the plots when asked."""
    from ridgeline.measure import flat_rows
    from ridgeline.report import bench_plots, bench_table, contention_warnings, error_line, phi_warnings

    rows = flat_rows(results)
    if not to_stderr:
        console.print(bench_table(rows, title))
        for line in [*filter(None, map(error_line, rows)), *spec_lines(rows)]:
            say(line)
    for w in phi_warnings(rows):
        note(w, "modelling error")
    for w in contention_warnings(rows):
        note(w, "warning")
    if plot_stem is None:
        return []
    with writing(plot_stem):
        paths = bench_plots(rows, plot_stem)
    for p in paths:  # with --json, stdout holds only the JSON
        say(f"wrote {p}", stderr=to_stderr)
    return paths


@app.command()
@command
def bench(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="the bundled model (smollm2-135m), a catalogue id, a .gguf, a model folder or a hub id"),
    backend: str = typer.Option("torch", "--backend", help="torch, llamacpp, or a comma list"),
    scenario: str = typer.Option("SISO", "--scenario", "-s", help="SISO, LISO, SILO, LILO or P:N; comma list for several"),
    dtype: str = typer.Option("fp32", "--dtype", help="torch weights/activations: fp32, bf16 or a comma list (llama.cpp runs the GGUF's types)"),
    threads: Optional[str] = typer.Option(None, "--threads", "-t", help="threads, or a comma list (thread sweep)"),
    layers: Optional[str] = typer.Option(None, "--layers", help="keep the first k layers (torch); comma list with 'all' for a depth sweep"),
    repeats: int = typer.Option(3, "--repeats", "-r", help="timed repeats per run"),
    warmup: int = typer.Option(1, "--warmup", help="untimed warm-up runs after loading"),
    impl: str = typer.Option("auto", "--impl", help="torch path: native (ridgeline.kernels, one C++ call per step), lean (static-cache torch), hf (transformers forward), auto (native, else lean, else hf; the reason is in the record)"),
    device: str = typer.Option("local", "--device", "-d", help="measured roof: 'local' (from `ridgeline probe`) or any device"),
    reference: str = typer.Option("auto", "--reference", help="catalogue roof for Φ: a device id, 'auto' (this host's entry) or 'none'"),
    memory_limit: Optional[float] = typer.Option(None, "--memory-limit", help="refuse runs predicted to need more (GiB; default: memory available)"),
    as_json: bool = typer.Option(False, "--json", help="print the records as JSON"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the records (JSON) here"),
    plot_stem: Optional[Path] = typer.Option(None, "--plot", help="write STEM.png/.svg: measured points on the roofline (and STEM_layers / STEM_threads for sweeps)"),
    kv: Optional[str] = typer.Option(None, "--kv", help="torch: KV-cache formats, comma list (kivi2, kivi4, harmonia, bfp32m4, none); runs on the transformers path, quantized caches emulated"),
    window: Optional[str] = typer.Option(None, "--window", help="torch: sliding-window attention of W keys with a rolling-buffer cache, comma list with 'none'"),
    kv_heads: Optional[str] = typer.Option(None, "--kv-heads", help="torch: GQA, K/V heads mean-pooled to G (no uptraining), comma list"),
    require_quiet: Optional[float] = typer.Option(None, "--require-quiet", help="wait up to this many seconds for the machine to be quiet (other processes under a quarter core) before measuring; refuse if it stays busy"),
    spec: Optional[str] = typer.Option(None, "--spec", help="torch: speculative decoding, comma list with 'none': medusa:DIR (heads from `ridgeline medusa train`), prompt-lookup[:N], draft:N (the first N layers) or draft:MODEL"),
    tree: str = typer.Option("auto", "--tree", help="medusa tree: auto (from the heads' accuracies and the verify cost measured now), auto:M (at most M verified), paths '0;0,0;1' or a JSON file"),
    accept: str = typer.Option("greedy", "--accept", help="acceptance: greedy (lossless) or typical[:T[:eps[:alpha]]] (sampling, not lossless; defaults 0.7, 0.09, 0.3)"),
    device_file: Optional[Path] = DEVICE_FILE,
) -> None:
    """Measure the scenario on a real model: TTFT, every decode step, Φ against the probe and catalogue roofs."""
    from ridgeline.loader import check_model
    from ridgeline.measure import BenchGrid, resolve_roofs
    from ridgeline.specs import parse_scenario

    check_outputs(out=(out, "file"), plot=(plot_stem, "stem"))
    grid = BenchGrid(model=model, backends=csv_list(backend, "--backend"),
                     scenarios=[parse_scenario(s) for s in csv_list(scenario, "--scenario")],
                     dtypes=csv_list(dtype, "--dtype"), threads=[None] if threads is None else int_list(threads, "--threads"),
                     layers=layer_list(layers), variants=variants(kv, window, kv_heads),
                     specs=spec_settings(spec, tree, accept), repeats=repeats, warmup=warmup,
                     impl=impl, memory_limit=memory_limit_bytes(memory_limit))
    roofs = resolve_roofs(device, reference, device_files(device_file))
    grid.groups()  # bad input is refused before waiting for a quiet machine
    check_model(model)
    if require_quiet is not None:
        wait_for_quiet(require_quiet)
    results = run_bench_grid(grid, roofs)
    payload = {"kind": "ridgeline.bench.results", "results": results}
    write_record(out, payload)
    if as_json:
        console.print_json(dumps(payload))
    render_bench(results, plot_stem=plot_stem, to_stderr=as_json)
