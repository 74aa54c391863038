"""Calibration data and the layer-by-layer runner that calibrated methods (GPTQ, SmoothQuant) share.

Calibration text comes from the project's offline corpus (its `calib` split, disjoint from the `eval`
split that perplexity is measured on) or any text file. It is tokenized once and cut into `n_samples`
random windows of `seq_len` tokens (seeded), as GPTQ's reference samples C4/WikiText segments.

The runner keeps only one decoder layer's inputs in memory: it runs the embedding (and whatever precedes
the first layer) once, catches the first layer's inputs, then feeds them through the layers one at a time;
each layer's outputs become the next layer's inputs. Memory beyond the model is n_samples × seq_len ×
hidden activations (twice) plus whatever the per-layer callback keeps (GPTQ: one Hessian per input).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ridgeline.errors import RidgelineError


MAX_SAMPLES = 4096
MAX_SEQ_LEN = 1 << 17


@dataclass(frozen=True)
class CalibrationConfig:
    """Where calibration text comes from and how much of it: `source` "corpus" or a text file path."""

    source: str = "corpus"
    n_samples: int = 128
    seq_len: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        """Reject impossible sizes early (the limits bound the activations kept: samples × seq_len × hidden)."""
        if not (1 <= self.n_samples <= MAX_SAMPLES and 2 <= self.seq_len <= MAX_SEQ_LEN):
            raise RidgelineError(f"calibration needs 1 to {MAX_SAMPLES} samples (--calib-samples) of 2 to {MAX_SEQ_LEN} "
                                 f"tokens (--calib-seq), got {self.n_samples} and {self.seq_len}")

    def check(self, max_position: int | None) -> None:
        """Before any model loads: windows no longer than the model's positions, and the text file readable."""
        if max_position is not None and self.seq_len > max_position:
            raise RidgelineError(f"--calib-seq {self.seq_len} is longer than the model's context of {max_position} "
                                 "positions")
        if self.source != "corpus":
            calibration_text(self.source)


def calibration_text(source: str) -> str:
    """The calibration split of the offline corpus ("corpus") or the contents of a text file."""
    if source == "corpus":
        from ridgeline.corpus import load_corpus

        return load_corpus("calib").text
    from ridgeline.corpus import read_text_file

    if not Path(source).expanduser().exists():
        raise RidgelineError(f"calibration source {source!r} is neither 'corpus' nor an existing text file")
    return read_text_file(source, "calibration file")  # the same rule as eval's --corpus


def calibration_ids(tokenizer: Any, config: CalibrationConfig = CalibrationConfig()) -> torch.Tensor:
    """[n_samples, seq_len] token ids: random windows of the tokenized calibration text (seeded)."""
    ids = tokenizer(calibration_text(config.source), add_special_tokens=False, return_tensors="pt").input_ids[0]
    if ids.numel() < config.seq_len + 1:
        raise RidgelineError(f"calibration text has {ids.numel()} tokens; seq_len {config.seq_len} needs more")
    gen = torch.Generator().manual_seed(config.seed)
    starts = torch.randint(0, ids.numel() - config.seq_len, (config.n_samples,), generator=gen)
    return torch.stack([ids[s:s + config.seq_len] for s in starts.tolist()])


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated decoder blocks of a transformers causal LM (model.model.layers and common variants)."""
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "model.language_model.layers"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj):
            return obj
    raise RidgelineError(f"cannot find the decoder layers of {type(model).__name__} (looked for model.layers, "
                         "transformer.h, gpt_neox.layers)")


class _Caught(Exception):
    """Raised by the catcher to stop a forward pass once the wanted inputs are recorded."""


@dataclass
class LayerInputs:
    """The hidden states entering a decoder layer (one tensor per batch) and the keyword arguments shared by all."""

    hidden: list[torch.Tensor]
    kwargs: dict[str, Any]


def first_layer_inputs(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> LayerInputs:
    """Run everything before the first decoder layer on `ids` and return that layer's inputs."""
    layers = decoder_layers(model)
    hidden: list[torch.Tensor] = []
    kwargs: dict[str, Any] = {}

    def catch(module: nn.Module, args: tuple, kw: dict) -> None:
        hidden.append(args[0] if args else kw["hidden_states"])
        if not kwargs:
            kwargs.update({k: v for k, v in kw.items() if k != "hidden_states"})
        raise _Caught

    handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, ids.shape[0], batch_size):
                try:
                    model(input_ids=ids[start:start + batch_size], use_cache=False)
                except _Caught:
                    pass
    finally:
        handle.remove()
    kwargs.pop("cache", None)  # the layer inputs are replayed without a cache
    kwargs.pop("past_key_values", None)
    kwargs["use_cache"] = False
    return LayerInputs(hidden, kwargs)


def run_layer(layer: nn.Module, inputs: LayerInputs) -> list[torch.Tensor]:
    """The layer's output hidden states for every input batch."""
    outs = []
    with torch.no_grad():
        for h in inputs.hidden:
            kwargs = _batch_kwargs(inputs.kwargs, h.shape[0])
            out = layer(h, **kwargs)
            outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


def _batch_kwargs(kwargs: dict[str, Any], batch: int) -> dict[str, Any]:
    """Kwargs caught on the first batch, trimmed to a (smaller, last) batch where they carry a batch dim."""
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] > batch:
            v = v[:batch]
        elif isinstance(v, tuple) and all(isinstance(t, torch.Tensor) for t in v):
            v = tuple(t[:batch] if t.dim() >= 1 and t.shape[0] > batch else t for t in v)
        out[k] = v
    return out


@contextmanager
def capture_inputs(modules: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None],
                   stop_after: str | None = None) -> Iterator[None]:
    """Call fn(name, input) for every forward of each module; optionally stop the pass after `stop_after`.

    Stopping early saves the rest of the layer's compute when only the inputs of earlier modules are
    needed (GPTQ's true-sequential groups).
    """
    handles = []
    for name, mod in modules.items():
        def hook(m: nn.Module, args: tuple, name: str = name) -> None:
            fn(name, args[0].detach())
            if name == stop_after:
                raise _Caught
        handles.append(mod.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def feed(layer: nn.Module, inputs: LayerInputs) -> None:
    """Run the layer on every input batch, tolerating an early stop from `capture_inputs`."""
    with torch.no_grad():
        for h in inputs.hidden:
            try:
                layer(h, **_batch_kwargs(inputs.kwargs, h.shape[0]))
            except _Caught:
                pass
