"""MHA -> GQA conversion with uptraining, measured: perplexity of the original, the mean-pooled model before
training and after uptraining on calibration text, and the KV bytes each keeps per token (GQA, Ainslie et al.)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ridgeline.io import atomic_folder
from ridgeline.train.uptrain import UptrainConfig, uptrain

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class GQAReport:
    """One conversion: the perplexity and KV bytes/token of each stage, and the uptraining run."""

    rows: list[dict]  # stage, kv_heads, kv_bytes_per_token, ppl
    uptrain: dict  # steps, tokens_seen, seconds, first/last loss, optimizer, interrupted
    eval_settings: dict


def _ppl(model: Any, tokenizer: Any, text: str, context: int, max_tokens: int) -> float:
    from ridgeline.eval import PerplexityConfig, perplexity

    cfg = PerplexityConfig(context=context, stride=context // 2, batch_size=4, max_tokens=max_tokens)
    return perplexity(model, tokenizer, text, cfg).to_json()["token_perplexity"]


MAX_EVAL_TOKENS = 1 << 22


def check_gqa_run(spec: Any, groups: int, config: UptrainConfig, context: int, eval_tokens: int) -> None:
    """Before any model loads: K/V heads that divide the query heads, windows inside the model's positions, and
    sizes within ridgeline's limits (`spec`: the model's ModelSpec, None for a hub id)."""
    from ridgeline.errors import RidgelineError

    if not 1 <= eval_tokens <= MAX_EVAL_TOKENS:
        raise RidgelineError(f"--eval-tokens must be from 1 to {MAX_EVAL_TOKENS}, got {eval_tokens}")
    if context < 2:
        raise RidgelineError(f"--context must be >= 2 tokens, got {context}")
    if spec is None:
        return
    try:
        spec.with_kv_heads(groups)
    except RidgelineError as exc:
        raise RidgelineError(f"--kv-heads: {exc}") from None
    for option, n in (("--context", context), ("--seq-len", config.seq_len)):
        if spec.max_position is not None and n > spec.max_position:
            raise RidgelineError(f"{option} {n} is longer than {spec.name}'s {spec.max_position} positions")


def convert_to_gqa(model: Any, tokenizer: Any, groups: int, config: UptrainConfig, context: int = 512,
                   eval_tokens: int = 4096, progress: Progress | None = None) -> GQAReport:
    """Pool `model`'s K/V heads to `groups` (in place), uptrain on the calibration split, report each stage."""
    import torch

    from ridgeline.arch import check_groups, kv_bytes_per_token, pool_kv_heads
    from ridgeline.corpus import load_corpus

    check_groups(model, groups)  # before the first (slow) stage

    held_out = load_corpus("eval").text
    elem = next(model.parameters()).element_size()
    stage = lambda name: progress(name, 0, 1) if progress else None
    rows = []

    def row(name: str) -> None:
        rows.append({"stage": name, "kv_heads": model.config.num_key_value_heads,
                     "kv_bytes_per_token": kv_bytes_per_token(model.config, elem),
                     "ppl": _ppl(model, tokenizer, held_out, context, eval_tokens)})

    stage("perplexity of the original")
    row("original")
    pool_kv_heads(model, groups)
    stage("perplexity after mean-pooling")
    row("pooled")
    calib = tokenizer(load_corpus("calib").text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    report = (lambda step, total, loss: progress(f"uptraining (loss {loss:.3f})", step, total)) if progress else None
    result = uptrain(model, calib.to(torch.long), config, progress=report)
    stage("perplexity after uptraining")
    row("uptrained")
    up = {"optimizer": config.optimizer, "steps": result.steps_done, "steps_asked": config.steps,
          "tokens_seen": result.tokens_seen, "seconds": result.seconds, "lr": config.lr,
          "seq_len": config.seq_len, "batch_size": config.batch_size, "train": config.train,
          "first_loss": result.losses[0] if result.losses else None,
          "last_loss": result.losses[-1] if result.losses else None, "interrupted": result.interrupted}
    return GQAReport(rows, up, {"context": context, "stride": context // 2, "eval_tokens": eval_tokens,
                                "eval_text": "held-out split", "train_text": "calibration split"})


def save_model(model: Any, tokenizer: Any, out: str | os.PathLike) -> Path:
    """Save a transformers model and tokenizer as a folder, written beside `out` and renamed into place."""
    from ridgeline.loader import quiet_transformers

    out = Path(out)
    with atomic_folder(out, kind="model") as tmp, quiet_transformers():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out
