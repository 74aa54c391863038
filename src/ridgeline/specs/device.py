"""Devices: memory bandwidth, capacity and peak FLOP/s per dtype, each entry with its provenance.

The catalogue ships as `data/devices.json`; users add entries from their own TOML/JSON files,
and `ridgeline probe` saves the measured local machine as one more entry.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ridgeline.errors import RidgelineError, note
from ridgeline.inputs import Node, read_structured
from ridgeline.io import user_dir

#: dtypes a device may list peaks for; "int4" and "fp8" only where the hardware has them
DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4")


@dataclass(frozen=True)
class Provenance:
    """Where a device's numbers come from: theoretical spec sheet or a measurement."""

    kind: str  # "theoretical" | "measured"
    source: str
    date: str  # ISO date or year-month of the source
    notes: str = ""


@dataclass(frozen=True)
class DeviceSpec:
    """One device: the roofs a workload is evaluated against."""

    id: str
    name: str
    kind: str  # "cpu" | "gpu" | "soc" | "npu"
    memory_bytes: float
    bandwidth_Bps: float
    peak_flops: dict[str, float]
    provenance: Provenance
    tdp_w: float | None = None
    engines: dict[str, str] = field(default_factory=dict)  # dtype -> which unit the peak is for
    threads: int | None = None  # for measured CPU entries: threads the probe used
    host_match: dict[str, Any] = field(default_factory=dict)  # {"cpu": substring, "cores": n}: this host's entry
    # measured matrix-vector streaming rate per weight dtype (B/s of weights): what decode's GEMV kernels
    # actually stream at in the framework that was probed, when that is below the memory roof
    gemv_Bps: dict[str, float] = field(default_factory=dict)

    def peak(self, dtype: str) -> tuple[float, str]:
        """Peak FLOP/s for `dtype` and the dtype actually used (falls back fp16↔bf16, then fp32)."""
        for cand in (dtype, {"bf16": "fp16", "fp16": "bf16"}.get(dtype), "fp32"):
            if cand and cand in self.peak_flops:
                return self.peak_flops[cand], cand
        raise RidgelineError(f"device {self.id!r} lists no peak FLOP/s (needs at least fp32)")

    def weight_bandwidth(self, weights: str) -> float:
        """Bandwidth at which weights of format `weights` stream: the measured GEMV rate where probed, else the roof."""
        return min(self.gemv_Bps.get(weights, self.bandwidth_Bps), self.bandwidth_Bps)

    def ridge(self, dtype: str) -> float:
        """Ridge point (FLOP/byte) for `dtype`: where the compute and memory roofs meet."""
        return self.peak(dtype)[0] / self.bandwidth_Bps

    def to_json(self) -> dict[str, Any]:
        """The JSON form used in analysis records and catalogue files."""
        return {
            "id": self.id, "name": self.name, "kind": self.kind,
            "memory_bytes": self.memory_bytes, "bandwidth_Bps": self.bandwidth_Bps,
            "peak_flops": dict(self.peak_flops), "tdp_w": self.tdp_w,
            "engines": dict(self.engines), "threads": self.threads, "host_match": dict(self.host_match),
            "gemv_Bps": dict(self.gemv_Bps),
            "provenance": {"kind": self.provenance.kind, "source": self.provenance.source,
                           "date": self.provenance.date, "notes": self.provenance.notes},
        }


#: limits on device numbers: beyond them an entry is a typo, and the roofline's arithmetic would overflow
MAX_RATE = 1e21  # B/s or FLOP/s (a zettaflop; the largest chips are near 1e16)
MAX_MEMORY = 2.0**60  # bytes (an exbibyte)
MAX_TDP_W = 1e6
MAX_THREADS = 1 << 16


def _entry(node: Node) -> DeviceSpec:
    """One validated entry; every message names the file and the field's path."""
    node.obj()
    dev_id, name = node["id"].text(), node["name"].text()
    peaks = node["peak_flops"]
    if not peaks.obj():
        peaks.fail(f"an object mapping dtypes ({', '.join(DTYPES)}) to FLOP/s")
    for dtype in peaks.obj():
        if dtype not in DTYPES:
            raise RidgelineError(f"{node.file}: {peaks.path}: unknown dtype {dtype!r}; expected one of "
                                 f"{', '.join(DTYPES)}")
    if "fp32" not in peaks.obj():
        peaks["fp32"].fail("given (every device needs an fp32 peak)")
    prov = node["provenance"]
    prov.obj()
    gemv = node["gemv_Bps"]
    return DeviceSpec(
        id=dev_id.lower(), name=name, kind=node["kind"].text(default="gpu"),
        memory_bytes=node["memory_bytes"].number(gt=0, le=MAX_MEMORY),
        bandwidth_Bps=node["bandwidth_Bps"].number(gt=0, le=MAX_RATE),
        peak_flops={k: v.number(gt=0, le=MAX_RATE) for k, v in peaks.items()},
        provenance=Provenance(prov["kind"].choice(("theoretical", "measured")), prov["source"].text(),
                              prov["date"].text(), str(prov["notes"].value) if not prov["notes"].missing else ""),
        tdp_w=node["tdp_w"].number(gt=0, le=MAX_TDP_W, default=None),
        engines={k: v.text(nonempty=False) for k, v in node["engines"].items()} if not node["engines"].missing else {},
        threads=node["threads"].integer(ge=1, le=MAX_THREADS, default=None),
        host_match=_host_match(node["host_match"]),
        gemv_Bps={k: v.number(gt=0, le=MAX_RATE) for k, v in gemv.items()} if not gemv.missing else {},
    )


def _host_match(node: Node) -> dict[str, Any]:
    """{"cpu": substring of the CPU model, "cores": logical cores}, both optional."""
    if node.missing:
        return {}
    node.obj()
    out: dict[str, Any] = {}
    if not node["cpu"].missing:
        out["cpu"] = node["cpu"].text()
    if not node["cores"].missing:
        out["cores"] = node["cores"].integer(ge=1, le=MAX_THREADS)
    return out


def device_from_dict(entry: dict[str, Any], where: str = "device") -> DeviceSpec:
    """Validate one catalogue entry (a dict as in devices.json) into a DeviceSpec; `where` names it in messages
    (e.g. `devices.toml: devices[2]`)."""
    file, _, path = where.partition(": ")
    return _entry(Node(entry, file if path else where, path))


def load_device_file(path: str | Path) -> list[DeviceSpec]:
    """Read user devices from a TOML or JSON file: one entry, a list, or {"devices": [...]} (bounded, validated)."""
    path = Path(path)
    data = read_structured(path, "device file")
    root = Node(data, str(path))
    if isinstance(data, dict) and "devices" in data:
        entries = root["devices"].entries(min_len=1)
    elif isinstance(data, list):
        entries = root.entries(min_len=1)
    else:
        entries = [root]
    return [_entry(e) for e in entries]


@lru_cache(maxsize=1)
def _builtin() -> tuple[DeviceSpec, ...]:
    text = resources.files("ridgeline.specs").joinpath("data/devices.json").read_text()
    return tuple(device_from_dict(e, f"devices.json: devices[{i}]") for i, e in enumerate(json.loads(text)["devices"]))


def saved_devices() -> tuple[dict[str, DeviceSpec], dict[str, str]]:
    """The user's saved devices ($RIDGELINE_HOME/devices/*.json, e.g. `local` from the probe) by id, and for each
    file that cannot be read (a corrupt or half-copied file) the device id its name gives -> the error. One bad file
    never hides the catalogue: commands note it, and only that device fails when asked for."""
    devices: dict[str, DeviceSpec] = {}
    broken: dict[str, str] = {}
    saved = user_dir() / "devices"
    if saved.is_dir():
        for f in sorted(saved.glob("*.json")):
            try:
                devices.update({d.id: d for d in load_device_file(f)})
            except RidgelineError as exc:
                broken[f.stem.lower()] = str(exc)
                note(f"saved device {f.stem.lower()!r} left out: {exc}; rerun `ridgeline probe` to measure it again")
    return devices, broken


def catalogue(extra_files: tuple[str | Path, ...] = ()) -> dict[str, DeviceSpec]:
    """All known devices: built-in, then the user's saved devices (e.g. `local`; unreadable ones left out, see
    `saved_devices`), then `extra_files`."""
    devices = {d.id: d for d in _builtin()}
    devices.update(saved_devices()[0])
    for f in extra_files:
        devices.update({d.id: d for d in load_device_file(f)})
    return devices


def host_device(cpu: str, cores: int | None) -> DeviceSpec | None:
    """The catalogue entry describing this host (its `host_match`: CPU name substring and core count), if any."""
    for d in catalogue().values():
        m = d.host_match
        if m and m.get("cpu", "\0") in cpu and m.get("cores", cores) == cores:
            return d
    return None


def get_device(name: str, extra_files: tuple[str | Path, ...] = ()) -> DeviceSpec:
    """Look a device up by id (case-insensitive) or by a path to a TOML/JSON device file."""
    if name.endswith((".toml", ".json")) and Path(name).exists():
        return load_device_file(name)[0]
    devices = catalogue(extra_files)
    key = name.strip().lower()
    if key in devices:
        return devices[key]
    broken = saved_devices()[1]
    if key in broken:
        raise RidgelineError(f"saved device {key!r} cannot be read: {broken[key]}; rerun `ridgeline probe` to "
                             "measure it again")
    if key == "local":
        raise RidgelineError("no measured 'local' device yet: run `ridgeline probe` first")
    close = difflib.get_close_matches(key, list(devices), n=3, cutoff=0.5)
    close += [d for d in devices if key and key in d and d not in close][:3]
    hint = f"; did you mean {', '.join(close[:4])}?" if close else ""
    raise RidgelineError(f"unknown device {name!r}{hint} (`ridgeline devices` lists them)")
