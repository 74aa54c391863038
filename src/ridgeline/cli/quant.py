"""`ridgeline quantize` and `ridgeline export-gguf`: quantized folders and llama.cpp files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ridgeline.cli.common import app, check_outputs, command, console, dumps, writing
from ridgeline.cli.progress import progress


@app.command()
@command
def quantize(
    model: str = typer.Argument(..., help="model to quantize: the bundled model (smollm2-135m), a catalogue id, .gguf, folder or hub id"),
    method: str = typer.Option(..., "--method", help="rtn, llm_int8, smoothquant, gptq, bfp or gguf"),
    out: Path = typer.Option(..., "--out", "-o", help="folder to write (safetensors + ridgeline_quant.json)"),
    bits: Optional[int] = typer.Option(None, "--bits", help="rtn/gptq weight bits (2-8; default 4)"),
    group: Optional[int] = typer.Option(None, "--group", help="rtn/gptq group size, 0 = per channel (default: 128, or 0 at 8 bits)"),
    sym: Optional[bool] = typer.Option(None, "--sym/--asym", help="rtn/gptq symmetric or asymmetric codes (default: sym at 8 bits)"),
    act_order: bool = typer.Option(False, "--act-order", help="gptq: quantize columns by decreasing Hessian diagonal"),
    static_groups: bool = typer.Option(False, "--static-groups", help="gptq: group scales from the original weights (keeps act-order kernel-friendly)"),
    damp: float = typer.Option(0.01, "--damp", help="gptq: Hessian damping, fraction of the mean diagonal"),
    alpha: float = typer.Option(0.5, "--alpha", help="smoothquant migration strength"),
    alpha_search: bool = typer.Option(False, "--alpha-search", help="smoothquant: pick alpha from 0.3..0.9 by calibration loss"),
    threshold: float = typer.Option(6.0, "--threshold", help="llm_int8 outlier threshold"),
    weight_format: str = typer.Option("mxint8", "--weight-format", help="bfp: weight format (mxint8, mxfp4, mxfp6_e2m3, bfp32m4, ...)"),
    act_format: str = typer.Option("mxint8", "--act-format", help="bfp: activation format, or 'none' for weight-only"),
    recipe: str = typer.Option("q4_k_m", "--recipe", help="gguf: llama.cpp type or recipe (q8_0, q4_0, q4_k_m, ...)"),
    lm_head: bool = typer.Option(False, "--lm-head", help="quantize lm_head too (an untied copy when embeddings are tied)"),
    kernel: bool = typer.Option(True, "--kernel/--emulate", help="run through the CPU int8/int4 kernels where the format has one"),
    calib: str = typer.Option("corpus", "--calib", help="calibration text: 'corpus' (offline calib split) or a text file"),
    calib_samples: int = typer.Option(128, "--calib-samples", help="calibration windows"),
    calib_seq: int = typer.Option(256, "--calib-seq", help="tokens per calibration window"),
    dtype: str = typer.Option("fp32", "--dtype", help="float dtype of the parameters left unquantized (fp32, bf16)"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Quantize a causal LM on the CPU (layer by layer for GPTQ) and save it; `eval`/`bench`/`analyze` read the folder."""
    from ridgeline.loader import check_model, load_model
    from ridgeline.quant import CalibrationConfig, make_config, param_bytes, quantize_, save_quantized
    from ridgeline.report import quant_table

    check_outputs(out=(out, "folder"))  # before a model loads: a user's folder is refused, never emptied
    calibration = CalibrationConfig(source=calib, n_samples=calib_samples, seq_len=calib_seq)
    config = make_config(method, bits=bits, group=group, sym=sym, act_order=act_order, static_groups=static_groups,
                         damp=damp, alpha=alpha, alpha_search=alpha_search, threshold=threshold,
                         weight_format=weight_format, act_format=None if act_format.lower() == "none" else act_format,
                         recipe=recipe, include_lm_head=lm_head, kernel=kernel, calibration=calibration)
    spec = check_model(model)
    if getattr(config, "calibration", None) is not None:
        config.calibration.check(spec.max_position if spec else None)
    loaded, tokenizer = load_model(model, dtype=dtype)
    before = param_bytes(loaded)
    with progress(f"quantize {config.method}") as report:
        manifest = quantize_(loaded, config, tokenizer=tokenizer, progress=lambda d, t, what: report(what, d, t))
        with writing(out):
            save_quantized(loaded, tokenizer, out)
    if as_json:
        console.print_json(dumps(manifest))
    else:
        console.print(quant_table(manifest, before, str(out)))


@app.command("export-gguf")
@command
def export_gguf(
    model: str = typer.Argument(..., help="float model to export: the bundled model (smollm2-135m), .gguf, folder or hub id"),
    type_: str = typer.Option("f16", "--type", help="f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k"),
    out: Path = typer.Option(..., "--out", "-o", help="the .gguf file to write (temporary file, renamed into place)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Write a GGUF llama.cpp loads (llama, mistral, qwen2), quantized with ridgeline's bit-exact ggml codecs."""
    from ridgeline.loader import check_model, load_model, resolve
    from ridgeline.quant import export_gguf as run_export
    from ridgeline.quant import export_plan_check
    from ridgeline.report import export_table

    check_outputs(out=(out, "file"))
    source = resolve(model)
    export_plan_check(type_, check_model(model))
    loaded, tokenizer = load_model(model, dtype="fp32")
    with progress(f"export {type_}") as report, writing(out):
        result = run_export(loaded, tokenizer, out, type_, source_gguf=source.gguf,
                            progress=lambda d, t: report("tensors", d, t))
    if as_json:
        console.print_json(dumps(result.to_json()))
    else:
        console.print(export_table(result))
