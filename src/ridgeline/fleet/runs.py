"""What the fleet commands run: probe and bench on every node, eval over many variants, analytic sweeps.

- `fleet_probe` / `fleet_bench`: one task per node (pinned and alone, see `tasks.py`). Each node probes its
  own roofs (bandwidth, GEMM peaks, GEMV rates; the device entry is `node-<label>`, named after the node),
  then runs the whole bench grid on its own cores (torch pinned to the CPUs Ray gives the task, unless the
  grid names threads) and places every record on its probe roof and on its catalogue roof
  (`--reference`, resolved on the node: 'auto' is that host's catalogue entry).
- `fleet_eval`: one task per eval config, anywhere (`map_tasks`), retried elsewhere if its node dies.
- `fleet_sweep`: the analytic sweep cut into contiguous chunks of its combinations; the rows come back in
  `run_sweep`'s order.

Records keep the schema of local runs (`ridgeline.measure` bench records, `ridgeline.eval` records) with a
`node` field added ({id, label, hostname, ip, cpus}); the node's machine info is the record's own `machine`,
measured there. `node_rows` gives the flat rows with the node label, which the report's plots and tables
use to draw one roof per node.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ridgeline.errors import RidgelineError
from ridgeline.fleet.cluster import Fleet, NodeInfo, open_fleet
from ridgeline.fleet.tasks import Progress, TaskFailure, map_tasks, run_on_nodes


@dataclass(frozen=True)
class ProbeSettings:
    """How each node probes its roofs (`ridgeline.measure.probe`); threads default to the node's CPUs in Ray."""

    threads: int | None = None
    array_mib: int = 512
    repeats: int = 7
    warmup: int = 2

    def __post_init__(self) -> None:
        if self.array_mib < 1 or self.repeats < 1 or self.warmup < 0 or (self.threads is not None and self.threads < 1):
            raise RidgelineError(f"probe needs array size >= 1 MiB, repeats >= 1, warm-up >= 0 and threads >= 1; "
                                 f"got {self.array_mib} MiB, {self.repeats}, {self.warmup}, {self.threads}")


@dataclass
class FleetRun:
    """A fleet command's outcome: per-node probes, the records (each with `node`), and what failed, by name."""

    cluster: str
    nodes: list[dict] = field(default_factory=list)  # per node: {node, device, probe}
    records: list[dict] = field(default_factory=list)
    failed: list[TaskFailure] = field(default_factory=list)

    def payload(self, kind: str, key: str | None = "results") -> dict:
        """The merged results file: `kind`, the cluster, the nodes' probes, the records under `key` (none when
        `key` is None), and the failures by name."""
        nodes = [{k: v for k, v in n.items() if k != "result"} for n in self.nodes]  # ProbeResult objects stay out
        return {"kind": kind, "cluster": self.cluster, "nodes": nodes, **({key: self.records} if key else {}),
                "failed": [f.to_json() for f in self.failed]}

    def refused(self) -> TaskFailure | None:
        """The first failure when nothing finished and every task refused its input (bad input: one line)."""
        if self.failed and not self.nodes and not self.records and all(f.bad_input for f in self.failed):
            return self.failed[0]
        return None


def _node_threads(node: NodeInfo) -> int:
    return max(1, int(node.cpus))


def _probe_here(node: NodeInfo, settings: ProbeSettings):
    from ridgeline.measure import probe, probe_device

    result = probe(threads=settings.threads or _node_threads(node), array_mib=settings.array_mib,
                   repeats=settings.repeats, warmup=settings.warmup)
    device = probe_device(result, device_id=f"node-{node.label}")
    return result, dataclasses.replace(device, name=f"{node.label}: {device.name}")


def probe_node(node: NodeInfo, settings: ProbeSettings) -> dict:
    """On `node`: its probe and the device entry built from it (a node task)."""
    result, device = _probe_here(node, settings)
    return {"node": node.to_json(), "device": device.to_json(), "probe": result.to_json(), "result": result}


def bench_node(node: NodeInfo, grid: Any, settings: ProbeSettings, reference: str) -> dict:
    """On `node`: probe, then the bench grid placed on that probe and the node's catalogue roof (a node task)."""
    from ridgeline.measure import Roofs, resolve_roofs, run_grid, torch_threads

    result, device = _probe_here(node, settings)
    catalogue = resolve_roofs("local", reference).catalogue  # as `bench --reference` resolves it on this host
    with torch_threads(_node_threads(node)):  # the grid's default thread count: the cores this task holds
        records = run_grid(grid, Roofs(device, catalogue))
    for r in records:
        r["node"] = node.to_json()
    return {"node": node.to_json(), "device": device.to_json(), "probe": result.to_json(), "result": result,
            "records": records}


def fleet_probe(cluster: str | Fleet, settings: ProbeSettings = ProbeSettings(), nodes: Sequence[str] | None = None,
                progress: Progress | None = None) -> FleetRun:
    """Probe every chosen node (all alive nodes with a CPU by default) of `cluster`, one exclusive task each.
    `nodes[i]["result"]` is the node's ProbeResult (for tables; left out of the JSON payload)."""
    with open_fleet(cluster) as fleet:
        res = run_on_nodes(probe_node, fleet.select(nodes), fleet, progress, args=(settings,))
        return FleetRun(str(fleet.spec), res.ordered(), [], res.failed)


def fleet_bench(cluster: str | Fleet, grid: Any, settings: ProbeSettings = ProbeSettings(), reference: str = "auto",
                nodes: Sequence[str] | None = None, progress: Progress | None = None) -> FleetRun:
    """Probe then run the bench grid (`ridgeline.measure.BenchGrid`) on every chosen node of `cluster`; the
    records of all nodes merged in node order, each tagged with its node."""
    grid.groups()  # every run's configuration is checked here, before any node starts
    with open_fleet(cluster) as fleet:
        res = run_on_nodes(bench_node, fleet.select(nodes), fleet, progress, args=(grid, settings, reference))
    per_node = res.ordered()
    records = [r for n in per_node for r in n.pop("records")]
    return FleetRun(str(fleet.spec), per_node, records, res.failed)


def eval_task(cfg: Any) -> dict:
    """One eval config where Ray put it, on as many torch threads as CPUs the task holds; the record says
    which node ran it."""
    import ray

    from ridgeline.eval import run_eval
    from ridgeline.measure import torch_threads

    ctx = ray.get_runtime_context()
    with torch_threads(max(1, int(ctx.get_assigned_resources().get("CPU", 1)))):
        record = run_eval(cfg)
    record["node"] = {"id": ctx.get_node_id()}
    return record


def fleet_eval(cluster: str | Fleet, configs: Sequence[Any], progress: Progress | None = None, num_cpus: float = 1,
               max_retries: int = 3) -> FleetRun:
    """`ridgeline.eval.run_eval` for every EvalConfig as a task anywhere on `cluster` (retried on another node
    when its node dies); records in config order, each with its node."""
    with open_fleet(cluster) as fleet:
        known = {n.id: n for n in fleet.nodes()}
        res = map_tasks(eval_task, configs, fleet, progress, name=lambda c: c.label, num_cpus=num_cpus,
                        max_retries=max_retries)
        records = res.ordered()
        for r in records:
            node_id = r["node"]["id"]
            r["node"] = (known.get(node_id) or fleet.node(node_id)).to_json()
        return FleetRun(str(fleet.spec), [], records, res.failed)


def sweep_chunk(chunk: tuple[int, Sequence[Any]], options: Any = None) -> list[dict]:
    """The rows of a chunk (its first combination's index, one-combination sweeps), in order (a sweep task)."""
    from ridgeline.roofline import run_sweep

    return [row for axes in chunk[1] for row in run_sweep(axes, options)]


def fleet_sweep(cluster: str | Fleet | None, axes: Any, options: Any = None, progress: Progress | None = None,
                chunks: int = 16) -> FleetRun:
    """`ridgeline.roofline.run_sweep(axes)` cut into at most `chunks` tasks of contiguous combinations (models ×
    depths × scenarios × batches × formats, each on every device); rows in run_sweep's order, a failed chunk
    named by the combinations it held. With no cluster, the chunks run here."""
    if chunks < 1:
        raise RidgelineError(f"chunks must be >= 1, got {chunks}")
    pieces = [dataclasses.replace(axes, models=(m,), layers=(n,), scenarios=(s,), batches=(b,), weights=(w,))
              for m, n, s, b, w in itertools.product(axes.models, axes.layers, axes.scenarios, axes.batches,
                                                     axes.weights)]
    size = -(-len(pieces) // chunks)
    parts = [(i, tuple(pieces[i:i + size])) for i in range(0, len(pieces), size)]
    res = map_tasks(functools.partial(sweep_chunk, options=options), parts, cluster, progress,
                    name=lambda p: f"sweep combinations {p[0] + 1}-{p[0] + len(p[1])}")
    rows = [r for chunk in res.ordered() for r in chunk]
    return FleetRun(str(cluster) if cluster is not None else "here", [], rows, res.failed)


def node_rows(records: Sequence[dict], rows: Callable[[Sequence[dict]], list[dict]] | None = None) -> list[dict]:
    """The flat rows of bench records (`ridgeline.measure.flat_rows`) with each record's node label as `node`
    (None for a local run): what the report draws one roof per node from."""
    if rows is None:
        from ridgeline.measure import flat_rows as rows
    return [{**row, "node": (r.get("node") or {}).get("label")} for r, row in zip(records, rows(records))]
