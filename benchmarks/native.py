"""Native kernels against torch's, and native decode against the lean torch path and llama.cpp, same bits.

Part 1, GEMV (batch 1) on SmolLM2-135M's layer shapes (960x576 qkv, 576x576 o, 3072x576 gate/up,
576x1536 down, 49152x576 head) for every native format and torch's kernels (fp32 / bf16 F.linear,
_weight_int8pack_mm, _weight_int4pack_mm_for_cpu). Each system rotates over enough distinct copies of its
weight that the working set exceeds the 32 MiB L3 (weights come from DRAM, as in decode); systems are
interleaved in rounds; per call: median, min and max over rounds. GB/s = the bytes the kernel streams
(the stored weight with its scales, native padding included) / time.
Part 2, decode of the bundled model, prompt P, then G greedy tokens, interleaved rounds: the native
model per format against the lean torch path on the same modules (torch kernels where they exist, else
emulated: dequantized weights) and llama.cpp on a GGUF `export_gguf` writes from the same weights.
Φ = bytes streamed per token (weights + KV read) x tok/s / the read bandwidth probed before the runs.
Also recorded: the thread pool's fixed costs, the load average before and after, the machine.
Run (2 threads, under the timing lock): flock /tmp/ridgeline-timing.lock .venv/bin/python benchmarks/native.py
Writes benchmarks/results/native.json (named native, not kernels: with benchmarks/ on sys.path a
kernels.py would shadow the `kernels` package transformers probes for).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import machine_info  # noqa: E402

from ridgeline.io import write_json  # noqa: E402
from ridgeline.measure.stats import summarize  # noqa: E402

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "head": (49152, 576)}
NATIVE_FORMATS = ["f32", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q4_k", "q5_k", "q6_k", "mxfp4", "mxint8", "bfp32m4",
                  "bfp32m8", "int8", "int4_g128"]
WORKING_SET = 96 << 20  # bytes per system: three times the L3
#: stored bits per weight, to size the rotation (exact bytes are measured from the packed weights)
BITS = {"f32": 32, "bf16": 16, "q8_0": 8.5, "q4_0": 4.5, "q4_1": 5, "q5_0": 5.5, "q4_k": 4.5, "q5_k": 5.5, "q6_k": 6.6,
        "mxfp4": 4.25, "mxint8": 8.25, "bfp32m4": 5.25, "bfp32m8": 9.25, "int8": 8, "int4_g128": 4.25,
        "torch_f32": 32, "torch_bf16": 16, "torch_int8pack": 8, "torch_int4pack": 4.25}


def _copies(kind: str, n: int, k: int) -> int:
    """Distinct copies that make the working set about WORKING_SET bytes (at least 2)."""
    return int(max(2, min(1024, WORKING_SET // (n * k * BITS[kind] / 8))))


def _stat(samples: list[float]) -> dict:
    s = summarize(samples)
    return {"median": s.median, "min": s.min, "max": s.max, "spread": s.spread, "samples": list(samples)}


def _native_systems(w, fmt: str, copies: int):
    """(callable, stream bytes) running the native kernel on rotating copies of w in `fmt`."""
    import torch

    import ridgeline.kernels as K
    from ridgeline.quant.codec import encode
    from ridgeline.quant.intq import rtn

    n, k = w.shape
    # one encoding, repacked into `copies` distinct buffers (the kernel cannot tell them apart)
    if fmt in ("f32", "bf16"):
        packs = [K.PackedLinear.from_float(w, fmt) for _ in range(copies)]
    elif fmt in ("int8", "int4_g128"):
        q = rtn(w, 8, 0, True) if fmt == "int8" else rtn(w, 4, 128, False)
        packs = [K.PackedLinear.from_int(q.codes, q.scale, q.zero, q.bits, q.group) for _ in range(copies)]
    else:
        data = encode(w, fmt)
        packs = [K.PackedLinear.from_blocks(data, fmt, (n, k)) for _ in range(copies)]
    x = torch.randn(1, k)
    y = torch.empty(1, n)
    lin, xp, yp = K.native().linear, x.data_ptr(), y.data_ptr()
    handles = [p.handle for p in packs]

    def run(i: int, keep=(x, y, packs)) -> None:  # `keep`: the tensors behind the raw pointers stay alive
        lin(handles[i % copies], xp, 1, yp, 0, 0)
    return run, packs[0].stream_bytes


def _torch_systems(w, kind: str, copies: int):
    """(callable, weight bytes) running one of torch's kernels on rotating copies of w."""
    import torch
    import torch.nn.functional as F

    from ridgeline.quant.intq import rtn
    from ridgeline.quant.linear import Int4Linear, Int8Linear

    n, k = w.shape
    x32 = torch.randn(1, k)
    xb = x32.bfloat16()
    if kind == "torch_f32":
        ws = [(w + c * 1e-3).contiguous() for c in range(copies)]
        return (lambda i: F.linear(x32, ws[i % copies])), n * k * 4
    if kind == "torch_bf16":
        ws = [(w + c * 1e-3).bfloat16() for c in range(copies)]
        return (lambda i: F.linear(xb, ws[i % copies])), n * k * 2
    if kind == "torch_int8pack":
        mods = [Int8Linear.from_quant(rtn(w + c * 1e-3, 8, 0, True)) for c in range(copies)]
        return (lambda i: torch._weight_int8pack_mm(xb, mods[i % copies].weight_int8, mods[i % copies].scales)), \
            n * k + 2 * n
    mods = [Int4Linear.from_quant(rtn(w + c * 1e-3, 4, 128, False)) for c in range(copies)]
    pad = mods[0].pad
    xpad = F.pad(xb, (0, pad)) if pad else xb
    return (lambda i: torch._weight_int4pack_mm_for_cpu(xpad, mods[i % copies].packed, 128,
                                                        mods[i % copies].scales_zeros)), \
        mods[0].packed.numel() + mods[0].scales_zeros.numel() * 2


def gemv_part(rounds: int, min_calls: int, shapes: list[str]) -> list[dict]:
    """Interleaved rounds of every system on every shape."""
    import torch

    rows = []
    for name in shapes:
        n, k = SHAPES[name]
        w = torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)) * 0.05
        systems = {}
        fmts = [f for f in NATIVE_FORMATS if not (f in ("q4_k", "q5_k", "q6_k") and k % 256)]
        for fmt in fmts:
            systems[f"native {fmt}"] = _native_systems(w, fmt, _copies(fmt, n, k))
        for kind in ("torch_f32", "torch_bf16", "torch_int8pack", "torch_int4pack"):
            systems[kind] = _torch_systems(w, kind, _copies(kind, n, k))
        samples: dict[str, list[float]] = {s: [] for s in systems}
        calls = max(min_calls, 2000 // max(1, n * k // 100000))
        for _ in range(rounds):
            for sname, (fn, _) in systems.items():
                for i in range(3):
                    fn(i)
                t0 = time.perf_counter()
                for i in range(calls):
                    fn(i)
                samples[sname].append((time.perf_counter() - t0) / calls)
        for sname, (_, nbytes) in systems.items():
            st = _stat(samples[sname])
            rows.append({"shape": name, "out_features": n, "in_features": k, "system": sname, "bytes": nbytes,
                         "time_s": st, "GBps": nbytes / st["median"] / 1e9})
            print(f"{name:8s} {sname:22s} {st['median'] * 1e6:9.1f} us  {nbytes / st['median'] / 1e9:6.1f} GB/s "
                  f"(spread {st['spread']:.0%})")
    return rows


# ---------------------------------------------------------------------------------------- decode


def _model_variants(fmt: str):
    """(model for native + lean, native kwargs, gguf type) of one decode format."""
    import torch

    import ridgeline.quant as quant
    from ridgeline.loader import load_model

    if fmt == "bf16":
        model, tok = load_model("smollm2-135m", "bf16")
        return model, tok, {}, "bf16"
    model, tok = load_model("smollm2-135m", "fp32")
    if fmt in ("q8_0", "q4_0", "q4_k_m"):
        quant.quantize_(model, quant.GGUFConfig(fmt))
        # the tied head in the type llama.cpp's recipe gives it (the emulation stores it dequantized)
        head = model.ridgeline_quant["float_tensors"]["token_embd.weight"].split()[0]
        return model, tok, {"head_format": head}, fmt
    # RTN codes from the fp32 weights; the rest of the model (and torch's int8/int4 kernels' scales) in bf16, the
    # activations torch's _weight_int8pack_mm / _weight_int4pack_mm_for_cpu take
    bits = {"int8": {"bits": 8}, "int4": {"bits": 4, "group": 128}}[fmt]
    quant.quantize_(model, quant.RTNConfig(**bits, include_lm_head=True))
    return model.to(torch.bfloat16), tok, {}, None


class _NativeRunner:
    def __init__(self, model, max_len: int, **kw) -> None:
        from ridgeline.kernels import NativeCausalLM

        self.m = NativeCausalLM.from_hf(model, max_len, **kw)
        self.impl = f"ridgeline native ({__import__('ridgeline.kernels', fromlist=['info']).info().path})"

    def prefill(self, prompt) -> int:
        import torch

        self.m.reset()
        return int(self.m.prefill(torch.tensor([list(prompt)])).argmax())

    def decode(self, token: int) -> int:
        return int(self.m.decode(token).argmax())


def _gguf_path(fmt: str, model, tok, cache: Path) -> Path:
    from ridgeline.specs import bundled_gguf
    from ridgeline.quant import export_gguf

    out = cache / f"smollm2-135m-{fmt}.gguf"
    if not out.exists():
        export_gguf(model, tok, out, fmt, source_gguf=bundled_gguf())
    return out


def decode_part(formats: list[str], prompt: int, gen: int, rounds: int, threads: int, cache: Path) -> list[dict]:
    """Interleaved rounds of native / lean / llama.cpp decode per format."""

    from ridgeline.loader import load_model
    from ridgeline.measure.backends import LeanRunner, LlamaCppRunner, llama_cpp_available

    rows = []
    ids = list(range(100, 100 + prompt))
    for fmt in formats:
        model, tok, kw, gguf_type = _model_variants(fmt)
        runners = {"native": _NativeRunner(model, prompt + gen + 1, **kw)}
        try:
            runners["lean torch"] = LeanRunner(model, prompt + gen + 1)
        except Exception as exc:  # e.g. q4_k_m: lean cannot fuse q/k/v of different formats
            rows.append({"format": fmt, "system": "lean torch", "skipped": str(exc)})
        if gguf_type and llama_cpp_available():
            src = load_model("smollm2-135m", "fp32")[0]  # export quantizes (or casts) the float weights itself
            runners["llama.cpp"] = LlamaCppRunner(str(_gguf_path(gguf_type, src, tok, cache)), prompt + gen + 1, threads)
        samples: dict[str, list[float]] = {r: [] for r in runners}
        for _ in range(rounds):
            for name, r in runners.items():
                t = r.prefill(ids)
                for _ in range(4):  # warm-up steps inside the same cache
                    t = r.decode(t)
                t = r.prefill(ids)
                t0 = time.perf_counter()
                for _ in range(gen):
                    t = r.decode(t)
                samples[name].append(gen / (time.perf_counter() - t0))
        nat = runners["native"].m
        kv_read = nat.kv_bytes / nat.max_len * (prompt + gen / 2)  # mean context of the decode steps
        for name, r in runners.items():
            st = _stat(samples[name])
            rows.append({"format": fmt, "system": name, "impl": getattr(r, "impl", name), "tokens_per_s": st,
                         "native_weight_bytes": nat.weight_bytes, "bytes_per_token": nat.weight_bytes + kv_read,
                         "native_formats": nat.formats if name == "native" else None})
            print(f"decode {fmt:7s} {name:10s} {st['median']:7.1f} tok/s (min {st['min']:.1f}, max {st['max']:.1f})")
        for r in runners.values():
            if hasattr(r, "close"):
                r.close()
        del runners, model
    return rows


def main() -> None:
    """GEMV rounds, decode rounds, pool costs, write the record."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20, help="minimum kernel calls per system per round")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--decode-rounds", type=int, default=3)
    ap.add_argument("--formats", default="bf16,q8_0,q4_0,q4_k_m,int8,int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--skip-gemv", action="store_true")
    ap.add_argument("--skip-decode", action="store_true")
    args = ap.parse_args()
    import torch

    import ridgeline.kernels as K
    from ridgeline.measure.probe import bandwidth_kernels

    torch.set_num_threads(args.threads)
    K.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    bw_before = bandwidth_kernels(256 << 20, 5, 1)
    pool = [K.pool_overhead(5000, 20000) for _ in range(5)]
    print(f"native path: {K.info().reason}; pool: run {min(p['run_s'] for p in pool) * 1e6:.2f} us, "
          f"phase hand-over {min(p['handover_s'] for p in pool) * 1e6:.2f} us (best of 5)")
    gemv = [] if args.skip_gemv else gemv_part(args.rounds, args.calls, args.shapes.split(","))
    cache = Path(os.environ.get("RIDGELINE_HOME", Path.home() / ".cache" / "ridgeline")) / "bench-gguf"
    cache.mkdir(parents=True, exist_ok=True)
    decode = [] if args.skip_decode else decode_part(args.formats.split(","), args.prompt, args.gen,
                                                      args.decode_rounds, args.threads, cache)
    bw_after = bandwidth_kernels(256 << 20, 5, 1)
    read_bw = max(v.max for k, v in bw_before.items() if k.startswith("read"))
    for row in decode:
        if "tokens_per_s" in row:
            row["phi_vs_read_roof"] = row["bytes_per_token"] * row["tokens_per_s"]["median"] / read_bw
    record = {
        "benchmark": "kernels", "native": {"path": K.info().path, "reason": K.info().reason},
        "threads": args.threads, "rounds": args.rounds, "decode_rounds": args.decode_rounds,
        "scenario": {"prompt": args.prompt, "generate": args.gen},
        "pool_overhead": {"run_s": _stat([p["run_s"] for p in pool]), "handover_s": _stat([p["handover_s"] for p in pool])},
        "read_bandwidth_Bps": {"before": read_bw, "after": max(v.max for k, v in bw_after.items() if k.startswith("read"))},
        "load_avg": {"before": list(load_before), "after": list(os.getloadavg())},
        "gemv": gemv, "decode": decode, "machine": machine_info(), "wall_s": time.perf_counter() - t_start,
        "notes": ["timing on a shared 2-core VM: compare systems within one round, not across runs",
                  "GB/s counts the bytes each kernel streams; the native layout adds padding/scales as recorded",
                  "lean torch on ggml formats runs emulated (dequantized fp32 weights): labelled by its modules"],
    }
    out = write_json(Path(__file__).parent / "results" / "native.json", record)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
