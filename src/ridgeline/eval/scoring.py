"""Log-likelihood scoring with lm-evaluation-harness semantics, without needing lm-eval.

Two request kinds, as lm-eval's `HFLM` defines them (lm-eval 0.4.13):

- `loglikelihood`: (context, continuation) -> (sum of continuation-token log-probs, is_greedy).
  Context and continuation are tokenized jointly (trailing spaces of the context move to the
  continuation; the continuation tokens are what enc(context + continuation) adds after enc(context)),
  an empty context becomes the prefix token (BOS, else EOS), and inputs longer than the model's
  context are cut from the left.
- `loglikelihood_rolling`: a whole text, scored in disjoint windows of the model's context, the first
  one conditioned on the prefix token only.

Any model works that is called like a Hugging Face causal LM: `model(input_ids, attention_mask=...)`
returns an object with `.logits` of shape [batch, seq, vocab]; the tokenizer is a Hugging Face one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from ridgeline.errors import RidgelineError
from ridgeline.weights import nonfinite_message

#: lm-eval's fallback context length when neither the config nor the tokenizer gives one
DEFAULT_MAX_LENGTH = 2048
#: tokenizers report this (or more) as model_max_length when they have no real limit
_TOKENIZER_INFINITY = 1000000000000000019884624838656

Progress = Callable[[int, int], None]  # (done, total)
Encoded = tuple[list[int], list[int]]  # (context tokens, continuation tokens)


class CausalLM(Protocol):
    """What the scorer needs from a model: HF-style call returning `.logits` [batch, seq, vocab]."""

    def __call__(self, input_ids: Any, attention_mask: Any = None) -> Any: ...


def prefix_token_id(tokenizer: Any) -> int:
    """The token an empty context becomes: BOS when the tokenizer has one, else EOS."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise RidgelineError("the tokenizer has neither a BOS nor an EOS token; one is needed as the prefix token")


def context_length(model: Any, tokenizer: Any = None) -> int:
    """The model's context in tokens, found as lm-eval finds it (config, then tokenizer, then 2048)."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit < _TOKENIZER_INFINITY:
        return int(limit)
    return DEFAULT_MAX_LENGTH


def encode(tokenizer: Any, text: str, add_special_tokens: bool | None = None) -> list[int]:
    """Token ids of `text`; with `add_special_tokens=None` the tokenizer's default, except that a text
    already starting with the prefix token's string gets no second one (lm-eval's `tok_encode`)."""
    kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
    if add_special_tokens is None and text.startswith(tokenizer.decode(prefix_token_id(tokenizer))):
        kwargs["add_special_tokens"] = False
    return list(tokenizer.encode(text, **kwargs))


def encode_pair(tokenizer: Any, context: str, continuation: str) -> Encoded:
    """(context tokens, continuation tokens) of one request, tokenized jointly as lm-eval does."""
    if context == "":
        cont = encode(tokenizer, continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        # a continuation that already starts with the prefix token conditions on that token itself
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    # a trailing space belongs to the next word: BPE vocabularies glue spaces to the following token
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    whole = encode(tokenizer, stripped + continuation)
    ctx = encode(tokenizer, stripped)
    return ctx, whole[len(ctx):]


def model_device(model: Any) -> Any:
    """The device of the model's parameters (CPU for a model without any)."""
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


def _model_input(ctx: list[int], cont: list[int], limit: int) -> list[int]:
    """The tokens fed to the model: context + continuation without its last token, cut from the left
    so that at most `limit` remain (the continuation itself is never cut)."""
    return (ctx + cont)[-(limit + 1):][:-1]


def score_encoded(model: CausalLM, encoded: Sequence[Encoded], limit: int, batch_size: int = 8,
                  progress: Progress | None = None) -> list[tuple[float, bool]]:
    """(log-prob of the continuation tokens, is_greedy) for pre-tokenized (context, continuation) pairs."""
    import torch

    if batch_size < 1:
        raise RidgelineError(f"batch size must be >= 1, got {batch_size}")
    for i, (ctx, cont) in enumerate(encoded):
        if not ctx or not cont:
            raise RidgelineError(f"request {i} has an empty {'context' if not ctx else 'continuation'} after "
                                 "tokenization; every request needs at least one token of each")
        if len(cont) > limit:
            raise RidgelineError(f"request {i} has a continuation of {len(cont)} tokens, longer than the model's "
                                 f"context of {limit}; shorten it or score it with loglikelihood_rolling")
    # requests with the same model input share one row (e.g. single-token answers " A".." D" of MMLU)
    rows: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, cont) in enumerate(encoded):
        rows.setdefault(tuple(_model_input(ctx, cont, limit)), []).append(i)
    # longest first, as lm-eval sorts: neighbours in a batch pad little, and memory peaks at once
    order = sorted(rows, key=lambda toks: (-len(toks), toks))
    results: list[tuple[float, bool] | None] = [None] * len(encoded)
    done, device = 0, model_device(model)
    with torch.inference_mode(), eval_mode(model):
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            logits = _forward(model, batch, device)
            for row, toks in enumerate(batch):
                for i in rows[toks]:
                    results[i] = _continuation_score(logits[row], len(toks), encoded[i][1])
                    if not math.isfinite(results[i][0]):  # a NaN score is never a result: stop, naming where
                        raise RidgelineError(nonfinite_message(model, torch.tensor([toks], device=device),
                                                               f"request {i}"))
                    done += 1
            if progress is not None:
                progress(done, len(encoded))
    return results  # type: ignore[return-value]


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Dropout off while scoring (a model fresh from training would score noise), then as it was."""
    training = bool(getattr(model, "training", False)) and callable(getattr(model, "train", None))
    if training:
        model.eval()
    try:
        yield
    finally:
        if training:
            model.train()


def _forward(model: CausalLM, batch: Sequence[tuple[int, ...]], device: Any) -> list[Any]:
    """Logits of a right-padded batch, one [seq, vocab] tensor per row (padding cut off)."""
    import torch

    width = max(len(t) for t in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, toks in enumerate(batch):
        ids[row, :len(toks)] = torch.tensor(toks, dtype=torch.long)
        mask[row, :len(toks)] = 1
    logits = model(ids.to(device), attention_mask=mask.to(device)).logits
    return [logits[row, :len(toks)] for row, toks in enumerate(batch)]


def _continuation_score(logits: Any, inplen: int, cont: list[int]) -> tuple[float, bool]:
    """Sum of float32 log-probs of `cont` at the last len(cont) positions, and whether each is the argmax."""
    import torch

    logprobs = torch.log_softmax(logits[inplen - len(cont):inplen].float(), dim=-1)
    target = torch.tensor(cont, dtype=torch.long, device=logprobs.device)
    greedy = bool((logprobs.argmax(dim=-1) == target).all())
    return float(logprobs.gather(1, target[:, None]).sum()), greedy


def loglikelihood(model: CausalLM, tokenizer: Any, requests: Sequence[tuple[str, str]], batch_size: int = 8,
                  progress: Progress | None = None, max_length: int | None = None) -> list[tuple[float, bool]]:
    """(sum of continuation log-probs, is_greedy) for each (context, continuation), as lm-eval scores them;
    inputs longer than `max_length` (default: the model's context) lose their oldest tokens."""
    encoded = [encode_pair(tokenizer, ctx, cont) for ctx, cont in requests]
    limit = context_length(model, tokenizer) if max_length is None else int(max_length)
    return score_encoded(model, encoded, limit, batch_size, progress)


def rolling_windows(tokens: Sequence[int], prefix_token: int, window: int) -> list[Encoded]:
    """Disjoint (context, continuation) windows covering `tokens`: each scores up to `window` new tokens;
    the first conditions on `prefix_token`, later ones on the tokens just before them (full windows)."""
    if window < 1:
        raise RidgelineError(f"window must be at least 1 token, got {window}")
    tokens = list(tokens)
    out: list[Encoded] = []
    for start in range(0, len(tokens), window):
        end = min(start + window, len(tokens))
        # later windows look back so that context + continuation fill exactly window + 1 tokens
        ctx = [prefix_token] if start == 0 else tokens[end - window - 1:start]
        out.append((ctx, tokens[start:end]))
    return out


def loglikelihood_rolling(model: CausalLM, tokenizer: Any, texts: Sequence[str], max_length: int | None = None,
                          batch_size: int = 8, progress: Progress | None = None) -> list[float]:
    """Total log-likelihood of each text in disjoint windows of `max_length` tokens (lm-eval's rolling rule)."""
    limit = context_length(model, tokenizer) if max_length is None else int(max_length)
    prefix = prefix_token_id(tokenizer)
    windows: list[Encoded] = []
    owners: list[int] = []
    for i, text in enumerate(texts):
        for w in rolling_windows(encode(tokenizer, text), prefix, limit):
            windows.append(w)
            owners.append(i)
    scores = score_encoded(model, windows, limit, batch_size, progress)
    totals = [0.0] * len(texts)
    for i, (ll, _) in zip(owners, scores):
        totals[i] += ll
    return totals
