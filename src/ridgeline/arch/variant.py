"""`Variant`: how a run changes what the KV cache holds — its format, a sliding window, the K/V heads.

One value object carried by the bench, eval and serve configs, so the three knobs are checked, applied,
labelled and recorded the same way everywhere:

* `kv`: a KV-cache format (`ridgeline.specs.get_kv_format`; the runnable ones: a float dtype equal to the
  model's, KIVI, Harmonia, uniform BFP), held by a cache of `ridgeline.kv`;
* `window`: sliding-window attention of W keys per query (the model converted, rolling-buffer cache);
* `kv_heads`: K/V heads mean-pooled (GQA conversion, no uptraining) or exactly expanded to G.

The model transforms happen in `apply`; the analytic side (`apply_spec`) prices the same change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ridgeline.errors import RidgelineError


@dataclass(frozen=True)
class Variant:
    """A KV format, a sliding window and a K/V-head count; None leaves the model as it is."""

    kv: str | None = None
    window: int | None = None
    kv_heads: int | None = None

    @property
    def transformed(self) -> bool:
        """Whether anything is changed."""
        return self.kv is not None or self.window is not None or self.kv_heads is not None

    @property
    def quantized_kv(self) -> bool:
        """Whether the KV format is a quantized one (a cache of ridgeline's, not the model's float cache)."""
        from ridgeline.specs import get_kv_format

        return self.kv is not None and get_kv_format(self.kv).bulk.family != "float"

    def check(self, dtype: str) -> None:
        """Refuse KV formats no cache can run, float KV formats other than the model's dtype (`dtype`), bad
        windows and head counts, and combinations the caches do not hold."""
        if self.window is not None and (isinstance(self.window, bool) or self.window < 1):
            raise RidgelineError(f"--window must be >= 1 key, got {self.window}")
        if self.kv_heads is not None and self.kv_heads < 1:
            raise RidgelineError(f"--kv-heads must be >= 1, got {self.kv_heads}")
        if self.kv is None:
            return
        from ridgeline.kv import runnable_kv

        fmt = runnable_kv(self.kv)
        if fmt.hi is None and fmt.bulk.family == "float" and fmt.bulk.name != dtype:
            raise RidgelineError(f"--kv {self.kv}: a float KV cache holds the model's dtype ({dtype}); "
                                 f"use --dtype {self.kv}")
        if self.window is not None and fmt.bulk.family != "float":
            raise RidgelineError(f"--kv {self.kv} with --window {self.window}: the quantized caches hold "
                                 "full-attention layers only; run them as separate variants")

    def apply(self, model: Any) -> Any:
        """The model with its K/V heads pooled (in place) and/or converted to sliding-window attention (a new
        model object); the KV format is the cache's business (`ridgeline.kv.make_kv_cache`)."""
        if self.kv_heads is not None:
            from ridgeline.arch.gqa import pool_kv_heads

            model = pool_kv_heads(model, self.kv_heads)
        if self.window is not None:
            from ridgeline.arch.swa import to_sliding_window

            source = getattr(model, "ridgeline_source", None)
            model = to_sliding_window(model, self.window)
            if source is not None:
                model.ridgeline_source = source
        return model

    def apply_spec(self, spec: Any) -> Any:
        """The analytic ModelSpec with the same window and K/V heads (the KV format goes into the Precision)."""
        from ridgeline.roofline import variant_spec

        return variant_spec(spec, window=self.window, kv_heads=self.kv_heads)

    @property
    def labels(self) -> list[str]:
        """How the run changed the KV cache, for row labels: 'KV kivi2 (emulated)', 'window 512', '1 KV heads'."""
        from ridgeline.specs import get_kv_format

        # quantized caches dequantize in torch ops (no fused kernel on this CPU): say so wherever they appear
        kv = [f"KV {self.kv}" + ("" if get_kv_format(self.kv).bulk.family == "float" else " (emulated)")] \
            if self.kv else []
        return kv + ([f"window {self.window}"] if self.window else []) + \
            ([f"{self.kv_heads} KV heads"] if self.kv_heads else [])

    def to_json(self) -> dict[str, Any]:
        """JSON form (with the labels, so reports need not recompute them)."""
        return {"kv": self.kv, "window": self.window, "kv_heads": self.kv_heads, "labels": self.labels}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Variant:
        """Back from `to_json` (or from a record's params holding kv/window/kv_heads keys)."""
        data = data or {}
        return cls(data.get("kv"), data.get("window"), data.get("kv_heads"))
