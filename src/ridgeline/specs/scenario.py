"""Scenarios (prompt, generated tokens, batch, optionally a compressed prompt or speculative decode steps) and
precisions (weights, activations, KV cache).

A `Speculation` makes the decode phase speculative: every step verifies `tokens` tokens in one forward (the
base's own next token plus the drafts) and keeps `accepted` of them on average (the base's own token counted, so
1 <= accepted <= tokens; plain decoding is tokens = accepted = 1), so N generated tokens take ceil(N / accepted)
steps. `heads` Medusa heads draft from the last hidden state each step (K ResBlocks, and K rows through the
vocabulary projection: the shared lm_head streamed once more per step, or K untied projections — only its
`draft_vocab` rows when the heads draft from a restricted vocabulary). Other drafters (prompt lookup: free; a draft
model: its own forwards) are not counted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ridgeline.errors import RidgelineError

#: RooflineBench's grid: short/long input × short/long output
GRID = {"SISO": (128, 128), "LISO": (4096, 128), "SILO": (128, 4096), "LILO": (4096, 4096)}
#: ridgeline's limits: tokens per sequence (above every model's context; 2**27) and sequences per batch
MAX_TOKENS = 1 << 27
MAX_BATCH = 1 << 16


@dataclass(frozen=True)
class Speculation:
    """Speculative decode steps: `tokens` verified and `accepted` kept per step (see the module docstring)."""

    tokens: int
    accepted: float
    heads: int = 0
    untied: bool = False
    draft_vocab: int = 0  # rows of the heads' projection streamed per step (0: the model's whole vocabulary)

    def __post_init__(self) -> None:
        if isinstance(self.draft_vocab, bool) or not isinstance(self.draft_vocab, int) or self.draft_vocab < 0:
            raise RidgelineError(f"draft vocabulary must be an integer >= 0 (0: the whole vocabulary), "
                                 f"got {self.draft_vocab!r}")
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 1:
            raise RidgelineError(f"speculative tokens verified per step must be an integer >= 1, got {self.tokens!r}")
        a = self.accepted
        if not (isinstance(a, (int, float)) and math.isfinite(a) and 1 <= a <= self.tokens):
            raise RidgelineError(f"speculative tokens accepted per step must be between 1 and the {self.tokens} "
                                 f"verified, got {a!r}")
        if isinstance(self.heads, bool) or not isinstance(self.heads, int) or self.heads < 0:
            raise RidgelineError(f"Medusa heads must be an integer >= 0, got {self.heads!r}")

    def steps(self, generate: int) -> int:
        """Verify steps that yield `generate` tokens: ceil(generate / accepted)."""
        return math.ceil(generate / self.accepted - 1e-9) if generate else 0

    def to_json(self) -> dict:
        """JSON form used in records."""
        return {"tokens": self.tokens, "accepted": self.accepted, "heads": self.heads, "untied": self.untied,
                "draft_vocab": self.draft_vocab}


@dataclass(frozen=True)
class Scenario:
    """Prefill of `prompt` tokens, then `generate` decode steps on the same cache, for `batch` sequences
    (speculative steps with a `speculation`).

    With `compress` = r > 1 the prompt is compressed before the prefill: the model prefills and caches
    round(prompt / r) tokens (at least 1, as `ridgeline.compress` keeps them); 1 means no compression.
    """

    prompt: int
    generate: int
    batch: int = 1
    name: str = ""
    compress: float = 1.0
    speculation: Speculation | None = None

    def __post_init__(self) -> None:
        if self.prompt < 1 or self.generate < 0 or self.batch < 1:
            raise RidgelineError(
                f"scenario needs prompt >= 1, generated >= 0 and batch >= 1; got "
                f"{self.prompt}:{self.generate} batch {self.batch}")
        c = self.compress
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 1:
            raise RidgelineError(f"compression rate must be a number >= 1 (1: none, 2: half the prompt), got {c!r}")
        if self.speculation is not None and self.batch != 1:
            raise RidgelineError("speculative decoding is modelled at batch 1")
        if self.prompt + self.generate > MAX_TOKENS or self.batch > MAX_BATCH:
            raise RidgelineError(f"scenario {self.prompt}:{self.generate} batch {self.batch} is beyond ridgeline's "
                                 f"limits of {MAX_TOKENS} tokens and batch {MAX_BATCH}")

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens the model prefills: the prompt after compression."""
        return max(1, round(self.prompt / self.compress)) if self.compress != 1 else self.prompt

    @property
    def label(self) -> str:
        """Grid name or P:N."""
        return self.name or f"{self.prompt}:{self.generate}"

    @property
    def final_context(self) -> int:
        """Tokens in the cache after the last step."""
        return self.prefill_tokens + self.generate

    def to_json(self) -> dict:
        """JSON form used in records (`compress` and `prefill_tokens` only when the prompt is compressed,
        `speculation` only when set)."""
        out = {"name": self.label, "prompt": self.prompt, "generate": self.generate, "batch": self.batch}
        if self.compress != 1:
            out.update(compress=self.compress, prefill_tokens=self.prefill_tokens)
        if self.speculation is not None:
            out["speculation"] = self.speculation.to_json()
        return out


def parse_scenario(text: str, batch: int = 1) -> Scenario:
    """'SISO'/'LISO'/'SILO'/'LILO' or 'P:N' (prompt:generated)."""
    key = text.strip().upper()
    if key in GRID:
        return Scenario(*GRID[key], batch=batch, name=key)
    m = re.fullmatch(r"\s*(-?\d+)\s*[:/]\s*(-?\d+)\s*", text)
    if not m:
        raise RidgelineError(f"scenario {text!r} is not one of {', '.join(GRID)} or P:N (e.g. 512:128)")
    p, n = int(m.group(1)), int(m.group(2))
    if p < 1 or n < 0:
        raise RidgelineError(f"scenario {text!r}: prompt must be >= 1 and generated >= 0 tokens")
    return Scenario(p, n, batch=batch)


@dataclass(frozen=True)
class Precision:
    """Formats for weights (a format or a llama.cpp recipe), activations and the KV cache (`get_kv_format`)."""

    weights: str = "bf16"
    acts: str = "bf16"
    kv: str = "bf16"
    compute: str | None = None  # dtype whose peak bounds compute; default from the activation format

    def __post_init__(self) -> None:
        from ridgeline.specs.formats import get_format, get_kv_format
        from ridgeline.specs.recipes import is_recipe

        object.__setattr__(self, "weights", self.weights.lower())
        if self.weights != "stored" and not is_recipe(self.weights):  # "stored": a GGUF's own tensor types
            get_format(self.weights)
        get_format(self.acts)
        get_kv_format(self.kv)  # a number format, or a mixed one (KIVI, Harmonia)
        if self.compute is not None and self.compute not in ("fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4"):
            raise RidgelineError(f"compute dtype {self.compute!r} is not one of fp32, tf32, fp16, bf16, fp8, int8, int4")

    @property
    def compute_dtype(self) -> str:
        """The dtype whose peak FLOP/s applies: --compute, else the activation format's dtype."""
        from ridgeline.specs.formats import get_format

        if self.compute:
            return self.compute
        return get_format(self.acts).dtype or "fp32"

    def to_json(self) -> dict:
        """JSON form used in records."""
        return {"weights": self.weights, "acts": self.acts, "kv": self.kv, "compute": self.compute_dtype}
