"""Rich tables for analysis results; the CLI prints them, library code only builds them."""

from __future__ import annotations

from rich.table import Table

from ridgeline.roofline import Prediction
from ridgeline.specs import ModelSpec, get_kv_format


def si(x: float, unit: str = "", base: float = 1000.0) -> str:
    """3 significant digits with an SI prefix: si(1.5e9, 'B') -> '1.50 GB'."""
    if x != x:  # NaN
        return "nan"
    if x in (float("inf"), float("-inf")):
        return "inf"
    for prefix, scale in (("P", base**5), ("T", base**4), ("G", base**3), ("M", base**2), ("k", base)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def seconds(t: float) -> str:
    """A duration with a readable unit."""
    if t >= 1:
        return f"{t:.3g} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} µs"


def attention_summary(model: ModelSpec) -> str:
    """Heads and windows of the attention layers, e.g. '9 query / 3 KV heads, window 128 on 10 of 30 layers'."""
    layers = [l.attention for l in model.layers]
    heads = sorted({(a.n_heads, a.n_kv_heads) for a in layers if not a.mla})
    parts = [", ".join(f"{q} query / {kv} KV heads" for q, kv in heads)] if heads else []
    if any(a.mla for a in layers):
        parts.append("MLA")
    windows = sorted({a.window for a in layers if a.window})
    for w in windows:
        n = sum(a.window == w for a in layers)
        parts.append(f"window {w}" + ("" if n == len(layers) else f" on {n} of {len(layers)} layers"))
    if not windows:
        parts.append("full attention")
    return ", ".join(parts)


def summary_table(p: Prediction) -> Table:
    """Prefill and decode side by side: FLOPs, bytes by kind, OI, attainable, bound, time, tok/s."""
    w = p.workload
    t = Table(title=f"{w.model.name} on {p.device.name} — {w.scenario.label}"
                    f" (prompt {w.scenario.prompt}, generate {w.scenario.generate}, batch {w.scenario.batch}),"
                    f" weights {w.precision.weights}, acts {w.precision.acts}, KV {w.precision.kv};"
                    f" {attention_summary(w.model)}")
    t.add_column("")
    t.add_column("prefill", justify="right")
    t.add_column("decode", justify="right")
    rows = [
        ("FLOPs", lambda ph: si(ph.flops)),
        ("bytes", lambda ph: si(ph.bytes, "B")),
        ("  weights", lambda ph: si(ph.bytes_by_kind["weights"], "B")),
        ("  activations", lambda ph: si(ph.bytes_by_kind["activations"], "B")),
        ("  KV read", lambda ph: si(ph.bytes_by_kind["kv_read"], "B")),
        ("  KV write", lambda ph: si(ph.bytes_by_kind["kv_write"], "B")),
        ("intensity (FLOP/B)", lambda ph: f"{ph.intensity:.3g}"),
        ("attainable", lambda ph: si(ph.attainable_flops, "FLOP/s")),
        ("bound", lambda ph: ph.bound),
        ("time", lambda ph: seconds(ph.time_s)),
        ("tokens/s", lambda ph: f"{ph.tokens_per_s:.4g}"),
    ]
    for label, fn in rows:
        t.add_row(label, fn(p.prefill), fn(p.decode) if p.decode.steps else "-")
    d = p.decode
    if d.steps:
        t.add_row("time/token first·mean·last", "",
                  f"{seconds(d.step_times_s[0])} · {seconds(d.time_s / d.steps)} · {seconds(d.step_times_s[-1])}")
    t.caption = (f"TTFT {seconds(p.ttft_s)}, total {seconds(p.total_s)}; roof: {si(p.device.bandwidth_Bps, 'B/s')}, "
                 f"{si(p.peak_flops, 'FLOP/s')} {p.peak_dtype} ({p.device.provenance.kind})")
    return t


def memory_table(p: Prediction) -> Table:
    """Weights + KV + activations against the device's memory, with the verdict."""
    w = p.workload
    t = Table(title="memory footprint")
    t.add_column("part")
    t.add_column("bytes", justify="right")
    t.add_row("weights", si(w.weights_bytes, "B"))
    kv = get_kv_format(w.precision.kv)
    t.add_row(f"KV cache ({kv.name}) at {w.scenario.final_context} tokens × {w.scenario.batch}", si(w.kv_bytes, "B"))
    t.add_row("activations (peak, estimate)", si(w.activation_bytes, "B"))
    t.add_row("total", si(p.memory_total, "B"))
    t.add_row(f"{p.device.id} memory", si(p.device.memory_bytes, "B"))
    t.caption = ("[green]fits[/green]" if p.fits else
                 f"[bold red]does not fit in {p.device.name} memory[/bold red]")
    return t


def operator_table(p: Prediction, phase: str) -> Table:
    """Every operator of one phase: per group of identical layers and the model-level ones."""
    ph = p.prefill if phase == "prefill" else p.decode
    t = Table(title=f"{phase}: operators (totals over the phase; × = layers sharing the row)")
    for col in ("layers", "operator", "×", "FLOPs", "weights", "acts", "KV rd", "KV wr", "OI", "bound", "time"):
        t.add_column(col, justify="left" if col in ("layers", "operator", "bound") else "right")
    bw, peak = p.device.bandwidth_Bps, p.peak_flops
    group = None
    for o in ph.ops:
        if group is not None and o.group != group:
            t.add_section()
        label = "" if o.group == group else o.group.removeprefix("layers ")
        group = o.group
        b = o.bytes_by_kind
        t.add_row(label, o.name, str(o.count), si(o.flops), si(b["weights"], "B"), si(b["activations"], "B"),
                  si(b["kv_read"], "B"), si(b["kv_write"], "B"), f"{o.intensity:.3g}",
                  "compute" if o.intensity * bw >= peak else "memory", seconds(o.time_s))
    return t


def probe_table(result) -> Table:
    """A probe: bandwidth per kernel and GEMM rate per dtype, median with min–max."""
    t = Table(title=f"probe: {result.machine['cpu']}, {result.threads} threads, "
                    f"arrays {result.array_bytes / 2**20:.0f} MiB", title_justify="left")
    for c in ("kernel", "median", "min", "max", "spread", "note"):
        t.add_column(c, justify="left" if c in ("kernel", "note") else "right")
    for name, s in result.bandwidth.items():
        note = {"copy": "1 read + 1 write", "triad": "2 reads + 1 write"}.get(name, "read only")
        if s.max == result.read_bandwidth:
            note += " · roof = its best sample"
        t.add_row(name, si(s.median, "B/s"), si(s.min, "B/s"), si(s.max, "B/s"), f"{s.spread:.0%}", note)
    for d, s in result.gemm.items():
        n = result.gemm_sizes[d]
        t.add_row(f"GEMM {d}", si(s.median, "FLOP/s"), si(s.min, "FLOP/s"), si(s.max, "FLOP/s"), f"{s.spread:.0%}",
                  f"{n}×{n}×{n}" + (" torch._int_mm" if d == "int8" else ""))
    for d, s in result.gemv.items():
        t.add_row(f"GEMV {d}", si(s.median, "B/s"), si(s.min, "B/s"), si(s.max, "B/s"), f"{s.spread:.0%}",
                  "batch-1 F.linear, weight bytes/s (decode's kernel)")
    return t


def quant_table(manifest: dict, float_bytes_before: float, path: str | None = None) -> Table:
    """What `quantize_` did: method, formats, kernels (or emulated), bytes before/after, time."""
    cfg = manifest["config"]
    t = Table(title=f"quantized with {cfg['method']}" + (f" → {path}" if path else ""))
    t.add_column("")
    t.add_column("value", justify="right")
    after = manifest["quantized_bytes"] + manifest["float_bytes"]
    kernels = ", ".join(f"{k} ×{n}" for k, n in sorted(manifest["kernels"].items()))
    rows = [
        ("config", ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("method", "calibration"))),
        ("formats", ", ".join(f"{k} ×{n}" for k, n in sorted(manifest["formats"].items()))),
        ("kernels", kernels + ("  [EMULATED: dequantize + matmul]" if manifest["emulated"] else "")),
        ("quantized weights", f"{manifest['quantized_params']:,} params, {si(manifest['quantized_bytes'], 'B')}"
                              f" ({manifest['bits_per_quantized_weight']:.3f} bits/weight)"),
        ("float parameters left", f"{manifest['float_params']:,} params, {si(manifest['float_bytes'], 'B')}"),
        ("model bytes", f"{si(float_bytes_before, 'B')} → {si(after, 'B')} ({float_bytes_before / after:.2f}× smaller)"),
        ("time", seconds(manifest["seconds"])),
    ]
    if "calibration" in cfg:
        c = cfg["calibration"]
        rows.insert(1, ("calibration", f"{c['source']}: {c['n_samples']} × {c['seq_len']} tokens, seed {c['seed']}"))
    if "smoothquant" in manifest:
        sq = manifest["smoothquant"]
        rows.insert(2, ("alpha", f"{sq['alpha']}" + (" (searched)" if sq["searched"] else "")))
    for name, value in rows:
        t.add_row(name, value)
    return t


def serve_tables(record: dict) -> list[Table]:
    """A serve-bench record: throughput, latency percentiles, KV memory and waste; decode steps by batch."""
    s, e = record["summary"], record["engine"]
    t = Table(title=f"serve-bench · {record['model']} {record['dtype']} · {s['requests']} requests · "
                    f"blocks {e['num_blocks']}×{e['block_size']}, budget {e['max_batched_tokens']} tokens")
    t.add_column("metric")
    for c in ("p50", "p90", "p99", "mean"):
        t.add_column(c, justify="right")
    for name, key in (("TTFT", "ttft_s"), ("inter-token latency", "itl_s"), ("end-to-end latency", "e2e_s"),
                      ("step time", "step_s")):
        t.add_row(name, *(seconds(s[key][c]) if s[key][c] is not None else "-" for c in ("p50", "p90", "p99", "mean")))
    k = Table(title="throughput and KV cache")
    k.add_column("metric")
    k.add_column("value", justify="right")
    rows = [("generated tokens/s", f"{s['throughput_tokens_per_s']:.1f}" if s["throughput_tokens_per_s"] else "-"),
            ("requests/s", f"{s['requests_per_s']:.2f}" if s["requests_per_s"] else "-"),
            ("tokens generated / prompt", f"{s['output_tokens']} / {s['prompt_tokens']}"),
            ("wall time", seconds(s["seconds"])), ("steps (max running)", f"{s['steps']} ({s['max_running']})"),
            ("KV pool", si(s["kv_pool_bytes"], "B", 1024.0)),
            ("KV in use peak / mean", f"{si(s['kv_in_use_bytes']['peak'], 'B', 1024.0)} / "
                                      f"{si(s['kv_in_use_bytes']['mean'], 'B', 1024.0)}"),
            ("KV waste (allocated − used slots)", f"{s['kv_waste']:.2%}"),
            ("preemptions", str(s["preemptions"])),
            ("prefix cache hit rate", "-" if s["prefix_cache_hit_rate"] is None else f"{s['prefix_cache_hit_rate']:.0%}")]
    for r in rows:
        k.add_row(*r)
    out = [t, k]
    pts = record.get("decode_roofline") or []
    if pts:
        d = Table(title="decode-only steps by batch size" + (" on the roofline" if "phi" in pts[0] else ""))
        cols = ["batch", "steps", "mean context", "step median", "min–max"]
        if "phi" in pts[0]:
            cols += ["predicted", "bound", "Φ"]
        for c in cols:
            d.add_column(c, justify="right")
        for p in pts:
            row = [str(p["batch"]), str(p["steps"]), f"{p['mean_context']:.0f}", seconds(p["step_s"]),
                   f"{seconds(p['step_s_min'])}–{seconds(p['step_s_max'])}"]
            if "phi" in p:
                row += [seconds(p["predicted_step_s"]), p["bound"], f"{p['phi']:.2f}"]
            d.add_row(*row)
        out.append(d)
    return out


def export_table(result) -> Table:
    """A written GGUF (`ridgeline.quant.export_gguf`'s result): tensors and bytes per ggml type."""
    t = Table(title=f"{result.path} ({result.type})",
              caption=f"{result.bits_per_weight:.3f} bits per weight, {result.seconds:.1f} s", caption_justify="left")
    t.add_column("ggml type")
    t.add_column("tensors", justify="right")
    t.add_column("bytes", justify="right")
    for kind, count in sorted(result.type_counts.items()):
        t.add_row(kind, str(count), si(result.type_bytes[kind], "B"))
    t.add_row("total (file)", str(result.tensors), si(result.bytes, "B"))
    return t


def gqa_table(record: dict) -> Table:
    """A `ridgeline gqa` record: KV heads, KV bytes per token and held-out perplexity per stage."""
    rows, up = record["stages"], record["uptrain"]
    base = rows[0]["kv_bytes_per_token"]
    t = Table(title=f"{record['model']}: K/V heads {rows[0]['kv_heads']} -> {record['kv_heads']}, {up['steps']} "
                    f"{up['optimizer']} steps ({up['tokens_seen']} tokens, {up['seconds']:.0f} s)")
    for c in ("stage", "KV heads", "KV bytes/token", "KV saved", "held-out ppl"):
        t.add_column(c, justify="left" if c == "stage" else "right")
    for r in rows:
        t.add_row(r["stage"], str(r["kv_heads"]), f"{r['kv_bytes_per_token']:,.0f}",
                  f"{1 - r['kv_bytes_per_token'] / base:.0%}", f"{r['ppl']:.2f}")
    return t


def devices_table(devs: dict) -> Table:
    """The device catalogue: bandwidth, memory, peak per dtype, TDP, provenance."""
    from rich.markup import escape

    from ridgeline.specs import DTYPES

    t = Table(title="devices (peaks are dense FLOP/s or OP/s)")
    for col in ("id", "name", "memory", "bandwidth", *DTYPES, "TDP", "provenance"):
        t.add_column(col, justify="right" if col not in ("id", "name", "provenance") else "left")
    for d in devs.values():
        t.add_row(escape(d.id), escape(d.name), si(d.memory_bytes, "B", 1024), si(d.bandwidth_Bps, "B/s"),
                  *[si(d.peak_flops[k]) if k in d.peak_flops else "" for k in DTYPES],
                  f"{d.tdp_w:g} W" if d.tdp_w else "", escape(f"{d.provenance.kind}, {d.provenance.date}"))
    return t


def models_table(rows: list[dict]) -> Table:
    """The model catalogue rows (`ridgeline.specs.model_rows`)."""
    t = Table(title="model catalogue")
    for col in ("id", "type", "params", "layers", "hidden", "attention", "KV/token bf16", "tied", "MoE"):
        t.add_column(col, justify="right" if col in ("params", "layers", "hidden", "KV/token bf16") else "left",
                     no_wrap=True)
    for r in rows:
        t.add_row(r["id"], r["model_type"], si(r["params"]), str(r["layers"]), str(r["hidden"]),
                  r["attention"], si(r["kv_bytes_per_token_bf16"], "B"), "yes" if r["tied"] else "",
                  "yes" if r["moe"] else "")
    return t


def formats_table(fmts: list) -> Table:
    """The number-format registry with bits per element."""
    t = Table(title="number formats (per-channel: + per-row scale bytes / row length)")
    for col in ("name", "family", "bits/element", "block", "description"):
        t.add_column(col)
    for f in fmts:
        t.add_row(f.name, f.family, f"{f.bits:.4g}", "row" if f.block == 0 else str(f.block), f.description)
    return t
