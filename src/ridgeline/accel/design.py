"""Accelerator designs: a PE array, its PE modes, three SRAM buffers, DRAM, an FP16→BFP converter and a vector
unit, read from TOML or JSON like devices, every field checked (errors name the field path).

Units: bytes, bytes per cycle (buffers), bytes per second (DRAM), Hz, pJ, µm². Buffers follow SCALE-Sim's three
SRAMs: `input` holds A tiles (activations, queries), `weight` B tiles (weights, keys, values), `output` C tiles
(partial sums at the accumulator width, then outputs). `formats` says what the design runs a model in by default
(weights and KV as ridgeline format names, activations of linear and attention products); `sources` maps a
field path to where its value comes from (a citation or "assumption: ...").

Optional `[energy]` and `[area]` tables override the cost model per action (e.g. `mac_pj = 2.2` to price a
design with the Accelergy/Eyeriss example table).
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ridgeline.accel import costs
from ridgeline.accel.costs import PEMode
from ridgeline.accel.operands import parse_operand
from ridgeline.errors import RidgelineError
from ridgeline.specs import get_format, get_kv_format

DATAFLOWS = ("os", "ws", "is")
_ENERGY_KEYS = ("mac_pj", "input_pj_per_byte", "weight_pj_per_byte", "output_pj_per_byte", "dram_pj_per_byte",
                "converter_pj_per_element", "vector_pj_per_op")
_AREA_KEYS = ("pe_um2", "converter_um2", "vector_um2")


@dataclass(frozen=True)
class Buffer:
    """One on-chip SRAM: capacity, banks (the bank is what an access energises), bandwidth to the array."""

    bytes: int
    banks: int
    bytes_per_cycle: float


@dataclass(frozen=True)
class Converter:
    """FP16→BFP converter on the activation path: elements per cycle; costs from the model unless given."""

    elements_per_cycle: float
    block: int = 32


@dataclass(frozen=True)
class Formats:
    """What the design runs a model in: weights, KV (ridgeline names) and activation formats per GEMM kind."""

    weights: str
    kv: str
    linear_acts: str
    attention_acts: str


@dataclass(frozen=True)
class Design:
    """A simulated accelerator."""

    name: str
    description: str
    clock_hz: float
    rows: int
    cols: int
    modes: tuple[PEMode, ...]
    accumulator_bits: int
    input: Buffer
    weight: Buffer
    output: Buffer
    dram_Bps: float
    dram_pj_per_byte: float
    vector_lanes: int
    formats: Formats
    converter: Converter | None = None
    dataflows: tuple[str, ...] = DATAFLOWS
    double_buffer: bool = True
    node_nm: float = 45.0
    leakage_w: float = 0.0
    dram_bytes: float = 16e9  # DRAM capacity (the memory-footprint table only)
    energy: dict[str, float] = field(default_factory=dict)  # per-action overrides (pJ)
    area: dict[str, float] = field(default_factory=dict)  # per-unit overrides (µm²)
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Designs built in code (sweeps, `with_`) get the file loader's checks on the numbers that divide."""
        for name in ("clock_hz", "dram_Bps", "rows", "cols", "vector_lanes", "accumulator_bits"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise RidgelineError(f"design {self.name!r}: {name} must be a positive finite number, got {v!r}")
        for b in ("input", "weight", "output"):
            buf = getattr(self, b)
            if not (buf.bytes > 0 and buf.banks > 0 and math.isfinite(buf.bytes_per_cycle) and buf.bytes_per_cycle > 0):
                raise RidgelineError(f"design {self.name!r}: the {b} buffer needs positive bytes, banks and "
                                     f"bytes_per_cycle, got {buf}")
        if self.converter and not (math.isfinite(self.converter.elements_per_cycle)
                                   and self.converter.elements_per_cycle > 0):
            raise RidgelineError(f"design {self.name!r}: converter.elements_per_cycle must be positive")
        if not self.modes:
            raise RidgelineError(f"design {self.name!r}: the PE needs at least one mode")

    @property
    def pes(self) -> int:
        """PEs in the array."""
        return self.rows * self.cols

    @property
    def peak_macs_per_s(self) -> float:
        """Array MACs per second in its fastest mode."""
        return self.pes * max(m.macs for m in self.modes) * self.clock_hz

    def with_(self, **changes: Any) -> Design:
        """A copy with fields changed (for sweeps); buffers and formats as dicts of their fields are merged."""
        for name in ("input", "weight", "output", "converter", "formats"):
            if isinstance(changes.get(name), dict):
                base = getattr(self, name)
                changes[name] = replace(base, **changes[name]) if base else Converter(**changes[name])
        return replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# reading and checking


class _Reader:
    """Typed access to a nested dict that names the field path in every error."""

    def __init__(self, data: dict, where: str) -> None:
        self.data, self.where = data, where

    def _get(self, path: str, required: bool = True) -> Any:
        node: Any = self.data
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                if required:
                    raise RidgelineError(f"{self.where}: missing field {path!r}")
                return None
            node = node[part]
        return node

    def number(self, path: str, positive: bool = True, default: float | None = None, zero_ok: bool = False) -> float:
        v = self._get(path, default is None)
        if v is None:
            return float(default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise RidgelineError(f"{self.where}: field {path!r} must be a finite number, got {v!r}")
        if positive and not (v > 0 or (zero_ok and v == 0)):
            need = "non-negative" if zero_ok else "positive"
            raise RidgelineError(f"{self.where}: field {path!r} must be {need}, got {v!r}")
        return float(v)

    def integer(self, path: str, default: int | None = None) -> int:
        v = self._get(path, default is None)
        if v is None:
            return int(default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise RidgelineError(f"{self.where}: field {path!r} must be a positive integer, got {v!r}")
        return v

    def string(self, path: str, default: str | None = None) -> str:
        v = self._get(path, default is None)
        if v is None:
            return default
        if not isinstance(v, str) or not v.strip():
            raise RidgelineError(f"{self.where}: field {path!r} must be a non-empty string, got {v!r}")
        return v

    def boolean(self, path: str, default: bool) -> bool:
        v = self._get(path, False)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise RidgelineError(f"{self.where}: field {path!r} must be true or false, got {v!r}")
        return v

    def table(self, path: str) -> dict:
        v = self._get(path, False)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise RidgelineError(f"{self.where}: field {path!r} must be a table, got {v!r}")
        return v


def _buffer(r: _Reader, name: str) -> Buffer:
    p = f"buffers.{name}"
    return Buffer(r.integer(f"{p}.bytes"), r.integer(f"{p}.banks", 1), r.number(f"{p}.bytes_per_cycle"))


def _modes(r: _Reader) -> tuple[PEMode, ...]:
    raw = r._get("pe.modes")
    if not isinstance(raw, list) or not raw:
        raise RidgelineError(f"{r.where}: field 'pe.modes' must be a non-empty list of {{a = ..., b = ...}} tables")
    out = []
    for i, m in enumerate(raw):
        where = f"pe.modes[{i}]"
        if not isinstance(m, dict):
            raise RidgelineError(f"{r.where}: field {where!r} must be a table with a and b operand types")
        sub = _Reader(m, f"{r.where}: {where}")
        a = parse_operand(sub.string("a"), f"{r.where}: field '{where}.a'")
        b = parse_operand(sub.string("b"), f"{r.where}: field '{where}.b'")
        out.append(PEMode(a, b, sub.integer("macs_per_cycle", 1)))
    return tuple(out)


def _formats(r: _Reader) -> Formats:
    f = Formats(r.string("formats.weights"), r.string("formats.kv"), r.string("formats.linear_acts"),
                r.string("formats.attention_acts"))
    for key in ("weights", "linear_acts", "attention_acts"):
        try:
            get_format(getattr(f, key))
        except RidgelineError as exc:
            raise RidgelineError(f"{r.where}: field 'formats.{key}': {exc}") from None
    try:
        get_kv_format(f.kv)
    except RidgelineError as exc:
        raise RidgelineError(f"{r.where}: field 'formats.kv': {exc}") from None
    return f


def _overrides(r: _Reader, path: str, keys: tuple[str, ...]) -> dict[str, float]:
    t = r.table(path)
    for k in t:
        if k not in keys:
            raise RidgelineError(f"{r.where}: unknown field '{path}.{k}'; expected one of {', '.join(keys)}")
    return {k: r.number(f"{path}.{k}") for k in t}


def design_from_dict(data: dict[str, Any], where: str = "design") -> Design:
    """Validate one design (a dict as in the bundled TOML files) into a Design."""
    if not isinstance(data, dict):
        raise RidgelineError(f"{where}: expected a table with name, clock_hz, array, pe, buffers, dram, ...")
    r = _Reader(data, where)
    name = r.string("name")
    r.where = f"{where} ({name})"
    flows = r._get("dataflows", False) or list(DATAFLOWS)
    if not isinstance(flows, list) or not flows or any(f not in DATAFLOWS for f in flows):
        raise RidgelineError(f"{r.where}: field 'dataflows' must list some of {', '.join(DATAFLOWS)}, got {flows!r}")
    conv = r.table("converter")
    converter = Converter(r.number("converter.elements_per_cycle"), r.integer("converter.block", 32)) if conv else None
    sources = r.table("sources")
    if any(not isinstance(v, str) for v in sources.values()):
        raise RidgelineError(f"{r.where}: every entry of 'sources' must be a string (a citation or an assumption)")
    return Design(
        name=name, description=r.string("description", ""), clock_hz=r.number("clock_hz"),
        rows=r.integer("array.rows"), cols=r.integer("array.cols"), modes=_modes(r),
        accumulator_bits=r.integer("pe.accumulator_bits"),
        input=_buffer(r, "input"), weight=_buffer(r, "weight"), output=_buffer(r, "output"),
        dram_Bps=r.number("dram.bandwidth_Bps"),
        dram_pj_per_byte=r.number("dram.pj_per_byte", default=costs.dram_pj_per_byte()),
        vector_lanes=r.integer("vector.lanes"), formats=_formats(r), converter=converter,
        dataflows=tuple(flows), double_buffer=r.boolean("double_buffer", True),
        node_nm=r.number("node_nm", default=45.0), leakage_w=r.number("leakage_w", default=0.0, zero_ok=True),
        dram_bytes=r.number("dram.capacity_bytes", default=16e9),
        energy=_overrides(r, "energy", _ENERGY_KEYS), area=_overrides(r, "area", _AREA_KEYS), sources=dict(sources),
    )


def load_design_file(path: str | Path) -> Design:
    """Read a design from a TOML or JSON file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RidgelineError(f"cannot read design file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RidgelineError(f"design file {path} is not UTF-8 text; expected TOML or JSON") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise RidgelineError(f"design file {path} is not valid {kind}: {exc}") from None
    return design_from_dict(data, path.name)


def _data_dir():
    return resources.files("ridgeline.accel").joinpath("data/designs")


@lru_cache(maxsize=None)
def bundled_designs() -> tuple[str, ...]:
    """Names of the designs shipped in data/designs (file stems)."""
    return tuple(sorted(p.name.removesuffix(".toml") for p in _data_dir().iterdir() if p.name.endswith(".toml")))


@lru_cache(maxsize=None)
def _bundled(name: str) -> Design:
    text = _data_dir().joinpath(f"{name}.toml").read_text()
    return design_from_dict(tomllib.loads(text), f"{name}.toml")


def get_design(name: str) -> Design:
    """A bundled design by name, or a TOML/JSON design file by path."""
    if name.endswith((".toml", ".json")) and Path(name).exists():
        return load_design_file(name)
    key = name.strip().lower()
    if key in bundled_designs():
        return _bundled(key)
    raise RidgelineError(f"unknown accelerator design {name!r}; bundled: {', '.join(bundled_designs())} "
                         "(or a path to a .toml/.json design file)")
