"""Medusa on the bundled model, one command: heads trained by self-distillation, their held-out accuracy, the tree
chosen from this machine's verify-cost curve, greedy equality, and decode speed against plain greedy, prompt lookup
and draft-model decoding, interleaved.

Steps (all on one `--path`: native = `ridgeline.kernels.NativeCausalLM` (the default; tree verification is its
small-M GEMM, at most 16 tokens per forward), lean = ridgeline's torch decode path, hf = transformers' forward):
1. heads: trained (`train_medusa`: greedy continuations of calibration prompts, then K heads) unless `--heads-dir`
   already holds heads for this model; the record repeats their training time, tokens and loss curve.
2. held-out accuracy: per-head top-1 / top-5 on the base's greedy continuations of `--prompts` eval-split prompts.
3. tree: the verify-cost curve t(m)/t(1) measured on the path, and the tree it chooses with the heads' accuracies
   (for speed); beside it the acceptance tree, the best of `--max-verify` tokens by the accuracies alone.
4. greedy equality in fp32 on the acceptance tree: Medusa greedy vs plain greedy on `--prompts` held-out prompts
   x `--tokens` tokens (divergences listed with the plain path's top-1 - top-2 logit gap); the same in bf16
   (`--bf16-prompts`). Mean tokens per verify step over those runs (the base's own token counted; accepted
   drafts = that - 1).
5. decode speed: plain greedy, Medusa greedy (speed tree and acceptance tree), Medusa typical (sampling, not
   lossless), prompt lookup and a draft model (the base's first `--draft-layers` layers) on the same path, plus
   transformers' own `generate` (greedy, prompt lookup, assisted generation with the same draft), `--rounds`
   interleaved rounds (the order rotates) over `--timing-prompts` prompts; decode tok/s = tokens after the first /
   time after the prefill (transformers' generate: (N-1) / (t(N) - t(1))); median, min and max over rounds.
6. the roofline's predicted speedup for the measured (tokens verified, tokens accepted, heads) on the host's
   catalogue entry, the probed device (if any) and every catalogue device.

Targets (benchmark, not test): >= 2.0 tokens per verify step; Medusa greedy >= 1.5x plain greedy on the same path,
ahead of prompt lookup. Run under the timing lock:
  flock /tmp/ridgeline-timing.lock .venv/bin/python benchmarks/medusa.py [--path lean|native|hf]
Writes benchmarks/results/medusa.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from common import machine_info, record_path, say, uptime  # noqa: E402

from ridgeline.engine import (Acceptance, DraftModelDrafter, HFVerifier, PromptLookupDrafter, SpecDecoder,  # noqa: E402
                              choose_tree, expected_tokens, first_layers, medusa_decoder)
from ridgeline.errors import RidgelineError  # noqa: E402
from ridgeline.io import user_dir, write_json  # noqa: E402
from ridgeline.loader import load_model  # noqa: E402
from ridgeline.measure import LeanCausalLM, prompt_ids  # noqa: E402
from ridgeline.train import (MedusaConfig, corpus_stream, heads_accuracy, load_heads, read_heads_manifest,  # noqa: E402
                             train_medusa)
from ridgeline.train.medusa_data import draw_prompts  # noqa: E402

OUT = Path(__file__).parent / "results" / "medusa.json"
MODEL = "smollm2-135m"


# ---------------------------------------------------------------------------------------------
# paths and runs


def make_verifier(path: str, model: Any, max_len: int) -> Any:
    """The verifier of `path` (RidgelineError with the reason when the native kernels are unavailable)."""
    if path == "lean":
        return LeanCausalLM.from_hf(model, max_len)
    if path == "hf":
        return HFVerifier(model, max_len)
    from ridgeline.kernels import NativeCausalLM

    return NativeCausalLM.from_hf(model, max_len)


def plain_greedy(verifier: Any, prompt: list[int], n: int) -> dict:
    """Plain greedy decoding on a verifier: tokens, the top-1 - top-2 logit gap behind each, prefill and decode time."""
    with torch.inference_mode():
        verifier.reset()
        t0 = time.perf_counter()
        logits = verifier.prefill(torch.tensor([prompt]))
        t1 = time.perf_counter()
        tokens, gaps = [], []
        for i in range(n):
            top = logits[0].float().topk(2)
            tokens.append(int(top.indices[0]))
            gaps.append(float(top.values[0] - top.values[1]))
            if i + 1 < n:
                logits = verifier.decode(top.indices[:1].view(1, 1))
        t2 = time.perf_counter()
    return {"tokens": tokens, "gaps": gaps, "prefill_s": t1 - t0, "decode_s": t2 - t1, "steps": [1] * (n - 1),
            "verified": [1] * (n - 1)}


def spec_run(decoder: SpecDecoder, prompt: list[int], n: int) -> dict:
    """A speculative run: prefill and steps timed apart."""
    t0 = time.perf_counter()
    out = [decoder.prefill(prompt)]
    t1 = time.perf_counter()
    end = len(prompt) + n - 1
    while decoder.cached() < end:
        out += decoder.step(end - decoder.cached())
    t2 = time.perf_counter()
    return {"tokens": out[:n], "prefill_s": t1 - t0, "decode_s": t2 - t1,
            "steps": [s.tokens for s in decoder.steps], "verified": [s.verified for s in decoder.steps]}


def hf_generate(model: Any, prompt: list[int], n: int, **kw: Any) -> dict:
    """transformers' generate: decode time = t(n tokens) - t(1 token); target forwards counted by a hook."""
    calls = [0]
    hook = model.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    ids = torch.tensor([prompt])
    common = dict(attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=None, pad_token_id=0)
    try:
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **common)
            t1 = time.perf_counter()
            calls[0] = 0
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **common, **kw)
            t2 = time.perf_counter()
    finally:
        hook.remove()
    steps = max(calls[0] - 1, 1)  # the first forward is the prefill
    return {"tokens": out[0, len(prompt):].tolist(), "prefill_s": t1 - t0, "decode_s": (t2 - t1) - (t1 - t0),
            "steps": [(n - 1) / steps] * steps, "verified": []}


# ---------------------------------------------------------------------------------------------
# the steps


def get_heads(model: Any, tok: Any, a: argparse.Namespace) -> tuple[Path, dict]:
    """Heads for the model: trained now unless --heads-dir holds some (then their manifest's record is reused)."""
    folder = a.heads_dir
    if a.retrain or not (folder / "medusa.json").is_file():
        cfg = MedusaConfig(heads=a.heads, sequences=a.sequences, generate=a.generate, epochs=a.epochs,
                           batch_size=a.batch_size, lr=a.lr, optimizer=a.optimizer)
        say(f"training {a.heads} heads: {cfg.sequences} x {cfg.generate} generated tokens, {cfg.steps} steps ...")
        last = [0.0]

        def progress(what: str, done: int, total: int) -> None:
            if time.perf_counter() - last[0] > 30:
                last[0] = time.perf_counter()
                say(f"  {what}: {done}/{total}")

        folder.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        rep = train_medusa(model, tok, folder, cfg, progress)
        if rep.interrupted:
            raise SystemExit(f"training interrupted; resume with `ridgeline medusa train ... --resume` ({rep.checkpoint})")
        say(f"trained in {time.perf_counter() - t0:.0f} s")
    return folder, read_heads_manifest(folder)


def held_out_prompts(tok: Any, n: int, length: int, seed: int = 7) -> list[list[int]]:
    """n windows of `length` tokens from the eval split (documents the heads never saw)."""
    return draw_prompts(corpus_stream(tok, "eval"), n, length, seed).tolist()


def equality(make: Callable[[], Any], decoder_for: Callable[[Any], SpecDecoder], prompts: list[list[int]],
             n: int) -> dict:
    """Medusa greedy vs plain greedy on every prompt: identical count, divergences with gaps, tokens per step."""
    verifier = make()
    decoder = decoder_for(verifier)
    same, divergences, steps = 0, [], []
    for i, p in enumerate(prompts):
        ref = plain_greedy(verifier, p, n)
        got = spec_run(decoder, p, n)
        steps += got["steps"]
        if got["tokens"] == ref["tokens"]:
            same += 1
            continue
        j = next(k for k, (x, y) in enumerate(zip(ref["tokens"], got["tokens"])) if x != y)
        divergences.append({"prompt": i, "index": j, "plain_token": ref["tokens"][j], "medusa_token": got["tokens"][j],
                            "plain_logit_gap": ref["gaps"][j]})
    return {"prompts": len(prompts), "tokens": n, "identical": same, "divergences": divergences,
            "tokens_per_step": sum(steps) / len(steps), "steps": len(steps)}


def summarize_system(runs: list[list[dict]], greedy_tokens: list[list[int]] | None) -> dict:
    """Per round: tokens/s over the timing prompts; the median and spread over rounds; steps and agreement."""
    rates = []
    for rnd in runs:
        tokens = sum(len(r["tokens"]) - 1 for r in rnd)
        rates.append(tokens / sum(r["decode_s"] for r in rnd))
    steps = [s for rnd in runs for r in rnd for s in r["steps"]]
    verified = [v for rnd in runs for r in rnd for v in r["verified"]]
    out = {"decode_tokens_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
                                   "rounds": rates},
           "tokens_per_step": sum(steps) / len(steps) if steps else None,
           "verified_per_step": sum(verified) / len(verified) if verified else None}
    if greedy_tokens is not None:
        out["identical_to_greedy"] = all(r["tokens"] == g for rnd in runs for r, g in zip(rnd, greedy_tokens))
    return out


def timing(a: argparse.Namespace, model: Any, verifier: Any, medusa: Callable[[Acceptance], SpecDecoder],
           big: Callable[[Acceptance], SpecDecoder], prompts: list[list[int]]) -> dict:
    """Every system, interleaved over rounds (the order rotates each round)."""
    max_len = verifier.max_len
    draft_hf = first_layers(model, a.draft_layers)
    draft = make_verifier(a.path, draft_hf, max_len)
    n_draft = min(20, a.max_verify - 1)  # transformers' assisted default, within what one verify takes
    systems: dict[str, Callable[[list[int], int], dict]] = {
        "greedy": lambda p, n: plain_greedy(verifier, p, n),
        "medusa_greedy": lambda p, n, d=medusa(Acceptance()): spec_run(d, p, n),
        "medusa_greedy_acceptance_tree": lambda p, n, d=big(Acceptance()): spec_run(d, p, n),
        "medusa_typical": lambda p, n, d=medusa(Acceptance("typical", a.temperature, seed=0)): spec_run(d, p, n),
        "prompt_lookup": lambda p, n, d=SpecDecoder(verifier, PromptLookupDrafter(10, 2)): spec_run(d, p, n),
        "draft_model": lambda p, n, d=SpecDecoder(verifier, DraftModelDrafter(draft, n_draft, 0.4)): spec_run(d, p, n),
        "transformers_greedy": lambda p, n: hf_generate(model, p, n),
        "transformers_prompt_lookup": lambda p, n: hf_generate(model, p, n, prompt_lookup_num_tokens=10),
        "transformers_assisted": lambda p, n: hf_generate(model, p, n, assistant_model=draft_hf),
    }
    names = list(systems)
    for name in names:  # warm-up: one short run each
        systems[name](prompts[0], 16)
    runs: dict[str, list[list[dict]]] = {k: [] for k in names}
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            say(f"round {r + 1}/{a.rounds}: {name}")
            runs[name].append([systems[name](p, a.tokens) for p in prompts])
    greedy_tokens = [x["tokens"] for x in runs["greedy"][0]]
    hf_tokens = [x["tokens"] for x in runs["transformers_greedy"][0]]
    out = {}
    for name in names:
        ref = None if name == "medusa_typical" else (hf_tokens if name.startswith("transformers") else greedy_tokens)
        out[name] = summarize_system(runs[name], ref)
        out[name]["lossless"] = name != "medusa_typical"
    base = out["greedy"]["decode_tokens_per_s"]["median"]
    hf_base = out["transformers_greedy"]["decode_tokens_per_s"]["median"]
    for name in names:
        ref = hf_base if name.startswith("transformers") else base
        out[name]["speedup_vs_greedy_same_path"] = out[name]["decode_tokens_per_s"]["median"] / ref
    return out


def tree_record(chosen: SpecDecoder, k: int) -> dict:
    """The chosen tree, the cost curve it was chosen from and what it expects."""
    keep = ("tree", "tree_choice", "cost_curve", "expected_tokens_per_step", "tree_depth")
    return {**{key: v for key, v in chosen.info.items() if key in keep}, "verify_tokens": k,
            "note": "t(m)/t(1): verifying m tokens on this path over one plain decode step. On the lean path "
                    "torch's fp32 GEMM with a few rows costs about m GEMVs, which leaves no room for a tree; the "
                    "native small-M GEMM streams each weight once for all m rows, so the tree is re-derived on "
                    "each path"}


def roofline(k: int, accepted: float, heads: int, dtype: str) -> dict:
    """The roofline's predicted speedup of the measured speculation on this host and every catalogue device."""
    from ridgeline.measure import cpu_model
    from ridgeline.roofline import predict, speculative_speedup
    from ridgeline.specs import Speculation, catalogue, host_device

    spec = Speculation(k, min(float(k), accepted), heads)
    devices = dict(catalogue())  # id -> DeviceSpec
    out: dict[str, Any] = {"speculation": spec.to_json(), "devices": {}}
    for role, dev in (("host_catalogue", host_device(cpu_model(), os.cpu_count())), ("probe", _probe())):
        if dev is not None:
            devices.setdefault(dev.id, dev)
            out[role] = dev.id
    for dev_id, dev in devices.items():
        pred = predict(MODEL, dev, "128:128", weights=dtype, acts=dtype, kv=dtype, speculation=spec)
        plain, speedup = speculative_speedup(pred)
        out["devices"][dev_id] = {"predicted_speedup": speedup, "plain_tokens_per_s": plain.decode.tokens_per_s,
                                  "speculative_tokens_per_s": pred.decode.tokens_per_s, "bound": pred.decode.bound}
    return out


def _probe():
    from ridgeline.specs import get_device

    try:
        return get_device("local")
    except RidgelineError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", choices=("lean", "native", "hf"), default="native")
    ap.add_argument("--heads-dir", type=Path, default=user_dir() / "medusa" / f"{MODEL}-heads")
    ap.add_argument("--retrain", action="store_true", help="train even if --heads-dir holds heads")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--sequences", type=int, default=640, help="calibration prompts continued for training")
    ap.add_argument("--generate", type=int, default=128, help="tokens generated per training prompt")
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--prompts", type=int, default=16, help="held-out prompts for accuracy and greedy equality")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128, help="tokens generated per prompt")
    ap.add_argument("--bf16-prompts", type=int, default=16)
    ap.add_argument("--timing-prompts", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--draft-layers", type=int, default=6)
    ap.add_argument("--temperature", type=float, default=0.7, help="Medusa typical acceptance temperature")
    ap.add_argument("--max-verify", type=int, default=16, help="largest verification the tree search considers "
                    "(the native path verifies at most 16 tokens per forward)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-timing", action="store_true", help="stop after greedy equality (accuracy, tree, tokens per "
                    "step; the record stays 'complete': false)")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    before = uptime()
    say(before)
    model, tok = load_model(MODEL, "fp32")
    model.requires_grad_(False)
    max_len = a.prompt_len + a.tokens + 64
    make_verifier(a.path, model, max_len)  # refuse an unavailable path before any work
    folder, manifest = get_heads(model, tok, a)
    training = manifest.get("training", {})
    # Each part is saved as it finishes ("complete": false until the end): a crash late in a long run keeps the rest.
    record: dict[str, Any] = {
        "benchmark": "medusa", "complete": False, "machine": machine_info(), "uptime_before": before,
        "model": MODEL, "path": a.path, "dtype": "fp32", "threads": a.threads,
        "heads": {"dir": record_path(folder), "heads": manifest["heads"], "layers": manifest["layers"],
                  "tied": manifest["tied"], "training": training},
        "settings": vars(a) | {"heads_dir": record_path(folder), "out": record_path(a.out)},
    }
    say("held-out accuracy ...")
    accuracy = heads_accuracy(model, tok, folder, "eval", a.prompts, 32, a.tokens, seed=11)
    record["heldout_accuracy"] = accuracy
    write_json(a.out, record)
    heads, manifest = load_heads(folder, model)
    verifier = make_verifier(a.path, model, max_len)
    a.max_verify = min(a.max_verify, getattr(verifier, "max_verify", a.max_verify))  # native: 16 per forward
    say("verify-cost curve and tree ...")
    curve_prefix = prompt_ids(lambda t: tok(t, add_special_tokens=False).input_ids, a.prompt_len + a.tokens // 2)
    chosen = medusa_decoder(verifier, heads, manifest, curve_prefix, f"auto:{a.max_verify}")
    tree = chosen.drafter.tree
    medusa = lambda acc, v=verifier: medusa_decoder(v, heads, manifest, curve_prefix, tree, acc)  # noqa: E731
    # The acceptance tree: the best tree of --max-verify tokens by the heads' accuracies alone (a flat cost curve).
    # Greedy equality and tokens per step are measured on it, so they test drafting even when this path's verify
    # cost makes the speed-chosen tree small or empty (then Medusa greedy is plain greedy and equality is vacuous).
    rank = manifest["accuracy"]["rank"]
    big_tree = choose_tree(rank, {m: 1.0 for m in range(1, a.max_verify + 1)}).tree
    big = lambda acc, v=verifier: medusa_decoder(v, heads, manifest, curve_prefix, big_tree, acc)  # noqa: E731
    prompts = held_out_prompts(tok, a.prompts, a.prompt_len)
    say(f"greedy equality fp32 (acceptance tree of {big_tree.size} tokens) ...")
    eq32 = equality(lambda: verifier, lambda v: big(Acceptance()), prompts, a.tokens)
    record |= {"impl": chosen.impl, "equality_fp32": eq32, "tree": tree_record(chosen, tree.size),
               "acceptance_tree": {"tree": big_tree.to_json(), "verify_tokens": big_tree.size,
                                   "depth": big_tree.depth, "expected_tokens_per_step": expected_tokens(big_tree, rank),
                                   "note": "the largest tree of --max-verify tokens chosen by the heads' held-out "
                                           "rank accuracies alone; equality and tokens per step use it"}}
    write_json(a.out, record)
    eq16 = None
    if a.bf16_prompts:
        say("greedy equality bf16 ...")
        m16, _ = load_model(MODEL, "bf16")
        h16, man16 = load_heads(folder, m16)
        v16 = make_verifier(a.path, m16, max_len)
        eq16 = equality(lambda: v16, lambda v: medusa_decoder(v, h16, man16, curve_prefix, big_tree, Acceptance()),
                        prompts[:a.bf16_prompts], a.tokens)
        del m16, h16, v16
    record["equality_bf16"] = eq16
    write_json(a.out, record)
    if a.no_timing:
        record |= {"uptime_after": uptime(), "timing": "skipped (--no-timing)",
                   "tokens_per_step": {"medusa_greedy": eq32["tokens_per_step"], "counts_base_token": True,
                                       "tree": "acceptance_tree"}}
        write_json(a.out, record)
        say(f"acceptance tree {big_tree.size} verified; tokens per step {eq32['tokens_per_step']:.2f}; fp32 identical "
            f"{eq32['identical']}/{eq32['prompts']}; wrote {a.out}")
        return
    say("decode timing ...")
    speed = timing(a, model, verifier, medusa, big, prompts[:a.timing_prompts])
    k, acc_mean = big_tree.size, eq32["tokens_per_step"]
    after = uptime()
    record |= {
        "uptime_after": after, "complete": True,
        "tokens_per_step": {"medusa_greedy": acc_mean, "counts_base_token": True,
                            "accepted_drafts_per_step": acc_mean - 1, "tree": "acceptance_tree",
                            "over": f"{a.prompts} held-out prompts x {a.tokens} tokens"},
        "decode": speed, "roofline": roofline(k, acc_mean, big_tree.depth, "fp32"),
    }
    sp = max(speed[m]["speedup_vs_greedy_same_path"] for m in ("medusa_greedy", "medusa_greedy_acceptance_tree"))
    record["targets"] = {"tokens_per_step_ge_2": acc_mean >= 2.0, "speedup_ge_1_5": sp >= 1.5,
                         "ahead_of_prompt_lookup": sp > speed["prompt_lookup"]["speedup_vs_greedy_same_path"]}
    write_json(a.out, record)
    for name, r in speed.items():
        tps = r["decode_tokens_per_s"]
        say(f"{name:28s} {tps['median']:6.1f} tok/s ({tps['min']:.1f}-{tps['max']:.1f})  x{r['speedup_vs_greedy_same_path']:.2f}"
            f"  tokens/step {r['tokens_per_step'] or 1:.2f}")
    say(f"tree {tree.to_json()} ({k} verified); tokens per step {acc_mean:.2f}; fp32 identical "
        f"{eq32['identical']}/{eq32['prompts']}; wrote {a.out}")
    say(after)


if __name__ == "__main__":
    main()
