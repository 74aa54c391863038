"""Devices: memory bandwidth, capacity and peak FLOP/s per dtype, each entry with its provenance.

The catalogue ships as `data/devices.json`; users add entries from their own TOML/JSON files,
and `ridgeline probe` saves the measured local machine as one more entry.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ridgeline.errors import RidgelineError
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


def _positive(entry: dict, key: str, where: str) -> float:
    if key not in entry:
        raise RidgelineError(f"{where}: missing field {key!r}")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise RidgelineError(f"{where}: field {key!r} must be a positive number, got {value!r}")
    return float(value)


def device_from_dict(entry: dict[str, Any], where: str = "device") -> DeviceSpec:
    """Validate one catalogue entry (a dict as in devices.json) into a DeviceSpec."""
    if not isinstance(entry, dict):
        raise RidgelineError(f"{where}: expected an object with id, name, bandwidth_Bps, ...")
    for key in ("id", "name"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise RidgelineError(f"{where}: missing or empty string field {key!r}")
    where = f"{where} {entry['id']!r}"
    peaks = entry.get("peak_flops")
    if not isinstance(peaks, dict) or not peaks:
        raise RidgelineError(f"{where}: field 'peak_flops' must map dtypes ({', '.join(DTYPES)}) to FLOP/s")
    for dtype in peaks:
        if dtype not in DTYPES:
            raise RidgelineError(f"{where}: unknown dtype {dtype!r} in peak_flops; expected one of {', '.join(DTYPES)}")
        _positive(peaks, dtype, f"{where} peak_flops")
    if "fp32" not in peaks:
        raise RidgelineError(f"{where}: peak_flops needs an 'fp32' entry")
    prov = entry.get("provenance")
    if not isinstance(prov, dict) or prov.get("kind") not in ("theoretical", "measured"):
        raise RidgelineError(f"{where}: field 'provenance' needs kind 'theoretical' or 'measured', source and date")
    for key in ("source", "date"):
        if not isinstance(prov.get(key), str) or not prov[key]:
            raise RidgelineError(f"{where}: provenance needs a non-empty {key!r}")
    tdp = entry.get("tdp_w")
    return DeviceSpec(
        id=entry["id"].lower(), name=entry["name"], kind=str(entry.get("kind", "gpu")),
        memory_bytes=_positive(entry, "memory_bytes", where),
        bandwidth_Bps=_positive(entry, "bandwidth_Bps", where),
        peak_flops={k: float(v) for k, v in peaks.items()},
        provenance=Provenance(prov["kind"], prov["source"], prov["date"], str(prov.get("notes", ""))),
        tdp_w=float(tdp) if tdp is not None else None,
        engines={str(k): str(v) for k, v in (entry.get("engines") or {}).items()},
        threads=entry.get("threads"),
        host_match=dict(entry.get("host_match") or {}),
        gemv_Bps={str(k): _positive(entry["gemv_Bps"], k, f"{where} gemv_Bps") for k in (entry.get("gemv_Bps") or {})},
    )


def load_device_file(path: str | Path) -> list[DeviceSpec]:
    """Read user devices from a TOML or JSON file: one entry, a list, or {"devices": [...]}."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RidgelineError(f"cannot read device file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RidgelineError(f"device file {path} is not UTF-8 text; expected TOML or JSON") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise RidgelineError(f"device file {path} is not valid {kind}: {exc}") from None
    if isinstance(data, dict) and "devices" in data:
        data = data["devices"]
    entries = data if isinstance(data, list) else [data]
    return [device_from_dict(e, f"{path.name}[{i}]") for i, e in enumerate(entries)]


@lru_cache(maxsize=1)
def _builtin() -> tuple[DeviceSpec, ...]:
    text = resources.files("ridgeline.specs").joinpath("data/devices.json").read_text()
    return tuple(device_from_dict(e, "devices.json") for e in json.loads(text)["devices"])


def catalogue(extra_files: tuple[str | Path, ...] = ()) -> dict[str, DeviceSpec]:
    """All known devices: built-in, then the user's saved devices (e.g. `local`), then `extra_files`."""
    devices = {d.id: d for d in _builtin()}
    saved = user_dir() / "devices"
    if saved.is_dir():
        for f in sorted(saved.glob("*.json")):
            devices.update({d.id: d for d in load_device_file(f)})
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
    if key == "local":
        raise RidgelineError("no measured 'local' device yet: run `ridgeline probe` first")
    close = difflib.get_close_matches(key, list(devices), n=3, cutoff=0.5)
    close += [d for d in devices if key and key in d and d not in close][:3]
    hint = f"; did you mean {', '.join(close[:4])}?" if close else ""
    raise RidgelineError(f"unknown device {name!r}{hint} (`ridgeline devices` lists them)")
