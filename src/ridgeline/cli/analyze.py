"""`ridgeline analyze` and `ridgeline plot`: the analytic roofline of one model on one device (torch-free)."""

import functools
import inspect
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from ridgeline.cli.common import (ACTS, ATTENTION, BATCH, CAUSAL, COMPUTE, DEVICE, DEVICE_FILE, JSON, KV, LOGITS,
                                  MLA_CACHE, MLA_DECODE, MODEL, SCENARIO, TRAFFIC, WEIGHTS, app, check_outputs, command,
                                  console, device_files, dumps, finite, read_results, say, write_record, writing)
from ridgeline.errors import RidgelineError


#: the options analyze and plot share: what to predict and how to count it (name, type, typer option)
_PREDICTION_OPTIONS = (
    ("scenario", str, SCENARIO), ("batch", int, BATCH), ("weights", Optional[str], WEIGHTS), ("acts", str, ACTS),
    ("kv", Optional[str], KV), ("compute", Optional[str], COMPUTE),
    ("layers", Optional[int], typer.Option(None, "--layers", help="model depth N: the first N layers (beyond the model's depth its layers repeat)")),
    ("window", Optional[int], typer.Option(None, "--window", help="sliding window W on every attention layer: W keys per query, the current token included (the cache holds W-1 tokens); bounds KV memory and attention")),
    ("kv_heads", Optional[int], typer.Option(None, "--kv-heads", help="KV heads G on every attention layer (GQA conversion; G must divide the query heads): KV cache and k/v projections scale by G")),
    ("attention", str, ATTENTION), ("act_traffic", str, TRAFFIC), ("logits", str, LOGITS),
    ("mla_cache", str, MLA_CACHE), ("mla_decode", str, MLA_DECODE), ("causal", bool, CAUSAL),
    ("device_file", Optional[Path], DEVICE_FILE),
)


def prediction_options(fn: Callable) -> Callable:
    """Give a command the shared prediction options; it receives them as one `predict_kwargs` dict of
    `ridgeline.roofline.predict` keywords (the counting switches already an Options)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ridgeline.roofline import Options

        shared = {name: kwargs.pop(name) for name, _, _ in _PREDICTION_OPTIONS}
        counting = {k: shared.pop(k) for k in ("attention", "logits", "mla_cache", "mla_decode", "causal")}
        options = Options(activation_traffic=shared.pop("act_traffic"), **counting)
        extra = device_files(shared.pop("device_file"))
        return fn(*args, predict_kwargs={**shared, "options": options, "device_files": extra}, **kwargs)

    own = [p for p in inspect.signature(fn).parameters.values() if p.name != "predict_kwargs"]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
              for name, kind, option in _PREDICTION_OPTIONS]
    wrapper.__signature__ = inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared)
    del wrapper.__wrapped__  # typer reads the signature above, not the wrapped function's
    return wrapper


@app.command()
@command
@prediction_options
def analyze(
    model: str = MODEL,
    device: str = DEVICE,
    per_operator: bool = typer.Option(False, "--per-operator", help="list every operator of each distinct layer and the model-level ones"),
    as_json: bool = JSON,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="also write the JSON record to this file"),
    predict_kwargs: Optional[dict] = None,
) -> None:
    """Analytic roofline of prefill and decode: FLOPs, bytes, intensity, bound, time, memory."""
    from ridgeline.report import memory_table, operator_table, summary_table
    from ridgeline.roofline import predict, prediction_json

    check_outputs(out=(out, "file"))
    pred = predict(model, device, **predict_kwargs)
    record = finite(prediction_json(pred, per_operator))
    write_record(out, record)
    if as_json:
        print(dumps(record))
        return
    console.print(summary_table(pred))
    console.print(memory_table(pred))
    for phase in ("prefill", "decode") if per_operator else ():
        console.print(operator_table(pred, phase))


@app.command()
@command
@prediction_options
def plot(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="config.json, model folder, .gguf file or catalogue id (`ridgeline models`)"),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="catalogue id, 'local' after `ridgeline probe`, or a device file"),
    operators: bool = typer.Option(True, "--operators/--phases-only", help="also plot every operator"),
    records: Optional[list[Path]] = typer.Option(None, "--records", help="bench results JSON (`ridgeline bench --out`): add measured points and their roofs; repeatable"),
    out: Path = typer.Option(Path("roofline"), "--out", "-o", help="output stem: writes STEM.png and STEM.svg"),
    predict_kwargs: Optional[dict] = None,
) -> None:
    """Draw the device roofline with the workload's phases and operators (and measured runs) to PNG and SVG."""
    from ridgeline.measure import flat_rows
    from ridgeline.report import measured_points, result_roofs
    from ridgeline.report import device_roofs, plot_roofline, prediction_points
    from ridgeline.roofline import predict

    check_outputs(out=(out, "stem"))
    rows = flat_rows([r for f in records or [] for r in read_results(f)])
    if model is None or device is None:
        if not rows:
            raise RidgelineError("plot needs --model and --device (an analytic roofline), or --records FILE "
                                 "(measured runs)")
        roofs, points, title = result_roofs(rows), measured_points(rows), f"{rows[0]['model']}: measured runs"
    else:
        pred = predict(model, device, **predict_kwargs)
        wl = pred.workload
        roofs = device_roofs(pred, ("fp32", "bf16", "int8")) + result_roofs(rows)
        points = prediction_points(pred, operators) + measured_points(rows, analytic=False)
        title = f"{wl.model.name} · {wl.scenario.label} · {wl.precision.weights} on {pred.device.name}"
    with writing(out):
        paths = plot_roofline(roofs, points, out, title=title)
    for p in paths:
        say(f"wrote {p}")
