"""Fleets on Ray: a local cluster of simulated nodes on 127.0.0.1 that the tests start and stop.

One cluster (two nodes of one CPU each) serves the module; the node-loss tests add a node and kill it mid-run,
and the Ctrl-C test starts its own one-node cluster in a subprocess. Ray's files live in a fresh folder under
/tmp (removed on shutdown), with no dashboard and no usage report. The tests skip, saying why, only when Ray
is absent; the missing-Ray message is tested either way.
"""

from __future__ import annotations

import faulthandler
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import one_line_error
from typer.testing import CliRunner

from ridgeline.cli import app
from ridgeline.errors import RidgelineError
from ridgeline.fleet import map_tasks

HAS_RAY = __import__("importlib").util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed: pip install 'ridgeline[ray]' "
                                                    "(`make test` installs it)")
#: the smallest probe that still measures every kernel (seconds per node, not minutes)
PROBE = dict(array_mib=8, repeats=1, warmup=0)
PROBE_ARGS = ["--probe-array-mib", "8", "--probe-repeats", "1"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_without_ray_every_fleet_command_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    for args in (["probe", "--cluster", "local:2"], ["bench", "--cluster", "auto"], ["eval", "m", "--cluster", "local:1"],
                 ["probe"]):
        one_line_error(cli("fleet", *args), "pip install 'ridgeline[ray]'")
    with pytest.raises(RidgelineError, match=r"ridgeline\[ray\]"):
        map_tasks(abs, [1], "local:1")
    assert map_tasks(abs, [-1, 2]).ordered() == [1, 2]  # no cluster: the same call runs here, without Ray


def test_only_the_fleet_package_imports_ray():
    import ast

    import ridgeline

    root = Path(ridgeline.__file__).parent
    users = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                users.add(path.relative_to(root).parts[0])
                assert node.col_offset > 0, f"{path}: ray imported at module level"
    assert users == {"fleet"}


def test_map_tasks_without_a_cluster_names_failures():
    seen = []
    res = map_tasks(lambda x: 10 // x, [5, 0, 2], progress=lambda w, d, t: seen.append((w, d, t)), name=str)
    assert res.values == {"5": 2, "2": 5} and res.ordered() == [2, 5]
    assert [(f.name, f.bad_input) for f in res.failed] == [("0", False)] and "ZeroDivisionError" in res.failed[0].error
    assert seen == [("5 done", 1, 3), ("0 failed", 2, 3), ("2 done", 3, 3)]


def _row(node, device, name, bandwidth, **extra):
    """A flat bench row placed on a probe roof only, with the keys the roofline plot reads."""
    r = {"run": "torch fp32", "roof_device_probe": device, "roof_name_probe": name, "roof_peak_dtype_probe": "fp32",
         "roof_bandwidth_Bps_probe": bandwidth, "roof_peak_flops_probe": 1e11, "roof_device_catalogue": None, **extra}
    for ph, oi in (("prefill", 20.0), ("decode", 0.5)):
        r.update({f"{ph}_intensity_probe": oi, f"{ph}_achieved_flops_probe": 1e9, f"{ph}_predicted_s_probe": 0.5,
                  f"{ph}_flops_probe": 1e9})
    return r if node is None else {**r, "node": node}


def test_the_report_draws_each_node_its_roof_and_points_and_local_rows_as_before():
    from ridgeline.report import measured_points, result_roofs

    rows = [_row("pi", "node-pi", "pi: Cortex-A76 (4 threads, probed)", 9e9),
            _row("m1", "node-m1", "Apple M1 (8 threads, probed)", 6e10)]
    assert [(r.label, r.bandwidth_Bps, r.style, r.group) for r in result_roofs(rows)] == [
        ("m1 · probe roof fp32: Apple M1 (8 threads, probed)", 6e10, "--", "m1 fp32"),
        ("probe roof fp32: pi: Cortex-A76 (4 threads, probed)", 9e9, "--", "pi fp32")]
    pts = measured_points(rows)
    assert {p.series for p in pts} == {"measured pi · torch fp32", "measured m1 · torch fp32",
                                       "analytic (pi · probe roof)", "analytic (m1 · probe roof)"}
    assert sorted(p.flops_per_s for p in pts if p.series.startswith("analytic")) == [2e9] * 4  # 1 GFLOP in 0.5 s
    local = [_row(None, "local", "EPYC (2 threads, probed)", 3e10)]  # a record without `node`: as before
    assert [(r.label, r.group) for r in result_roofs(local)] == [("probe roof fp32: EPYC (2 threads, probed)", "fp32")]
    assert {p.series for p in measured_points(local)} == {"measured torch fp32", "analytic (probe roof)"}


# ---------------------------------------------------------------------------------------------------------
# on a local cluster


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """local:2 for the whole module; the test functions travel to the workers by value (tests/ is no package)."""
    import ray.cloudpickle

    from ridgeline.fleet import open_fleet

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    faulthandler.dump_traceback_later(600, exit=True)  # a hung cluster must not hang the suite
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RIDGELINE_HOME", str(tmp_path_factory.mktemp("fleet_home")))  # the workers inherit it
        with open_fleet("local:2") as f:
            yield f
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def prose(tmp_path):
    from ridgeline.corpus import prompt_text

    f = tmp_path / "prose.txt"
    f.write_text(prompt_text())
    return f


def _paths(obj, prefix=""):
    """Every key path of a JSON record (lists: their first element's), to compare schemas."""
    if isinstance(obj, dict):
        return {p for k, v in obj.items() for p in {f"{prefix}/{k}"} | _paths(v, f"{prefix}/{k}")}
    if isinstance(obj, list) and obj and isinstance(obj[0], (dict, list)):
        return _paths(obj[0], prefix + "[]")
    return set()


@needs_ray
def test_records_from_every_node_keep_the_local_schema(fleet, tiny_model_dir):
    from ridgeline.fleet import ProbeSettings, fleet_bench
    from ridgeline.measure import BenchGrid, Roofs, flat_rows, run_grid
    from ridgeline.specs import Scenario, get_device

    nodes = fleet.nodes()
    assert len(nodes) == 2 and {n.ip for n in nodes} == {"127.0.0.1"} and len({n.label for n in nodes}) == 2
    grid = BenchGrid(model=str(tiny_model_dir), scenarios=[Scenario(8, 4)], repeats=1, warmup=0)
    seen = []
    run = fleet_bench(fleet, grid, ProbeSettings(**PROBE), reference="none", progress=lambda *a: seen.append(a))
    assert run.failed == [] and seen[-1][1:] == (2, 2)
    assert [r["node"]["id"] for r in run.records] == [n.id for n in nodes]  # node order, one run each
    assert [n["device"]["id"] for n in run.nodes] == [f"node-{n.label}" for n in nodes]

    local = run_grid(grid, Roofs(get_device("epyc-zen4-2vcpu"), None))[0]  # a local run placed on one roof
    for r in run.records:
        assert _paths(r) == _paths(local) | {"/node"} | {f"/node/{k}" for k in r["node"]}
        assert r["node"] == next(n.to_json() for n in nodes if n.id == r["node"]["id"])
        placed, ref = r["roofline"][0], local["roofline"][0]
        assert placed["device"] == f"node-{r['node']['label']}"
        for ph in ("prefill", "decode"):  # the same workload everywhere: FLOPs and bytes equal the local run's
            assert (placed[ph]["flops"], placed[ph]["bytes"]) == (ref[ph]["flops"], ref[ph]["bytes"])
        # Φ is placed on the node's own probe roof: its bandwidth is the one the node measured
        roof = next(n["device"] for n in run.nodes if n["node"]["id"] == r["node"]["id"])
        assert placed["bandwidth_Bps"] == roof["bandwidth_Bps"]
    rows = flat_rows(run.records)
    assert rows[0].keys() == flat_rows([local])[0].keys() and all(r["phi_decode_probe"] > 0 for r in rows)


@needs_ray
def test_a_node_task_runs_on_its_node_holding_all_its_cpus(fleet):
    from ridgeline.fleet import run_on_nodes

    def where(node):
        import ray

        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), ctx.get_assigned_resources()

    nodes = fleet.select()
    res = run_on_nodes(where, nodes, fleet)
    assert res.failed == []
    for n in nodes:
        node_id, held = res.values[n.label]
        assert node_id == n.id and held.get("CPU") == n.cpus  # pinned, and nothing else needing a CPU fits beside it


@needs_ray
def test_cli_bench_merges_nodes_and_plot_draws_each_node(fleet, tiny_model_dir, tmp_path):
    from ridgeline.fleet import node_rows
    from ridgeline.report import result_roofs

    out = tmp_path / "merged.json"
    res = cli("fleet", "bench", "--cluster", "auto", "-m", tiny_model_dir, "-s", "8:4", "-r", "1", "--warmup", "0",
              *PROBE_ARGS, "--out", out, "--plot", tmp_path / "fleet")
    assert res.exit_code == 0, (res.output, res.exception)
    data = json.loads(out.read_text())
    labels = [n.label for n in fleet.nodes()]
    assert data["kind"] == "ridgeline.bench.results" and data["failed"] == []
    assert [r["node"]["label"] for r in data["results"]] == labels and len(data["nodes"]) == 2
    assert (tmp_path / "fleet.png").stat().st_size > 0
    for label in labels:
        assert f"node {label}: measured runs" in res.stdout

    res = cli("plot", "--records", out, "-o", tmp_path / "merged")
    assert res.exit_code == 0, (res.output, res.exception)
    assert (tmp_path / "merged.png").stat().st_size > 0 and (tmp_path / "merged.svg").stat().st_size > 0
    for label in labels:
        assert f"node {label}: measured runs" in res.stdout
    probe_roofs = [r for r in result_roofs(node_rows(data["results"])) if r.style == "--"]
    assert sorted(r.bandwidth_Bps for r in probe_roofs) == sorted(n["device"]["bandwidth_Bps"] for n in data["nodes"])
    assert len({r.label for r in probe_roofs}) == 2 and len({r.group for r in probe_roofs}) == 2


@needs_ray
def test_eval_variants_run_as_tasks_with_the_local_numbers(fleet, tiny_model_dir, prose):
    from ridgeline.eval import EvalConfig, run_eval
    from ridgeline.fleet import fleet_eval

    configs = [EvalConfig(str(tiny_model_dir), ("ppl",), dtype=d, corpus=str(prose), context=64, stride=64)
               for d in ("fp32", "bf16")]
    run = fleet_eval(fleet, configs)
    assert run.failed == [] and [r["variant"] for r in run.records] == [c.label for c in configs]
    assert {r["node"]["label"] for r in run.records} <= {n.label for n in fleet.nodes()}
    local = run_eval(configs[0])  # here, on this process's threads: the same number up to summation order
    assert run.records[0]["tasks"]["ppl"]["token_perplexity"] == pytest.approx(
        local["tasks"]["ppl"]["token_perplexity"], rel=1e-6)
    assert run.records[0]["tasks"]["ppl"]["tokens"] == local["tasks"]["ppl"]["tokens"]


@needs_ray
def test_sweep_in_chunks_gives_the_rows_of_the_local_sweep(fleet):
    from ridgeline.fleet import fleet_sweep
    from ridgeline.roofline import SweepAxes, run_sweep
    from ridgeline.specs import Scenario, get_device, load_spec

    axes = SweepAxes(models=(load_spec("smollm2-135m"), load_spec("qwen2.5-0.5b")),
                     devices=(get_device("raspberry-pi-5"), get_device("rtx-4090")),
                     scenarios=(Scenario(128, 128), Scenario(512, 64)), weights=("bf16", "q4_0", "q4_k_m"))
    run = fleet_sweep(fleet, axes, chunks=5)
    assert run.failed == [] and run.records == run_sweep(axes) and len(run.records) == 24


@needs_ray
def test_map_tasks_streams_results_and_reports_failures_by_name(fleet, tmp_path):
    def task(x):
        if x == "bad":
            raise RidgelineError("bad input")
        if x == "boom":
            raise ZeroDivisionError("boom")
        return x.upper()

    seen, heard = [], []
    res = map_tasks(task, ["a", "bad", "b", "boom"], fleet, progress=lambda w, d, t: seen.append((d, t)), name=str,
                    on_result=lambda n, v: heard.append((n, v)))
    assert res.values == {"a": "A", "b": "B"} and sorted(heard) == [("a", "A"), ("b", "B")]
    assert sorted((f.name, f.bad_input) for f in res.failed) == [("bad", True), ("boom", False)]
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]

    marker = tmp_path / "tried"

    def flaky(x):  # fails on its first try only
        if not marker.exists():
            marker.write_text("once")
            raise OSError("transient")
        return x

    assert map_tasks(flaky, [7], fleet, retry_exceptions=True, max_retries=1).ordered() == [7]


def _kill_when_started(fleet, node, marks: Path, timeout=60):
    """Remove `node` once a task has written its mark there (it is then mid-run)."""
    def watch():
        end = time.time() + timeout
        while time.time() < end and not list(marks.glob(f"*-{node.id}")):
            time.sleep(0.1)
        fleet.remove_node(node.id)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def _wait_dead(fleet, node, timeout=30):
    """Ray's health checks mark a killed node dead within seconds; later tests must not see it alive."""
    end = time.time() + timeout
    while node.id in {n.id for n in fleet.nodes()} and time.time() < end:
        time.sleep(0.2)
    assert node.id not in {n.id for n in fleet.nodes()}


def _marked_sleep(marks: Path, item, seconds=2.0):
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    (marks / f"{item}-{node_id}").write_text("")
    time.sleep(seconds)
    return item, node_id


@needs_ray
def test_node_lost_mid_run_its_tasks_move_elsewhere(fleet, tmp_path):
    doomed = fleet.add_node()
    watcher = _kill_when_started(fleet, doomed, tmp_path)
    res = map_tasks(lambda i: _marked_sleep(tmp_path, i), range(4), fleet, max_retries=3, name=str)
    watcher.join()
    assert res.failed == [] and sorted(res.values) == ["0", "1", "2", "3"]
    assert list(tmp_path.glob(f"*-{doomed.id}"))  # a task started there ...
    assert all(node != doomed.id for _, node in res.values.values())  # ... and finished elsewhere
    _wait_dead(fleet, doomed)


@needs_ray
def test_node_lost_mid_run_its_measurement_fails_by_name_the_others_finish(fleet, tmp_path):
    from ridgeline.fleet import run_on_nodes

    import ray

    doomed = fleet.add_node()
    keep = fleet.node(ray.get_runtime_context().get_node_id())  # the head: the node this process talks to
    watcher = _kill_when_started(fleet, doomed, tmp_path)
    res = run_on_nodes(lambda node: _marked_sleep(tmp_path, node.label), [keep, doomed], fleet)
    watcher.join()
    assert res.values == {keep.label: (keep.label, keep.id)}, (res.values, res.failed)
    assert [f.name for f in res.failed] == [doomed.label] and not res.failed[0].bad_input, res.failed
    _wait_dead(fleet, doomed)


@needs_ray
@pytest.mark.parametrize("args, needles", [
    (["--cluster", "local:0"], ["local:N", "1 <= N"]),
    (["--cluster", "nowhere"], ["auto, ray://HOST:PORT or local:N"]),
    ([], ["need --cluster"]),
    (["--cluster", "ray://127.0.0.1:1"], ["cannot reach"]),
    (["--cluster", "auto", "--nodes", "no-such-node"], ["no-such-node", "is not an alive node"]),
    (["--cluster", "auto", "--dtype", "fp16"], ["fp16"]),
    (["--cluster", "auto", "--memory-limit", "0.000001", *PROBE_ARGS], ["predicted to need"]),
])
def test_bad_input_is_one_line_and_writes_nothing(fleet, tiny_model_dir, tmp_path, args, needles):
    out = tmp_path / "merged.json"
    res = cli("fleet", "bench", "-m", tiny_model_dir, "-s", "8:4", "-r", "1", *args, "--out", out)
    one_line_error(res, *needles)
    assert not out.exists()


@needs_ray
def test_ctrl_c_stops_the_local_cluster_and_leaves_no_output():
    short = tempfile.mkdtemp(prefix="rlt", dir="/tmp")  # Ray's socket paths must stay short
    out = Path(short) / "probes.json"
    # fleet probe: this process never imports torch (the node does), so the cluster is up within seconds
    code = "from ridgeline.cli import app; app(%r)" % (["fleet", "probe", "--cluster", "local:1", "--out", str(out)],)
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "TMPDIR": short},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        # interrupt once the task is on the cluster: the driver then waits on it (on a loaded machine the
        # cluster's start can take long enough that a fixed delay interrupted `ray.init` itself)
        end = time.time() + 120
        while time.time() < end and not any("submitted" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.2)
        assert glob.glob(f"{short}/rlray-*/ray/session_*/sockets/raylet")
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        proc.kill()
    err = "".join(lines)
    assert proc.returncode == 130 and "interrupted" in err, err
    assert not out.exists() and os.listdir(short) == []  # no results, no temporary file, Ray's folder removed
    time.sleep(1)
    alive = []
    for cmd in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if short.encode() in Path(cmd).read_bytes():
                alive.append(cmd)
        except OSError:
            pass
    assert alive == []  # every process of the cluster it started is gone
    os.rmdir(short)
