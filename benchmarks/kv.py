"""KV-cache memory vs quality vs speed on the bundled model at a long context, all variants in one run.

Variants: the model's own fp32 cache, bf16 KV (two ways), KIVI-4/2, Harmonia BFP with and without key
smoothing, uniform 4-bit BFP, sliding windows (rolling buffer), and GQA 3 -> 1 KV heads before and after a
short uptraining (AdamW and/or Muon; plus controls: the unpooled model uptrained alike, since calibration
and held-out text are both Shakespeare and uptraining also adapts to the domain).

Per variant: held-out perplexity streamed chunk by chunk through a fresh cache (so the compressed cache
affects later chunks, as at decode time), KV bytes held after `--context` tokens (and the bytes with float
parts in 16 bits, for a like-for-like memory column), and greedy decode ms/token at that context.
Takes ~20-30 min on an idle 2-core machine with the defaults, about 2/3 of it uptraining (4 runs x 30 steps
x ~6-9 s); a second busy process on the cores oversubscribes torch's threads and slows it many-fold.
Writes benchmarks/results/kv.json (--out).
Run: .venv/bin/python benchmarks/kv.py [--context 2048] [--ppl-windows 2] [--chunk 128] [--decode-steps 32]
     [--windows 256,512,1024] [--uptrain-steps 30] [--optimizers adamw,muon] [--no-control] [--threads 2]
     [--only fp32,kivi4,harmonia,swa-256,gqa1,gqa1+uptrain-adamw,fp32+uptrain-adamw,...] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from common import machine_info, portable  # noqa: E402

from ridgeline.corpus import corpus_info, load_corpus  # noqa: E402
from ridgeline.io import write_json  # noqa: E402
from ridgeline.loader import load_model  # noqa: E402

MODEL = "smollm2-135m"


@dataclass(frozen=True)
class Variant:
    """One row: how to build the model from the fp32 base, and which cache to stream it through.

    model: 'fp32' (the base), 'bf16' (loaded in bf16), 'smooth' (deep copy with key smoothing folded),
    'swa' (to_sliding_window(base, window)), 'gqa' (pool_kv_heads(deep copy, 1), uptrained with
    `optimizer` if set), 'control' (deep copy of the base uptrained with `optimizer`).
    cache: 'dynamic' (the model's own DynamicCache), 'bf16' (DynamicCache storing bf16, see Bf16KVLayer),
    'rolling' (RollingBufferCache), or a `ridgeline.kv.make_kv_cache` name.
    """

    name: str
    group: str
    model: str = "fp32"
    cache: str = "dynamic"
    window: int | None = None
    optimizer: str | None = None


def variants(windows: list[int], optimizers: list[str], controls: bool) -> list[Variant]:
    """Every row of the table, in order."""
    rows = [
        Variant("fp32", "float"),
        Variant("bf16-kv (fp32 model)", "float", cache="bf16"),
        Variant("bf16 (bf16 model)", "float", model="bf16"),
        Variant("kivi4", "quantized", cache="kivi4"),
        # KIVI-4 with a 256-token fp16 residual: at 2048 tokens ~5.7 bits vs kivi4's ~5.3, bracketing
        # Harmonia's ~5.6 (the only KIVI knob between: R; bits 3 and group 16 do not exist / overshoot)
        Variant("kivi4_r256", "quantized", cache="kivi4_g32_r256"),
        Variant("kivi2", "quantized", cache="kivi2"),
        Variant("harmonia", "quantized", cache="harmonia"),
        Variant("harmonia+smooth", "quantized", model="smooth", cache="harmonia"),
        Variant("bfp32m4", "quantized", cache="bfp32m4"),
        Variant("bfp32m4+smooth", "quantized", model="smooth", cache="bfp32m4"),
    ]
    rows += [Variant(f"swa-{w}", "sliding-window", model="swa", cache="rolling", window=w) for w in windows]
    rows.append(Variant("gqa1", "gqa", model="gqa"))
    rows += [Variant(f"gqa1+uptrain-{opt}", "gqa", model="gqa", optimizer=opt) for opt in optimizers]
    if controls:
        rows += [Variant(f"fp32+uptrain-{opt}", "control", model="control", optimizer=opt) for opt in optimizers]
    return rows


# ---------------------------------------------------------------------------------------------------------
# caches


def _bf16_cache(model: Any) -> Any:
    """A DynamicCache whose layers store K/V in bf16 and hand them back in the model dtype (fp32 here).

    Isolates the effect of bf16 KV storage from bf16 weights/activations (the 'bf16 (bf16 model)' row has
    both). Converting the whole cache back each step is emulation: its decode speed is not a bf16 kernel's."""
    import torch
    from transformers.cache_utils import Cache, DynamicLayer

    class Bf16KVLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            k, v = super().update(key_states.to(torch.bfloat16), value_states.to(torch.bfloat16), *args, **kwargs)
            return k.to(key_states.dtype), v.to(value_states.dtype)

    return Cache(layers=[Bf16KVLayer() for _ in range(model.config.num_hidden_layers)])


def make_cache(v: Variant, model: Any) -> Any:
    """A fresh cache for variant `v` on `model`."""
    from transformers import DynamicCache

    from ridgeline.arch.swa import RollingBufferCache
    from ridgeline.kv import make_kv_cache

    if v.cache == "dynamic":
        return DynamicCache(config=model.config)
    if v.cache == "bf16":
        return _bf16_cache(model)
    if v.cache == "rolling":
        return RollingBufferCache.for_model(model)
    return make_kv_cache(v.cache, model)


def held_bytes(cache: Any) -> int:
    """Bytes of K/V storage the cache holds now."""
    if hasattr(cache, "memory_bytes"):  # KIVI, Harmonia, BFP
        return int(cache.memory_bytes())
    if hasattr(cache, "held_bytes"):  # RollingBufferCache
        return int(cache.held_bytes)
    return sum(t.numel() * t.element_size() for layer in cache.layers if layer.is_initialized
               for t in (layer.keys, layer.values))


def kv_memory(v: Variant, model: Any, cache: Any, tokens: int, base_kv_heads: int) -> dict:
    """Bytes held after `tokens` tokens, the same with float parts stored in 16 bits, ratios and bits/element."""
    from ridgeline.kv import HarmoniaCache, KIVICache, kivi_bytes

    cfg = model.config
    layers, kv_heads = cfg.num_hidden_layers, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    held = held_bytes(cache)
    out: dict = {"kv_heads": kv_heads, "kv_bytes_held": held}
    if isinstance(cache, KIVICache):  # fp residual in the model dtype here; a deployment keeps it in fp16
        fp_bytes = next(p for p in model.parameters()).element_size()
        formula = kivi_bytes(tokens, kv_heads, head_dim, layers, cache.config, fp_bytes=fp_bytes)
        out["accounting_matches_kivi_bytes"] = formula == held
        b16 = kivi_bytes(tokens, kv_heads, head_dim, layers, cache.config, fp_bytes=2)
    elif isinstance(cache, HarmoniaCache):  # no float parts: what it holds is what it would hold anywhere
        from ridgeline.kv import harmonia_bytes

        out["accounting_matches_harmonia_bytes"] = harmonia_bytes(tokens, kv_heads, head_dim, layers,
                                                                  cache.config) == held
        b16 = held
    else:  # float storage: fp32 -> 2 bytes, bf16 unchanged
        elem = 2 if v.cache == "bf16" else next(p for p in model.parameters()).element_size()
        b16 = held * 2 // elem
    if hasattr(cache, "bits_per_element"):
        out["cache_bits_per_element"] = cache.bits_per_element()  # the cache's own figure (as held)
    elements = 2 * layers * kv_heads * head_dim * tokens  # K and V elements of `tokens` tokens
    fp16_same_heads = 2 * elements
    fp16_base = 2 * 2 * layers * base_kv_heads * head_dim * tokens
    out.update(kv_bytes_16bit_float=b16,
               bits_per_element_held=8 * held / elements, bits_per_element=8 * b16 / elements,
               ratio_vs_fp16_same_heads=b16 / fp16_same_heads, ratio_vs_fp16_base=b16 / fp16_base)
    return out


# ---------------------------------------------------------------------------------------------------------
# models


class Models:
    """Builds (and memoizes where shared) the model of each variant from the one fp32 base."""

    def __init__(self, base: Any, calib_ids: Any, smooth_ids: Any, args: argparse.Namespace):
        self.base, self.calib_ids, self.smooth_ids, self.args = base, calib_ids, smooth_ids, args
        self.memo: dict[str, Any] = {}

    def get(self, v: Variant) -> tuple[Any, dict]:
        """The model for `v` and what building it did (smoothing check, uptraining record)."""
        from ridgeline.arch.gqa import kv_bytes_per_token, pool_kv_heads
        from ridgeline.arch.swa import to_sliding_window

        info: dict = {}
        if v.model == "fp32":
            return self.base, info
        if v.model == "bf16":
            if "bf16" not in self.memo:
                self.memo["bf16"] = load_model(MODEL, "bf16")[0]
            return self.memo["bf16"], info
        if v.model == "smooth":
            if "smooth" not in self.memo:
                self.memo["smooth"] = self._smoothed()
            model, check = self.memo["smooth"]
            return model, {"smoothing": check}
        if v.model == "swa":
            return to_sliding_window(self.base, v.window), {"window": v.window}
        if v.model == "gqa":
            if "gqa" not in self.memo:
                self.memo["gqa"] = pool_kv_heads(copy.deepcopy(self.base), 1)
            model = self.memo["gqa"]
            info["kv_bytes_per_token_fp32"] = kv_bytes_per_token(model.config, 4)
            info["kv_bytes_per_token_fp16"] = kv_bytes_per_token(model.config, 2)
            info["kv_bytes_per_token_fp16_base"] = kv_bytes_per_token(self.base.config, 2)
            if v.optimizer is None:
                return model, info
            model = copy.deepcopy(model)
        elif v.model == "control":
            model = copy.deepcopy(self.base)
        else:
            raise ValueError(f"unknown model kind {v.model!r}")
        info["uptrain"] = self._uptrain(model, v)
        return model, info

    def _smoothed(self) -> tuple[Any, dict]:
        """A deep copy of the base with key smoothing folded into q/k, and a check that logits did not move."""
        import torch

        from ridgeline.kv.harmonia import smooth_keys

        model = copy.deepcopy(self.base)
        t0 = time.perf_counter()
        factors = smooth_keys(model, self.smooth_ids)
        seconds = time.perf_counter() - t0
        probe = self.smooth_ids[:1, :256]
        with torch.inference_mode():
            a = self.base(input_ids=probe, use_cache=False).logits
            b = model(input_ids=probe, use_cache=False).logits
        s = torch.stack([f.float() for f in factors])
        check = {"calibration_tokens": list(self.smooth_ids.shape), "alpha": 0.5, "seconds": seconds,
                 "factor_min": float(s.min()), "factor_max": float(s.max()),
                 "max_abs_logit_diff_vs_base": float((a - b).abs().max()),
                 "max_abs_logit": float(a.abs().max()), "probe_tokens": probe.shape[1]}
        return model, check

    def _uptrain(self, model: Any, v: Variant) -> dict:
        from ridgeline.train.uptrain import UptrainConfig, uptrain

        a = self.args
        cfg = UptrainConfig(steps=a.uptrain_steps, seq_len=a.uptrain_seq_len, batch_size=a.uptrain_batch,
                            lr=a.uptrain_lr, optimizer=v.optimizer)

        def progress(step: int, steps: int, loss: float) -> None:
            if step == 1 or step % 5 == 0 or step == steps:
                log(f"  uptrain {v.optimizer} step {step}/{steps} loss {loss:.3f}")

        res = uptrain(model, self.calib_ids, cfg, progress)
        model.eval()
        losses = list(res.losses)
        return {"optimizer": v.optimizer, "config": dataclasses.asdict(cfg), "steps_done": res.steps_done,
                "seconds": res.seconds, "s_per_step": res.seconds / max(res.steps_done, 1),
                "tokens_seen": res.tokens_seen, "interrupted": res.interrupted,
                "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
                "loss_last5_mean": statistics.fmean(losses[-5:]) if losses else None, "losses": losses}


# ---------------------------------------------------------------------------------------------------------
# measurements


def finish_prefill(model: Any, cache: Any, window: Any) -> Any:
    """The cache holds the first T-1 tokens of `window` [1, T] (streamed): feed the last; return the next token."""
    import torch

    T = window.shape[1]
    with torch.inference_mode():
        logits = model(input_ids=window[:, T - 1:], position_ids=torch.tensor([[T - 1]]), past_key_values=cache,
                       use_cache=True).logits
    return logits[:, -1].argmax(-1, keepdim=True)


def decode_steps(model: Any, cache: Any, tok: Any, warmup: int, steps: int) -> tuple[list[float], list[int]]:
    """Greedy-decode from `tok` on top of `cache`: seconds of each timed step (after `warmup`), and the tokens."""
    import torch

    times, tokens = [], [int(tok)]
    start = cache.get_seq_length()
    with torch.inference_mode():
        for i in range(warmup + steps):
            pos = torch.tensor([[start + i]])
            t0 = time.perf_counter()
            logits = model(input_ids=tok, position_ids=pos, past_key_values=cache, use_cache=True).logits
            tok = logits[:, -1].argmax(-1, keepdim=True)
            dt = time.perf_counter() - t0
            tokens.append(int(tok))
            if i >= warmup:
                times.append(dt)
    return times, tokens


def measure(v: Variant, model: Any, windows: list[Any], args: argparse.Namespace, base_kv_heads: int) -> dict:
    """Perplexity over every window (fresh cache each); after the first, KV bytes and decode timing."""
    from ridgeline.kv import stream_nll

    row: dict = {}
    nlls, counts = [], []
    t0 = time.perf_counter()
    for i, w in enumerate(windows):
        cache = make_cache(v, model)
        nll, n = stream_nll(model, w, cache, args.chunk)
        nlls.append(nll)
        counts.append(n)
        if i == 0:  # this cache holds the window: finish its prefill and decode on from there
            row["ppl_s"] = time.perf_counter() - t0
            tok = finish_prefill(model, cache, w)
            in_cache = cache.get_seq_length()
            row["tokens_in_cache"] = in_cache
            row.update(kv_memory(v, model, cache, in_cache, base_kv_heads))  # before decoding adds tokens
            times, gen = decode_steps(model, cache, tok, args.decode_warmup, args.decode_steps)
            ms = sorted(t * 1e3 for t in times)
            med = statistics.median(ms)
            row["decode"] = {"ms_per_token_median": med, "ms_per_token_min": ms[0], "ms_per_token_max": ms[-1],
                             "tokens_per_s": 1e3 / med, "tokens_per_s_min": 1e3 / ms[-1],
                             "tokens_per_s_max": 1e3 / ms[0], "steps": len(times), "warmup": args.decode_warmup,
                             "context": in_cache, "samples_ms": [t * 1e3 for t in times]}
            row["greedy_tokens"] = gen
            t0 = time.perf_counter()
            del cache
    row["ppl_s"] += time.perf_counter() - t0
    total_nll, total_n = sum(nlls), sum(counts)
    row.update(ppl=math.exp(total_nll / total_n), nll_per_token=total_nll / total_n, ppl_tokens=total_n,
               ppl_per_window=[math.exp(a / b) for a, b in zip(nlls, counts)])
    return row


# ---------------------------------------------------------------------------------------------------------
# data, table, main


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def token_stream(tokenizer: Any, split: str) -> Any:
    """All token ids of a corpus split (no special tokens) as a 1-D int64 tensor."""
    import torch

    ids = tokenizer(load_corpus(split).text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def spaced_windows(stream: Any, n: int, length: int) -> tuple[list[Any], list[int]]:
    """`n` disjoint windows [1, length] spread evenly over the stream, and their start offsets."""
    stride = stream.numel() // n
    if stride < length:
        raise SystemExit(f"the stream has {stream.numel()} tokens: too few for {n} windows of {length}")
    starts = [i * stride for i in range(n)]
    return [stream[s:s + length][None] for s in starts], starts


def _fmt_mb(b: float | None) -> str:
    return f"{b / 2**20:8.2f}" if b is not None else "       -"


def table(rows: list[dict]) -> str:
    """One plain-text summary table."""
    ref = next((r["ppl"] for r in rows if r["variant"] == "fp32"), None)
    head = (f"{'variant':30s} {'Hkv':>3s} {'held MiB':>8s} {'16b MiB':>8s} {'bits/el':>7s} {'x fp16':>6s} "
            f"{'ppl':>8s} {'dppl%':>6s} {'tok/s':>6s} {'ms/tok (min-max)':>20s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        d = r["decode"]
        dppl = f"{100 * (r['ppl'] / ref - 1):+6.2f}" if ref else "     -"
        lines.append(f"{r['variant']:30s} {r['kv_heads']:3d} {_fmt_mb(r['kv_bytes_held'])} "
                     f"{_fmt_mb(r['kv_bytes_16bit_float'])} {r['bits_per_element']:7.2f} "
                     f"{r['ratio_vs_fp16_base']:6.3f} {r['ppl']:8.3f} {dppl} {d['tokens_per_s']:6.1f} "
                     f"{d['ms_per_token_median']:7.1f} ({d['ms_per_token_min']:.1f}-{d['ms_per_token_max']:.1f})")
    return "\n".join(lines)


def comparisons(rows: list[dict]) -> dict:
    """Quality at (nearly) equal memory: each Harmonia/BFP row against every KIVI row, nearest in bits/element
    first; GQA uptraining gain against the same optimizer's control."""
    by = {r["variant"]: r for r in rows}
    kivi = [r for r in rows if r["variant"].startswith("kivi")]
    out: dict = {"equal_memory": [], "gqa": []}
    for r in rows:
        if r["group"] == "quantized" and not r["variant"].startswith("kivi") and kivi:
            near = sorted(kivi, key=lambda x: abs(x["bits_per_element"] - r["bits_per_element"]))
            out["equal_memory"].append({
                "variant": r["variant"], "bits_per_element": r["bits_per_element"], "ppl": r["ppl"],
                "kivi": [{"variant": k["variant"], "bits_per_element": k["bits_per_element"], "ppl": k["ppl"],
                          "ppl_ratio_this_vs_kivi": r["ppl"] / k["ppl"]} for k in near]})
    for r in rows:
        opt = (r.get("uptrain") or {}).get("optimizer")
        if r["variant"].startswith("gqa1+uptrain") and opt:
            ctrl = by.get(f"fp32+uptrain-{opt}")
            out["gqa"].append({"variant": r["variant"], "ppl": r["ppl"],
                               "ppl_before_uptrain": by.get("gqa1", {}).get("ppl"),
                               "fp32_ppl": by.get("fp32", {}).get("ppl"),
                               "control_ppl": ctrl["ppl"] if ctrl else None,
                               "ppl_ratio_vs_control": r["ppl"] / ctrl["ppl"] if ctrl else None})
    return out


FIELDS = {
    "kv_heads": "KV heads of the variant's model",
    "tokens_in_cache": "tokens fed through the cache when its bytes were read (= context)",
    "kv_bytes_held": "bytes of K/V storage the cache held in this run (memory_bytes(), held_bytes, or the sum "
                     "of DynamicCache key/value tensors); KIVI's full-precision residual is in the model dtype "
                     "(fp32 here)",
    "kv_bytes_16bit_float": "the same cache with every float part stored in 16 bits (fp32 caches halved, KIVI "
                            "residual fp16 via kivi_bytes(fp_bytes=2); BFP/Harmonia unchanged): the like-for-like "
                            "memory column",
    "bits_per_element": "8 * kv_bytes_16bit_float / (2 * layers * kv_heads * head_dim * context): for a sliding "
                        "window, per token of the context, not per slot",
    "bits_per_element_held": "the same from kv_bytes_held",
    "cache_bits_per_element": "the quantized cache's own bits_per_element() (as held)",
    "ratio_vs_fp16_same_heads": "kv_bytes_16bit_float / fp16 KV bytes of the same context and kv heads",
    "ratio_vs_fp16_base": "kv_bytes_16bit_float / fp16 KV bytes of the base model (3 KV heads) at the same "
                          "context: includes the GQA and sliding-window savings",
    "ppl": "exp(total NLL / total tokens) over all held-out windows, each streamed in chunks through a fresh cache",
    "ppl_per_window": "perplexity of each window",
    "decode": "greedy decode at the context (cache from the first window): median/min/max ms per token over "
              "the timed steps after warm-up, tokens/s = 1000 / ms",
    "greedy_tokens": "the token after the context, then every generated token (warm-up and timed steps)",
    "uptrain": "GQA/control rows: optimizer, config, seconds, loss curve",
}


#: what the record says about how to read it
NOTES = (
    ("Every variant except 'bf16 (bf16 model)' runs the fp32 model, so perplexity differences come from "
     "the KV cache (or the architecture change) alone. 'bf16-kv (fp32 model)' stores K/V in bf16 and "
     "computes in fp32; 'bf16 (bf16 model)' is the model loaded in bf16 with its own (bf16) cache, so it "
     "also carries bf16 weights/activations."),
    ("Decode speed of the quantized caches (KIVI, Harmonia, BFP) and of bf16-kv (fp32 model) is emulated: "
     "each step dequantizes (or converts) the whole cache in PyTorch, no fused kernel on CPU, so their "
     "tok/s says nothing about what a kernel would give; only the float caches' speed is real."),
    ("Sliding-window rows: MistralForCausalLM copy of the weights (to_sliding_window) with a "
     "RollingBufferCache of W slots; no uptraining, no attention sinks."),
    ("GQA rows: pool_kv_heads(deepcopy(base), 1) (3 -> 1 KV head, mean pooling); uptrained copies train "
     "all parameters on the calib split. The calib and eval splits are both Shakespeare, so uptraining "
     "also adapts to the domain: compare gqa1+uptrain-X with the control row fp32+uptrain-X, the "
     "unpooled model (3 KV heads) uptrained with the same budget and optimizer."),
    ("KIVI at equal memory: KIVI-4 (g32, fp16 residual R=128) is 5 bits in the bulk plus the residual; "
     "Harmonia is 5.25 bits in the bulk plus 9.25-bit sink/recent tiers; kivi4_r256 (R=256) lands on the "
     "other side of Harmonia. Compare rows by bits_per_element; see comparisons.equal_memory."),
    ("Timing is only meaningful on an otherwise idle machine: with another process on the 2 cores, torch's "
     "threads oversubscribe and steps slow down up to ~10x (see load_avg_1m_after per row)."),
)


def main() -> None:
    """Build every variant from the fp32 base, measure it, write the record and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=2048, help="tokens per held-out window = decode context")
    ap.add_argument("--ppl-windows", type=int, default=2, help="held-out windows (spread over the eval split)")
    ap.add_argument("--chunk", type=int, default=128, help="tokens per forward when streaming a window")
    ap.add_argument("--decode-steps", type=int, default=32, help="timed greedy decode steps")
    ap.add_argument("--decode-warmup", type=int, default=2, help="untimed decode steps before them")
    ap.add_argument("--windows", default="256,512,1024", help="sliding windows W (comma list; empty: none)")
    ap.add_argument("--uptrain-steps", type=int, default=30)
    ap.add_argument("--uptrain-seq-len", type=int, default=256)
    ap.add_argument("--uptrain-batch", type=int, default=2)
    ap.add_argument("--uptrain-lr", type=float, default=1e-4)
    ap.add_argument("--optimizers", default="adamw,muon", help="uptraining optimizers (comma list; empty: none)")
    ap.add_argument("--no-control", action="store_true",
                    help="skip the controls (the 3-KV-head model uptrained with the same budget)")
    ap.add_argument("--smooth-seqs", type=int, default=4, help="calibration sequences for key smoothing")
    ap.add_argument("--smooth-len", type=int, default=512, help="tokens per key-smoothing calibration sequence")
    ap.add_argument("--only", default=None, help="comma list of variant names (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "kv.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t_start, load_at_start = time.perf_counter(), list(os.getloadavg())
    windows_w = [int(w) for w in args.windows.split(",") if w.strip()]
    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    plan = variants(windows_w, optimizers, not args.no_control)
    if args.only:
        wanted = [s.strip() for s in args.only.split(",")]
        unknown = set(wanted) - {v.name for v in plan}
        if unknown:
            raise SystemExit(f"unknown variants {sorted(unknown)}; known: {[v.name for v in plan]}")
        plan = [v for v in plan if v.name in wanted]

    log(f"loading {MODEL} fp32 and tokenizing the corpus ...")
    base, tok = load_model(MODEL, "fp32")
    eval_ids, calib_ids = token_stream(tok, "eval"), token_stream(tok, "calib")
    held_out, starts = spaced_windows(eval_ids, args.ppl_windows, args.context)
    smooth_windows, smooth_starts = spaced_windows(calib_ids, args.smooth_seqs, args.smooth_len)
    smooth_ids = torch.cat(smooth_windows)
    models = Models(base, calib_ids, smooth_ids, args)
    base_kv_heads = base.config.num_key_value_heads

    rows = []
    for v in plan:
        log(f"[{len(rows) + 1}/{len(plan)}] {v.name}")
        t0 = time.perf_counter()
        model, info = models.get(v)
        build_s = time.perf_counter() - t0
        row = {"variant": v.name, "group": v.group, "spec": dataclasses.asdict(v), "build_s": build_s, **info}
        row.update(measure(v, model, held_out, args, base_kv_heads))
        row["decode_emulated"] = v.group == "quantized" or v.cache == "bf16"
        row["load_avg_1m_after"] = os.getloadavg()[0]  # a busy neighbour on 2 cores slows torch many-fold
        rows.append(row)
        d = row["decode"]
        log(f"  ppl {row['ppl']:.3f}  KV {row['kv_bytes_held'] / 2**20:.2f} MiB held, "
            f"{row['bits_per_element']:.2f} bits/el  decode {d['tokens_per_s']:.1f} tok/s "
            f"({d['ms_per_token_min']:.1f}-{d['ms_per_token_max']:.1f} ms)  [{time.perf_counter() - t0:.0f} s]")
        del model  # one-offs (sliding window, uptrained copies) are freed here; shared ones stay in models.memo
        gc.collect()

    ref = next((r for r in rows if r["variant"] == "fp32"), None)
    for r in rows:
        if ref is not None:
            r["ppl_ratio_vs_fp32"] = r["ppl"] / ref["ppl"]
            g = ref["greedy_tokens"]
            r["greedy_prefix_match_vs_fp32"] = next((i for i, (a, b) in enumerate(zip(g, r["greedy_tokens"]))
                                                     if a != b), min(len(g), len(r["greedy_tokens"])))
    cfg = base.config
    record = {
        "benchmark": "kv", "model": f"{MODEL} (bundled SmolLM2-135M)",
        "model_dims": {"layers": cfg.num_hidden_layers, "query_heads": cfg.num_attention_heads,
                       "kv_heads": cfg.num_key_value_heads,
                       "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads},
        "threads": torch.get_num_threads(), "settings": vars(args),
        "corpus": corpus_info(),
        "held_out": {"split": "eval", "stream_tokens": eval_ids.numel(), "window_starts": starts,
                     "window_tokens": args.context, "scored_per_window": args.context - 1,
                     "bos": "none: windows start mid-text, as a continuation of a document would"},
        "calibration": {"split": "calib (documents disjoint from eval)", "stream_tokens": calib_ids.numel(),
                        "smoothing_window_starts": smooth_starts, "smoothing_shape": list(smooth_ids.shape),
                        "uptraining": "random windows of the whole calib stream (UptrainConfig seed 0)"},
        "fp16_kv_bytes_base": 2 * 2 * cfg.num_hidden_layers * base_kv_heads
        * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads) * args.context,
        "fields": FIELDS,
        "notes": list(NOTES),
        "rows": rows,
        "comparisons": comparisons(rows),
        "machine": machine_info(), "load_avg_at_start": load_at_start,
        "wall_s": time.perf_counter() - t_start,
    }
    out = write_json(args.out, portable(record))
    print(table(rows))
    print(f"-> {out}  ({record['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
