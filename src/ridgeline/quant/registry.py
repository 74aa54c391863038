"""The quantization handler registry: one handler per config type, one signature (torchao's shape).

A method module registers its handler with `@register_handler(ConfigType)`; `quantize_` looks the handler up
by the config's type and calls `handler(model, config, ctx)`, which replaces modules in place and returns the
new modules by fully-qualified name. Method modules import this registry, never the dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ridgeline.errors import RidgelineError

#: progress(done, total, what) for long methods
Progress = Callable[[int, int, str], None]


@dataclass
class QuantizeContext:
    """What a handler may need besides the model and its config: calibration, progress, the manifest to fill."""

    tokenizer: Any = None
    calibration_ids: torch.Tensor | None = None
    progress: Progress | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    def calibration(self, config: Any) -> torch.Tensor:
        """Calibration token ids [n, seq]: the ones given, else built from the config's source with the tokenizer."""
        if self.calibration_ids is None:
            if self.tokenizer is None:
                raise RidgelineError(f"{config.method} needs calibration data: pass calibration ids or a tokenizer")
            from ridgeline.quant.calib import calibration_ids

            self.calibration_ids = calibration_ids(self.tokenizer, config.calibration)
        return self.calibration_ids

    def report(self, done: int, total: int, what: str) -> None:
        """Progress, if anyone listens."""
        if self.progress:
            self.progress(done, total, what)


Handler = Callable[[nn.Module, Any, QuantizeContext], dict[str, nn.Module]]
_HANDLERS: dict[type, Handler] = {}


def register_handler(config_type: type) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of `config_type`."""

    def register(fn: Handler) -> Handler:
        _HANDLERS[config_type] = fn
        return fn

    return register


def handler_for(config: Any) -> Handler:
    """The handler registered for the config's type."""
    fn = _HANDLERS.get(type(config))
    if fn is None:
        raise RidgelineError(f"unknown quantization config {type(config).__name__}; registered: "
                             f"{', '.join(sorted(t.__name__ for t in _HANDLERS))}")
    return fn
