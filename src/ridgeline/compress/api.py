"""`compress`: one call for every method — a prompt and a rate (or token budget) in, the kept tokens out.

Methods are small frozen configs (torchao style); a string names the default config of a method:

| name | config | what scores a token |
|---|---|---|
| truncate | `Truncate()` | position: the last B tokens are kept (keep-most-recent) |
| random | `RandomDrop(seed)` | a seeded uniform draw |
| selective | `SelectiveContext(unit)` | the target model's own -log p(token | prefix), aggregated to units |
| lingua | `LLMLingua(segment, coarse_factor)` | -log p given the prompt as compressed so far (see lingua.py) |
| learned | `Learned(scorer)` | a keep/drop classifier on the first layers (trained on lingua's labels) |
| scrl | `SCRL(scorer)` | the same classifier fine-tuned with self-critical policy gradient |

Every method but truncate keeps protected tokens and meets the budget controller's split over instruction /
context / question parts (`Parts`, or `instruction=` / `question=` text around a text prompt); truncate
keeps the last B tokens whatever they are. The result counts in the target model's tokens (see prompt.py):
`rate` = original tokens / kept tokens, exact. `compressor_s` is the method's own wall time (scoring and
selection; the prompt's tokenization, needed with or without compression, is not in it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union

import numpy as np

from ridgeline.compress.budget import Parts, part_budgets, resolve_budget, select
from ridgeline.compress.prompt import Prompt, encode_prompt
from ridgeline.compress.units import check_protect, protected_mask, unit_ranges
from ridgeline.errors import RidgelineError

_STRUCTURE = ("newline", "speaker")  # what a play's text needs to stay readable


@dataclass(frozen=True)
class Truncate:
    """Keep the most recent B tokens (the baseline every method must beat)."""

    name = "truncate"


@dataclass(frozen=True)
class RandomDrop:
    """Keep B tokens drawn uniformly without replacement (seeded), through the same controller as the others."""

    seed: int = 0
    unit: str = "token"
    protect: tuple[str, ...] = ()
    name = "random"


@dataclass(frozen=True)
class SelectiveContext:
    """Selective Context (Li et al. 2023): drop the units with the lowest mean self-information under the model."""

    unit: str = "word"
    protect: tuple[str, ...] = ()
    name = "selective"


@dataclass(frozen=True)
class LLMLingua:
    """LLMLingua-style coarse-to-fine compression conditioned on the compressed prefix (see lingua.py)."""

    segment: int = 128
    coarse_factor: float = 2.0
    unit: str = "token"
    protect: tuple[str, ...] = _STRUCTURE
    name = "lingua"


@dataclass(frozen=True)
class Learned:
    """A trained keep/drop scorer (a `LearnedScorer` or the folder it was saved in) ranks the units."""

    scorer: Any = None
    unit: str = "word"
    protect: tuple[str, ...] = _STRUCTURE
    name = "learned"


@dataclass(frozen=True)
class SCRL(Learned):
    """The scorer after SCRL's self-critical policy-gradient fine-tuning (same inference as Learned)."""

    name = "scrl"


Method = Union[Truncate, RandomDrop, SelectiveContext, LLMLingua, Learned]
METHODS = {"truncate": Truncate, "random": RandomDrop, "selective": SelectiveContext, "lingua": LLMLingua,
           "learned": Learned, "scrl": SCRL}


def method_config(method: str | Method, **overrides: Any) -> Method:
    """The config for a method name (with field overrides), or the config itself."""
    if not isinstance(method, str):
        return method
    if method not in METHODS:
        raise RidgelineError(f"compression method {method!r} is not one of {', '.join(METHODS)}")
    try:
        return METHODS[method](**overrides)
    except TypeError as exc:
        raise RidgelineError(f"method {method}: {exc}") from None


@dataclass(frozen=True)
class CompressionResult:
    """What a compressor kept: target-model token ids (a subsequence of the prompt's), where, and at what cost."""

    method: str
    kept_ids: tuple[int, ...]
    kept_positions: tuple[int, ...]  # indices into the original prompt's tokens, increasing
    spans: tuple[tuple[int, int], ...]  # kept character ranges of the original text, merged where contiguous
    text: str  # the kept text: the kept tokens' pieces in order
    original_tokens: int
    requested_rate: float
    budget: int
    compressor_s: float
    settings: dict = field(default_factory=dict)

    @property
    def kept_tokens(self) -> int:
        """Tokens kept (= the budget)."""
        return len(self.kept_ids)

    @property
    def rate(self) -> float:
        """Achieved compression rate in the target model's tokens: original / kept."""
        return self.original_tokens / self.kept_tokens

    def to_json(self, with_ids: bool = True) -> dict:
        """JSON form (ids and positions optional: long prompts make long records)."""
        out = {"method": self.method, "original_tokens": self.original_tokens, "kept_tokens": self.kept_tokens,
               "budget": self.budget, "requested_rate": self.requested_rate, "rate": self.rate,
               "compressor_s": self.compressor_s, "spans": [list(s) for s in self.spans], "text": self.text,
               "settings": self.settings}
        if with_ids:
            out.update(kept_ids=list(self.kept_ids), kept_positions=list(self.kept_positions))
        return out


def compress(prompt: str | Sequence[int] | Prompt, method: str | Method = "selective", *, rate: float | None = None,
             budget: int | None = None, model: Any = None, tokenizer: Any = None, parts: Parts | None = None,
             instruction: str | None = None, question: str | None = None) -> CompressionResult:
    """Compress `prompt` (text, target-model token ids or a Prompt) to a rate or token budget with `method`.

    `model` is the target causal LM (selective and lingua score with it; learned and scrl take its embedding);
    `tokenizer` is the target's. `instruction`/`question` text go before/after a text prompt as parts the
    budget controller keeps at `parts`' rates (whole by default).
    """
    cfg = method_config(method)
    if tokenizer is None:
        raise RidgelineError("compress needs the target model's tokenizer (rates count the target's tokens)")
    p, parts = _with_parts(tokenizer, prompt, parts, instruction, question)
    keep_n, requested = resolve_budget(len(p), rate, budget)
    if model is not None:
        from ridgeline.compress.lm import check_fits

        check_fits(model, len(p) + 1)
    elif not isinstance(cfg, Truncate | RandomDrop):
        raise RidgelineError(f"method {cfg.name} needs the target model (model=...)")
    t0 = time.perf_counter()
    keep, settings = _keep_mask(cfg, p, keep_n, parts, model, tokenizer)
    elapsed = time.perf_counter() - t0
    if int(keep.sum()) != keep_n:  # the controller's contract: exactly the budget, or no result
        raise RidgelineError(f"{cfg.name} kept {int(keep.sum())} tokens, not the budget of {keep_n}")
    if "protected" in settings:
        settings["protected_dropped"] = int((settings.pop("protected") & ~keep).sum())
    return _result(cfg.name, p, keep, requested, keep_n, elapsed, settings)


def _with_parts(tokenizer: Any, prompt: Any, parts: Parts | None, instruction: str | None,
                question: str | None) -> tuple[Prompt, Parts | None]:
    """The whole prompt (instruction + prompt + question) and the part sizes."""
    if not instruction and not question:
        return encode_prompt(tokenizer, prompt), parts
    if not isinstance(prompt, str):
        raise RidgelineError("instruction= and question= go with a text prompt; with token ids pass parts=Parts(...)")
    pieces = [encode_prompt(tokenizer, t) if t else None for t in (instruction, prompt, question)]
    ids, spans, text = [], [], ""
    for piece in pieces:
        if piece is None:
            continue
        spans += [(s + len(text), e + len(text)) for s, e in piece.spans]
        ids += piece.ids
        text += piece.text
    base = parts or Parts()
    sizes = [len(x) if x is not None else 0 for x in pieces]
    return Prompt(tuple(ids), text, tuple(spans)), Parts(sizes[0], sizes[2], base.instruction_rate, base.question_rate)


def _keep_mask(cfg: Method, p: Prompt, keep_n: int, parts: Parts | None, model: Any,
               tokenizer: Any) -> tuple[np.ndarray, dict]:
    """The method's boolean keep mask over the prompt and the settings that produced it."""
    n = len(p)
    if isinstance(cfg, Truncate):
        keep = np.zeros(n, dtype=bool)
        keep[n - keep_n:] = True
        return keep, {}
    protect = check_protect(cfg.protect)
    protected = protected_mask(p, protect)
    units = None if cfg.unit == "token" else unit_ranges(p, cfg.unit)
    plan = part_budgets(n, keep_n, parts)
    settings = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "scorer"}
    settings["parts"] = [{"start": s, "end": e, "keep": b} for s, e, b in plan]
    settings["protected_tokens"] = int(protected.sum())
    settings["protected"] = protected  # popped by compress once the mask is known
    if isinstance(cfg, LLMLingua):
        from ridgeline.compress.lingua import LinguaPlan, lingua_keep

        return lingua_keep(model, tokenizer, p, plan, protected, units,
                           LinguaPlan(cfg.segment, cfg.coarse_factor)), settings
    scores = _scores(cfg, p, model, tokenizer, settings)
    keep = np.zeros(n, dtype=bool)
    for s, e, b in plan:
        local = None if units is None else [(max(a, s) - s, min(z, e) - s) for a, z in units if a < e and z > s]
        keep[s:e] = select(scores[s:e], b, protected[s:e], local)
    return keep, settings


def _scores(cfg: Method, p: Prompt, model: Any, tokenizer: Any, settings: dict) -> np.ndarray:
    """Per-token scores (higher = keep) of the scoring methods."""
    if isinstance(cfg, RandomDrop):
        return np.random.default_rng(cfg.seed).random(len(p))
    if isinstance(cfg, SelectiveContext):
        from ridgeline.compress.lm import self_information

        return self_information(model, tokenizer, p.ids)
    from ridgeline.compress.lm import prefix_id

    scorer = resolve_scorer(cfg.scorer, model)
    settings["scorer"] = {"layers": scorer.layers, "head_hidden": scorer.head_hidden, "method": scorer.method}
    return scorer.scores(p.ids, prefix_id(tokenizer))


def resolve_scorer(scorer: Any, model: Any) -> Any:
    """A LearnedScorer from a scorer or a saved folder (loaded onto `model`)."""
    from ridgeline.compress.scorer import LearnedScorer, load_scorer

    if isinstance(scorer, LearnedScorer):
        return scorer
    if isinstance(scorer, (str, Path)):
        return load_scorer(scorer, model)
    raise RidgelineError("the learned and scrl methods need a trained scorer: scorer=LearnedScorer or the folder "
                         "`ridgeline compress train` saved")


def _result(name: str, p: Prompt, keep: np.ndarray, requested: float, keep_n: int, elapsed: float,
            settings: dict) -> CompressionResult:
    pos = np.flatnonzero(keep)
    spans: list[list[int]] = []
    for i in pos.tolist():
        s, e = p.spans[i]
        if spans and spans[-1][1] == s:
            spans[-1][1] = e
        else:
            spans.append([s, e])
    text = "".join(p.text[s:e] for s, e in spans)
    return CompressionResult(name, tuple(p.ids[i] for i in pos), tuple(int(i) for i in pos),
                             tuple((s, e) for s, e in spans), text, len(p), requested, keep_n, elapsed, settings)
