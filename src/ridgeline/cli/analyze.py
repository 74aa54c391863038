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
    ("compress", Optional[float], typer.Option(None, "--compress", help="prompt compression rate R > 1: the model prefills round(P/R) tokens and caches them (see ridgeline compress)")),
    ("compressor", Optional[str], typer.Option(None, "--compressor", help="with --compress, add the compressor's own cost to the prefill: self (the model over the full prompt, self-information), self:K (its first K layers + a keep/drop head: the learned scorer), MODEL or MODEL:K")),
    ("compressor_flops", Optional[float], typer.Option(None, "--compressor-flops", help="with --compress, the compressor's cost as FLOPs per prompt token")),
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
    spec_tokens: Optional[int] = typer.Option(None, "--spec-tokens", help="speculative decoding: tokens verified per step (the base's own token plus the drafts)"),
    spec_accepted: Optional[float] = typer.Option(None, "--spec-accepted", help="speculative decoding: tokens kept per step on average (the base's own counted; 1..--spec-tokens)"),
    spec_heads: int = typer.Option(0, "--spec-heads", help="Medusa heads run per step (K ResBlocks and K more lm_head rows)"),
    spec_draft_vocab: int = typer.Option(0, "--spec-draft-vocab", help="rows of the heads' projection per step (a restricted draft vocabulary; 0: all)"),
    predict_kwargs: Optional[dict] = None,
) -> None:
    """Analytic roofline of prefill and decode: FLOPs, bytes, intensity, bound, time, memory (and the speedup of
    speculative decoding)."""
    from ridgeline.report import memory_table, operator_table, summary_table
    from ridgeline.roofline import predict, prediction_json

    check_outputs(out=(out, "file"))
    speculation = _speculation(spec_tokens, spec_accepted, spec_heads, spec_draft_vocab)
    pred = predict(model, device, speculation=speculation, **predict_kwargs)
    record = finite(prediction_json(pred, per_operator))
    if pred.workload.scenario.compress != 1:
        from ridgeline.roofline import compression_summary

        record["compression"] = finite(compression_summary(pred))
    line = None
    if speculation is not None:
        record["speculation"], line = _speedup(pred)
    write_record(out, record)
    if as_json:
        print(dumps(record))
        return
    console.print(summary_table(pred))
    console.print(memory_table(pred))
    if "compression" in record:
        say(_compression_line(record["compression"]))
    for phase in ("prefill", "decode") if per_operator else ():
        console.print(operator_table(pred, phase))
    if line:
        say(line)


def _speculation(tokens: Optional[int], accepted: Optional[float], heads: int, draft_vocab: int):
    """The Speculation of the --spec-* options (both --spec-tokens and --spec-accepted, or neither)."""
    if tokens is None and accepted is None:
        if heads or draft_vocab:
            raise RidgelineError("--spec-heads and --spec-draft-vocab need --spec-tokens and --spec-accepted")
        return None
    if tokens is None or accepted is None:
        raise RidgelineError("speculative decoding needs both --spec-tokens K and --spec-accepted A")
    from ridgeline.specs import Speculation

    return Speculation(tokens, accepted, heads, draft_vocab=draft_vocab)


def _speedup(pred) -> tuple[dict, str]:
    """The speculation's JSON (with the plain decode and the predicted speedup) and its summary line."""
    from ridgeline.roofline import speculative_speedup

    plain, speedup = speculative_speedup(pred)
    s = pred.workload.scenario.speculation
    record = {**s.to_json(), "steps": pred.decode.steps, "decode_tokens_per_s": pred.decode.tokens_per_s,
              "plain_decode_tokens_per_s": plain.decode.tokens_per_s, "predicted_speedup": speedup}
    line = (f"speculative decode ({s.tokens} verified, {s.accepted:g} accepted per step"
            f"{f', {s.heads} Medusa heads' if s.heads else ''}) on {pred.device.name}: "
            f"{pred.decode.tokens_per_s:.1f} tok/s vs {plain.decode.tokens_per_s:.1f} plain: predicted speedup "
            f"{speedup:.2f}x ({pred.decode.bound}-bound)")
    return record, line


def _compression_line(c: dict) -> str:
    """One line: the compressed prompt, the compressor's cost, TTFT and KV against the uncompressed prompt."""
    comp = (f"; compressor {c['compressor'] or 'flops'}: {c['compressor_flops'] / 1e9:.3g} GFLOP, "
            f"{c['compressor_time_s'] * 1e3:.3g} ms" if c["compressor_flops"] else "; compressor cost not counted")
    return (f"prompt compressed x{c['rate']:g}: {c['prompt_tokens']} -> {c['prefill_tokens']} tokens prefilled{comp}; "
            f"TTFT {c['ttft_uncompressed_s'] * 1e3:.3g} -> {c['ttft_s'] * 1e3:.3g} ms (x{c['ttft_speedup']:.2f}); "
            f"KV at the end {c['kv_bytes_uncompressed'] / 1e6:.3g} -> {c['kv_bytes'] / 1e6:.3g} MB "
            f"(-{c['kv_saved_fraction']:.0%})")


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
    """Draw the device roofline with the workload's phases and operators (and measured runs) to PNG and SVG;
    records from a fleet (`ridgeline fleet bench`) draw each node's roofs and points, and a table per node."""
    from ridgeline.measure import flat_rows
    from ridgeline.report import bench_table, measured_points, result_roofs
    from ridgeline.report import device_roofs, plot_roofline, prediction_points
    from ridgeline.roofline import predict

    check_outputs(out=(out, "stem"))
    results = [r for f in records or [] for r in read_results(f)]
    # a fleet record names its node: the report gives every node its own roofs and points
    rows = [{**row, "node": (r.get("node") or {}).get("label")} for r, row in zip(results, flat_rows(results))]
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
    for node in dict.fromkeys(r["node"] for r in rows if r["node"]):
        console.print(bench_table([r for r in rows if r["node"] == node], f"node {node}: measured runs"))
    for p in paths:
        say(f"wrote {p}")
