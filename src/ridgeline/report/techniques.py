"""The survey's speedup table, measured: every technique ridgeline implements against its record's own baseline,
beside the survey seed's literature figure and the roofline's prediction, projected to the seed devices and the
simulated Harmonia-style accelerator. torch-free: it reads benchmark records and prices Workloads.

Conventions:
- A technique is a `Technique` (frozen): its name, family, the seed's figure (`Literature`, wording kept), where its
  measured numbers live (`Measured`: references `file.json:key.path`) and how it changes the roofline's inputs
  (`Projection`). `TECHNIQUES` is the catalogue, in table order; combinations are techniques too.
- A reference `file.json:a.b[k=v,k2=v2].c` walks dict keys by dots; `[k=v]` picks the one list item whose field k
  prints as v (`[3]` the fourth item). `resolve(records, ref)` follows one; a missing file, key or item is a
  `RidgelineError` naming the reference.
- Speedup > 1 is faster: prefill = baseline time / technique time (per sequence), decode = technique tokens/s /
  baseline tokens/s (whole batch: throughput for the batching rows). Each technique's headline phase is the one
  its seed figure is about (decode, prefill/TTFT for prompt compression, throughput for batching).
- Every number a row holds has a source: `file.json:ref` (a quotient: `num / den`) or `roofline: ...` (a
  prediction, with its inputs). A value that is missing has a reason in `why` instead: never a blank cell.
- A row whose measured headline speedup lies outside [seed low / 2, seed high × 2] gets one explanation sentence
  composed from the prediction's numbers (bound, intensity, ridge, bytes by kind, FLOPs, model size, batch).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ridgeline.errors import RidgelineError
from ridgeline.roofline import Prediction, build_workload, compressed, predict, variant_spec
from ridgeline.specs import DeviceSpec, ModelSpec, Speculation, get_device, host_device, load_spec, parse_scenario

MODEL = "smollm2-135m"
#: the devices the RooflineBench seed measured (catalogue ids), in the matrix's column order
SEED_DEVICES = ("rtx-3090", "rtx-3070-ti-laptop", "jetson-orin-nano-super-8g", "raspberry-pi-5", "apple-m1-pro")
#: bundled accelerator designs priced as extra matrix columns (`ridgeline.accel`)
ACCEL_DESIGNS = ("harmonia",)
#: the command that writes each record
SCRIPTS = {**{f"{n}.json": f"benchmarks/{n}.py" for n in ("quant", "kv", "serve", "native", "accel", "medusa",
                                                          "compress", "distill")},
           "combos.json": "benchmarks/techniques.py --measure"}
#: measured headline / seed figure outside [1/BAND, BAND] gets an explanation
BAND = 2.0


@dataclass(frozen=True)
class Literature:
    """The seed's figure: its wording, and the speedup range it states (None: no number)."""

    text: str
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Ratio:
    """A measured speedup as num / den of two referenced numbers (den None: the record states the ratio)."""

    num: str
    den: str | None = None


@dataclass(frozen=True)
class Measured:
    """Where a technique's measured numbers live; a str instead of a reference says why that part is absent."""

    baseline: str
    prefill: Ratio | str
    decode: Ratio | str
    weights: str | None = None
    base_weights: str | None = None
    kv: str | None = None
    base_kv: str | None = None
    ppl: str | None = None
    base_ppl: str | None = None
    cloze: str | None = None
    mc: str | None = None
    flags: tuple[tuple[str, str], ...] = ()  # (reference to a true/false field, the note it adds when true)
    requires: tuple[str, ...] = ()  # references that must exist (a partial record lacks them)
    reason: str | None = None  # reference to the record's own account of why it did not measure this part


@dataclass(frozen=True)
class Projection:
    """How the technique changes the roofline's inputs against its baseline (formats `base` for all three)."""

    scenario: str = "128:128"
    base: str = "bf16"
    batch: int = 1
    base_batch: int = 1
    weights: str | None = None
    acts: str | None = None
    kv: str | None = None
    compute: str | None = None
    window: int | None = None
    kv_heads: int | None = None
    layers: int | None = None
    compress: float | None = None
    compressor: str | None = None
    speculation: tuple[int, float, int] | None = None  # (tokens verified, accepted, heads) per step
    speculation_ref: str | None = None  # a record's {"tokens", "accepted", "heads"} replaces the assumption
    not_applicable: str | None = None  # the Workload cannot express it: why


@dataclass(frozen=True)
class Technique:
    """One row of the table."""

    key: str
    name: str
    family: str
    headline: str  # "decode", "prefill" or "throughput"
    literature: Literature
    measured: Measured | str  # str: why nothing measures it
    projection: Projection
    combination: bool = False


def _q(variant: str, emulated: bool = True, src: str = "quant.json") -> Measured:
    row = f"{src}:rows[variant={variant}]"
    base = f"{src}:rows[variant=bf16]"
    return Measured("bf16 weights, lean torch decode, 128:64 (quant.json)",
                    Ratio(f"{base}.ttft_s.median", f"{row}.ttft_s.median"),
                    Ratio(f"{row}.decode_tokens_per_s.median", f"{base}.decode_tokens_per_s.median"),
                    weights=f"{row}.bytes", base_weights=f"{base}.bytes", ppl=f"{row}.ppl", base_ppl=f"{base}.ppl",
                    flags=((f"{row}.emulated", "emulated: no kernel for this format here (dequantize, then matmul)"),)
                    if emulated else ())


def _native(fmt: str, variant: str) -> Measured:
    row, base = f"native.json:decode[format={fmt},system=native]", "native.json:decode[format=bf16,system=native]"
    return Measured("bf16 weights, ridgeline native kernels, 128:128 (native.json); quality from quant.json",
                    "not measured: native.json times decode only (no TTFT)",
                    Ratio(f"{row}.tokens_per_s.median", f"{base}.tokens_per_s.median"),
                    weights=f"{row}.native_weight_bytes", base_weights=f"{base}.native_weight_bytes",
                    ppl=f"quant.json:rows[variant={variant}].ppl", base_ppl="quant.json:rows[variant=bf16].ppl")


def _kv(variant: str) -> Measured:
    row, base = f"kv.json:rows[variant={variant}]", "kv.json:rows[variant=fp32]"
    return Measured("fp32 model and cache, 2048-token context, lean torch (kv.json)",
                    "not measured: kv.json times decode at a 2048-token context only",
                    Ratio(f"{row}.decode.tokens_per_s", f"{base}.decode.tokens_per_s"),
                    kv=f"{row}.kv_bytes_16bit_float", base_kv=f"{base}.kv_bytes_16bit_float",
                    ppl=f"{row}.ppl", base_ppl=f"{base}.ppl",
                    flags=((f"{row}.decode_emulated", "emulated: every step dequantizes the whole cache in PyTorch "
                            "(no fused kernel on CPU), so this speed says nothing about a kernel's"),))


_KV = dict(scenario="2048:32", base="fp32")
_MEDUSA = "medusa.json:decode.medusa_greedy"
_COMPRESS = "compress.json:timing.rows[method=scrl,rate=2.0,length=2048]"
_COMPRESS_Q = "compress.json:quality.summary[method=scrl,rate=2.0,length=2048]"
_DISTILL = "distill.json:rows[kind=kd,optimizer=muon,seed=0]"
_COMBO = "combos.json:rows[variant=swa512+gqa1]"
_COMBO_BASE = "combos.json:rows[variant=base]"
_PAGED8 = "combos.json:int8_paged.rows[system=int8_engine]"
_PAGED8_BASE = "combos.json:int8_paged.rows[system=fp32_sequential_generate]"
_MEDUSA8 = "combos.json:medusa_int8.rows[system=int8_medusa_greedy]"
_MEDUSA8_BASE = "combos.json:medusa_int8.rows[system=fp32_greedy]"
_RTN8_PPL = ("quant.json:rows[variant=rtn-w8].ppl", "quant.json:rows[variant=fp32].ppl")

TECHNIQUES: tuple[Technique, ...] = (
    Technique("llm_int8", "LLM.int8()", "quantization", "decode", Literature("LLM.int8(): ×1.5", 1.5, 1.5),
              _q("llm_int8"), Projection("128:64", weights="int8_pc", acts="int8", compute="int8")),
    Technique("smoothquant", "SmoothQuant W8A8", "quantization", "decode",
              Literature("SmoothQuant: ×1.5 and 1.96× less memory", 1.5, 1.5), _q("smoothquant"),
              Projection("128:64", weights="int8_pc", acts="int8", compute="int8")),
    Technique("rtn_w8", "RTN int8 (weight-only)", "quantization", "decode", Literature("not in the survey's table"),
              _q("rtn-w8"), Projection("128:64", weights="int8_pc")),
    Technique("rtn_w4", "RTN int4 g128", "quantization", "decode", Literature("not in the survey's table"),
              _q("rtn-w4-g128"), Projection("128:64", weights="int4_g128")),
    Technique("gptq_w4", "GPTQ int4 g128", "quantization", "decode", Literature("not in the survey's table"),
              _q("gptq-w4-g128"), Projection("128:64", weights="int4_g128")),
    Technique("gguf_q8_0", "GGUF Q8_0 (native kernels)", "quantization", "decode",
              Literature("not in the survey's table"), _native("q8_0", "gguf-q8_0"), Projection(weights="q8_0")),
    Technique("gguf_q4_k_m", "GGUF Q4_K_M (native kernels)", "quantization", "decode",
              Literature("not in the survey's table"), _native("q4_k_m", "gguf-q4_k_m"), Projection(weights="q4_k_m")),
    Technique("mxint8", "MXINT8 weights (BFP)", "quantization", "decode", Literature("not in the survey's table"),
              _q("bfp-mxint8"), Projection("128:64", weights="mxint8")),
    Technique("mxfp4", "MXFP4 weights, MXINT8 activations", "quantization", "decode",
              Literature("not in the survey's table"), _q("bfp-mxfp4-w-mxint8-a"),
              Projection("128:64", weights="mxfp4", acts="mxint8")),
    Technique("harmonia_w", "Harmonia BFP weights (bfp32m4)", "quantization", "decode",
              Literature("not in the survey's table"), _q("bfp-bfp32m4"), Projection("128:64", weights="bfp32m4")),
    Technique("kivi4", "KIVI-4 KV cache", "kv-cache", "decode", Literature("not in the survey's table"),
              _kv("kivi4"), Projection(**_KV, kv="kivi4")),
    Technique("kivi2", "KIVI-2 KV cache", "kv-cache", "decode", Literature("not in the survey's table"),
              _kv("kivi2"), Projection(**_KV, kv="kivi2")),
    Technique("harmonia_kv", "Harmonia KV cache (BFP, 4/8-bit)", "kv-cache", "decode",
              Literature("not in the survey's table"), _kv("harmonia"), Projection(**_KV, kv="harmonia")),
    Technique("paged", "PagedAttention engine vs sequential generate", "serving", "throughput",
              Literature("PagedAttention + vLLM: ×2–×4", 2.0, 4.0),
              Measured("per-request transformers generate, fp32, 24-request Poisson trace (serve.json)",
                       "not measured: serve.json reports end-to-end throughput only",
                       Ratio("serve.json:engine_vs_sequential"),
                       kv="serve.json:throughput.engine.last_run.kv_in_use_bytes.peak"),
              Projection("256:64", base="fp32", batch=8)),
    Technique("paged_vs_batch", "PagedAttention engine vs transformers batching", "serving", "throughput",
              Literature("PagedAttention + vLLM: ×2–×4", 2.0, 4.0),
              Measured("transformers generate on padded batches, fp32, the same trace (serve.json)",
                       "not measured: serve.json reports end-to-end throughput only",
                       Ratio("serve.json:engine_vs_generate_batch")),
              Projection("256:64", base="fp32", batch=8, base_batch=8)),
    Technique("gqa", "GQA (3 → 1 KV heads, pooled)", "architecture", "decode", Literature("GQA: ×5.39", 5.39, 5.39),
              _kv("gqa1"), Projection(**_KV, kv_heads=1)),
    Technique("gqa_uptrained", "GQA (3 → 1 KV heads, uptrained with AdamW)", "architecture", "decode",
              Literature("GQA: ×5.39", 5.39, 5.39), _kv("gqa1+uptrain-adamw"), Projection(**_KV, kv_heads=1)),
    Technique("swa", "Sliding-window attention (W = 512)", "architecture", "decode",
              Literature("SWA: hard to estimate"), _kv("swa-512"), Projection(**_KV, window=512)),
    Technique("medusa", "Medusa heads (greedy, lossless)", "decoding", "decode",
              Literature("MEDUSA: ×2.35–×2.83", 2.35, 2.83),
              Measured("plain greedy decode on the same path, fp32 (medusa.json)",
                       "not measured: medusa.json times decode only",
                       Ratio(f"{_MEDUSA}.speedup_vs_greedy_same_path"),
                       flags=((f"{_MEDUSA}.identical_to_greedy", "lossless: the output was identical to plain greedy "
                               "decoding, so quality is unchanged"),),
                       requires=(f"{_MEDUSA}.speedup_vs_greedy_same_path",)),
              Projection(base="fp32", speculation=(8, 2.0, 4), speculation_ref="medusa.json:roofline.speculation")),
    Technique("scrl", "Prompt compression (SCRL, 2×, 2048-token prompt)", "prompt", "prefill",
              Literature("SCRL: ×2–×5 on long prompts (×1 on short)", 2.0, 5.0),
              Measured("the full 2048-token prompt, lean torch prefill, fp32 (compress.json)",
                       Ratio(f"{_COMPRESS}.speedup_vs_full"),
                       "not measured: compress.json times TTFT only (decode is unchanged per token)",
                       kv=f"{_COMPRESS}.kv_bytes_fp32", base_kv="compress.json:timing.rows[method=full,length=2048]"
                       ".kv_bytes_fp32", cloze=f"{_COMPRESS_Q}.cloze_accuracy",
                       requires=(f"{_COMPRESS}.speedup_vs_full",)),
              Projection("2048:64", base="fp32", compress=2.0, compressor="self:4")),
    Technique("distill", "Distilled student (20 of 30 layers, KD + LoRA + Muon)", "distillation", "decode",
              Literature("Muon distillation: 2× smaller, up to 50 % lower per-token latency", 2.0, 2.0),
              Measured("the teacher (the bundled model), lean torch (distill.json)",
                       Ratio(f"{_DISTILL}.prefill_tok_s", "distill.json:rows[stage=teacher].prefill_tok_s"),
                       Ratio(f"{_DISTILL}.decode_tok_s", "distill.json:rows[stage=teacher].decode_tok_s"),
                       weights=f"{_DISTILL}.model_bytes", base_weights="distill.json:rows[stage=teacher].model_bytes",
                       ppl=f"{_DISTILL}.ppl", base_ppl="distill.json:rows[stage=teacher].ppl",
                       cloze=f"{_DISTILL}.cloze_acc", mc=f"{_DISTILL}.mc_acc_norm"),
              Projection(base="fp32", layers=20)),
    Technique("harmonia_accel", "Harmonia accelerator (simulated) vs FIGNA/Anda-class", "hardware", "decode",
              Literature("Harmonia: ×3.08 (up to ×4.62)", 3.08, 4.62),
              Measured("the FIGNA/Anda-class and fp16 designs, simulated (accel.json)",
                       "not measured: accel.json's side-by-side speedup is end to end",
                       Ratio("accel.json:simulation.side_by_side.speedup.ours")),
              Projection(not_applicable="not a Workload change: the accelerator is a device (see its column)")),
    Technique("hls", "HLS design-space exploration (naive vs optimised)", "hardware", "prefill",
              Literature("HLS: ×768.1", 768.1, 768.1),
              Measured("the naive HLS design of the same GEMMs on a ZCU102 (accel.json, estimated)",
                       Ratio("accel.json:hls.fp16xfp16 prefill.speedup"), "not measured: see the prefill estimate"),
              Projection(not_applicable="not a Workload change: HLS optimises the kernel's loop schedule on the FPGA")),
    Technique("int8_paged", "int8 model in the paged engine", "combination", "throughput",
              Literature("survey: a quantized model served through vLLM (no figure)"),
              Measured("fp32 model, per-request transformers generate (sequential), the same 16-request trace "
                       "(combos.json); quality from quant.json (rtn-w8 against fp32)",
                       "not measured: combos.json reports end-to-end throughput only",
                       Ratio(f"{_PAGED8}.throughput_tokens_per_s.median",
                             f"{_PAGED8_BASE}.throughput_tokens_per_s.median"),
                       weights="combos.json:int8_paged.weights_bytes.int8",
                       base_weights="combos.json:int8_paged.weights_bytes.fp32", ppl=_RTN8_PPL[0],
                       base_ppl=_RTN8_PPL[1], reason="combos.json:int8_paged.reason", requires=(_PAGED8,)),
              Projection("256:64", base="fp32", batch=8, weights="int8_pc"), combination=True),
    Technique("swa_gqa", "SWA (W = 512) + GQA (1 KV head)", "combination", "decode",
              Literature("survey: SWA + GQA as in Mistral 7B (no figure)"),
              Measured("fp32, full attention, 3 KV heads, 2048:32, interleaved (combos.json)",
                       Ratio(f"{_COMBO_BASE}.ttft_s.median", f"{_COMBO}.ttft_s.median"),
                       Ratio(f"{_COMBO}.decode_tokens_per_s.median", f"{_COMBO_BASE}.decode_tokens_per_s.median")),
              Projection(**_KV, window=512, kv_heads=1), combination=True),
    Technique("medusa_int8", "Medusa on an int8 model", "combination", "decode",
              Literature("survey: combine decoding and quantization (no figure)"),
              Measured("fp32 plain greedy decode, lean torch, the same held-out prompts (combos.json); quality "
                       "from quant.json (rtn-w8 against fp32)",
                       "not measured: combos.json times decode only",
                       Ratio(f"{_MEDUSA8}.decode_tokens_per_s.median", f"{_MEDUSA8_BASE}.decode_tokens_per_s.median"),
                       weights="combos.json:int8_paged.weights_bytes.int8",
                       base_weights="combos.json:int8_paged.weights_bytes.fp32", ppl=_RTN8_PPL[0],
                       base_ppl=_RTN8_PPL[1],
                       flags=((f"{_MEDUSA8}.identical_to_greedy", "lossless: Medusa's output was identical to the "
                               "int8 model's plain greedy output, so quality is the int8 model's"),),
                       reason="combos.json:medusa_int8.reason", requires=(_MEDUSA8,)),
              Projection(base="fp32", weights="int8_pc", speculation=(8, 2.0, 4),
                         speculation_ref="combos.json:medusa_int8.speculation"), combination=True),
)


# ---------------------------------------------------------------------------------------------------------
# references

def _split(ref: str) -> tuple[str, list[str]]:
    """'f.json:a.b[k=v].c' -> ('f.json', ['a', 'b', '[k=v]', 'c']) (dots inside [...] belong to the selector)."""
    file, sep, path = ref.partition(":")
    if not sep or not file.endswith(".json") or not path:
        raise RidgelineError(f"reference {ref!r} is not file.json:key.path")
    parts, cur, i = [], "", 0
    while i < len(path):
        c = path[i]
        if c == "[":
            end = path.find("]", i)
            if end < 0:
                raise RidgelineError(f"reference {ref!r}: unclosed [")
            if cur:
                parts.append(cur)
            parts.append(path[i:end + 1])
            cur, i = "", end + 1
            continue
        if c == ".":
            if cur:
                parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    if cur:
        parts.append(cur)
    return file, parts


def resolve(records: dict[str, Any], ref: str) -> Any:
    """The value `ref` (file.json:a.b[k=v].c) points at in `records` (file name -> parsed JSON)."""
    file, parts = _split(ref)
    if file not in records:
        raise RidgelineError(f"{ref}: {file} is not among the records")
    node = records[file]
    for p in parts:
        if p.startswith("["):
            sel = p[1:-1]
            if not isinstance(node, list):
                raise RidgelineError(f"{ref}: {p} selects from a list, found {type(node).__name__}")
            if sel.isdigit():
                if int(sel) >= len(node):
                    raise RidgelineError(f"{ref}: {p} is past the list's {len(node)} items")
                node = node[int(sel)]
                continue
            want = dict(kv.split("=", 1) for kv in sel.split(","))
            hits = [x for x in node if isinstance(x, dict) and all(str(x.get(k)) == v for k, v in want.items())]
            if not hits:
                raise RidgelineError(f"{ref}: no item with {sel}")
            node = hits[0]
        else:
            if not isinstance(node, dict) or p not in node:
                raise RidgelineError(f"{ref}: no key {p!r}")
            node = node[p]
    return node


def _number(records: dict[str, Any], ref: str) -> float:
    v = resolve(records, ref)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RidgelineError(f"{ref}: expected a finite number, got {v!r}")
    return float(v)


def read_records(folder: str | Path) -> dict[str, Any]:
    """Every known record (`SCRIPTS`) present in `folder`, parsed; absent ones are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RidgelineError(f"--results {folder} is not a folder of benchmark records")
    out = {}
    for name in SCRIPTS:
        path = folder / name
        if path.is_file():
            try:
                out[name] = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RidgelineError(f"{path} cannot be read as JSON ({exc})") from None
    return out


def committed_results() -> Path | None:
    """The repository's benchmarks/results folder beside the source tree (a checkout or editable install), if any."""
    folder = Path(__file__).resolve().parents[3] / "benchmarks" / "results"
    return folder if folder.is_dir() else None


def missing_reason(file: str, records: dict[str, Any]) -> str | None:
    """Why `file` cannot be used (absent, or partial), or None."""
    if file not in records:
        return f"not measured: benchmarks/results/{file} missing — run {SCRIPTS[file]}"
    if records[file].get("complete") is False:
        return f"not measured: {file} is partial (complete: false) — rerun {SCRIPTS[file]} to the end"
    return None


# ---------------------------------------------------------------------------------------------------------
# projections


def speculation_of(t: Technique, records: dict[str, Any]) -> tuple[Speculation | None, str]:
    """The speculation a technique predicts with (the record's measured one when present) and where it came from."""
    p = t.projection
    if p.speculation is None:
        return None, ""
    if p.speculation_ref:
        try:
            s = resolve(records, p.speculation_ref)
            return Speculation(int(s["tokens"]), float(s["accepted"]), int(s.get("heads", 0))), p.speculation_ref
        except (RidgelineError, KeyError, TypeError, ValueError):
            pass
    k, a, h = p.speculation
    return Speculation(k, a, h), f"assumed ({k} verified, {a} accepted per step, {h} heads)"


def predict_pair(t: Technique, device: str | DeviceSpec, model: str | ModelSpec = MODEL,
                 speculation: Speculation | None = None) -> tuple[Prediction, Prediction]:
    """(baseline, technique) predictions of `t` on `device`."""
    p = t.projection
    if p.not_applicable:
        raise RidgelineError(p.not_applicable)
    spec = load_spec(model) if isinstance(model, str) else model
    base = predict(spec, device, p.scenario, batch=p.base_batch, weights=p.base, acts=p.base, kv=p.base)
    tech = predict(spec, device, p.scenario, batch=p.batch, weights=p.weights or p.base, acts=p.acts or p.base,
                   kv=p.kv or p.base, compute=p.compute, window=p.window, kv_heads=p.kv_heads, layers=p.layers,
                   compress=p.compress, compressor=p.compressor, speculation=speculation)
    return base, tech


def phase_speedups(base: Any, tech: Any, base_batch: int, batch: int) -> dict[str, float]:
    """Prefill (per-sequence time), decode and throughput (tokens/s) speedups of two priced workloads."""
    out = {}
    if base.prefill.time_s > 0 and tech.prefill.time_s > 0:
        out["prefill"] = (base.prefill.time_s / base_batch) / (tech.prefill.time_s / batch)
    if base.decode.time_s > 0 and tech.decode.time_s > 0:
        out["decode"] = _rate(tech.decode) / _rate(base.decode)
        out["throughput"] = out["decode"]
    return out


def _rate(phase: Any) -> float:
    tokens = getattr(phase, "tokens", None)
    return (tokens if tokens is not None else phase.steps) / phase.time_s


def accel_speedups(t: Technique, design: str, model: str | ModelSpec = MODEL,
                   speculation: Speculation | None = None) -> dict[str, float]:
    """The technique on a simulated design: its workload in the design's formats (those the technique sets
    replace them) against the baseline workload in the design's formats."""
    from ridgeline.accel import design_precision, get_design, simulate

    p = t.projection
    if p.not_applicable:
        raise RidgelineError(p.not_applicable)
    d = get_design(design)
    spec = load_spec(model) if isinstance(model, str) else model
    prec = design_precision(d)
    sc = parse_scenario(p.scenario, p.base_batch)
    base = simulate(build_workload(spec, sc, prec), d, "latency", 4)
    tsc, comp = parse_scenario(p.scenario, p.batch), None
    if p.compress is not None:
        tsc, comp = compressed(tsc, spec, p.compress, p.compressor)
    if speculation is not None:
        tsc = replace(tsc, speculation=speculation)
    tprec = replace(prec, weights=p.weights or prec.weights, acts=p.acts or prec.acts, kv=p.kv or prec.kv)
    tspec = variant_spec(spec, p.layers, p.window, p.kv_heads)
    tech = simulate(build_workload(tspec, tsc, tprec, None, comp), d, "latency", 4)
    return phase_speedups(_AccelView(base, sc), _AccelView(tech, tsc), p.base_batch, p.batch)


class _AccelView:
    """An AccelResult with the phase shape `phase_speedups` reads (time_s, tokens)."""

    def __init__(self, r: Any, sc: Any) -> None:
        gen = sc.generate * sc.batch
        self.prefill = _Phase(r.prefill.time_s, sc.prompt)
        self.decode = _Phase(r.decode.time_s, gen)


@dataclass(frozen=True)
class _Phase:
    time_s: float
    tokens: int
    steps: int = 0


# ---------------------------------------------------------------------------------------------------------
# rows

#: the table's value fields: (key, header, kind); kind "x" speedup, "B" bytes, "f" plain number, "%" fraction
FIELDS: tuple[tuple[str, str, str], ...] = (
    ("prefill_speedup", "prefill ×", "x"), ("decode_speedup", "decode ×", "x"),
    ("weights_bytes", "weights", "B"), ("kv_bytes", "KV", "B"), ("memory_ratio", "memory ÷", "x"),
    ("ppl", "ppl", "f"), ("ppl_change", "Δppl", "%"), ("cloze", "cloze", "%"), ("mc", "MC acc_norm", "%"),
    ("predicted_prefill", "pred. prefill ×", "x"), ("predicted_decode", "pred. decode ×", "x"),
)


@dataclass(frozen=True)
class Row:
    """One technique's measured, literature and predicted numbers, each with its source or the reason it is absent."""

    key: str
    technique: str
    family: str
    headline: str
    baseline: str
    literature: str
    literature_low: float | None
    literature_high: float | None
    values: dict[str, float | None]
    sources: dict[str, str]
    why: dict[str, str]
    notes: tuple[str, ...] = ()
    explanation: str | None = None
    combination: bool = False

    @property
    def measured_headline(self) -> float | None:
        """The measured speedup of the phase the seed's figure is about."""
        return self.values.get("prefill_speedup" if self.headline == "prefill" else "decode_speedup")

    @property
    def predicted_headline(self) -> float | None:
        """The predicted speedup of the headline phase on this host."""
        return self.values.get("predicted_prefill" if self.headline == "prefill" else "predicted_decode")

    def outside_band(self) -> bool:
        """Whether the measured headline differs from the seed's figure by more than BAND× either way."""
        return outside_band(self.measured_headline, self.literature_low, self.literature_high)

    def to_json(self) -> dict:
        """The record (values null where absent; `why` says why)."""
        return {"key": self.key, "technique": self.technique, "family": self.family, "headline": self.headline,
                "baseline": self.baseline, "literature": self.literature, "literature_low": self.literature_low,
                "literature_high": self.literature_high, "combination": self.combination,
                "measured_headline": self.measured_headline, "predicted_headline": self.predicted_headline,
                "outside_band": self.outside_band(), "values": dict(self.values), "sources": dict(self.sources),
                "why": dict(self.why), "notes": list(self.notes), "explanation": self.explanation}


def outside_band(measured: float | None, low: float | None, high: float | None, band: float = BAND) -> bool:
    """measured < low / band or measured > high × band (False when either side has no number)."""
    if measured is None or low is None or high is None:
        return False
    return measured < low / band or measured > high * band


@dataclass(frozen=True)
class Table:
    """The whole table: rows, the host they were predicted on, and the projection matrix."""

    rows: tuple[Row, ...]
    host: str | None
    host_why: str | None
    devices: tuple[str, ...]
    matrix: dict[str, dict[str, float | str]]  # technique key -> device/design -> headline speedup or reason
    records: tuple[str, ...]
    machine: dict = field(default_factory=dict)


def _measure(t: Technique, records: dict[str, Any]) -> tuple[dict, dict, dict, list[str]]:
    """values, sources and reasons of the measured part of a row, and its notes."""
    values: dict[str, float | None] = {}
    sources: dict[str, str] = {}
    why: dict[str, str] = {}
    notes: list[str] = []
    keys = ("prefill_speedup", "decode_speedup", "weights_bytes", "kv_bytes", "memory_ratio", "ppl", "ppl_change",
            "cloze", "mc")
    m = t.measured
    if isinstance(m, str):
        return {k: None for k in keys}, {}, {k: m for k in keys}, notes
    files = sorted({r.split(":", 1)[0] for r in _refs(m)})
    gone = next((missing_reason(f, records) for f in files if missing_reason(f, records)), None)
    if gone is None and m.reason is not None and _exists(records, m.reason):
        gone = f"not measured: {resolve(records, m.reason)}"
    if gone is None:
        missing = [r for r in m.requires if not _exists(records, r)]
        if missing:
            gone = f"not measured: {missing[0].split(':')[0]} lacks {missing[0]}"
    if gone is not None:
        return {k: None for k in keys}, {}, {k: gone for k in keys}, notes

    def put(key: str, fn: Callable[[], float], src: str, absent: str) -> None:
        try:
            values[key] = fn()
            sources[key] = src
        except RidgelineError as exc:
            values[key], why[key] = None, f"{absent}: {exc}"

    for key, ratio in (("prefill_speedup", m.prefill), ("decode_speedup", m.decode)):
        if isinstance(ratio, str):
            values[key], why[key] = None, ratio
        elif ratio.den is None:
            put(key, lambda r=ratio: _number(records, r.num), ratio.num, "not in the record")
        else:
            put(key, lambda r=ratio: _number(records, r.num) / _number(records, r.den), f"{ratio.num} / {ratio.den}",
                "not in the record")
    for key, ref, what in (("weights_bytes", m.weights, "weight bytes"), ("kv_bytes", m.kv, "KV bytes"),
                           ("ppl", m.ppl, "perplexity"), ("cloze", m.cloze, "cloze accuracy"),
                           ("mc", m.mc, "multiple-choice accuracy")):
        if ref is None:
            values[key], why[key] = None, f"not measured: {files[0]} records no {what} for this technique"
        else:
            put(key, lambda r=ref: _number(records, r), ref, "not in the record")
    mem = [(values.get(k), b) for k, b in (("weights_bytes", m.base_weights), ("kv_bytes", m.base_kv)) if b]
    if mem and all(v is not None for v, _ in mem):
        put("memory_ratio", lambda: sum(_number(records, b) for _, b in mem) / sum(v for v, _ in mem),
            " + ".join(b for _, b in mem) + " / " + " + ".join(sources[k] for k in ("weights_bytes", "kv_bytes")
                                                                 if k in sources and values.get(k) is not None),
            "not in the record")
    else:
        values["memory_ratio"], why["memory_ratio"] = None, "not measured: the record has no baseline memory to divide by"
    if values.get("ppl") is not None and m.base_ppl:
        put("ppl_change", lambda: values["ppl"] / _number(records, m.base_ppl) - 1, f"{m.ppl} / {m.base_ppl}",
            "not in the record")
    else:
        values["ppl_change"], why["ppl_change"] = None, why.get("ppl", "not measured: no baseline perplexity")
    for ref, text in m.flags:
        if _exists(records, ref) and resolve(records, ref) is True:
            notes.append(text)
    return values, sources, why, notes


def _refs(m: Measured) -> list[str]:
    out = [r for r in (m.weights, m.base_weights, m.kv, m.base_kv, m.ppl, m.base_ppl, m.cloze, m.mc) if r]
    for r in (m.prefill, m.decode):
        if isinstance(r, Ratio):
            out += [x for x in (r.num, r.den) if x]
    return out + [r for r, _ in m.flags] + list(m.requires)


def _exists(records: dict[str, Any], ref: str) -> bool:
    try:
        resolve(records, ref)
        return True
    except RidgelineError:
        return False


def host_of(records: dict[str, Any]) -> tuple[DeviceSpec | None, str | None]:
    """The catalogue entry of the machine the records were measured on (their `machine`), or why there is none."""
    for rec in records.values():
        m = rec.get("machine") if isinstance(rec, dict) else None
        if isinstance(m, dict) and "cpu" in m:
            dev = host_device(str(m["cpu"]), m.get("cores"))
            if dev is not None:
                return dev, None
            return None, f"no catalogue entry matches the recorded machine ({m['cpu']}, {m.get('cores')} cores)"
    return None, "no record names its machine"


def _src_prediction(t: Technique, device: str, spec_src: str) -> str:
    p = t.projection
    knobs = {k: getattr(p, k) for k in ("weights", "acts", "kv", "compute", "window", "kv_heads", "layers", "compress",
                                        "compressor") if getattr(p, k) is not None}
    if p.batch != p.base_batch:
        knobs["batch"] = f"{p.base_batch}→{p.batch}"
    if spec_src:
        knobs["speculation"] = spec_src
    text = ", ".join(f"{k}={v}" for k, v in knobs.items())
    return f"roofline: predict({MODEL}, {device}, {p.scenario}, {p.base} baseline; {text})"


def build_table(records: dict[str, Any], host: str | DeviceSpec | None = None,
                devices: Sequence[str] = SEED_DEVICES, designs: Sequence[str] = ACCEL_DESIGNS,
                techniques: Sequence[Technique] = TECHNIQUES, model: str | ModelSpec = MODEL) -> Table:
    """Rows for every technique from `records` (read_records), predictions on `host` (default: the records'
    machine's catalogue entry), and the projection matrix on `devices` and the simulated `designs`."""
    spec = load_spec(model) if isinstance(model, str) else model
    if host is None:
        dev, host_why = host_of(records)
    else:
        dev, host_why = (get_device(host) if isinstance(host, str) else host), None
    rows, matrix = [], {}
    cols = tuple(devices) + tuple(f"accel:{d}" for d in designs)
    for t in techniques:
        values, sources, why, notes = _measure(t, records)
        spec_obj, spec_src = speculation_of(t, records)
        pair = None
        for key in ("predicted_prefill", "predicted_decode"):
            values[key] = None
        if t.projection.not_applicable:
            why["predicted_prefill"] = why["predicted_decode"] = f"not applicable: {t.projection.not_applicable}"
        elif dev is None:
            why["predicted_prefill"] = why["predicted_decode"] = f"not predicted: {host_why}"
        else:
            pair = predict_pair(t, dev, spec, spec_obj)
            sp = phase_speedups(*pair, t.projection.base_batch, t.projection.batch)
            for key, phase in (("predicted_prefill", "prefill"), ("predicted_decode", "decode")):
                values[key] = sp.get(phase)
                if values[key] is None:
                    why[key] = f"not predicted: the scenario has no {phase} phase"
                else:
                    sources[key] = _src_prediction(t, dev.id, spec_src)
        row = Row(t.key, t.name, t.family, t.headline, t.measured.baseline if isinstance(t.measured, Measured)
                  else "-", t.literature.text, t.literature.low, t.literature.high, values, sources, why,
                  tuple(notes), None, t.combination)
        if row.outside_band():
            row = replace(row, explanation=explain(row, pair, dev, spec_obj))
        rows.append(row)
        matrix[t.key] = _projections(t, spec, devices, designs, spec_obj)
    machine = next((r["machine"] for r in records.values() if isinstance(r, dict) and isinstance(r.get("machine"),
                                                                                               dict)), {})
    return Table(tuple(rows), dev.id if dev else None, host_why, cols, matrix, tuple(sorted(records)), machine)


def _projections(t: Technique, spec: ModelSpec, devices: Sequence[str], designs: Sequence[str],
                 speculation: Speculation | None) -> dict[str, float | str]:
    phase = "prefill" if t.headline == "prefill" else "decode"
    out: dict[str, float | str] = {}
    if t.projection.not_applicable:
        return {c: f"not applicable: {t.projection.not_applicable}" for c in
                (*devices, *(f"accel:{d}" for d in designs))}
    for d in devices:
        try:
            sp = phase_speedups(*predict_pair(t, d, spec, speculation), t.projection.base_batch, t.projection.batch)
            out[d] = sp.get(phase, f"no {phase} phase")
        except RidgelineError as exc:
            out[d] = f"not predicted: {exc}"
    for d in designs:
        try:
            out[f"accel:{d}"] = accel_speedups(t, d, spec, speculation).get(phase, f"no {phase} phase")
        except RidgelineError as exc:
            out[f"accel:{d}"] = f"not simulated: {exc}"
    return out


# ---------------------------------------------------------------------------------------------------------
# explanations


def _si(x: float, unit: str = "") -> str:
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def explain(row: Row, pair: tuple[Prediction, Prediction] | None, device: DeviceSpec | None,
            speculation: Speculation | None = None) -> str:
    """One sentence on why the measured headline speedup sits outside the seed's band, from the prediction."""
    m, lo, hi = row.measured_headline, row.literature_low, row.literature_high
    lit = f"×{lo:g}" if lo == hi else f"×{lo:g}–×{hi:g}"
    side = "below" if m is not None and lo is not None and m < lo else "above"
    head = f"Measured ×{m:.2f} is {side} the seed's {lit}"
    if pair is None or device is None:
        reason = row.why.get("predicted_decode", "no prediction")
        return f"{head}; no roofline prediction applies ({reason}), so the Workload cannot account for the gap."
    base, tech = pair
    phase = "prefill" if row.headline == "prefill" else "decode"
    b, t = getattr(base, phase), getattr(tech, phase)
    w = base.workload
    ridge = base.peak_flops / device.bandwidth_Bps
    kinds = sorted(b.bytes_by_kind.items(), key=lambda kv: -kv[1])
    top, top_bytes = kinds[0]
    share = top_bytes / b.bytes if b.bytes else 0.0
    t_top = t.bytes_by_kind.get(top, 0.0)
    params = w.model.param_count()
    batch = w.scenario.batch
    # decode bytes per generated token (a decode phase sums its steps), prefill bytes for the whole prompt
    per, tper = (max(b.tokens, 1), max(t.tokens, 1)) if phase == "decode" else (1, 1)
    unit = " per token" if phase == "decode" else ""
    if b.bound == "memory":
        why = (f"{phase} is memory-bound at batch {batch} ({b.intensity:.3g} FLOP/B against the ridge's "
               f"{ridge:.3g} FLOP/B), {share:.0%} of its bytes are {top} ({_si(top_bytes / per, 'B')} → "
               f"{_si(t_top / tper, 'B')}{unit} with the technique) and bytes{unit} fall "
               f"×{(b.bytes / per) / (t.bytes / tper) if t.bytes else 0:.2f}")
    else:
        why = (f"{phase} is compute-bound at batch {batch} ({b.intensity:.3g} FLOP/B, above the ridge's "
               f"{ridge:.3g} FLOP/B), so its time follows FLOPs ({_si(b.flops)} → {_si(t.flops)}), not bytes")
    if speculation is not None:
        # a speculative row's bytes per token fall only through the tokens accepted per verify step
        why += (f"; each verify step checks {speculation.tokens} token{'s' if speculation.tokens != 1 else ''} and "
                f"keeps {speculation.accepted:.2f}" + (" (the measured tree verifies no speculative token, so it "
                                                      "decodes as plain greedy)" if speculation.accepted <= 1.0 else ""))
    pred = row.predicted_headline
    tail = f"the roofline predicts ×{pred:.2f}" if pred is not None else "the roofline predicts no change"
    gap = ""
    if pred is not None and m is not None and pred > 0 and not 1 / 1.5 <= m / pred <= 1.5:
        gap = f", of which the implementation reaches {m / pred:.0%}" + (" (emulated)" if any(
            n.startswith("emulated") for n in row.notes) else "")
    return (f"{head} because on {device.id} with this {params / 1e6:.0f} M-parameter model {why}: {tail}{gap}.")
