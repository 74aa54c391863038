"""A bench grid: every measured run of a cross product, one model load per group, placed on two roofs.

`BenchGrid` names the axes (backends × dtypes × threads × depths × KV variants, each over the scenarios and the
speculative settings, `None` meaning plain decoding);
`run_grid` refuses the whole grid before loading anything if one run is bad input or will not fit, loads
each group once, times its scenarios and places every record on the **probe** roof (this machine's
measured one, at the run's thread count when probed at it) and the **catalogue** roof (the host's entry).
What the CLI, the demo and `benchmarks/decode.py` share.
"""

from __future__ import annotations

import os
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ridgeline.arch import Variant
from ridgeline.errors import RidgelineError, note
from ridgeline.measure.bench import (BenchConfig, SpecFactory, SpecSetting, check_memory, load_runner, model_spec,
                                    run_bench)
from ridgeline.measure.phi import place
from ridgeline.measure.probe import roof_for_threads, torch_threads
from ridgeline.measure.record import result_json
from ridgeline.measure.stats import cpu_model
from ridgeline.specs import DeviceSpec, Scenario, get_device, host_device

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class BenchGrid:
    """The axes of a grid of measured runs (keywords only); llama.cpp runs take no dtype, depth or variant."""

    _: KW_ONLY
    model: str = "smollm2-135m"
    backends: Sequence[str] = ("torch",)
    scenarios: Sequence[Scenario] = (Scenario(128, 128, name="SISO"),)
    dtypes: Sequence[str] = ("fp32",)
    threads: Sequence[int | None] = (None,)
    layers: Sequence[int | None] = (None,)
    variants: Sequence[Variant] = (Variant(),)
    specs: Sequence[SpecSetting | None] = (None,)  # torch: plain decoding (None) and speculative settings
    repeats: int = 3
    warmup: int = 1
    impl: str = "auto"
    memory_limit: float | None = None

    def groups(self) -> list[list[BenchConfig]]:
        """Every run, grouped by what has to be loaded (one load per group, its scenarios inside)."""
        swept = [o for o, used in (("--layers", any(k is not None for k in self.layers)),
                                   ("--kv/--window/--kv-heads", any(v.transformed for v in self.variants))) if used]
        if swept and "llamacpp" in self.backends:
            if "torch" not in self.backends:  # nothing would apply them: refuse rather than ignore
                raise RidgelineError(f"{' and '.join(swept)} transform the torch model; llama.cpp runs the GGUF as "
                                     "stored, so add --backend torch or drop them")
            note(f"{' and '.join(swept)} apply to the torch runs; llama.cpp runs the whole GGUF as stored, once")
        impl = self.impl  # a speculative run and its plain baseline share one load, so they run on one path
        groups = []
        for backend in self.backends:
            torch = backend == "torch"
            for dtype in (self.dtypes if torch else ["stored"]):
                for t in self.threads:
                    for k in (self.layers if torch else [None]):
                        for v in (self.variants if torch else [Variant()]):
                            groups.append([BenchConfig(self.model, backend, sc, dtype, threads=t, repeats=self.repeats,
                                                       warmup=self.warmup, layers=k, impl=impl,
                                                       memory_limit=self.memory_limit, variant=v, spec=spec)
                                           for sc in self.scenarios for spec in (self.specs if torch else [None])])
        return groups

    @property
    def size(self) -> int:
        """Number of runs."""
        return sum(len(g) for g in self.groups())


@dataclass(frozen=True)
class Roofs:
    """The roofs records are placed on: the probe (measured) roof and the catalogue roof; either may be absent."""

    probe: DeviceSpec | None
    catalogue: DeviceSpec | None
    notes: tuple[str, ...] = field(default_factory=tuple)


def resolve_roofs(device: str = "local", reference: str = "auto", device_files: Sequence[str | Path] = ()) -> Roofs:
    """The probe roof `device` ('local' without a probe yet: none, with a note) and the catalogue roof
    `reference` ('auto': this host's catalogue entry, if it has one; 'none': no catalogue roof)."""
    extra, notes = tuple(device_files), []
    try:
        probe = get_device(device, extra)
    except RidgelineError as exc:
        if device != "local":
            raise
        probe = None
        notes.append(f"{exc}; Φ only against the catalogue roof")
    if reference == "auto":
        catalogue = host_device(cpu_model(), os.cpu_count())
    else:
        catalogue = None if reference == "none" else get_device(reference, extra)
    return Roofs(probe, catalogue, tuple(notes))


def place_record(record, roofs: Roofs) -> dict:
    """The record's JSON with its placements on the probe roof (at its thread count) and the catalogue roof."""
    placed = []
    if roofs.probe is not None:
        placed.append(place(record, roof_for_threads(roofs.probe, record.threads), "probe"))
    if roofs.catalogue is not None:
        placed.append(place(record, roofs.catalogue, "catalogue"))
    return result_json(record, placed)


def run_grid(grid: BenchGrid, roofs: Roofs, progress: Progress | None = None,
             note: Callable[[str], None] | None = None, spec_factory: SpecFactory | None = None) -> list[dict]:
    """Run every group of `grid` (one load each) and return the placed records, in grid order; `note` hears the
    roofs' notes once the whole grid is checked (bad input and what will not fit are refused first). Speculative
    settings need `spec_factory` (e.g. `ridgeline.engine.spec_runner`)."""
    groups = grid.groups()
    specs = [model_spec(group[0]) for group in groups]
    for group, spec in zip(groups, specs):
        for cfg in group:
            check_memory(cfg, spec)
            if cfg.spec is not None and spec_factory is None:
                raise RidgelineError("speculative runs need a runner factory (ridgeline.engine.spec_runner)")
    for text in roofs.notes if note else ():
        note(text)
    total = sum(len(g) for g in groups)
    results: list[dict] = []
    for group, spec in zip(groups, specs):
        first = group[0]
        with torch_threads(first.threads):
            if progress:
                progress(f"loading {first.model} ({first.backend} {first.dtype})", len(results), total)
            loaded = load_runner(first, max(c.max_len for c in group), spec)
            try:
                for cfg in group:
                    what = _describe(cfg)
                    done = len(results)
                    record = run_bench(cfg, loaded, (lambda w, d, t: progress(f"{what} {w}", done, total))
                                       if progress else None, spec_factory)
                    results.append(place_record(record, roofs))
            finally:
                loaded.close()
    if progress:
        progress("done", total, total)
    return results


def _describe(cfg: BenchConfig) -> str:
    text = f"{cfg.backend} {cfg.dtype} {cfg.scenario.label} t={cfg.threads or '-'}"
    if cfg.layers:
        text += f" L={cfg.layers}"
    return " ".join([text, *cfg.variant.labels, *([cfg.spec.label] if cfg.spec else [])])
