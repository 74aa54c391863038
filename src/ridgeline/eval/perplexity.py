"""Token perplexity of a causal LM over a long text, with rolling windows and a stride.

The text is tokenized once (no special tokens) and prefixed with BOS (EOS when the tokenizer has no BOS)
so that its first token is predicted too, as lm-eval's `loglikelihood_rolling` does. Every token after
the prefix is then scored exactly once:

- a window covers ids [begin, end): the model reads ids[begin:end-1] (at most `context` tokens) and
  predicts ids[begin+1:end]; of those it scores only the last `n_scored`, the ones no earlier window scored;
- the first window scores all it predicts; each later window scores the next `stride` tokens and reaches
  back to give them `context - stride + 1` or more tokens of context (stride == context: disjoint inputs,
  one token of context, lm-eval's rolling windows; smaller strides: more context, more compute);
- the last window is right-aligned to the end of the text with a full context, as lm-eval does, so every
  window has the same length and batches need no padding.

These are exactly lm-eval's `get_rolling_token_windows(max_seq_len=context, context_len=context-stride+1)`,
and for a text that fits in one window the NLL equals HF's `model(ids, labels=ids).loss * (len(ids) - 1)`.
Token perplexity depends on the tokenizer; word perplexity and bits per byte divide the same NLL by the
words and UTF-8 bytes of the scored text (the text as capped by `max_tokens`), so they compare across
tokenizers (when the first token is scored, i.e. with the BOS prefix).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ridgeline.errors import RidgelineError
from ridgeline.weights import nonfinite_message

Progress = Callable[[int, int], None]  # (windows done, total)


@dataclass(frozen=True)
class PerplexityConfig:
    """Window length (`context`), new tokens scored per window (`stride`), windows per forward, token cap."""

    context: int = 1024
    stride: int = 512
    batch_size: int = 4
    max_tokens: int | None = None  # score only the first max_tokens tokens of the text
    add_bos: bool = True  # prefix BOS (or EOS) so the text's first token is scored too
    kv: str | None = None  # KV format: each window streams through a fresh cache of it (KIVI, Harmonia, BFP)
    chunk: int = 128  # tokens per forward when streaming through a KV cache

    def __post_init__(self) -> None:
        if self.chunk < 1:
            raise RidgelineError(f"chunk must be >= 1 token, got {self.chunk}")
        if self.context < 1:
            raise RidgelineError(f"context must be >= 1 token, got {self.context}")
        if not 1 <= self.stride <= self.context:
            raise RidgelineError(f"stride must be between 1 and the context {self.context}, got {self.stride}")
        if self.batch_size < 1:
            raise RidgelineError(f"batch size must be >= 1, got {self.batch_size}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise RidgelineError(f"max_tokens must be >= 1 (or None for the whole text), got {self.max_tokens}")


@dataclass(frozen=True)
class PerplexityResult:
    """Summed NLL over the scored tokens, and the token, word and byte perplexities it gives."""

    tokens: int  # tokens scored
    nll: float  # total negative log-likelihood, nats
    words: int  # whitespace-separated words of the scored text
    bytes: int  # UTF-8 bytes of the scored text
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def token_perplexity(self) -> float:
        """exp(NLL / tokens): depends on the tokenizer."""
        return math.exp(self.nll / self.tokens)

    @property
    def word_perplexity(self) -> float:
        """exp(NLL / words), lm-eval's word_perplexity."""
        return math.exp(self.nll / self.words)

    @property
    def bits_per_byte(self) -> float:
        """NLL / (bytes * ln 2)."""
        return self.nll / (self.bytes * math.log(2))

    @property
    def byte_perplexity(self) -> float:
        """exp(NLL / bytes)."""
        return math.exp(self.nll / self.bytes)

    def to_json(self) -> dict[str, Any]:
        """Counts, NLL, every perplexity and the settings, for records."""
        return {**asdict(self), "nll_per_token": self.nll / self.tokens, "token_perplexity": self.token_perplexity,
                "word_perplexity": self.word_perplexity, "bits_per_byte": self.bits_per_byte,
                "byte_perplexity": self.byte_perplexity}


def window_plan(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (begin, end, n_scored) over `n_tokens` ids: every id after the first is scored exactly once."""
    if not 1 <= stride <= context:
        raise RidgelineError(f"stride must be between 1 and the context {context}, got {stride}")
    plan, scored_to = [], 1  # ids [1, scored_to) are scored; id 0 has nothing before it
    while scored_to < n_tokens:
        end = min(scored_to + (context if scored_to == 1 else stride), n_tokens)
        plan.append((max(0, end - context - 1), end, end - scored_to))
        scored_to = end
    return plan


def perplexity(model: Any, tokenizer: Any, text: str, config: PerplexityConfig = PerplexityConfig(),
               progress: Progress | None = None) -> PerplexityResult:
    """Token perplexity (and word/byte perplexity) of `text` under a transformers causal LM."""
    import torch

    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and config.context > limit:
        raise RidgelineError(f"context {config.context} is longer than the model's limit {limit}")
    ids, scored_text = _tokenize(tokenizer, text, config.max_tokens)
    prefix = _prefix(tokenizer) if config.add_bos else None
    if prefix is not None:
        ids = [prefix[1]] + ids
    if len(ids) < 2:
        raise RidgelineError("the text is a single token and nothing precedes it; pass a longer text")

    plan = window_plan(len(ids), config.context, config.stride)
    all_ids = torch.tensor(ids, dtype=torch.long, device=next(model.parameters()).device)
    keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    nll = 0.0
    if progress is not None:
        progress(0, len(plan))  # the task's size, before any work
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if config.kv is not None:
                nll = _streamed_nll(model, all_ids, plan, config, progress)
            else:
                for start in range(0, len(plan), config.batch_size):
                    nll += _batch_nll(model, all_ids, plan[start:start + config.batch_size], keep)
                    if progress is not None:
                        progress(min(start + config.batch_size, len(plan)), len(plan))
    finally:
        model.train(was_training)

    settings = {"context": config.context, "stride": config.stride, "batch_size": config.batch_size,
                "kv": config.kv, "chunk": config.chunk if config.kv else None,
                "windows": len(plan), "max_tokens": config.max_tokens,
                "prefix": prefix[0] if prefix else None, "first_token_scored": prefix is not None,
                "text_tokens": len(ids) - (prefix is not None),
                # which published convention the number follows (token ppl is comparable only within one)
                "convention": f"lm-eval rolling windows, max_length {config.context}, "
                              f"context_len {config.context - config.stride + 1}"}
    return PerplexityResult(tokens=len(ids) - 1, nll=nll, words=len(scored_text.split()),
                            bytes=len(scored_text.encode("utf-8")), settings=settings)


def _batch_nll(model: Any, ids: Any, batch: list[tuple[int, int, int]], keep_arg: bool) -> float:
    """Summed NLL (nats) of the scored tokens of a few windows, in one forward."""
    import torch
    import torch.nn.functional as F

    # every window has the same length (see the module docstring), so they stack without padding
    inputs = torch.stack([ids[b:e - 1] for b, e, _ in batch])
    most = max(k for _, _, k in batch)
    kwargs = {"logits_to_keep": most} if keep_arg else {}  # the lm head runs only where tokens are scored
    logits = model(input_ids=inputs, use_cache=False, **kwargs).logits[:, -most:]
    # window (b, e, k) scores its last k ids, predicted by its last k logits; fp32 log-softmax
    losses = [F.cross_entropy(logits[row, -k:].float(), ids[e - k:e], reduction="none")
              for row, (_, e, k) in enumerate(batch)]
    total = torch.cat(losses).double().sum().item()
    if not math.isfinite(total):  # stop at once, naming where: a NaN perplexity is never a result
        row = next(i for i, loss in enumerate(losses) if not bool(torch.isfinite(loss).all()))
        raise RidgelineError(nonfinite_message(model, inputs[row:row + 1], "perplexity",
                                               position_offset=batch[row][0]))
    return total


def _streamed_nll(model: Any, ids: Any, plan: list[tuple[int, int, int]], config: PerplexityConfig,
                  progress: Progress | None) -> float:
    """Summed NLL of the windows, each streamed chunk by chunk through a fresh cache of format `config.kv`:
    later chunks read what the cache kept of earlier ones, as decode steps do."""
    from transformers import DynamicCache

    from ridgeline.kv import make_kv_cache, stream_losses

    nll = 0.0
    for i, (b, e, k) in enumerate(plan):
        cache = make_kv_cache(config.kv, model) or DynamicCache(config=model.config)
        nll += stream_losses(model, ids[None, b:e], cache, config.chunk)[-k:].sum().item()
        if not math.isfinite(nll):
            raise RidgelineError(nonfinite_message(model, ids[None, b:e - 1], f"perplexity through the {config.kv} "
                                                   "KV cache", position_offset=b))
        if progress is not None:
            progress(i + 1, len(plan))
    return nll


def _prefix(tokenizer: Any) -> tuple[str, int] | None:
    """("bos", id) or ("eos", id) to put before the text, or None when the tokenizer has neither."""
    for name in ("bos", "eos"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            return name, int(token_id)
    return None


def _tokenize(tokenizer: Any, text: str, max_tokens: int | None) -> tuple[list[int], str]:
    """Token ids of `text` (no special tokens), capped to `max_tokens`, and the text those ids cover."""
    if not text.strip():
        raise RidgelineError("the text to score is empty; pass some text")
    # with a cap, a long text is tokenized only as far as needed: a prefix with a margin, so its first
    # max_tokens ids are those of the whole text (BPE merges never reach back that far)
    head = text[:8 * max_tokens + 4096] if max_tokens is not None else text
    ids, offsets = _encode(tokenizer, head)
    if len(head) < len(text) and len(ids) < max_tokens + 64:
        ids, offsets = _encode(tokenizer, text)  # the prefix was not enough (very long tokens): take it all
    if max_tokens is None or len(ids) <= max_tokens:
        return ids, text
    cut = offsets[max_tokens - 1][1] if offsets else len(tokenizer.decode(ids[:max_tokens]))
    return ids[:max_tokens], text[:cut]


def _encode(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    kwargs = {"add_special_tokens": False, "verbose": False}  # verbose=False: no "longer than the maximum" warning
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, return_offsets_mapping=True, **kwargs)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    return list(tokenizer(text, **kwargs)["input_ids"]), None
