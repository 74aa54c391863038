"""What the compressors need from a causal LM: per-token self-information and continuation scores.

Self-information of token t is -log p(x_t | x_<t) in nats under the model, fp32 log-softmax. The prompt is
prefixed with the prefix token (BOS, else EOS) so its first token is scored too, as perplexity does. The LM
head runs on chunks of positions so a long prompt never holds [n, vocab] logits at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ridgeline.errors import RidgelineError

_HEAD_CHUNK = 256  # positions per lm_head call


def prefix_id(tokenizer: Any) -> int:
    """BOS, else EOS: what an empty context becomes (lm-eval's convention)."""
    for tid in (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return int(tid)
    raise RidgelineError("the tokenizer has neither a BOS nor an EOS token; one is needed as the prefix token")


def context_limit(model: Any) -> int | None:
    """The model's positions (max_position_embeddings), or None when the config does not say."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value is not None else None


def check_fits(model: Any, n: int, what: str = "the prompt") -> None:
    """Refuse `n` tokens (the prefix token included) beyond the model's context."""
    limit = context_limit(model)
    if limit is not None and n > limit:
        raise RidgelineError(f"{what} has {n} tokens with the prefix token, longer than the model's context of "
                             f"{limit}; shorten it to at most {limit - 1} tokens")


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def hidden_states(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden states [1, T, h] (final norm applied) for ids [1, T], no cache."""
    return model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state


def token_nll(model: Any, ids: torch.Tensor, hidden: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
    """-log p(ids[t] | ids[<t]) for t >= max(1, start), float32 [T - max(1, start)], from one forward."""
    if hidden is None:
        hidden = hidden_states(model, ids)
    head = model.get_output_embeddings()
    first = max(1, start)
    out = []
    for s in range(first, ids.shape[1], _HEAD_CHUNK):
        e = min(s + _HEAD_CHUNK, ids.shape[1])
        logits = head(hidden[:, s - 1:e - 1]).float()
        out.append(F.cross_entropy(logits[0], ids[0, s:e], reduction="none"))
    return torch.cat(out) if out else torch.zeros(0)


@torch.inference_mode()
def self_information(model: Any, tokenizer: Any, ids: Sequence[int]) -> np.ndarray:
    """-log p(token | everything before it) in nats for every token of `ids` (BOS/EOS prefix), float64 [n]."""
    ids = [prefix_id(tokenizer)] + [int(i) for i in ids]
    check_fits(model, len(ids))
    x = torch.tensor([ids], dtype=torch.long, device=_device(model))
    with _eval(model):
        return token_nll(model, x).double().cpu().numpy()


class _eval:
    """Dropout off while scoring, then the mode as it was."""

    def __init__(self, model: Any) -> None:
        self.model, self.was = model, bool(getattr(model, "training", False))

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was)


def cache_kwargs(model: Any, cache: Any) -> dict:
    """The cache keyword this transformers version takes (`cache` from 5.24, `past_key_values` before)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def crop(cache: Any, length: int) -> None:
    """Drop cached tokens past `length` (a negative crop: valid in every transformers 4.4x-5.x)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)
