"""Sweeps: the analytic roofline over models × depths × scenarios × batches × formats × devices."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ridgeline.errors import RidgelineError
from ridgeline.roofline.evaluate import evaluate
from ridgeline.roofline.workload import Options, build_workload
from ridgeline.specs import DeviceSpec, ModelSpec, Precision, Scenario, get_format, get_kv_format, is_recipe

#: columns of a sweep row, in table order
COLUMNS = ("model", "layers", "device", "scenario", "prompt", "generate", "batch", "weights", "acts", "kv",
           "ttft_s", "prefill_intensity", "prefill_bound", "decode_time_per_token_s", "decode_tokens_per_s",
           "decode_intensity", "decode_bound", "total_s", "memory_bytes", "fits", "error")


@dataclass(frozen=True)
class SweepAxes:
    """The values each axis takes; the sweep is their cross product."""

    models: tuple[ModelSpec, ...]
    devices: tuple[DeviceSpec, ...]
    scenarios: tuple[Scenario, ...]
    weights: tuple[str, ...] = ("bf16",)
    layers: tuple[int | None, ...] = (None,)
    batches: tuple[int, ...] = (1,)
    acts: str = "bf16"
    kv: str = "bf16"

    def __post_init__(self) -> None:
        for b in self.batches:
            if b < 1:
                raise RidgelineError(f"--batch: batch sizes must be >= 1, got {b}")
        for n in self.layers:
            if n is not None and n < 1:
                raise RidgelineError(f"--layers: depths must be >= 1, got {n}")
        # a misspelt format is bad input; a format that does not fit a model's rows is a row's error
        for w in self.weights:
            if not is_recipe(w):
                get_format(w)
        get_kv_format(self.kv)

    @property
    def size(self) -> int:
        """Number of rows the sweep produces."""
        return (len(self.models) * len(self.layers) * len(self.scenarios) * len(self.batches)
                * len(self.weights) * len(self.devices))


def run_sweep(axes: SweepAxes, options: Options | None = None, progress=None) -> list[dict[str, Any]]:
    """One row per combination; a workload is built once and evaluated on every device.

    A combination that cannot be built (a format whose block does not divide a row) gives rows with
    `error` set instead of stopping the sweep. `progress(n)` is called after each workload.
    """
    rows: list[dict[str, Any]] = []
    for model, n_layers, sc, batch, weights in itertools.product(axes.models, axes.layers, axes.scenarios,
                                                                 axes.batches, axes.weights):
        spec = model.with_layers(n_layers) if n_layers else model
        scenario = Scenario(sc.prompt, sc.generate, batch, sc.name)
        base = {"model": model.name, "layers": spec.n_layers, "scenario": scenario.label,
                "prompt": scenario.prompt, "generate": scenario.generate, "batch": batch,
                "weights": weights, "acts": axes.acts, "kv": axes.kv}
        try:
            workload = build_workload(spec, scenario, Precision(weights, axes.acts, axes.kv), options)
        except RidgelineError as exc:
            rows += [{**base, "device": d.id, "error": str(exc)} for d in axes.devices]
            if progress:
                progress(len(axes.devices))
            continue
        for device in axes.devices:
            p = evaluate(workload, device)
            d = p.decode
            rows.append({**base, "device": device.id, "ttft_s": p.ttft_s,
                         "prefill_intensity": p.prefill.intensity, "prefill_bound": p.prefill.bound,
                         "decode_time_per_token_s": d.time_s / d.steps if d.steps else None,
                         "decode_tokens_per_s": d.tokens_per_s if d.steps else None,
                         "decode_intensity": d.intensity, "decode_bound": d.bound, "total_s": p.total_s,
                         "memory_bytes": p.memory_total, "fits": p.fits, "error": None})
        if progress:
            progress(len(axes.devices))
    return rows


#: sweep columns that hold text, not numbers
TEXT_COLUMNS = ("model", "device", "scenario", "weights", "acts", "kv", "prefill_bound", "decode_bound", "fits", "error")


def check_plot_axes(x: str, y: str) -> None:
    """Refuse a sweep plot whose x is not a sweep column or whose y is not a numeric one."""
    numeric = [c for c in COLUMNS if c not in TEXT_COLUMNS]
    if x not in COLUMNS or x == "error":
        raise RidgelineError(f"--x {x!r} is not a sweep column; one of {', '.join(c for c in COLUMNS if c != 'error')}")
    if y not in numeric:
        raise RidgelineError(f"--y {y!r} is not a numeric sweep column; one of {', '.join(numeric)}")


def varying_columns(rows: Sequence[dict[str, Any]], x: str) -> list[str]:
    """The axes (other than `x`) that take more than one value: what a sweep plot groups its lines by."""
    return [c for c in ("model", "layers", "device", "scenario", "prompt", "generate", "batch", "weights")
            if c != x and len({r[c] for r in rows}) > 1]


def rows_to_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV with the given columns (default: the sweep's COLUMNS)."""
    import csv
    import io

    rows = list(rows)
    if columns is None:
        columns = COLUMNS
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    return buf.getvalue()
