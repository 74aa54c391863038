"""The `ridgeline` command: parses arguments, calls the library, renders. Nothing else lives here."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ridgeline.errors import RidgelineError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ridgeline: where the limit is (analytic roofline), how close real runs get, "
                       "and what each optimization buys.")
console = Console()
if not console.is_terminal:  # piped or captured output: wide enough for the per-operator tables
    console = Console(width=160)
err_console = Console(stderr=True)


def _cli(fn: Callable) -> Callable:
    """Turn RidgelineError (bad input) into one line on stderr and exit code 2; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RidgelineError as exc:
            # one line, and the message is text, not rich markup (paths may hold '[...]')
            message = " ".join(str(exc).split())
            err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn an OS error while writing `path` (a folder, no permission, disk full) into a RidgelineError."""
    try:
        yield
    except OSError as exc:
        raise RidgelineError(f"cannot write {path}: {exc.strerror or exc}") from None


def _finite(obj: Any) -> Any:
    """The record with non-finite floats (an operator moving no bytes has infinite intensity) as null:
    `Infinity`/`NaN` are not JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _dumps(obj: Any) -> str:
    return json.dumps(_finite(obj), indent=2, allow_nan=False)


def _csv_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise RidgelineError(f"{what}: expected a comma-separated list, got {text!r}")
    return items


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in _csv_list(text, what)]
    except ValueError:
        raise RidgelineError(f"{what}: expected comma-separated integers, got {text!r}") from None


def _precision(model, weights: Optional[str], acts: str, kv: Optional[str], compute: Optional[str]):
    from ridgeline.specs.scenario import Precision

    if weights is None:
        weights = "stored" if model.gguf_tensors is not None else "bf16"
    return Precision(weights=weights, acts=acts, kv=_kv_default(acts, kv), compute=compute)


def _kv_default(acts: str, kv: Optional[str]) -> str:
    """--kv if given, else the activation format when it is a float format, else bf16."""
    from ridgeline.specs.formats import get_format

    if kv is not None:
        return kv
    return acts if get_format(acts).family == "float" else "bf16"


def _options(attention: str, act_traffic: str, logits: str, mla_cache: str, mla_decode: str, causal: bool):
    from ridgeline.roofline.workload import Options

    return Options(attention=attention, activation_traffic=act_traffic, logits=logits, mla_cache=mla_cache,
                   mla_decode=mla_decode, causal=causal)


def _predict(model: str, device: str, scenario: str, batch: int, layers: Optional[int], weights: Optional[str],
             acts: str, kv: Optional[str], compute: Optional[str], device_file: Optional[Path], options,
             window: Optional[int] = None, kv_heads: Optional[int] = None):
    """Load the model and device, build the workload and evaluate it (what analyze and plot share);
    `window` and `kv_heads` override every attention layer's sliding window and KV-head count."""
    from ridgeline.roofline.evaluate import evaluate
    from ridgeline.roofline.workload import build_workload
    from ridgeline.specs.device import get_device
    from ridgeline.specs.model import load_spec
    from ridgeline.specs.scenario import parse_scenario

    dev = get_device(device, (device_file,) if device_file else ())
    sc = parse_scenario(scenario, batch)
    spec = load_spec(model)
    if layers is not None:
        spec = spec.with_layers(layers)
    if window is not None:
        spec = _override("--window", spec.with_window, window)
    if kv_heads is not None:
        spec = _override("--kv-heads", spec.with_kv_heads, kv_heads)
    return evaluate(build_workload(spec, sc, _precision(spec, weights, acts, kv, compute), options), dev)


def _override(option: str, transform: Callable, value: int):
    """Apply a ModelSpec transform; its error (which says what is expected) names the option too."""
    try:
        return transform(value)
    except RidgelineError as exc:
        raise RidgelineError(f"{option}: {exc}") from None


# shared option declarations
_MODEL = typer.Option(..., "--model", "-m", help="config.json, model folder, .gguf file or catalogue id (`ridgeline models`)")
_DEVICE = typer.Option(..., "--device", "-d", help="catalogue id (`ridgeline devices`), 'local' after `ridgeline probe`, or a TOML/JSON device file")
_WEIGHTS = typer.Option(None, "--weights", "-w", help="weight format or llama.cpp recipe (bf16, q8_0, q4_k_m, int4_g128, mxfp4, bfp32m4, ...); default: as stored for GGUF, else bf16")
_ACTS = typer.Option("bf16", "--acts", help="activation format (fp32, bf16, fp16, int8, ...)")
_KV = typer.Option(None, "--kv", help="KV-cache format: a number format (bf16, fp16, q8_0, mxint8, bfp32m4, ...), "
                   "kivi2, kivi4 or kivi{b}_g{G}_r{R} (KIVI: b-bit groups of G, defaults 32 and 128, last R tokens "
                   "fp16), harmonia or harmonia_s{S}_r{R} (BFP: first S and last R tokens 8-bit mantissa, the rest "
                   "4-bit; defaults 32 and 128); default: the activation format")
_COMPUTE = typer.Option(None, "--compute", help="dtype whose peak FLOP/s bounds compute (default: from --acts)")
_ATTN = typer.Option("fused", "--attention", help="fused (flash-style, scores stay on chip) or unfused (scores written and read)")
_TRAFFIC = typer.Option("unfused", "--act-traffic", help="activation traffic: unfused (every op, upper bound), block (a·s·(4h+2f) per layer), fused (none)")
_LOGITS = typer.Option("last", "--logits", help="lm_head on the last position only (last) or every position (all)")
_MLA_CACHE = typer.Option("latent", "--mla-cache", help="MLA KV cache: latent (d_c + d_r per token) or decompressed (as transformers holds it)")
_MLA_DECODE = typer.Option("absorbed", "--mla-decode", help="MLA decode FLOPs: absorbed (weight absorption) or naive (materialised)")
_CAUSAL = typer.Option(True, "--causal/--non-causal", help="count each query against its own prefix (default) or all keys")
_DEVICE_FILE = typer.Option(None, "--device-file", help="extra devices from a TOML/JSON file")


@app.command()
@_cli
def analyze(
    model: str = _MODEL,
    device: str = _DEVICE,
    scenario: str = typer.Option("SISO", "--scenario", "-s", help="SISO, LISO, SILO, LILO or P:N (prompt:generated)"),
    batch: int = typer.Option(1, "--batch", "-b", help="sequences decoded together"),
    weights: Optional[str] = _WEIGHTS,
    acts: str = _ACTS,
    kv: Optional[str] = _KV,
    compute: Optional[str] = _COMPUTE,
    layers: Optional[int] = typer.Option(None, "--layers", help="model depth N: the first N layers (beyond the model's depth its layers repeat)"),
    window: Optional[int] = typer.Option(None, "--window", help="sliding window W on every attention layer: W keys per query, the current token included (the cache holds W-1 tokens); bounds KV memory and attention"),
    kv_heads: Optional[int] = typer.Option(None, "--kv-heads", help="KV heads G on every attention layer (GQA conversion; G must divide the query heads): KV cache and k/v projections scale by G"),
    attention: str = _ATTN,
    act_traffic: str = _TRAFFIC,
    logits: str = _LOGITS,
    mla_cache: str = _MLA_CACHE,
    mla_decode: str = _MLA_DECODE,
    causal: bool = _CAUSAL,
    per_operator: bool = typer.Option(False, "--per-operator", help="list every operator of each distinct layer and the model-level ones"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON record instead of tables"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="also write the JSON record to this file"),
    device_file: Optional[Path] = _DEVICE_FILE,
) -> None:
    """Analytic roofline of prefill and decode: FLOPs, bytes, intensity, bound, time, memory."""
    from ridgeline.io import write_json
    from ridgeline.report.tables import memory_table, operator_table, summary_table
    from ridgeline.roofline.evaluate import prediction_json

    pred = _predict(model, device, scenario, batch, layers, weights, acts, kv, compute, device_file,
                    _options(attention, act_traffic, logits, mla_cache, mla_decode, causal), window, kv_heads)
    record = _finite(prediction_json(pred, per_operator))
    if out:
        with _writing(out):
            write_json(out, record)
    if as_json:
        print(_dumps(record))
        return
    console.print(summary_table(pred))
    console.print(memory_table(pred))
    if per_operator:
        for phase in ("prefill", "decode"):
            console.print(operator_table(pred, phase))


@app.command()
@_cli
def devices(
    as_json: bool = typer.Option(False, "--json", help="print the catalogue as JSON"),
    device_file: Optional[Path] = _DEVICE_FILE,
) -> None:
    """List the device catalogue: bandwidth, memory, peak FLOP/s per dtype, TDP, provenance."""
    from ridgeline.report.tables import si
    from ridgeline.specs.device import DTYPES, catalogue

    devs = catalogue((device_file,) if device_file else ())
    if as_json:
        print(_dumps({"devices": [d.to_json() for d in devs.values()]}))
        return
    t = Table(title="devices (peaks are dense FLOP/s or OP/s)")
    for col in ("id", "name", "memory", "bandwidth", *DTYPES, "TDP", "provenance"):
        t.add_column(col, justify="right" if col not in ("id", "name", "provenance") else "left")
    for d in devs.values():
        t.add_row(escape(d.id), escape(d.name), si(d.memory_bytes, "B", 1024), si(d.bandwidth_Bps, "B/s"),
                  *[si(d.peak_flops[k]) if k in d.peak_flops else "" for k in DTYPES],
                  f"{d.tdp_w:g} W" if d.tdp_w else "", escape(f"{d.provenance.kind}, {d.provenance.date}"))
    console.print(t)


@app.command()
@_cli
def models(as_json: bool = typer.Option(False, "--json", help="print as JSON")) -> None:
    """List the bundled model catalogue (config.json files only, no weights)."""
    from ridgeline.report.tables import si
    from ridgeline.specs.catalogue import catalogue_spec, model_index

    rows = []
    for entry in model_index():
        spec = catalogue_spec(entry["id"])
        rows.append({"id": entry["id"], "hf_id": entry.get("hf_id"), "model_type": spec.model_type,
                     "params": spec.param_count(), "published_params": entry.get("published_params"),
                     "layers": spec.n_layers, "hidden": spec.hidden,
                     "attention": "/".join(sorted({l.attention.kind for l in spec.layers})),
                     "kv_bytes_per_token_bf16": sum(2 * spec.kv_elements_per_token(l) for l in spec.layers),
                     "tied": spec.tied, "moe": any(l.moe for l in spec.layers)})
    if as_json:
        print(_dumps({"models": rows}))
        return
    t = Table(title="model catalogue")
    for col in ("id", "type", "params", "layers", "hidden", "attention", "KV/token bf16", "tied", "MoE"):
        t.add_column(col, justify="right" if col in ("params", "layers", "hidden", "KV/token bf16") else "left",
                     no_wrap=True)
    for r in rows:
        t.add_row(r["id"], r["model_type"], si(r["params"]), str(r["layers"]), str(r["hidden"]),
                  r["attention"], si(r["kv_bytes_per_token_bf16"], "B"), "yes" if r["tied"] else "",
                  "yes" if r["moe"] else "")
    console.print(t)


@app.command()
@_cli
def formats(as_json: bool = typer.Option(False, "--json", help="print as JSON")) -> None:
    """List the number-format registry with bits per element (block overhead included)."""
    from ridgeline.specs.formats import list_formats
    from ridgeline.specs.recipes import RECIPES

    fmts = list_formats()
    if as_json:
        print(_dumps({"formats": [{"name": f.name, "family": f.family, "bits": f.bits, "block": f.block,
                                   "description": f.description} for f in fmts],
                      "recipes": sorted(RECIPES)}))
        return
    t = Table(title="number formats (per-channel: + per-row scale bytes / row length)")
    for col in ("name", "family", "bits/element", "block", "description"):
        t.add_column(col)
    for f in fmts:
        t.add_row(f.name, f.family, f"{f.bits:.4g}", "row" if f.block == 0 else str(f.block), f.description)
    console.print(t)
    console.print("recipes (per-tensor type assignment as llama.cpp does it): " + ", ".join(sorted(RECIPES)))


@app.command()
@_cli
def sweep(
    model: str = typer.Option(..., "--model", "-m", help="comma-separated models (files or catalogue ids)"),
    device: str = typer.Option("all", "--device", "-d", help="comma-separated device ids, or 'all'"),
    scenario: Optional[str] = typer.Option(None, "--scenario", "-s", help="comma-separated scenarios (SISO,LISO,... or P:N)"),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="comma-separated prompt lengths (crossed with --generate)"),
    generate: Optional[str] = typer.Option(None, "--generate", help="comma-separated generated lengths"),
    batch: str = typer.Option("1", "--batch", "-b", help="comma-separated batch sizes"),
    layers: Optional[str] = typer.Option(None, "--layers", help="comma-separated depths (first N layers)"),
    weights: str = typer.Option("bf16", "--weights", "-w", help="comma-separated weight formats or recipes"),
    acts: str = _ACTS,
    kv: Optional[str] = _KV,
    as_json: bool = typer.Option(False, "--json", help="print JSON rows"),
    as_csv: bool = typer.Option(False, "--csv", help="print CSV rows"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write rows to this file: CSV if it ends in .csv, else JSON"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="also plot --y against --x to this PNG/SVG stem"),
    x: str = typer.Option("prompt", "--x", help="sweep column on the plot's x axis (a name from the CSV header)"),
    y: str = typer.Option("decode_tokens_per_s", "--y", help="numeric sweep column on the plot's y axis"),
    device_file: Optional[Path] = _DEVICE_FILE,
) -> None:
    """Sweep the roofline over models, depths, scenarios, batches, formats and devices."""
    from rich.progress import Progress

    from ridgeline.io import write_json, write_text
    from ridgeline.report.plot import plot_sweep
    from ridgeline.report.tables import seconds, si
    from ridgeline.roofline.sweep import COLUMNS, SweepAxes, rows_to_csv, run_sweep
    from ridgeline.specs.device import catalogue, get_device
    from ridgeline.specs.formats import get_format, get_kv_format
    from ridgeline.specs.model import load_spec
    from ridgeline.specs.recipes import is_recipe
    from ridgeline.specs.scenario import Scenario, parse_scenario

    extra = (device_file,) if device_file else ()
    devs = (tuple(catalogue(extra).values()) if device.strip().lower() == "all"
            else tuple(get_device(d, extra) for d in _csv_list(device, "--device")))
    scenarios = [parse_scenario(s) for s in _csv_list(scenario, "--scenario")] if scenario else []
    if prompt or generate:
        ps = _int_list(prompt or "128", "--prompt")
        ns = _int_list(generate or "128", "--generate")
        scenarios += [Scenario(p, n) for p in ps for n in ns]
    if not scenarios:
        scenarios = [parse_scenario("SISO")]
    specs = tuple(load_spec(m) for m in _csv_list(model, "--model"))
    batches = tuple(_int_list(batch, "--batch"))
    depths = tuple(_int_list(layers, "--layers")) if layers else (None,)
    for b in batches:
        if b < 1:
            raise RidgelineError(f"--batch: batch sizes must be >= 1, got {b}")
    for n in depths:
        if n is not None and n < 1:
            raise RidgelineError(f"--layers: depths must be >= 1, got {n}")
    if plot:
        numeric = [c for c in COLUMNS if c not in ("model", "device", "scenario", "weights", "acts", "kv",
                                                   "prefill_bound", "decode_bound", "fits", "error")]
        if x not in COLUMNS or x == "error":
            raise RidgelineError(f"--x {x!r} is not a sweep column; one of {', '.join(c for c in COLUMNS if c != 'error')}")
        if y not in numeric:
            raise RidgelineError(f"--y {y!r} is not a numeric sweep column; one of {', '.join(numeric)}")
    formats = tuple(w.lower() for w in _csv_list(weights, "--weights"))
    # a misspelt format is bad input (exit 2); a format that does not fit a model's rows is a row's error
    for w in formats:
        if not is_recipe(w):
            get_format(w)
    kv = _kv_default(acts, kv)
    get_kv_format(kv)
    axes = SweepAxes(models=specs, devices=devs, scenarios=tuple(scenarios), weights=formats,
                     layers=depths, batches=batches, acts=acts, kv=kv)
    start = time.perf_counter()
    # the progress bar only on a terminal: elsewhere rich would still leave a blank line on stderr
    with Progress(console=err_console, transient=True,
                  disable=as_json or as_csv or not err_console.is_terminal) as progress:
        task = progress.add_task("sweep", total=axes.size)
        rows = run_sweep(axes, progress=lambda n: progress.advance(task, n))
    wall = time.perf_counter() - start
    rows = _finite(rows)
    if out:
        with _writing(out):
            if out.suffix.lower() == ".csv":
                write_text(out, rows_to_csv(rows))
            else:
                write_json(out, {"rows": rows, "wall_time_s": wall})
    if plot:
        varying = [c for c in ("model", "layers", "device", "scenario", "prompt", "generate", "batch", "weights")
                   if c != x and len({r[c] for r in rows}) > 1]
        with _writing(plot):
            plot_sweep(rows, x, y, plot, group_by=varying, title=f"{y} vs {x}")
    if as_json:
        print(_dumps({"rows": rows, "wall_time_s": wall}))
    elif as_csv:
        sys.stdout.write(rows_to_csv(rows))
    else:
        t = Table(title=f"sweep: {len(rows)} rows in {seconds(wall)}")
        shown = ("model", "layers", "device", "scenario", "batch", "weights", "ttft_s", "decode_tokens_per_s",
                 "decode_intensity", "decode_bound", "memory_bytes", "fits")
        for c in shown:
            t.add_column(c)
        for r in rows:
            if r.get("error"):
                t.add_row(*[escape(str(r.get(c, ""))) for c in shown[:6]], f"[red]{escape(r['error'])}[/red]", *[""] * 5)
                continue
            t.add_row(escape(r["model"]), str(r["layers"]), escape(r["device"]), escape(r["scenario"]), str(r["batch"]),
                      escape(r["weights"]), seconds(r["ttft_s"]),
                      f"{r['decode_tokens_per_s']:.4g}" if r["decode_tokens_per_s"] else "-",
                      f"{r['decode_intensity']:.3g}" if r["decode_intensity"] is not None else "-",
                      r["decode_bound"], si(r["memory_bytes"], "B"), "yes" if r["fits"] else "[red]no[/red]")
        console.print(t)


@app.command()
@_cli
def plot(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="config.json, model folder, .gguf file or catalogue id (`ridgeline models`)"),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="catalogue id, 'local' after `ridgeline probe`, or a device file"),
    scenario: str = typer.Option("SISO", "--scenario", "-s", help="SISO, LISO, SILO, LILO or P:N"),
    batch: int = typer.Option(1, "--batch", "-b", help="sequences decoded together"),
    weights: Optional[str] = _WEIGHTS,
    acts: str = _ACTS,
    kv: Optional[str] = _KV,
    compute: Optional[str] = _COMPUTE,
    layers: Optional[int] = typer.Option(None, "--layers", help="model depth N: the first N layers"),
    attention: str = _ATTN,
    act_traffic: str = _TRAFFIC,
    logits: str = _LOGITS,
    mla_cache: str = _MLA_CACHE,
    mla_decode: str = _MLA_DECODE,
    causal: bool = _CAUSAL,
    operators: bool = typer.Option(True, "--operators/--phases-only", help="also plot every operator"),
    records: Optional[list[Path]] = typer.Option(None, "--records", help="bench results JSON (`ridgeline bench --out`): add measured points and their roofs; repeatable"),
    out: Path = typer.Option(Path("roofline"), "--out", "-o", help="output stem: writes STEM.png and STEM.svg"),
    device_file: Optional[Path] = _DEVICE_FILE,
) -> None:
    """Draw the device roofline with the workload's phases and operators (and measured runs) to PNG and SVG."""
    from ridgeline.report.measured import measured_points, result_roofs
    from ridgeline.report.plot import device_roofs, plot_roofline, prediction_points

    results = [r for f in records or [] for r in _read_results(f)]
    if model is None or device is None:
        if not results:
            raise RidgelineError("plot needs --model and --device (an analytic roofline), or --records FILE "
                                 "(measured runs)")
        roofs, points, title = result_roofs(results), measured_points(results), f"{results[0]['model']['name']}: measured runs"
    else:
        pred = _predict(model, device, scenario, batch, layers, weights, acts, kv, compute, device_file,
                        _options(attention, act_traffic, logits, mla_cache, mla_decode, causal))
        wl, dev = pred.workload, pred.device
        roofs = device_roofs(pred, ("fp32", "bf16", "int8")) + result_roofs(results)
        points = prediction_points(pred, operators) + measured_points(results, analytic=False)
        title = f"{wl.model.name} · {wl.scenario.label} · {wl.precision.weights} on {dev.name}"
    with _writing(out):
        paths = plot_roofline(roofs, points, out, title=title)
    for p in paths:
        console.print(f"wrote {escape(str(p))}", highlight=False)


def _read_results(path: Path) -> list[dict]:
    """The results of a `ridgeline bench --out` (or demo bench.json) file."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise RidgelineError(f"cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RidgelineError(f"{path} is not JSON; expected the output of `ridgeline bench --out`") from None
    if not isinstance(data, dict) or data.get("kind") != "ridgeline.bench.results":
        raise RidgelineError(f"{path} is not a ridgeline bench results file (kind 'ridgeline.bench.results')")
    return [r for key in ("results", "depth_sweep", "thread_sweep") for r in data.get(key, [])]


@contextlib.contextmanager
def _progress(description: str) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar on stderr; yields the (what, done, total) callback library code reports to."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # piped or captured stderr gets no bar (it would leave blank lines around a one-line error)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
        task = bar.add_task(description, total=None)

        def report(what: str, done: int, total: int) -> None:
            bar.update(task, description=f"{description}: {what}", completed=done, total=total)

        yield report


def _probe(threads: Optional[int], array_mib: int, repeats: int, save: bool):
    """Run the probe with progress; save it as the 'local' device (and `local-<n>t`) when asked."""
    from ridgeline.measure.probe import probe_device, save_device
    from ridgeline.measure.probe import probe as run_probe

    with _progress("probe") as report:
        result = run_probe(threads=threads, array_mib=array_mib, repeats=repeats, progress=report)
    device = probe_device(result)
    path = save_device(device, result) if save else None
    return result, device, path


@app.command()
@_cli
def probe(
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="torch threads (default: torch's setting)"),
    array_mib: int = typer.Option(512, "--array-mib", help="size of each bandwidth array, MiB (far above the LLC)"),
    repeats: int = typer.Option(7, "--repeats", "-r", help="timed repeats per kernel (after 2 warm-ups)"),
    save: bool = typer.Option(True, "--save/--no-save", help="save as the 'local' device for --device local"),
    as_json: bool = typer.Option(False, "--json", help="print the full probe record as JSON"),
) -> None:
    """Measure this machine's roofs: read/copy/triad bandwidth, GEMM peaks (fp32, bf16, fp16, int8), GEMV rates."""
    from ridgeline.report.tables import probe_table

    result, device, path = _probe(threads, array_mib, repeats, save)
    if as_json:
        console.print_json(_dumps({"device": device.to_json(), "probe": result.to_json()}))
    else:
        console.print(probe_table(result))
        for w in result.warnings:
            err_console.print(f"[yellow]warning:[/yellow] {escape(w)}", highlight=False)
    if path is not None and not as_json:
        console.print(f"saved as device 'local' in {escape(str(path))}", highlight=False)


def _bench_grid(model: str, backends: list[str], scenarios: list, dtypes: list[str], threads: list[Optional[int]],
                layers: list[Optional[int]], repeats: int, warmup: int, impl: str, memory_limit: Optional[float],
                transforms: Sequence[tuple] = ((None, None, None),)):
    """Every config of the grid, grouped by what has to be loaded (one load per group); `transforms` are
    (kv, window, kv_heads) triples of the torch runs."""
    from ridgeline.measure.bench import BenchConfig

    groups = []
    for backend in backends:
        for dtype in (dtypes if backend == "torch" else ["stored"]):
            for t in threads:
                for k in (layers if backend == "torch" else [None]):
                    for kv, w, g in (transforms if backend == "torch" else [(None, None, None)]):
                        groups.append([BenchConfig(model, backend, sc, dtype, t, repeats, warmup, k, impl,
                                                   memory_limit, kv, w, g) for sc in scenarios])
    return groups


def _run_bench_grid(groups, device: str, reference: str, device_file: Optional[Path], label: str = "bench") -> list[dict]:
    """Run every group (one model load each) with progress; place each record on the probe and catalogue roofs."""
    from ridgeline.measure.bench import check_memory, load_runner, run_bench
    from ridgeline.measure.phi import place, result_json
    from ridgeline.measure.probe import roof_for_threads, torch_threads
    from ridgeline.measure.stats import cpu_model
    from ridgeline.specs.device import get_device, host_device

    for group in groups:
        for cfg in group:
            check_memory(cfg)  # refuse bad input and what will not fit before loading anything
    extra = (device_file,) if device_file else ()
    try:
        measured_roof = get_device(device, extra)
    except RidgelineError as exc:
        if device != "local":
            raise
        measured_roof = None
        err_console.print(f"[yellow]note:[/yellow] {escape(str(exc))}; Φ only against the catalogue roof",
                          highlight=False, soft_wrap=True)
    if reference == "auto":
        import os

        ref = host_device(cpu_model(), os.cpu_count())
    else:
        ref = None if reference == "none" else get_device(reference, extra)
    results = []
    total = sum(len(g) for g in groups)
    with _progress(label) as report:
        done = 0
        for group in groups:
            first = group[0]
            with torch_threads(first.threads):
                report(f"loading {first.model} ({first.backend} {first.dtype})", done, total)
                loaded = load_runner(first, max(c.scenario.prompt + c.scenario.generate + 1 for c in group))
                try:
                    for cfg in group:
                        what = f"{first.backend} {cfg.dtype} {cfg.scenario.label} t={cfg.threads or '-'}" + (
                            f" L={cfg.layers}" if cfg.layers else "")
                        rec = run_bench(cfg, loaded, lambda w, d, t: report(f"{what} {w}", done, total))
                        placed = []
                        if measured_roof is not None:  # the probe at the run's thread count, if there is one
                            placed.append(place(rec, roof_for_threads(measured_roof, rec.threads), "probe"))
                        if ref is not None:
                            placed.append(place(rec, ref, "catalogue"))
                        results.append(result_json(rec, placed))
                        done += 1
                finally:
                    loaded.close()
    return results


def _layer_list(text: Optional[str]) -> list[Optional[int]]:
    if text is None:
        return [None]
    return [None if t.strip().lower() == "all" else _int_list(t, "--layers")[0] for t in _csv_list(text, "--layers")]


@app.command()
@_cli
def bench(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="the bundled model (smollm2-135m), a .gguf, a model folder or a hub id"),
    backend: str = typer.Option("torch", "--backend", help="torch, llamacpp, or a comma list"),
    scenario: str = typer.Option("SISO", "--scenario", "-s", help="SISO, LISO, SILO, LILO or P:N; comma list for several"),
    dtype: str = typer.Option("fp32", "--dtype", help="torch weights/activations: fp32, bf16 or a comma list (llama.cpp runs the GGUF's types)"),
    threads: Optional[str] = typer.Option(None, "--threads", "-t", help="threads, or a comma list (thread sweep)"),
    layers: Optional[str] = typer.Option(None, "--layers", help="keep the first k layers (torch); comma list with 'all' for a depth sweep"),
    repeats: int = typer.Option(3, "--repeats", "-r", help="timed repeats per run"),
    warmup: int = typer.Option(1, "--warmup", help="untimed warm-up runs after loading"),
    impl: str = typer.Option("auto", "--impl", help="torch path: lean (static cache, fused projections), hf (transformers forward), auto"),
    device: str = typer.Option("local", "--device", "-d", help="measured roof: 'local' (from `ridgeline probe`) or any device"),
    reference: str = typer.Option("auto", "--reference", help="catalogue roof for Φ: a device id, 'auto' (this host's entry) or 'none'"),
    memory_limit: Optional[float] = typer.Option(None, "--memory-limit", help="refuse runs predicted to need more (GiB; default: memory available)"),
    as_json: bool = typer.Option(False, "--json", help="print the records as JSON"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the records (JSON) here"),
    plot_stem: Optional[Path] = typer.Option(None, "--plot", help="write STEM.png/.svg: measured points on the roofline (and STEM_layers / STEM_threads for sweeps)"),
    kv: Optional[str] = typer.Option(None, "--kv", help="torch: KV-cache formats, comma list (kivi2, kivi4, harmonia, bfp32m4, none); runs on the transformers path, quantized caches emulated"),
    window: Optional[str] = typer.Option(None, "--window", help="torch: sliding-window attention of W keys with a rolling-buffer cache, comma list with 'none'"),
    kv_heads: Optional[str] = typer.Option(None, "--kv-heads", help="torch: GQA, K/V heads mean-pooled to G (no uptraining), comma list"),
    device_file: Optional[Path] = _DEVICE_FILE,
) -> None:
    """Measure the scenario on a real model: TTFT, every decode step, Φ against the probe and catalogue roofs."""
    from ridgeline.io import write_json
    from ridgeline.report.measured import bench_table, phi_warnings
    from ridgeline.specs.scenario import parse_scenario

    backends = _csv_list(backend, "--backend")
    scenarios = [parse_scenario(s) for s in _csv_list(scenario, "--scenario")]
    thread_list = [None] if threads is None else _int_list(threads, "--threads")
    limit = None if memory_limit is None else memory_limit * 2**30
    transforms = [(k, w, g) for k in _optional_list(kv, "--kv", str) for w in _optional_list(window, "--window", int)
                  for g in _optional_list(kv_heads, "--kv-heads", int)]
    groups = _bench_grid(model, backends, scenarios, _csv_list(dtype, "--dtype"), thread_list, _layer_list(layers),
                         repeats, warmup, impl, limit, transforms)
    results = _run_bench_grid(groups, device, reference, device_file)
    if out is not None:
        with _writing(out):
            write_json(out, {"kind": "ridgeline.bench.results", "results": _finite(results)})
    if as_json:
        console.print_json(_dumps({"kind": "ridgeline.bench.results", "results": results}))
    else:
        console.print(bench_table(results))
        for r in results:
            _print_error_line(r)
    for w in phi_warnings(results):
        err_console.print(f"[yellow]modelling error:[/yellow] {escape(w)}", highlight=False)
    if plot_stem is not None:
        with _writing(plot_stem):
            for p in _bench_plots(results, plot_stem):  # with --json, stdout holds only the JSON
                (err_console if as_json else console).print(f"wrote {escape(str(p))}", highlight=False)


@app.command("serve-bench")
@_cli
def serve_bench(
    model: str = typer.Argument("smollm2-135m", help="the bundled model (smollm2-135m), a .gguf, a model folder or a hub id"),
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
    device_file: Optional[Path] = _DEVICE_FILE,
) -> None:
    """Replay a request trace through the paged-KV continuous-batching engine: throughput, TTFT, ITL, KV use, waste."""
    import torch

    from ridgeline.engine import Engine, EngineConfig, load_trace, replay, synthetic_trace
    from ridgeline.engine.serve import decode_points, place_decode_points, serve_record
    from ridgeline.engine.trace import prompt_tokens
    from ridgeline.io import write_json
    from ridgeline.loader import load_model
    from ridgeline.measure.bench import prompt_text

    if (requests is None) == (synthetic is None):
        raise RidgelineError("serve-bench needs exactly one of --requests FILE or --synthetic N")
    if plot_stem is not None and device is None:
        raise RidgelineError("--plot places decode steps on a roofline: give --device too")
    if dtype not in ("fp32", "bf16"):
        raise RidgelineError(f"--dtype must be fp32 or bf16, got {dtype!r}")
    config = EngineConfig(num_blocks=num_blocks, block_size=block_size, max_batched_tokens=max_batched_tokens,
                          max_num_seqs=max_num_seqs, prefix_caching=prefix_caching)
    if requests is not None:
        trace, trace_info = load_trace(requests), {"file": str(requests)}
    else:
        plen, olen = _range(prompt_len, "--prompt-len"), _range(output_len, "--output-len")
        trace = synthetic_trace(synthetic, rate, plen, olen, seed)
        trace_info = {"synthetic": synthetic, "rate": rate, "prompt_len": plen, "output_len": olen, "seed": seed}
    dev = None
    if device is not None:
        from ridgeline.specs.device import get_device

        dev = get_device(device, (device_file,) if device_file else ())
    if threads is not None:
        if threads < 1:
            raise RidgelineError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    from ridgeline.eval.run import apply_transforms, check_transforms

    check_transforms(dtype, None, window, kv_heads)
    lm, tok = load_model(model, dtype)
    lm = apply_transforms(lm, window, kv_heads)
    encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    corpus = encode(prompt_text())
    prompts = [prompt_tokens(r, encode, corpus, offset=97 * i) for i, r in enumerate(trace)]
    engine = Engine(lm, config)
    for i, (r, p) in enumerate(zip(trace, prompts)):  # refuse the whole trace before running any of it
        engine.check_request(p, r.params(), f"request {r.request_id or i + 1}")
    with _progress("serving requests") as report:
        result = replay(engine, trace, prompts, lambda done, total: report("finished", done, total),
                        realtime=not offline)
    placed = None
    if dev is not None:
        from ridgeline.specs.model import load_spec
        from ridgeline.specs.scenario import Precision

        spec = load_spec(model)
        spec = spec.with_window(window) if window else spec
        spec = spec.with_kv_heads(kv_heads) if kv_heads else spec
        placed = place_decode_points(decode_points(result.steps), spec, Precision(dtype, dtype, dtype), dev)
    record = _finite(serve_record(result, config, model, dtype, trace_info, placed,
                                  {"window": window, "kv_heads": kv_heads}))
    if out is not None:
        with _writing(out):
            write_json(out, record)
    if as_json:
        console.print_json(_dumps(record))
    else:
        from ridgeline.report.tables import serve_tables

        for t in serve_tables(record):
            console.print(t)
    if result.interrupted:
        err_console.print("interrupted: the record holds the requests finished so far")
    if plot_stem is not None and placed:
        with _writing(plot_stem):
            for p in _serve_plot(placed, dev, dtype, plot_stem, model):
                (err_console if as_json else console).print(f"wrote {escape(str(p))}", highlight=False)


@app.command()
@_cli
def gqa(
    model: str = typer.Argument("smollm2-135m", help="model to convert: the bundled model (smollm2-135m), .gguf, folder or hub id"),
    kv_heads: int = typer.Option(..., "--kv-heads", help="KV heads after conversion: any divisor of the query heads (fewer: pooling, more: exact expansion)"),
    steps: int = typer.Option(30, "--steps", help="uptraining budget in optimizer steps (each batch-size x seq-len calibration tokens)"),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, or muon (torch.optim.Muon on the 2-D block weights, AdamW on the rest)"),
    lr: float = typer.Option(1e-4, "--lr", help="peak learning rate (warm-up, then cosine)"),
    seq_len: int = typer.Option(256, "--seq-len", help="tokens per training sequence"),
    batch_size: int = typer.Option(2, "--batch-size", help="sequences per step"),
    train: str = typer.Option("all", "--train", help="parameters to train: all, attention or kv (k_proj/v_proj)"),
    context: int = typer.Option(512, "--context", help="perplexity window (tokens)"),
    eval_tokens: int = typer.Option(4096, "--eval-tokens", help="held-out tokens scored at each stage"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="save the uptrained model here (a transformers folder)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    report_out: Optional[Path] = typer.Option(None, "--report", help="write the report (JSON) here"),
) -> None:
    """MHA/GQA conversion: mean-pool K/V heads, uptrain on calibration text, report ppl and KV bytes per stage."""
    from rich.table import Table

    from ridgeline.io import write_json
    from ridgeline.loader import load_model
    from ridgeline.train import UptrainConfig
    from ridgeline.train.convert import convert_to_gqa, save_model

    config = UptrainConfig(steps=steps, seq_len=seq_len, batch_size=batch_size, lr=lr, optimizer=optimizer,
                           train=train, warmup=max(1, steps // 10))
    lm, tok = load_model(model, "fp32")
    with _progress("gqa") as report:
        rep = convert_to_gqa(lm, tok, kv_heads, config, context, eval_tokens, progress=report)
    record = {"kind": "ridgeline.gqa", "model": model, "kv_heads": kv_heads, "stages": rep.rows,
              "uptrain": rep.uptrain, "eval": rep.eval_settings}
    if out is not None:
        with _writing(out):
            save_model(lm, tok, out)
        record["saved"] = str(out)
    if report_out is not None:
        with _writing(report_out):
            write_json(report_out, _finite(record))
    if as_json:
        console.print_json(_dumps(record))
        return
    base = rep.rows[0]["kv_bytes_per_token"]
    t = Table(title=f"{model}: K/V heads {rep.rows[0]['kv_heads']} -> {kv_heads}, {rep.uptrain['steps']} "
                    f"{optimizer} steps ({rep.uptrain['tokens_seen']} tokens, {rep.uptrain['seconds']:.0f} s)")
    for c in ("stage", "KV heads", "KV bytes/token", "KV saved", "held-out ppl"):
        t.add_column(c, justify="left" if c == "stage" else "right")
    for r in rep.rows:
        t.add_row(r["stage"], str(r["kv_heads"]), f"{r['kv_bytes_per_token']:,.0f}",
                  f"{1 - r['kv_bytes_per_token'] / base:.0%}", f"{r['ppl']:.2f}")
    console.print(t)
    if rep.uptrain["interrupted"]:
        err_console.print("uptraining was interrupted; the last stage is the model after the completed steps")
    if out is not None:
        console.print(f"wrote {escape(str(out))} (loads in transformers; `ridgeline eval {escape(str(out))}`)",
                      highlight=False)


def _optional_list(text: Optional[str], what: str, kind: Callable[[str], Any]) -> list[Any]:
    """'a,b,none' -> [a, b, None]; no option -> [None]."""
    if text is None:
        return [None]
    out = []
    for item in _csv_list(text, what):
        try:
            out.append(None if item.lower() == "none" else kind(item))
        except ValueError:
            raise RidgelineError(f"{what}: {item!r} is not a {kind.__name__} (or 'none')") from None
    return out


def _range(text: str, what: str) -> tuple[int, int]:
    """'MIN:MAX' -> (MIN, MAX) integers."""
    lo, sep, hi = text.partition(":")
    try:
        return (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise RidgelineError(f"{what} must be MIN:MAX token counts, got {text!r}") from None


def _print_error_line(r: dict) -> None:
    """The prediction error of the decode time per token, for every record."""
    from ridgeline.report.measured import flat_rows

    row = flat_rows([r])[0]
    if row.get("predicted_decode_s_per_token_probe"):
        console.print(f"{row['run']} {row['scenario']}: decode {row['decode_s_per_token'] * 1e3:.2f} ms/token measured, "
                      f"{row['predicted_decode_s_per_token_probe'] * 1e3:.2f} predicted on the probe roof "
                      f"(error {row['decode_error_probe']:.0%})", highlight=False)


def _bench_plots(results: list[dict], stem: Path) -> list[Path]:
    """Roofline with measured and analytic points; a sweep plot when layers or threads vary."""
    from ridgeline.report.measured import measured_points, result_roofs, sweep_rows
    from ridgeline.report.plot import plot_roofline, plot_sweep

    if not results:
        return []
    r0 = results[0]
    paths = plot_roofline(result_roofs(results), measured_points(results), stem,
                          title=f"{r0['model']['name']}: measured runs on the roofline")
    rows = sweep_rows(results)
    for axis in ("layers", "threads"):
        if len({r[axis] for r in rows}) > 1:
            ys = ["measured", "predicted (probe roof)", "predicted (catalogue roof)"]
            paths += plot_sweep(rows, axis, ys, stem.parent / f"{stem.name}_{axis}", group_by=("run", "scenario"),
                                title=f"{r0['model']['name']}: decode tok/s vs {axis}, measured and analytic",
                                ylabel="decode tokens/s", logx=False)
    return paths


def _task_specs(tasks: str, task_dir: Optional[Path]) -> tuple[tuple[str, ...], dict[str, str]]:
    """'ppl,cloze,arc_easy=path.jsonl,piqa' -> task names and files (`name=PATH`, else from --task-dir)."""
    from ridgeline.eval.run import task_files_from_dir

    names, files = [], {}
    for item in _csv_list(tasks, "--tasks"):
        name, _, path = item.partition("=")
        names.append(name.strip())
        if path:
            files[name.strip()] = path.strip()
    missing = tuple(n for n in names if n not in ("ppl", "cloze") and n not in files)
    if missing and task_dir is not None:
        files.update(task_files_from_dir(task_dir, missing))
    return tuple(names), files


@app.command("eval")
@_cli
def eval_(
    models: list[str] = typer.Argument(..., help="models to compare: the bundled model (smollm2-135m), .gguf, folder or hub id"),
    tasks: str = typer.Option("ppl", "--tasks", help="comma list: ppl, cloze, and multiple-choice tasks as NAME=FILE or NAME with --task-dir (arc_easy, arc_challenge, hellaswag, piqa, social_iqa, winogrande, openbookqa, commonsense_qa, mmlu)"),
    task_dir: Optional[Path] = typer.Option(None, "--task-dir", help="folder holding <task>.jsonl files in the public data sets' formats"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16, or a comma list (one variant each)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="documents per multiple-choice task / cloze items"),
    batch_size: int = typer.Option(8, "--batch-size", help="sequences per forward pass"),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="text for ppl/cloze: default the held-out split of the bundled corpus; a text file; or hf:<dataset id>"),
    context: int = typer.Option(1024, "--context", help="perplexity window (tokens)"),
    stride: int = typer.Option(512, "--stride", help="perplexity stride: tokens newly scored per window"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="cap the perplexity text at this many tokens"),
    num_fewshot: int = typer.Option(0, "--num-fewshot", help="few-shot examples (MMLU layout)"),
    kv: Optional[str] = typer.Option(None, "--kv", help="KV-cache formats for ppl, comma list (kivi2, kivi4, harmonia, bfp32m4, none): each window streams through the cache in chunks of 128"),
    window: Optional[str] = typer.Option(None, "--window", help="sliding-window attention of W keys, comma list with 'none' (a perplexity-vs-W curve)"),
    kv_heads: Optional[str] = typer.Option(None, "--kv-heads", help="GQA: mean-pool K/V heads to G (any divisor of the query heads; no uptraining), comma list"),
    as_json: bool = typer.Option(False, "--json", help="print the records as JSON"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the records (JSON) here"),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="write the quality table as CSV here"),
) -> None:
    """Measure quality: perplexity, cloze and multiple-choice accuracy (lm-eval scoring), one row per variant."""
    from ridgeline.eval.run import EvalConfig, run_eval
    from ridgeline.io import write_json, write_text
    from ridgeline.report.quality import quality_rows, quality_table
    from ridgeline.roofline.sweep import rows_to_csv

    names, files = _task_specs(tasks, task_dir)
    configs = [EvalConfig(m, names, files, d, limit=limit, batch_size=batch_size, corpus=corpus, context=context,
                          stride=stride, max_tokens=max_tokens, num_fewshot=num_fewshot, kv=k, window=w, kv_heads=g)
               for m in models for d in _csv_list(dtype, "--dtype") for k in _optional_list(kv, "--kv", str)
               for w in _optional_list(window, "--window", int) for g in _optional_list(kv_heads, "--kv-heads", int)]
    records = []
    with _progress("eval") as report:
        for cfg in configs:
            records.append(run_eval(cfg, progress=lambda what, d, t, v=cfg.label: report(f"{v} {what}", d, t)))
    payload = {"kind": "ridgeline.eval.results", "records": records}
    rows = quality_rows(records)
    if out is not None:
        with _writing(out):
            write_json(out, _finite(payload))
    if csv_out is not None:
        with _writing(csv_out):
            write_text(csv_out, rows_to_csv(rows, list(dict.fromkeys(k for r in rows for k in r))))
    if as_json:
        console.print_json(_dumps(payload))
    else:
        console.print(quality_table(rows))


@app.command()
@_cli
def quantize(
    model: str = typer.Argument(..., help="model to quantize: the bundled model (smollm2-135m), .gguf, folder or hub id"),
    method: str = typer.Option(..., "--method", help="rtn, llm_int8, smoothquant, gptq, bfp or gguf"),
    out: Path = typer.Option(..., "--out", "-o", help="folder to write (safetensors + ridgeline_quant.json)"),
    bits: Optional[int] = typer.Option(None, "--bits", help="rtn/gptq weight bits (2-8; default 4)"),
    group: Optional[int] = typer.Option(None, "--group", help="rtn/gptq group size, 0 = per channel (default: 128, or 0 at 8 bits)"),
    sym: Optional[bool] = typer.Option(None, "--sym/--asym", help="rtn/gptq symmetric or asymmetric codes (default: sym at 8 bits)"),
    act_order: bool = typer.Option(False, "--act-order", help="gptq: quantize columns by decreasing Hessian diagonal"),
    static_groups: bool = typer.Option(False, "--static-groups", help="gptq: group scales from the original weights (keeps act-order kernel-friendly)"),
    damp: float = typer.Option(0.01, "--damp", help="gptq: Hessian damping, fraction of the mean diagonal"),
    alpha: float = typer.Option(0.5, "--alpha", help="smoothquant migration strength"),
    alpha_search: bool = typer.Option(False, "--alpha-search", help="smoothquant: pick alpha from 0.3..0.9 by calibration loss"),
    threshold: float = typer.Option(6.0, "--threshold", help="llm_int8 outlier threshold"),
    weight_format: str = typer.Option("mxint8", "--weight-format", help="bfp: weight format (mxint8, mxfp4, mxfp6_e2m3, bfp32m4, ...)"),
    act_format: str = typer.Option("mxint8", "--act-format", help="bfp: activation format, or 'none' for weight-only"),
    recipe: str = typer.Option("q4_k_m", "--recipe", help="gguf: llama.cpp type or recipe (q8_0, q4_0, q4_k_m, ...)"),
    lm_head: bool = typer.Option(False, "--lm-head", help="quantize lm_head too (an untied copy when embeddings are tied)"),
    kernel: bool = typer.Option(True, "--kernel/--emulate", help="run through the CPU int8/int4 kernels where the format has one"),
    calib: str = typer.Option("corpus", "--calib", help="calibration text: 'corpus' (offline calib split) or a text file"),
    calib_samples: int = typer.Option(128, "--calib-samples", help="calibration windows"),
    calib_seq: int = typer.Option(256, "--calib-seq", help="tokens per calibration window"),
    dtype: str = typer.Option("fp32", "--dtype", help="float dtype of the parameters left unquantized (fp32, bf16)"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Quantize a causal LM on the CPU (layer by layer for GPTQ) and save it; `eval`/`bench`/`analyze` read the folder."""
    from ridgeline.loader import load_model
    from ridgeline.quant import CalibrationConfig, make_config, quantize_, save_quantized
    from ridgeline.report.tables import quant_table

    calibration = CalibrationConfig(source=calib, n_samples=calib_samples, seq_len=calib_seq)
    config = make_config(method, bits=bits, group=group, sym=sym, act_order=act_order, static_groups=static_groups,
                         damp=damp, alpha=alpha, alpha_search=alpha_search, threshold=threshold,
                         weight_format=weight_format, act_format=None if act_format.lower() == "none" else act_format,
                         recipe=recipe, include_lm_head=lm_head, kernel=kernel, calibration=calibration)
    if not out.parent.is_dir():
        raise RidgelineError(f"cannot write {out}: folder {out.parent} does not exist")
    loaded, tokenizer = load_model(model, dtype=dtype)
    before = float(sum(p.numel() * p.element_size() for p in {id(p): p for p in loaded.parameters()}.values()))
    with _progress(f"quantize {config.method}") as report:
        manifest = quantize_(loaded, config, tokenizer=tokenizer, progress=lambda d, t, what: report(what, d, t))
        with _writing(out):
            save_quantized(loaded, tokenizer, out)
    if as_json:
        console.print_json(_dumps(manifest))
    else:
        console.print(quant_table(manifest, before, str(out)))


@app.command("export-gguf")
@_cli
def export_gguf(
    model: str = typer.Argument(..., help="float model to export: the bundled model (smollm2-135m), .gguf, folder or hub id"),
    type_: str = typer.Option("f16", "--type", help="f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k"),
    out: Path = typer.Option(..., "--out", "-o", help="the .gguf file to write (temporary file, renamed into place)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Write a GGUF llama.cpp loads (llama, mistral, qwen2), quantized with ridgeline's bit-exact ggml codecs."""
    from ridgeline.loader import load_model, resolve
    from ridgeline.quant.export import export_gguf as run_export
    from ridgeline.report.tables import si

    source = resolve(model)
    loaded, tokenizer = load_model(model, dtype="fp32")
    with _progress(f"export {type_}") as report:
        with _writing(out):
            result = run_export(loaded, tokenizer, out, type_, source_gguf=source.gguf,
                                progress=lambda d, t: report("tensors", d, t))
    if as_json:
        console.print_json(_dumps(result.to_json()))
        return
    t = Table(title=f"{result.path} ({result.type})")
    t.add_column("ggml type")
    t.add_column("tensors", justify="right")
    t.add_column("bytes", justify="right")
    for kind, count in sorted(result.type_counts.items()):
        t.add_row(kind, str(count), si(result.type_bytes[kind], "B"))
    t.add_row("total (file)", str(result.tensors), si(result.bytes, "B"))
    console.print(t)
    console.print(f"{result.bits_per_weight:.3f} bits per weight, {result.seconds:.1f} s")


#: the demo's reduced RooflineBench grid: short in/short out, longer in, longer out (few minutes on 2 cores)
DEMO_GRID = ("128:64", "512:64", "128:256")


@app.command()
@_cli
def demo(
    out: Path = typer.Option(Path("results/demo"), "--out", "-o", help="results folder"),
    scenarios: str = typer.Option(",".join(DEMO_GRID), "--scenarios", help="the grid (P:N comma list)"),
    repeats: int = typer.Option(3, "--repeats", "-r", help="timed repeats per run"),
    depths: str = typer.Option("2,8,16,all", "--depths", help="depth sweep (first k layers, torch bf16)"),
    thread_list: Optional[str] = typer.Option(None, "--threads", help="thread sweep (default: 1 and torch's default)"),
    llamacpp: bool = typer.Option(True, "--llamacpp/--no-llamacpp", help="include the llama.cpp backend"),
) -> None:
    """The main job on the bundled model: probe → analyze → bench (torch fp32/bf16, llama.cpp) → int8/int4 quantization
    → quality (KV formats too) → serving (paged KV, continuous batching) → HTML."""
    import torch

    import shutil
    import tempfile

    from ridgeline.eval.run import EvalConfig, run_eval
    from ridgeline.io import write_json, write_text
    from ridgeline.loader import bundled_gguf, load_model
    from ridgeline.quant import make_config, quantize_, save_quantized
    from ridgeline.report.tables import quant_table
    from ridgeline.measure.backends import llama_cpp_available
    from ridgeline.report.measured import bench_table, flat_rows
    from ridgeline.report.plot import device_roofs, plot_roofline, prediction_points
    from ridgeline.report.quality import quality_rows, quality_table
    from ridgeline.report.summary import summary_report
    from ridgeline.report.tables import probe_table, summary_table
    from ridgeline.roofline.evaluate import evaluate, prediction_json
    from ridgeline.roofline.sweep import rows_to_csv
    from ridgeline.roofline.workload import build_workload
    from ridgeline.specs.model import load_spec
    from ridgeline.specs.scenario import Precision, parse_scenario

    grid = [parse_scenario(x) for x in _csv_list(scenarios, "--scenarios")]
    gguf = bundled_gguf()
    spec = load_spec(str(gguf))
    default = torch.get_num_threads()  # what runs without --threads use
    threads = _int_list(thread_list, "--threads") if thread_list else sorted({1, default})
    if llamacpp and not llama_cpp_available():
        err_console.print("[yellow]note:[/yellow] llama-cpp-python is not installed (pip install 'ridgeline[llamacpp]'); "
                          "skipping the llama.cpp backend", highlight=False)
        llamacpp = False
    console.rule(f"[bold]ridgeline demo: {spec.name} ({spec.param_count() / 1e6:.1f} M params, {gguf.name})")
    console.print("scenarios (prompt:generated tokens): " + ", ".join(s.label for s in grid)
                  + f"; depth sweep {depths} layers and thread sweep {threads} at {grid[0].label}", highlight=False)

    console.rule("1. probe: this machine's roofs")
    for t in [t for t in threads if t != default]:  # roofs for the thread sweep (kept as local-<n>t)
        _probe(t, 256, 5, save=True)
    probe_result, local, _ = _probe(default, 256, 5, save=True)  # the default roof, saved as `local`
    console.print(probe_table(probe_result))

    console.rule("2. analyze: the analytic roofline on the probed roofs")
    predictions = []
    for prec in (Precision("fp32", "fp32", "fp32"), Precision("bf16", "bf16", "bf16"),
                 Precision("stored", "fp32", "fp16", compute="int8")):
        for sc in grid:
            predictions.append(evaluate(build_workload(spec, sc, prec), local))
    console.print(summary_table(predictions[len(grid)]))  # bf16 at the first scenario
    with _writing(out):
        write_json(out / "probe.json", _finite({"device": local.to_json(), "probe": probe_result.to_json()}))
        write_json(out / "analyze.json", _finite({"predictions": [prediction_json(p, per_operator=True)
                                                                  for p in predictions]}))
        analytic_plot = plot_roofline(device_roofs(predictions[len(grid)], ("fp32", "int8")),
                                      prediction_points(predictions[len(grid)], True), out / "roofline_analytic",
                                      title=f"{spec.name} · {grid[0].label} · bf16 on {local.name} (analytic)")

    console.rule("3. bench: measured runs (load and warm-up excluded)")
    backends = ["torch"] + (["llamacpp"] if llamacpp else [])
    main_groups = _bench_grid("smollm2-135m", backends, grid, ["fp32", "bf16"], [None], [None], repeats, 1, "auto",
                              None)
    results = _run_bench_grid(main_groups, "local", "auto", None, "bench")
    console.print(bench_table(results))
    for r in results:
        _print_error_line(r)
    depth_groups = _bench_grid("smollm2-135m", ["torch"], grid[:1], ["bf16"], [None], _layer_list(depths),
                               max(2, repeats - 1), 1, "auto", None)
    depth = _run_bench_grid(depth_groups, "local", "auto", None, "depth sweep")
    thread_groups = _bench_grid("smollm2-135m", backends, grid[:1], ["bf16"], threads, [None],
                                max(2, repeats - 1), 1, "auto", None)
    thread = _run_bench_grid(thread_groups, "local", "auto", None, "thread sweep")
    console.print(bench_table(depth, "depth sweep (first k layers)"))
    console.print(bench_table(thread, "thread sweep"))

    console.rule("4. quantize: int8 and int4 weight-only (lm_head too) on the CPU kernels, measured like the rest")
    quant_dir = Path(tempfile.mkdtemp(prefix="ridgeline-demo-"))
    variants = {"rtn-w8": make_config("rtn", bits=8, include_lm_head=True),
                "rtn-w4-g128": make_config("rtn", bits=4, group=128, include_lm_head=True)}
    quantized = []
    for name, qcfg in variants.items():
        model, tok = load_model("smollm2-135m", "fp32")
        before = float(sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values()))
        manifest = quantize_(model, qcfg)
        save_quantized(model, tok, quant_dir / name)
        del model
        console.print(quant_table(manifest, before, name))
        quantized += _run_bench_grid(_bench_grid(str(quant_dir / name), ["torch"], grid[:1], ["bf16"], [None], [None],
                                                 repeats, 1, "auto", None), "local", "auto", None, name)
    console.print(bench_table(quantized, f"quantized, torch bf16 activations, {grid[0].label}"))

    console.rule("5. quality: held-out perplexity and cloze per variant")
    quality = []
    with _progress("eval") as report:
        evals = [("smollm2-135m", d, "", None) for d in ("fp32", "bf16")] + \
                [(str(quant_dir / name), "bf16", name, None) for name in variants] + \
                [("smollm2-135m", "fp32", "", kv) for kv in ("kivi4", "kivi2", "harmonia")]
        for model_name, d, variant, kv in evals:
            cfg = EvalConfig(model_name, ("ppl",) if kv else ("ppl", "cloze"), dtype=d, variant=variant, context=512,
                             stride=256, max_tokens=4096, cloze_items=50, batch_size=4, kv=kv)
            quality.append(run_eval(cfg, progress=lambda what, i, n, v=cfg.label: report(f"{v} {what}", i, n)))
    shutil.rmtree(quant_dir, ignore_errors=True)
    console.print(quality_table(quality_rows(quality)))
    results = results + quantized

    console.rule("6. serve: 8 requests (Poisson arrivals) through the paged-KV continuous-batching engine")
    serve_record, serve_plot = _demo_serve(out)
    from ridgeline.report.tables import serve_tables

    for t in serve_tables(serve_record):
        console.print(t)

    console.rule("7. results")
    with _writing(out):
        payload = {"kind": "ridgeline.bench.results", "results": results, "depth_sweep": depth, "thread_sweep": thread}
        write_json(out / "bench.json", _finite(payload))
        write_json(out / "quality.json", _finite({"kind": "ridgeline.eval.results", "records": quality}))
        rows = _finite(flat_rows(results + depth + thread))
        write_text(out / "bench.csv", rows_to_csv(rows, list(dict.fromkeys(k for r in rows for k in r))))
        measured_plot = _bench_plots(results, out / "roofline")
        depth_plot = _bench_plots(depth, out / "depth")
        thread_plot = _bench_plots(thread, out / "threads")
        plots = [(measured_plot[1], "Measured prefill and decode points (filled) and the analytic prediction "
                                    "(hollow) on the catalogue (solid) and probe (dashed) roofs"),
                 (analytic_plot[1], "Analytic roofline, every operator of the bf16 run")]
        plots += [(p, "Depth sweep: decode tok/s of the first k layers, measured and predicted")
                  for p in depth_plot if p.name.startswith("depth_layers") and p.suffix == ".svg"]
        plots += [(p, "Thread sweep: decode tok/s, measured and predicted")
                  for p in thread_plot if p.name.startswith("threads_threads") and p.suffix == ".svg"]
        plots += [(p, "Serving: the engine's decode-only steps by batch size (measured) beside analyze --batch B")
                  for p in serve_plot if p.suffix == ".svg"]
        report = summary_report(
            f"ridgeline demo: {spec.name} on {local.name}", probe_result.to_json(),
            [prediction_json(p) for p in predictions], results + depth + thread, plots, quality=quality,
            notes=[f"Scenarios (prompt:generated): {', '.join(s.label for s in grid)}. Prefill of exactly P tokens, "
                   "then N decode steps on the same cache; greedy, EOS ignored. Φ is against the probe's measured "
                   "roof; the catalogue roof is this host's catalogue entry."])
        write_text(out / "report.html", report.render())
    console.print(f"results in {escape(str(out))}/: report.html, bench.json, bench.csv, quality.json, serve.json, probe.json, "
                  "analyze.json, roofline*.png/.svg, serve_roofline.png/.svg, depth_layers.png/.svg, "
                  "threads_threads.png/.svg", highlight=False)


def _demo_serve(out: Path) -> tuple[dict, list[Path]]:
    """A small serve-bench on the bundled model: replay, placement on the local roof, serve.json and a plot."""
    from ridgeline.engine import Engine, EngineConfig, replay, synthetic_trace
    from ridgeline.engine.serve import decode_points, place_decode_points, serve_record
    from ridgeline.engine.trace import prompt_tokens
    from ridgeline.io import write_json
    from ridgeline.loader import load_model
    from ridgeline.measure.bench import prompt_text
    from ridgeline.specs.device import get_device
    from ridgeline.specs.model import load_spec
    from ridgeline.specs.scenario import Precision

    trace = synthetic_trace(8, 1.0, (32, 256), (16, 48), seed=0)
    model, tok = load_model("smollm2-135m", "fp32")
    encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    corpus = encode(prompt_text())
    prompts = [prompt_tokens(r, encode, corpus, offset=97 * i) for i, r in enumerate(trace)]
    config = EngineConfig()
    with _progress("serving") as report:
        result = replay(Engine(model, config), trace, prompts, lambda d, t: report("finished", d, t))
    local = get_device("local")
    placed = place_decode_points(decode_points(result.steps), load_spec("smollm2-135m"),
                                 Precision("fp32", "fp32", "fp32"), local)
    record = _finite(serve_record(result, config, "smollm2-135m", "fp32",
                                  {"synthetic": 8, "rate": 1.0, "prompt_len": [32, 256], "output_len": [16, 48],
                                   "seed": 0}, placed))
    with _writing(out):
        write_json(out / "serve.json", record)
        paths = _serve_plot(placed, local, "fp32", out / "serve_roofline", "smollm2-135m")
    return record, paths


def _serve_plot(placed: list[dict], dev: Any, dtype: str, stem: Path, model: str) -> list[Path]:
    """Measured engine decode steps and the analytic batch-decode points on the device roofline."""
    from ridgeline.report.plot import Point, Roof, plot_roofline

    if not placed:
        return []
    roofs = [Roof(f"{dev.name} {dtype}", dev.bandwidth_Bps, dev.peak_flops.get(dtype) or max(dev.peak_flops.values()))]
    points = [Point(f"B={p['batch']}", p["intensity"], p["flops"] / p["predicted_step_s"],
                    "analytic decode (analyze --batch B)") for p in placed]
    points += [Point(f"B={p['batch']}", p["intensity"], p["achieved_flops"], f"measured engine {dtype}")
               for p in placed]
    return plot_roofline(roofs, points, stem, title=f"{model}: engine decode steps by batch size")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
