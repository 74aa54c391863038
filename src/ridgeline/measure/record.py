"""The bench record: the JSON a measured run writes and the flat row every table, CSV and plot reads.

One definition, as llama-bench's `test` struct: `result_json` writes the nested record (parameters,
what ran, machine, every sample, summaries, the roofline placements), and `COLUMNS` names each field of
the flat row with the one place in that record it comes from. Tables (`ridgeline.report`), the CSV, the
sweep plots and the HTML page all read flat rows, so a saved results file renders exactly as a fresh run.
Flat-row keys per roof end in `_probe` (the measured roof) or `_catalogue` (the host's catalogue entry).
Speculative runs fill `spec`, `tokens_per_step` (per verify step, the base's own token counted),
`verified_per_step` and, per roof, `predicted_speedup` (the roofline's plain / speculative decode time); plain
runs leave them empty (None).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ridgeline.measure.bench import BenchRecord
from ridgeline.measure.phi import RunPhi, weights_label

#: the roofline placements a record can carry, and the suffix of their flat-row keys
ROLES = ("probe", "catalogue")
#: joins the reasons a phase's Φ exceeds 1 in one flat-row cell (the reasons themselves hold '; ')
FLAG_SEPARATOR = " | "


def result_json(record: BenchRecord, placed: Sequence[RunPhi]) -> dict[str, Any]:
    """The whole record of a measured run: what `ridgeline bench --json/--out` writes per run."""
    out = record.to_json()
    out["roofline"] = [p.to_json() for p in placed]
    out["weights"] = weights_label(record)
    if placed:
        w = placed[0].prediction.workload
        n = max(record.config.scenario.generate, 1)
        out["model"]["layers"] = w.model.n_layers
        out["model"]["params"] = w.model.param_count()
        out["workload"] = {"precision": w.precision.to_json(), "options": dataclasses.asdict(w.options),
                           "weights_bytes": w.weights_bytes, "kv_bytes": w.kv_bytes,
                           "decode_bytes_per_token": placed[0].decode.bytes / n,
                           "decode_flops_per_token": placed[0].decode.flops / n}
    return out


@dataclass(frozen=True)
class Column:
    """One field of the flat row: its key, what it means, and how it is read from the record."""

    key: str
    doc: str
    get: Callable[[dict], Any]


def run_label(r: dict) -> str:
    """'torch bf16', 'torch-hf fp32', 'torch bf16 · rtn int8_pc (_weight_int8pack_mm)', 'torch fp32 · medusa greedy'
    or 'llama.cpp Q4_1'."""
    p = r["params"]
    if p["backend"] == "llamacpp":
        return f"llama.cpp {r.get('weights', '').upper()}".strip()
    weights = r.get("weights", p["dtype"])
    label = f"torch{'-hf' if r['impl'].startswith('transformers') else ''} {p['dtype']}"
    # a quantized model: its weight precision (method, format, kernel or "emulated") after the activations' dtype
    parts = [label] + ([] if weights == p["dtype"] else [weights])
    return " · ".join(parts + _variant_labels(p) + ([p["spec"]["label"]] if p.get("spec") else []))


def _variant_labels(p: dict) -> list[str]:
    variant = p.get("variant")
    if variant is not None:
        return list(variant["labels"])
    # records written before the Variant existed: the same labels from the loose keys
    return ([f"KV {p['kv']}"] if p.get("kv") else []) + ([f"window {p['window']}"] if p.get("window") else []) + \
        ([f"{p['kv_heads']} KV heads"] if p.get("kv_heads") else [])


def _roof(r: dict, role: str) -> dict | None:
    return next((x for x in r.get("roofline", []) if x["role"] == role), None)


def _stat(*path: str, key: str = "median") -> Callable[[dict], Any]:
    def get(r: dict) -> Any:
        for p in path:
            r = r[p]
        return r[key]
    return get


def _per_token(r: dict, value: float) -> float:
    return value / max(r["params"]["scenario"]["generate"], 1)


def _contention(r: dict) -> dict:
    return r.get("contention") or {}  # records written before contention was measured: unknown


def _decode_intensity(r: dict) -> float | None:
    w = r.get("workload")
    return w["decode_flops_per_token"] / w["decode_bytes_per_token"] if w else None


def _roof_columns(role: str) -> tuple[Column, ...]:
    """The placement of the run on one roof, flattened (every key ends in `_{role}`)."""

    def on(fn: Callable[[dict], Any]) -> Callable[[dict], Any]:
        return lambda r: (fn(r, x) if (x := _roof(r, role)) is not None else None)

    def predicted_tps(r: dict, x: dict) -> float | None:
        s = x["decode"]["predicted_s"]
        return max(r["params"]["scenario"]["generate"], 1) / s if s else None

    cols = [
        Column("roof_device", "device id of the roof", on(lambda r, x: x["device"])),
        Column("roof_name", "device name of the roof", on(lambda r, x: x["device_name"])),
        Column("roof_bandwidth_Bps", "the roof's memory bandwidth, B/s", on(lambda r, x: x["bandwidth_Bps"])),
        Column("roof_peak_flops", "the roof's compute peak for the run's compute dtype, FLOP/s",
               on(lambda r, x: x["peak_flops"])),
        Column("roof_peak_dtype", "the dtype of that peak", on(lambda r, x: x["peak_dtype"])),
        Column("phi_prefill", "Φ of the prefill, median over repeats", on(lambda r, x: x["prefill"]["phi"]["median"])),
        Column("phi_decode", "Φ of the decode, median over repeats", on(lambda r, x: x["decode"]["phi"]["median"])),
        Column("bw_util_decode", "decode bytes / time / bandwidth, median",
               on(lambda r, x: x["decode"]["bandwidth_utilisation"]["median"])),
        Column("predicted_decode_s_per_token", "the roofline's decode time per token",
               on(lambda r, x: _per_token(r, x["decode"]["predicted_s"]))),
        Column("predicted_decode_tokens_per_s", "the roofline's decode tokens/s", on(predicted_tps)),
        Column("decode_error", "|predicted - measured| / measured decode time",
               on(lambda r, x: x["decode"]["prediction_error"])),
        Column("predicted_speedup", "speculative runs: the roofline's plain / speculative decode time",
               on(lambda r, x: x.get("predicted_speedup"))),
    ]
    for ph in ("prefill", "decode"):
        cols += [
            Column(f"{ph}_flops", f"{ph} FLOPs of the scenario", on(lambda r, x, ph=ph: x[ph]["flops"])),
            Column(f"{ph}_intensity", f"{ph} operational intensity, FLOP/B", on(lambda r, x, ph=ph: x[ph]["intensity"])),
            Column(f"{ph}_achieved_flops", f"{ph} FLOPs / median time", on(lambda r, x, ph=ph: x[ph]["achieved_flops"])),
            Column(f"{ph}_predicted_s", f"the roofline's {ph} time", on(lambda r, x, ph=ph: x[ph]["predicted_s"])),
            Column(f"flags_{ph}", f"why Φ {ph} > 1, if it is (FLAG_SEPARATOR-joined)",
                   on(lambda r, x, ph=ph: FLAG_SEPARATOR.join(x[ph]["phi_above_1"]))),
        ]
    return tuple(dataclasses.replace(c, key=f"{c.key}_{role}") for c in cols)


#: every field of the flat row, in column order
COLUMNS: tuple[Column, ...] = (
    Column("model", "model name", lambda r: r["model"]["name"]),
    Column("run", "backend, dtype, weight precision and KV variant", run_label),
    Column("backend", "torch or llamacpp", lambda r: r["params"]["backend"]),
    Column("impl", "what ran (lean torch, transformers eager, llama.cpp)", lambda r: r["impl"]),
    Column("dtype", "torch weights/activations dtype (llama.cpp: stored)", lambda r: r["params"]["dtype"]),
    Column("weights", "weight format as run", lambda r: r.get("weights", r["params"]["dtype"])),
    Column("variant", "KV format, window and K/V heads, as labels", lambda r: " · ".join(_variant_labels(r["params"]))),
    Column("spec", "speculative decoding: drafter and acceptance (empty: plain decoding)",
           lambda r: (r["params"].get("spec") or {}).get("label", "")),
    Column("scenario", "scenario name", lambda r: r["params"]["scenario"]["name"]),
    Column("prompt", "prompt tokens", lambda r: r["params"]["scenario"]["prompt"]),
    Column("generate", "generated tokens", lambda r: r["params"]["scenario"]["generate"]),
    Column("threads", "threads", lambda r: r["threads"]),
    Column("layers", "decoder layers that ran", lambda r: r["model"].get("layers")),
    Column("repeats", "timed repeats", lambda r: r["params"]["repeats"]),
    Column("ttft_s", "prefill time (time to first token), median", _stat("summary", "ttft_s")),
    Column("prefill_tokens_per_s", "prompt tokens/s, median", _stat("summary", "prefill_tokens_per_s")),
    Column("decode_tokens_per_s", "decode tokens/s, median over repeats", _stat("summary", "decode_tokens_per_s")),
    Column("decode_tokens_per_s_min", "decode tokens/s, slowest repeat",
           _stat("summary", "decode_tokens_per_s", key="min")),
    Column("decode_tokens_per_s_max", "decode tokens/s, fastest repeat",
           _stat("summary", "decode_tokens_per_s", key="max")),
    Column("decode_s_per_token", "decode time per token, median", _stat("summary", "decode_s_per_token")),
    Column("tokens_per_step", "speculative: tokens per verify step (the base's own token counted), median over "
           "repeats", lambda r: r["summary"]["tokens_per_step"]["median"] if r.get("speculative") else None),
    Column("verified_per_step", "speculative: tokens verified per step (root + drafts), mean",
           lambda r: r["speculative"]["verified_per_step"] if r.get("speculative") else None),
    Column("decode_bytes_per_token", "bytes a decode step moves (Workload)",
           lambda r: r["workload"]["decode_bytes_per_token"] if r.get("workload") else None),
    Column("decode_intensity", "decode FLOP/B per token (Workload)", _decode_intensity),
    Column("load_s", "model load time (excluded from the phases)", lambda r: r["load_s"]),
    Column("warmup_s", "warm-up time (excluded from the phases)", lambda r: r["warmup_s"]),
    Column("load_avg", "1-minute load average when the run ended", lambda r: (r["machine"].get("load_avg") or [None])[0]),
    Column("contended", "whether other processes, stolen CPU or a drifting roof flag the run (None: unknown)",
           lambda r: _contention(r).get("contended") if _contention(r).get("known") else None),
    Column("other_cores", "cores' worth of CPU other processes used during the run",
           lambda r: _contention(r).get("other_cores")),
    Column("contention", "why the run is flagged ('; '-joined)", lambda r: "; ".join(_contention(r).get("reasons", []))),
) + tuple(c for role in ROLES for c in _roof_columns(role))


def flat_row(result: dict) -> dict[str, Any]:
    """The flat row of one record (every COLUMNS key; None where the record lacks the field)."""
    return {c.key: c.get(result) for c in COLUMNS}


def flat_rows(results: Sequence[dict]) -> list[dict[str, Any]]:
    """Flat rows of many records."""
    return [flat_row(r) for r in results]
