"""Scenarios (prompt, generated tokens, batch) and precisions (weights, activations, KV cache)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ridgeline.errors import RidgelineError

#: RooflineBench's grid: short/long input × short/long output
GRID = {"SISO": (128, 128), "LISO": (4096, 128), "SILO": (128, 4096), "LILO": (4096, 4096)}
#: ridgeline's limits: tokens per sequence (above every model's context; 2**27) and sequences per batch
MAX_TOKENS = 1 << 27
MAX_BATCH = 1 << 16


@dataclass(frozen=True)
class Scenario:
    """Prefill of `prompt` tokens, then `generate` decode steps on the same cache, for `batch` sequences."""

    prompt: int
    generate: int
    batch: int = 1
    name: str = ""

    def __post_init__(self) -> None:
        if self.prompt < 1 or self.generate < 0 or self.batch < 1:
            raise RidgelineError(
                f"scenario needs prompt >= 1, generated >= 0 and batch >= 1; got "
                f"{self.prompt}:{self.generate} batch {self.batch}")
        if self.prompt + self.generate > MAX_TOKENS or self.batch > MAX_BATCH:
            raise RidgelineError(f"scenario {self.prompt}:{self.generate} batch {self.batch} is beyond ridgeline's "
                                 f"limits of {MAX_TOKENS} tokens and batch {MAX_BATCH}")

    @property
    def label(self) -> str:
        """Grid name or P:N."""
        return self.name or f"{self.prompt}:{self.generate}"

    @property
    def final_context(self) -> int:
        """Tokens in the cache after the last step."""
        return self.prompt + self.generate

    def to_json(self) -> dict:
        """JSON form used in records."""
        return {"name": self.label, "prompt": self.prompt, "generate": self.generate, "batch": self.batch}


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
