"""Run lm-evaluation-harness's task library on any ridgeline model: an `lm_eval.api.model.LM` over `scoring`.

lm-eval is an optional extra, so it is imported only when `make_lm` is called:

    lm = make_lm(model, tokenizer)
    lm_eval.simple_evaluate(model=lm, tasks=["arc_easy"])
"""

from __future__ import annotations

import functools
from typing import Any

from ridgeline.errors import RidgelineError
from ridgeline.eval import scoring

#: lm-eval's default generation budget (HFLM.max_gen_toks)
DEFAULT_MAX_GEN_TOKS = 256


def make_lm(model: Any, tokenizer: Any, batch_size: int = 8, max_length: int | None = None) -> Any:
    """An lm-eval `LM` scoring with ridgeline's own lm-eval-compatible scorer (needs lm-eval installed)."""
    return _adapter_class()(model, tokenizer, batch_size, max_length)


@functools.cache
def _adapter_class() -> type:
    try:
        from lm_eval.api.model import LM
    except ImportError:
        raise RidgelineError("the lm-eval adapter needs lm-eval: pip install lm-eval (ridgeline's own "
                             "scorer in ridgeline.eval.multiple_choice does not)") from None

    class RidgelineLM(LM):
        """lm-eval requests answered by `ridgeline.eval.scoring` and a greedy decoder."""

        def __init__(self, model: Any, tokenizer: Any, batch_size: int, max_length: int | None) -> None:
            super().__init__()
            self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
            self.max_length = max_length or scoring.context_length(model, tokenizer)

        def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            """(log-prob, is_greedy) of each (context, continuation) request."""
            return scoring.loglikelihood(self.model, self.tokenizer, [r.args[:2] for r in requests], self.batch_size,
                                         max_length=self.max_length)

        def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
            """Total log-likelihood of each text in disjoint windows of the model's context."""
            return scoring.loglikelihood_rolling(self.model, self.tokenizer, [r.args[0] for r in requests],
                                                 self.max_length, self.batch_size)

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
            """Greedy continuation of each context, cut at the first stop sequence or EOS."""
            return [generate_greedy(self.model, self.tokenizer, ctx, **_generation_args(kwargs),
                                    max_length=self.max_length) for ctx, kwargs in (r.args[:2] for r in requests)]

    return RidgelineLM


def _generation_args(kwargs: dict | None) -> dict:
    """lm-eval's generation kwargs -> until and max_gen_toks; sampling is refused (greedy only)."""
    kwargs = dict(kwargs or {})
    until = kwargs.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    budget = DEFAULT_MAX_GEN_TOKS
    for alias in ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens"):
        if kwargs.get(alias) is not None:
            budget = int(kwargs[alias])
            break
    if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
        raise RidgelineError("the ridgeline lm-eval adapter decodes greedily only; got do_sample/temperature "
                             f"{kwargs.get('do_sample')}/{kwargs.get('temperature')}")
    return {"until": until, "max_gen_toks": budget}


def generate_greedy(model: Any, tokenizer: Any, context: str, until: list[str] | None = None,
                    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, max_length: int | None = None) -> str:
    """Greedy text after `context`, stopped at EOS, at a stop string or after `max_gen_toks` tokens."""
    import torch

    limit = max_length or scoring.context_length(model, tokenizer)
    if max_gen_toks >= limit:
        raise RidgelineError(f"max_gen_toks ({max_gen_toks}) must be below the model's context ({limit})")
    eos = tokenizer.eos_token_id
    # as lm-eval: the EOS string is a stop sequence too, and the context keeps room for the answer
    stops = [s for s in (until or []) if s] + ([tokenizer.decode(eos)] if eos is not None else [])
    ids = scoring.encode(tokenizer, context)[-(limit - max_gen_toks):]
    out: list[int] = []
    with torch.inference_mode(), scoring.eval_mode(model):
        for token in _greedy_tokens(model, ids, max_gen_toks):
            out.append(token)
            if token == eos or any(s in tokenizer.decode(out) for s in stops):
                break
    text = tokenizer.decode(out, skip_special_tokens=True)
    for s in stops:
        text = text.split(s)[0]
    return text


def _greedy_tokens(model: Any, ids: list[int], n: int):
    """Yield up to n argmax tokens; Hugging Face models reuse their KV cache, others recompute."""
    import torch

    device = scoring.model_device(model)
    seq = torch.tensor([ids], dtype=torch.long, device=device)
    cached = hasattr(model, "generate")  # a transformers model: pass its cache along
    past, step = None, seq
    for _ in range(n):
        mask = torch.ones_like(seq)
        if cached:
            out = model(step, attention_mask=mask, cache=past, use_cache=True)
            past = out.past_key_values
        else:
            out = model(seq, attention_mask=mask)
        token = int(out.logits[0, -1].argmax())
        yield token
        step = torch.tensor([[token]], dtype=torch.long, device=device)
        seq = torch.cat([seq, step], dim=1)
