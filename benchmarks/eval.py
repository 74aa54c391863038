"""Batched perplexity of the bundled model on 50k held-out tokens: time and tokens/s.

Target (benchmark, not test): a few minutes on 2 cores. Writes benchmarks/results/eval.json.
Run: .venv/bin/python benchmarks/eval.py [--tokens 50000] [--context 1024] [--stride 512] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import machine_info, portable  # noqa: E402

from ridgeline.corpus import corpus_info, load_corpus  # noqa: E402
from ridgeline.eval.perplexity import PerplexityConfig, perplexity  # noqa: E402
from ridgeline.io import write_json  # noqa: E402
from ridgeline.loader import load_model  # noqa: E402


def main() -> None:
    """Load, evaluate once (the text is long enough that one pass is the measurement), write the record."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=50_000)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--stride", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--dtype", default="fp32")
    args = ap.parse_args()
    import torch

    t0 = time.perf_counter()
    model, tok = load_model("smollm2-135m", args.dtype)
    load_s = time.perf_counter() - t0
    text = load_corpus("eval").text
    cfg = PerplexityConfig(context=args.context, stride=args.stride, batch_size=args.batch_size,
                           max_tokens=args.tokens)
    t0 = time.perf_counter()
    result = perplexity(model, tok, text, cfg)
    wall = time.perf_counter() - t0
    forward_tokens = sum(end - begin for begin, end, _ in _plan(result))
    record = {
        "benchmark": "eval", "model": "smollm2-135m (bundled)", "dtype": args.dtype,
        "threads": torch.get_num_threads(), "corpus": corpus_info(), "settings": vars(args),
        "result": result.to_json(), "load_s": load_s, "wall_s": wall,
        "scored_tokens_per_s": result.tokens / wall, "forward_tokens": forward_tokens,
        "forward_tokens_per_s": forward_tokens / wall,
        "note": "one pass over the text (each window is a forward of up to `context` tokens; scored tokens = "
                "the text's tokens, each once); the machine is a shared 2-vCPU VM, so repeat the run to see spread",
        "machine": machine_info(),
    }
    out = write_json(Path(__file__).parent / "results" / "eval.json", portable(record))
    print(f"{result.tokens} tokens scored in {wall:.1f} s ({result.tokens / wall:.0f} tok/s); token ppl "
          f"{result.token_perplexity:.3f}, word ppl {result.word_perplexity:.2f}, bpb {result.bits_per_byte:.4f} -> {out}")


def _plan(result) -> list[tuple[int, int, int]]:
    from ridgeline.eval.perplexity import window_plan

    s = result.settings
    return window_plan(result.tokens + 1, s["context"], s["stride"])


if __name__ == "__main__":
    main()
