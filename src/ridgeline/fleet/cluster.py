"""Connecting to a Ray cluster (`--cluster auto | ray://HOST:PORT | local:N`), its nodes, and a clean shutdown.

Ray is the optional extra `ridgeline[ray]`: it is imported only inside these functions (`require_ray`), so no
other part of ridgeline needs it, and without it every fleet command says in one line how to install it.

- `auto`: the cluster this machine belongs to (`ray start --head` / `--address` ran here, or `RAY_ADDRESS`);
  a process that already called `ray.init` keeps that connection (and leaves it open).
- `ray://HOST:PORT`: a Ray client connection to a head node's client server (port 10001 by default); the
  address is checked with a plain TCP connect first, so a wrong one fails in seconds, not after Ray's retries.
- `local:N`: N simulated nodes on 127.0.0.1 (`ray.cluster_utils.Cluster`) that split this machine's cores
  (each gets max(1, cores // N) CPUs): for tests and demos. Ray's files go to a fresh folder under /tmp,
  there is no dashboard and no usage report, and every address is the loopback one. Closing the fleet (on
  Ctrl-C too) stops every process it started and removes that folder.

Nodes are named by `NodeInfo.label`: the hostname, or hostname-<first 6 hex digits of the node id> where
hostnames repeat (simulated nodes always do).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

from ridgeline.errors import RidgelineError

INSTALL = "fleet commands need Ray on this machine and on every node: pip install 'ridgeline[ray]'"
NEEDS_CLUSTER = ("fleet commands need --cluster: auto (the Ray cluster this machine belongs to), "
                 "ray://HOST:PORT (a Ray client connection to a head node) or local:N (N simulated nodes here)")
MAX_LOCAL_NODES = 16
LOOPBACK = "127.0.0.1"
# simulated nodes are removed on purpose (tests, demos): notice a dead one within seconds, not Ray's ~30 s
_LOCAL_SYSTEM_CONFIG = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                        "health_check_failure_threshold": 3}
# Ray reads these from the environment, in this process and in every process it starts: usage statistics
# off, its files in our folder, and the loopback address kept as it is (Ray otherwise swaps 127.0.0.1 for
# this host's network address; the setting's name is about macOS and Windows, where that is the default)
_LOCAL_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed --cluster: kind 'auto', 'client' (address ray://HOST:PORT) or 'local' (`nodes` simulated nodes)."""

    kind: str
    address: str = ""
    nodes: int = 0

    def __str__(self) -> str:
        return {"auto": "auto", "client": self.address}.get(self.kind, f"local:{self.nodes}")


def parse_cluster(text: str | None) -> ClusterSpec:
    """'auto', 'ray://HOST:PORT' or 'local:N' as a ClusterSpec; anything else (or nothing) is a RidgelineError."""
    if text is None or not text.strip():
        raise RidgelineError(NEEDS_CLUSTER)
    t = text.strip()
    if t == "auto":
        return ClusterSpec("auto")
    if t.startswith("ray://"):
        host, _, port = t.removeprefix("ray://").rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RidgelineError(f"--cluster {t!r}: a Ray client address is ray://HOST:PORT (the head's client "
                                 "server port, 10001 by default)")
        return ClusterSpec("client", t)
    if t.startswith("local:"):
        n = t.removeprefix("local:")
        if not n.isdigit() or not 1 <= int(n) <= MAX_LOCAL_NODES:
            raise RidgelineError(f"--cluster {t!r}: local:N starts N simulated nodes on this machine, "
                                 f"1 <= N <= {MAX_LOCAL_NODES}")
        return ClusterSpec("local", nodes=int(n))
    raise RidgelineError(f"--cluster {t!r}: expected auto, ray://HOST:PORT or local:N")


def require_ray() -> Any:
    """The `ray` module, or a RidgelineError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RidgelineError(INSTALL) from None
    return ray


@dataclass(frozen=True)
class NodeInfo:
    """One alive node of the cluster: Ray's node id (hex), a readable label, where it is, and its CPUs in Ray."""

    id: str
    label: str
    hostname: str
    ip: str
    cpus: float

    def to_json(self) -> dict:
        """The `node` field of fleet records."""
        return asdict(self)


def _infos(entries: Sequence[dict]) -> list[NodeInfo]:
    """NodeInfo of Ray's node table entries, labelled by hostname (with an id prefix where hostnames repeat)."""
    hosts = [e.get("NodeManagerHostname") or e.get("NodeManagerAddress") or "node" for e in entries]
    return [NodeInfo(e["NodeID"], h if hosts.count(h) == 1 else f"{h}-{e['NodeID'][:6]}",
                     e.get("NodeManagerHostname", ""), e.get("NodeManagerAddress", ""),
                     float(e.get("Resources", {}).get("CPU", 0.0))) for h, e in zip(hosts, entries)]


class Fleet:
    """A connection to a Ray cluster: its nodes, and (for local:N) the simulated cluster it started."""

    def __init__(self, spec: ClusterSpec, ray: Any, owned: bool, local: Any = None, tmp: str | None = None,
                 restore: dict | None = None) -> None:
        self.spec, self.ray, self._owned, self._local, self._tmp = spec, ray, owned, local, tmp
        self._restore = restore or {}

    def nodes(self) -> list[NodeInfo]:
        """Every alive node, in Ray's order."""
        return _infos([e for e in self.ray.nodes() if e.get("Alive")])

    def node(self, node_id: str) -> NodeInfo:
        """The node with this id, alive or (since) dead."""
        entries = [e for e in self.ray.nodes() if e.get("Alive") or e["NodeID"] == node_id]
        return next((n for n in _infos(entries) if n.id == node_id), NodeInfo(node_id, node_id[:6], "", "", 0.0))

    def select(self, names: Sequence[str] | None = None) -> list[NodeInfo]:
        """The nodes named by label or by (a unique prefix of) their id; default every alive node with a CPU."""
        nodes = self.nodes()
        if not names:
            chosen = [n for n in nodes if n.cpus >= 1]
            if not chosen:
                raise RidgelineError(f"no node of cluster {self.spec} offers a CPU to Ray (--num-cpus 0 everywhere?)")
            return chosen
        chosen = []
        for name in names:
            hits = [n for n in nodes if n.label == name] or [n for n in nodes if n.id.startswith(name)]
            if len(hits) != 1:
                known = ", ".join(f"{n.label} ({n.id[:8]})" for n in nodes)
                why = "is ambiguous" if hits else "is not an alive node"
                raise RidgelineError(f"--nodes {name!r} {why} of cluster {self.spec}; nodes: {known}")
            if hits[0].cpus < 1:
                raise RidgelineError(f"node {hits[0].label} offers no CPU to Ray; it cannot run a measurement")
            if hits[0] not in chosen:  # one measuring task per node, however often it is named
                chosen.append(hits[0])
        return chosen

    def add_node(self, cpus: int = 1) -> NodeInfo:
        """Add a simulated node to a local:N cluster (tests and demos); returns it."""
        node = self._simulated().add_node(num_cpus=cpus, node_ip_address=LOOPBACK)
        return next(n for n in self.nodes() if n.id == node.node_id)

    def remove_node(self, node_id: str) -> None:
        """Kill a simulated node of a local:N cluster, as a node loss (not the head: this process talks to it)."""
        local = self._simulated()
        hits = [n for n in local.worker_nodes if n.node_id == node_id]
        if not hits:
            raise RidgelineError(f"node {node_id[:8]} is not a removable simulated node (the head node is not)")
        local.remove_node(hits[0], allow_graceful=False)

    def _simulated(self) -> Any:
        if self._local is None:
            raise RidgelineError(f"cluster {self.spec} is not a local simulated cluster")
        return self._local

    def close(self) -> None:
        """Disconnect; for local:N also stop every process of the simulated cluster and remove its files."""
        if not self._owned:
            return
        try:
            self.ray.shutdown()
        finally:
            if self._local is not None:
                self._local.shutdown()
            _restore_env(self._restore)
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)


@contextlib.contextmanager
def open_fleet(cluster: str | Fleet | None) -> Iterator[Fleet]:
    """Connect to (or start) the cluster `cluster` names for the duration of the block; an open Fleet passes
    through and stays open."""
    if isinstance(cluster, Fleet):
        yield cluster
        return
    ray = require_ray()  # first: without Ray, every fleet command says how to install it
    spec = parse_cluster(cluster)
    fleet = {"auto": _connect_auto, "client": _connect_client, "local": _start_local}[spec.kind](spec, ray)
    try:
        yield fleet
    finally:
        fleet.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _connect_auto(spec: ClusterSpec, ray: Any) -> Fleet:
    if ray.is_initialized():
        return Fleet(spec, ray, owned=False)
    try:
        ray.init(address="auto", log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise RidgelineError(f"--cluster auto: no Ray cluster to join here ({_first_line(exc)}); start one with "
                             "`ray start --head`, set RAY_ADDRESS, or use ray://HOST:PORT or local:N") from None
    return Fleet(spec, ray, owned=True)


def _connect_client(spec: ClusterSpec, ray: Any) -> Fleet:
    host, _, port = spec.address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise RidgelineError(f"--cluster {spec.address}: cannot reach it ({exc.strerror or exc}); is the head's "
                             "Ray client server running (`ray start --head`, port 10001) and the port open?") from None
    if ray.is_initialized():
        raise RidgelineError(f"--cluster {spec.address}: this process is already connected to a Ray cluster")
    try:
        ray.init(address=spec.address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise RidgelineError(f"--cluster {spec.address}: {_first_line(exc)}") from None
    return Fleet(spec, ray, owned=True)


def _restore_env(saved: dict) -> None:
    for key, value in saved.items():
        if key == "ENABLE_RAY_CLUSTER":
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = value
        elif value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _short_tmp() -> str:
    # Ray's unix sockets live under its temp folder and socket paths are limited to ~107 bytes
    base = tempfile.gettempdir()
    return base if len(base) <= 24 else "/tmp"


def _start_local(spec: ClusterSpec, ray: Any) -> Fleet:
    if ray.is_initialized():
        raise RidgelineError(f"--cluster {spec}: this process is already connected to a Ray cluster; "
                             "use --cluster auto to run on it")
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="rlray-", dir=_short_tmp())
    env = {**_LOCAL_ENV, "RAY_TMPDIR": tmp}
    saved = {k: os.environ.get(k) for k in env} | {"ENABLE_RAY_CLUSTER": ray_constants.ENABLE_RAY_CLUSTER}
    os.environ.update(env)
    ray_constants.ENABLE_RAY_CLUSTER = False  # ray may have been imported before the variable was set
    local = None
    try:
        local = Cluster(shutdown_at_exit=True)
        cpus = max(1, (os.cpu_count() or 1) // spec.nodes)
        # a fixed cluster whose logs nobody reads: no autoscaler monitor, no log monitor, no dashboard
        local.add_node(num_cpus=cpus, node_ip_address=LOOPBACK, include_dashboard=False, no_monitor=True,
                       include_log_monitor=False, _system_config=_LOCAL_SYSTEM_CONFIG)
        for _ in range(spec.nodes - 1):
            local.add_node(num_cpus=cpus, node_ip_address=LOOPBACK)
        ray.init(address=local.address, log_to_driver=False, logging_level=logging.ERROR)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            Fleet(spec, ray, True, local, tmp, saved).close()
        if isinstance(exc, Exception) and not isinstance(exc, RidgelineError):
            raise RidgelineError(f"--cluster {spec}: could not start a local Ray cluster: {_first_line(exc)}") from None
        raise
    return Fleet(spec, ray, owned=True, local=local, tmp=tmp, restore=saved)
