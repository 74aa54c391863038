"""LoRA adapters through `peft` (Hu et al. 2021): W x + (α/r)·B A x, A [r, in] random, B [out, r] zero.

`add_lora` wraps a transformers causal LM in a `peft` model whose only trainable parameters are the A/B
matrices of the target projections (B starts at zero, so the adapted model equals the base at step 0);
the initialisation of A is drawn from a generator seeded by `seed` without touching the caller's RNG.
`merge_lora` folds B A into the base weights (`merge_and_unload`) and returns the plain model: adapters are
merged before quantization and export, so GPTQ sees the weights the adapted model computes with.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from ridgeline.errors import RidgelineError

#: llama-family projections: attention and MLP
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoRAConfig:
    """Rank, scaling α (default 2·rank), dropout on the adapter input and the projections adapted."""

    rank: int = 16
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    rslora: bool = False  # α/√r scaling instead of α/r

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise RidgelineError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if self.alpha is None:
            object.__setattr__(self, "alpha", float(2 * self.rank))
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise RidgelineError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise RidgelineError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "targets", tuple(self.targets))
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise RidgelineError(f"LoRA targets must be module names such as q_proj, got {self.targets!r}")

    def to_json(self) -> dict:
        """JSON form."""
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets),
                "rslora": self.rslora}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """peft and transformers warn about deprecations while wrapping: library code prints nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def add_lora(model: nn.Module, config: LoRAConfig, seed: int = 0) -> nn.Module:
    """The model wrapped with LoRA adapters on `config.targets` (only the adapters train); A drawn with `seed`."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise RidgelineError("LoRA needs the `peft` package (pip install peft)") from None
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in config.targets if t not in names]
    if missing:
        raise RidgelineError(f"LoRA targets {', '.join(missing)} are not Linear modules of this model "
                             f"(it has {', '.join(sorted(names))})")
    lc = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                    target_modules=list(config.targets), task_type="CAUSAL_LM", use_rslora=config.rslora)
    with _quiet(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, lc)


def is_lora(model: nn.Module) -> bool:
    """Whether `model` is a peft-wrapped model."""
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights and return the plain transformers model."""
    if not is_lora(model):
        raise RidgelineError(f"{type(model).__name__} has no LoRA adapters to merge")
    with _quiet(), torch.no_grad():
        return model.merge_and_unload()


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors by name (the adapters of a LoRA model; every parameter when fully fine-tuned)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters), shared tensors counted once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


def base_model(model: Any) -> nn.Module:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if is_lora(model) else model
