"""What `ridgeline accel` does, as one library call: evaluate designs on a model's scenario, compare them with a
baseline, and optionally explore the design space around one of them.

Each design runs the model in its own formats (`formats` of the design file: weights, KV, activations)
unless `weights` / `kv` override them for every design. Comparisons are ratios of our own simulated designs:
speedup = baseline time / design time; energy efficiency = baseline energy / design energy; area efficiency
= speedup × baseline area / design area (throughput per mm²), per phase and end to end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ridgeline.accel.design import Design, get_design
from ridgeline.accel.dse import DEFAULT_AXES, Exploration, explore
from ridgeline.accel.fpga import hls_compare
from ridgeline.accel.simulate import AccelResult, simulate
from ridgeline.errors import RidgelineError
from ridgeline.roofline import Workload, build_workload
from ridgeline.specs import ModelSpec, Precision, Scenario, load_spec, parse_scenario

BASELINES = ("fp16", "figna-w4a16", "anda-bfp-linear")
DESIGNS = (*BASELINES, "harmonia")


@dataclass(frozen=True)
class AccelReport:
    """Results per design, their ratios to the baseline, and the exploration if one ran."""

    results: tuple[AccelResult, ...]
    baseline: str
    comparisons: tuple[dict, ...]
    exploration: Exploration | None = None
    hls: tuple[dict, ...] = ()  # naive against explored HLS designs per phase, when an FPGA was asked for


def design_precision(d: Design, weights: str | None = None, kv: str | None = None) -> Precision:
    """The precision a design runs a model in (its formats, or the overrides)."""
    return Precision(weights=weights or d.formats.weights, acts=d.formats.linear_acts, kv=kv or d.formats.kv)


def design_workload(model: ModelSpec, scenario: Scenario, d: Design, weights: str | None = None,
                    kv: str | None = None) -> Workload:
    """The workload of `model` in the design's formats."""
    return build_workload(model, scenario, design_precision(d, weights, kv))


def ratios(r: AccelResult, base: AccelResult) -> dict:
    """Speedup, energy efficiency and area efficiency of `r` over `base`, per phase and end to end."""
    out = {"design": r.design.name, "baseline": base.design.name, "area_ratio": r.area_mm2 / base.area_mm2}
    pairs = {"prefill": (r.prefill.time_s, base.prefill.time_s, r.prefill.energy, base.prefill.energy),
             "decode": (r.decode.time_s, base.decode.time_s, r.decode.energy, base.decode.energy),
             "total": (r.total_s, base.total_s, r.energy_pj, base.energy_pj)}
    for name, (t, bt, e, be) in pairs.items():
        if t > 0 and e > 0:
            speed = bt / t
            out[name] = {"speedup": speed, "energy_efficiency": be / e,
                         "area_efficiency": speed * base.area_mm2 / r.area_mm2}
    return out


def run(model: str | ModelSpec = "smollm2-135m", scenario: str | Scenario = "512:64",
        designs: Sequence[str | Design] = DESIGNS, baseline: str | None = None, objective: str = "latency",
        weights: str | None = None, kv: str | None = None, explore_around: str | Design | None = None,
        explore_points: int = 0, explore_workers: int = 1, axes: dict | None = None, step_stride: int = 1,
        fpga: str | None = None, fpga_pe: str = "bfp8xint4",
        progress: Callable[[str, int, int], None] | None = None) -> AccelReport:
    """Simulate `designs` on the model's scenario; ratios to `baseline` (default: the first design); explore
    `explore_points` design points around `explore_around` (default: the last design) when asked; estimate
    naive against explored HLS designs of the linear GEMMs on `fpga` (zcu102, kv260) with `fpga_pe` lanes."""
    spec = model if isinstance(model, ModelSpec) else load_spec(model)
    sc = scenario if isinstance(scenario, Scenario) else parse_scenario(scenario)
    ds = [d if isinstance(d, Design) else get_design(d) for d in designs]
    if not ds:
        raise RidgelineError("accel needs at least one design")
    names = [d.name for d in ds]
    base_name = baseline or names[0]
    if base_name not in names:
        raise RidgelineError(f"baseline {base_name!r} is not among the designs ({', '.join(names)})")
    results = []
    for i, d in enumerate(ds):
        if progress:
            progress(f"simulating {d.name}", i, len(ds))
        results.append(simulate(design_workload(spec, sc, d, weights, kv), d, objective, step_stride))
    if progress:
        progress("simulating", len(ds), len(ds))
    base = results[names.index(base_name)]
    comps = tuple(ratios(r, base) for r in results)
    exploration = None
    if explore_points:
        around = explore_around if isinstance(explore_around, Design) else (
            get_design(explore_around) if explore_around else ds[-1])
        exploration = explore(around, spec, sc, axes or DEFAULT_AXES, samples=explore_points, objective=objective,
                              workers=explore_workers, progress=progress)
    hls = ()
    if fpga:
        w = results[-1].workload
        hls = tuple(hls_compare(w, fpga, fpga_pe, phase) for phase in ("prefill", "decode") if w.phases[
            0 if phase == "prefill" else 1].steps)
    return AccelReport(tuple(results), base_name, comps, exploration, hls)
