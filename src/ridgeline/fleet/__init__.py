"""Fleets: ridgeline's probe, bench, eval and sweeps on a Ray cluster (the optional extra `ridgeline[ray]`).

```python
from ridgeline.fleet import ProbeSettings, fleet_bench, map_tasks
from ridgeline.measure import BenchGrid
run = fleet_bench("local:2", BenchGrid(model="smollm2-135m"), ProbeSettings(array_mib=64))
run.records            # every node's bench records, each with a `node` field
run.failed             # TaskFailure(name, error) for each node or task that did not return
map_tasks(fn, items, "auto", progress)   # any picklable fn over items, results streamed back as they finish
```

Nothing here imports Ray at module level: `require_ray` does, inside the functions that need it.
"""

from ridgeline.fleet.cluster import INSTALL, ClusterSpec, Fleet, NodeInfo, open_fleet, parse_cluster, require_ray
from ridgeline.fleet.runs import (FleetRun, ProbeSettings, bench_node, eval_task, fleet_bench, fleet_eval, fleet_probe,
                                  fleet_sweep, node_rows, probe_node, sweep_chunk)
from ridgeline.fleet.tasks import TaskFailure, TaskResults, collect, map_tasks, run_on_nodes

__all__ = ["INSTALL", "ClusterSpec", "Fleet", "FleetRun", "NodeInfo", "ProbeSettings", "TaskFailure", "TaskResults",
           "bench_node", "collect", "eval_task", "fleet_bench", "fleet_eval", "fleet_probe", "fleet_sweep",
           "map_tasks", "node_rows", "open_fleet", "parse_cluster", "probe_node", "require_ray", "run_on_nodes",
           "sweep_chunk"]
