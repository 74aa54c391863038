"""Tasks on a Ray cluster: many independent calls streamed back as they finish, or one pinned call per node.

`map_tasks(fn, items, cluster, progress)` runs `fn(item)` for every item as a Ray task anywhere in the
cluster (in this process, one after the other, when no cluster is given) and collects the results as they
finish (`ray.wait`), calling `progress(what, done, total)` once per finished task. `run_on_nodes` runs
`fn(node, *args)` once on each chosen node.

- **Retries.** A task whose worker process or node dies is resubmitted by Ray up to `max_retries` times;
  a `map_tasks` task moves to another node, a node-pinned task cannot (a measurement of node A made on
  node B would be wrong), so the loss of its node fails it. An exception the function itself raises is
  retried only with `retry_exceptions` (True, or a list of exception types): off by default, because
  ridgeline's functions are deterministic and a RidgelineError (bad input) fails the same way twice.
- **Failures.** A task that still fails becomes a `TaskFailure` naming it, with the error's first line;
  everything that finished is kept. Nothing is dropped silently.
- **Exclusivity.** A node task asks Ray for all of its node's CPUs (`num_cpus` = the node's CPU resource)
  on top of hard node affinity (`NodeAffinitySchedulingStrategy(soft=False)`), so while it measures Ray
  starts nothing else that needs a CPU there — no second measuring task, from this run or another.
- **Ctrl-C** cancels every task still queued or running (`ray.cancel(force=True)`) and re-raises.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

from ridgeline.errors import RidgelineError
from ridgeline.fleet.cluster import Fleet, NodeInfo, open_fleet

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class TaskFailure:
    """A task that did not return: its name, why (one line), and whether the function refused its input."""

    name: str
    error: str
    bad_input: bool = False  # the function raised RidgelineError: a retry or another node would fail the same way

    def to_json(self) -> dict:
        """JSON form."""
        return asdict(self)


@dataclass
class TaskResults:
    """Every task's name in submission order, the values of those that finished, and the failures."""

    names: list[str]
    values: dict[str, Any] = field(default_factory=dict)
    failed: list[TaskFailure] = field(default_factory=list)

    def ordered(self) -> list[Any]:
        """The values of the finished tasks, in submission order."""
        return [self.values[n] for n in self.names if n in self.values]


def _names(items: Sequence[Any], name: Callable[[Any], str] | None, fn: Callable) -> list[str]:
    raw = [name(x) if name else f"{getattr(fn, '__name__', 'task')}[{i}]" for i, x in enumerate(items)]
    return [n if raw.count(n) == 1 else f"{n} #{i}" for i, n in enumerate(raw)]


def _why(exc: BaseException) -> tuple[str, bool]:
    """The first line of what went wrong, and whether it was bad input (RidgelineError inside the task)."""
    cause = getattr(exc, "cause", None) or exc
    text = (str(cause).strip().splitlines() or [""])[0]
    if isinstance(cause, RidgelineError):
        return text, True
    return (f"{type(cause).__name__}: {text}" if text else type(cause).__name__), False


def collect(ray: Any, refs: dict, names: list[str], progress: Progress | None = None,
            on_result: Callable[[str, Any], None] | None = None) -> TaskResults:
    """Wait for every object ref of `refs` (ref -> task name) as it finishes; Ctrl-C cancels the rest."""
    from ray.exceptions import RayError

    from ridgeline.io import deferred_sigint

    out, total, pending = TaskResults(list(names)), len(refs), list(refs)
    if progress:
        progress("submitted", 0, total)
    try:
        # Ctrl-C sets a flag checked between waits, never an exception raised inside ray.wait: a SIGINT that
        # arrived while the driver waited there has been lost under load (the run went on to finish, exit 0)
        with deferred_sigint() as interrupted:
            while pending or interrupted():
                if interrupted():
                    raise KeyboardInterrupt
                ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)  # short: Ctrl-C stays responsive
                for ref in ready:
                    name = refs[ref]
                    try:
                        out.values[name] = value = ray.get(ref)
                    except RayError as exc:  # the function raised, or its worker/node died after every retry
                        out.failed.append(TaskFailure(name, *_why(exc)))
                    else:
                        if on_result:
                            on_result(name, value)
                    if progress:
                        state = "done" if name in out.values else "failed"
                        progress(f"{name} {state}", len(out.values) + len(out.failed), total)
    except BaseException:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    return out


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`: the one remote function every task runs (so `fn` may be any picklable callable, a
    `functools.partial` included, and is shipped once per run through the object store)."""
    return fn(*args)


def _run_here(fn: Callable, items: Sequence[Any], names: list[str], progress: Progress | None,
              on_result: Callable[[str, Any], None] | None) -> TaskResults:
    out = TaskResults(list(names))
    for item, name in zip(items, names):
        try:
            out.values[name] = value = fn(item)
        except Exception as exc:  # reported by name, as a cluster would report it
            out.failed.append(TaskFailure(name, *_why(exc)))
        else:
            if on_result:
                on_result(name, value)
        if progress:
            progress(f"{name} {'done' if name in out.values else 'failed'}", len(out.values) + len(out.failed),
                     len(names))
    return out


def map_tasks(fn: Callable[[Any], Any], items: Iterable[Any], cluster: str | Fleet | None = None,
              progress: Progress | None = None, *, name: Callable[[Any], str] | None = None, num_cpus: float = 1,
              max_retries: int = 3, retry_exceptions: bool | list[type] = False,
              on_result: Callable[[str, Any], None] | None = None) -> TaskResults:
    """`fn(item)` for every item: Ray tasks on `cluster` (a --cluster text or an open Fleet) with results
    streamed back as they finish, or in this process when `cluster` is None. `name(item)` names each task in
    progress and failures; `on_result(name, value)` hears each value as it arrives."""
    items = list(items)
    names = _names(items, name, fn)
    if cluster is None:
        return _run_here(fn, items, names, progress, on_result)
    if max_retries < 0 or num_cpus < 0:
        raise RidgelineError(f"max_retries and num_cpus must be >= 0, got {max_retries} and {num_cpus}")
    with open_fleet(cluster) as fleet:
        remote, shipped = fleet.ray.remote(call), fleet.ray.put(fn)
        refs = {remote.options(num_cpus=num_cpus, max_retries=max_retries, retry_exceptions=retry_exceptions,
                               name=n).remote(shipped, item): n for item, n in zip(items, names)}
        return collect(fleet.ray, refs, names, progress, on_result)


def run_on_nodes(fn: Callable[..., Any], nodes: Sequence[NodeInfo], fleet: Fleet, progress: Progress | None = None,
                 args: tuple = (), max_retries: int = 1) -> TaskResults:
    """`fn(node, *args)` once on each node, pinned there (hard node affinity) and alone (all its CPUs);
    results and failures are named by node label. A crashed worker is retried on the same node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if len({n.id for n in nodes}) != len(nodes):
        raise RidgelineError("a node is named twice: one measuring task per node")
    remote, shipped = fleet.ray.remote(call), fleet.ray.put(fn)
    refs = {}
    for node in nodes:
        pinned = NodeAffinitySchedulingStrategy(node.id, soft=False)
        task = remote.options(num_cpus=node.cpus, scheduling_strategy=pinned, max_retries=max_retries,
                              retry_exceptions=False, name=f"ridgeline on {node.label}")
        refs[task.remote(shipped, node, *args)] = node.label
    return collect(fleet.ray, refs, [n.label for n in nodes], progress)
