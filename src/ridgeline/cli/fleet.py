"""`ridgeline fleet probe|bench|eval --cluster ...`: the same measurements on every node of a Ray cluster.

probe and bench run one task per node, pinned there and holding all its CPUs (never two measurements on one
node at once); eval runs one task per variant anywhere. Results from every node are merged into one file
(`--out`, written only when the run ends: Ctrl-C leaves none and stops a local:N cluster it started).
Tasks that failed are listed by name and the exit code is 1; bad input is one line and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ridgeline.cli.common import (app, command, console, csv_list, dumps, int_list, layer_list, note, say, variants,
                                  write_record, writing)
from ridgeline.cli.progress import progress
from ridgeline.errors import RidgelineError

fleet_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                        help="probe, bench and eval on every node of a Ray cluster (needs Ray: the ray extra of ridgeline)")
app.add_typer(fleet_app, name="fleet")


@fleet_app.callback()
@command
def needs_ray() -> None:
    """Run probe, bench and eval on every node of a Ray cluster."""
    from ridgeline.fleet import require_ray

    require_ray()  # before anything else: without Ray every fleet command says how to install it

CLUSTER = typer.Option(None, "--cluster", help="auto (the Ray cluster this machine belongs to), ray://HOST:PORT (a Ray client connection to a head node) or local:N (N simulated nodes on this machine, for tests and demos)")
NODES = typer.Option(None, "--nodes", help="comma list of node labels or node-id prefixes (default: every alive node with a CPU)")
PROBE_THREADS = typer.Option(None, "--probe-threads", help="probe threads (default: the node's CPUs in Ray)")
PROBE_MIB = typer.Option(512, "--probe-array-mib", help="size of each probe bandwidth array, MiB (far above the LLC)")
PROBE_REPEATS = typer.Option(7, "--probe-repeats", help="timed repeats per probe kernel")
OUT = typer.Option(None, "--out", "-o", help="write the merged results (JSON) here when the run ends")
AS_JSON = typer.Option(False, "--json", help="print the merged results as JSON")


def _settings(threads: Optional[int], array_mib: int, repeats: int):
    from ridgeline.fleet import ProbeSettings

    return ProbeSettings(threads=threads, array_mib=array_mib, repeats=repeats, warmup=min(2, repeats))


def _cluster(text: Optional[str]) -> str:
    """--cluster, checked before anything is built (no cluster: say what the commands need)."""
    from ridgeline.fleet import parse_cluster

    return str(parse_cluster(text))


def _nodes(text: Optional[str]) -> Optional[list[str]]:
    return csv_list(text, "--nodes") if text is not None else None


def _finish(run, payload: dict, out: Optional[Path], as_json: bool) -> None:
    """Refuse bad input (every task refused it: one line, nothing written), else write and print the payload."""
    refused = run.refused()
    if refused is not None:
        raise RidgelineError(f"{refused.name}: {refused.error}")
    write_record(out, payload)
    if as_json:
        console.print_json(dumps(payload))


def _failures(run) -> None:
    """Every failed task by name; exit code 1 when there is one (what finished was written)."""
    for f in run.failed:
        note(f"{f.name}: {f.error}", "failed")
    if run.failed:
        raise typer.Exit(1)


@fleet_app.command("probe")
@command
def probe_command(
    cluster: Optional[str] = CLUSTER,
    nodes: Optional[str] = NODES,
    threads: Optional[int] = PROBE_THREADS,
    array_mib: int = PROBE_MIB,
    repeats: int = PROBE_REPEATS,
    as_json: bool = AS_JSON,
    out: Optional[Path] = OUT,
) -> None:
    """Probe every node's roofs (bandwidth, GEMM peaks, GEMV rates), one exclusive task per node."""
    from ridgeline.fleet import fleet_probe
    from ridgeline.report import probe_table

    cluster, settings = _cluster(cluster), _settings(threads, array_mib, repeats)
    with progress("fleet probe") as report:
        run = fleet_probe(cluster, settings, _nodes(nodes), report)
    _finish(run, run.payload("ridgeline.fleet.probe", key=None), out, as_json)
    for n in run.nodes if not as_json else ():
        say(f"node {n['node']['label']} ({n['node']['hostname']}, {n['node']['ip']}): device {n['device']['id']}")
        console.print(probe_table(n["result"]))
    _failures(run)


def _render_bench(run, plot_stem: Optional[Path], to_stderr: bool) -> None:
    """One table per node, then every node's roofs and points on one roofline plot (when asked)."""
    from ridgeline.cli.measure import render_bench
    from ridgeline.fleet import node_rows
    from ridgeline.report import bench_plots

    for n in run.nodes:
        label = n["node"]["label"]
        render_bench([r for r in run.records if r["node"]["label"] == label], f"node {label}: measured runs",
                     to_stderr=to_stderr)
    if plot_stem is not None and run.records:
        with writing(plot_stem):
            paths = bench_plots(node_rows(run.records), plot_stem)
        for p in paths:
            say(f"wrote {p}", stderr=to_stderr)


@fleet_app.command("bench")
@command
def bench_command(
    cluster: Optional[str] = CLUSTER,
    nodes: Optional[str] = NODES,
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="the bundled model, a catalogue id, a .gguf, a model folder or a hub id (the same path on every node)"),
    backend: str = typer.Option("torch", "--backend", help="torch, llamacpp, or a comma list"),
    scenario: str = typer.Option("SISO", "--scenario", "-s", help="SISO, LISO, SILO, LILO or P:N; comma list for several"),
    dtype: str = typer.Option("fp32", "--dtype", help="torch weights/activations: fp32, bf16 or a comma list"),
    threads: Optional[str] = typer.Option(None, "--threads", "-t", help="threads, or a comma list (default: the node's CPUs in Ray)"),
    layers: Optional[str] = typer.Option(None, "--layers", help="keep the first k layers (torch); comma list with 'all'"),
    repeats: int = typer.Option(3, "--repeats", "-r", help="timed repeats per run"),
    warmup: int = typer.Option(1, "--warmup", help="untimed warm-up runs after loading"),
    impl: str = typer.Option("auto", "--impl", help="torch path: native, lean, hf or auto"),
    reference: str = typer.Option("auto", "--reference", help="catalogue roof for Φ: a device id, 'auto' (each node's own catalogue entry) or 'none'"),
    memory_limit: Optional[float] = typer.Option(None, "--memory-limit", help="refuse runs predicted to need more (GiB; default: memory available on the node)"),
    kv: Optional[str] = typer.Option(None, "--kv", help="torch: KV-cache formats, comma list"),
    window: Optional[str] = typer.Option(None, "--window", help="torch: sliding windows, comma list with 'none'"),
    kv_heads: Optional[str] = typer.Option(None, "--kv-heads", help="torch: K/V heads mean-pooled to G, comma list"),
    probe_threads: Optional[int] = PROBE_THREADS,
    probe_array_mib: int = PROBE_MIB,
    probe_repeats: int = PROBE_REPEATS,
    as_json: bool = AS_JSON,
    out: Optional[Path] = OUT,
    plot_stem: Optional[Path] = typer.Option(None, "--plot", help="write STEM.png/.svg: every node's probe roof and measured points on one roofline"),
) -> None:
    """Probe each node, then run the bench grid on its own cores; Φ against each node's own roofs."""
    from ridgeline.fleet import fleet_bench
    from ridgeline.measure import BenchGrid
    from ridgeline.specs import parse_scenario

    cluster = _cluster(cluster)
    grid = BenchGrid(model=model, backends=csv_list(backend, "--backend"),
                     scenarios=[parse_scenario(s) for s in csv_list(scenario, "--scenario")],
                     dtypes=csv_list(dtype, "--dtype"), threads=[None] if threads is None else int_list(threads, "--threads"),
                     layers=layer_list(layers), variants=variants(kv, window, kv_heads), repeats=repeats, warmup=warmup,
                     impl=impl, memory_limit=None if memory_limit is None else memory_limit * 2**30)
    settings = _settings(probe_threads, probe_array_mib, probe_repeats)
    with progress("fleet bench") as report:
        run = fleet_bench(cluster, grid, settings, reference, _nodes(nodes), report)
    _finish(run, run.payload("ridgeline.bench.results"), out, as_json)
    _render_bench(run, plot_stem, to_stderr=as_json)
    _failures(run)


@fleet_app.command("eval")
@command
def eval_command(
    models: list[str] = typer.Argument(..., help="models to compare (the same path or id on every node)"),
    cluster: Optional[str] = CLUSTER,
    tasks: str = typer.Option("ppl", "--tasks", help="comma list: ppl, cloze, and multiple-choice tasks as NAME=FILE or NAME with --task-dir"),
    task_dir: Optional[Path] = typer.Option(None, "--task-dir", help="folder holding <task>.jsonl files (the same path on every node)"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16, or a comma list (one variant each)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="documents per multiple-choice task / cloze items"),
    batch_size: int = typer.Option(8, "--batch-size", help="sequences per forward pass"),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="text for ppl/cloze (default: the bundled corpus's held-out split)"),
    context: int = typer.Option(1024, "--context", help="perplexity window (tokens)"),
    stride: int = typer.Option(512, "--stride", help="perplexity stride"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="cap the perplexity text at this many tokens"),
    kv: Optional[str] = typer.Option(None, "--kv", help="KV-cache formats for ppl, comma list"),
    window: Optional[str] = typer.Option(None, "--window", help="sliding windows, comma list with 'none'"),
    kv_heads: Optional[str] = typer.Option(None, "--kv-heads", help="GQA: K/V heads mean-pooled to G, comma list"),
    cpus: float = typer.Option(1, "--cpus-per-task", help="CPUs each variant's task holds (Ray's num_cpus)"),
    as_json: bool = AS_JSON,
    out: Optional[Path] = OUT,
) -> None:
    """Quality of many variants at once: one task per variant anywhere in the cluster, retried if its node dies."""
    from ridgeline.eval import EvalConfig, parse_tasks
    from ridgeline.fleet import fleet_eval
    from ridgeline.report import quality_rows, quality_table

    cluster = _cluster(cluster)
    names, files = parse_tasks(tasks, task_dir)
    configs = [EvalConfig(m, names, files, d, limit=limit, batch_size=batch_size, corpus=corpus, context=context,
                          stride=stride, max_tokens=max_tokens, variant=v)
               for m in models for d in csv_list(dtype, "--dtype") for v in variants(kv, window, kv_heads)]
    with progress("fleet eval") as report:
        run = fleet_eval(cluster, configs, report, num_cpus=cpus)
    _finish(run, run.payload("ridgeline.eval.results", key="records"), out, as_json)
    if not as_json:
        console.print(quality_table(quality_rows(run.records)))
        for r in run.records:
            say(f"{r['variant']}: ran on node {r['node']['label']}")
    _failures(run)
