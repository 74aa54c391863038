"""The learned keep/drop scorer (LLMLingua-2 style; SCRL's policy): the first few decoder layers of the target
model and a small head, cheap enough to run before a long prefill.

Shape: the prompt, prefixed with BOS/EOS, goes through a copy of the target's first `layers` decoder layers (its
own embedding table is shared, frozen) and the final norm; token t's keep logit is head([h_t, h_{t+1}]), the
hidden state of t and of the token after it (zeros at the end). The causal layers let h_t see only the left
context; h_{t+1} has read token t in context, a one-token look-ahead that costs nothing. The head is
Linear(2h, head_hidden) -> GELU -> Linear(head_hidden, 1) (a plain Linear(2h, 1) with head_hidden = 0).
p(keep) = sigmoid(logit). Inference ranks tokens (or words: mean logit of their tokens) and keeps the budget.

Saved as a folder: `scorer.safetensors` (every parameter but the shared embedding) and `scorer.json` (the
manifest: kind, method, the truncated transformers config, head size, a fingerprint of the base model's
embedding so it only loads onto the model it was trained with, and the training record).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ridgeline.errors import RidgelineError
from ridgeline.io import atomic_folder

WEIGHTS = "scorer.safetensors"
MANIFEST = "scorer.json"
KIND = "ridgeline.compress.scorer"


class LearnedScorer(nn.Module):
    """Keep logits for every token of a prompt from the first layers of a causal LM and a small head."""

    def __init__(self, decoder: nn.Module, head_hidden: int, method: str = "learned") -> None:
        """Wrap a truncated decoder (a transformers *Model whose config has the kept layer count)."""
        super().__init__()
        self.decoder = decoder
        h = decoder.config.hidden_size
        self.head = (nn.Sequential(nn.Linear(2 * h, head_hidden), nn.GELU(), nn.Linear(head_hidden, 1))
                     if head_hidden else nn.Linear(2 * h, 1))
        self.head_hidden = head_hidden
        self.method = method
        self.record: dict[str, Any] = {}

    @property
    def layers(self) -> int:
        """Decoder layers the scorer runs."""
        return int(self.decoder.config.num_hidden_layers)

    @classmethod
    def from_model(cls, lm: nn.Module, layers: int = 4, head_hidden: int = 256, seed: int = 0) -> LearnedScorer:
        """A fresh scorer on the first `layers` layers of the causal LM `lm` (copied), embedding shared."""
        base = lm.get_decoder()
        total = len(base.layers)
        if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= total:
            raise RidgelineError(f"scorer layers must be an integer between 1 and the model's {total}, got {layers!r}")
        if isinstance(head_hidden, bool) or not isinstance(head_hidden, int) or head_hidden < 0:
            raise RidgelineError(f"head_hidden must be an integer >= 0 (0: a linear head), got {head_hidden!r}")
        decoder = _truncated(base, layers)
        with torch.no_grad():
            for i in range(layers):
                decoder.layers[i].load_state_dict(base.layers[i].state_dict())
            decoder.norm.load_state_dict(base.norm.state_dict())
        _share_embedding(decoder, base)
        with torch.random.fork_rng():  # a seeded head without touching the caller's random state
            torch.manual_seed(seed)
            scorer = cls(decoder, head_hidden)
        scorer.base_fingerprint = fingerprint(base.embed_tokens.weight)
        return scorer.float()

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Keep logits [B, T-1] for tokens 1..T-1 of ids [B, T] (token 0 is the BOS/EOS prefix)."""
        h = self.decoder(input_ids=ids, attention_mask=attention_mask, use_cache=False).last_hidden_state.float()
        ahead = torch.cat([h[:, 2:], torch.zeros_like(h[:, :1])], dim=1)  # h_{t+1}; zeros after the last token
        return self.head(torch.cat([h[:, 1:], ahead], dim=-1)).squeeze(-1)

    @torch.inference_mode()
    def scores(self, ids: list[int] | tuple[int, ...], prefix: int) -> np.ndarray:
        """Keep logits for every token of one prompt (prefix token prepended), float64 [n]."""
        was = self.training
        self.eval()
        try:
            x = torch.tensor([[prefix, *ids]], dtype=torch.long, device=self.head_device)
            return self(x)[0].double().cpu().numpy()
        finally:
            self.train(was)

    @property
    def head_device(self) -> torch.device:
        """Where the scorer's parameters live."""
        return next(self.head.parameters()).device

    def trainable(self, which: str = "all") -> list[nn.Parameter]:
        """Parameters to train: 'head', 'top' (head, last layer, final norm) or 'all' (all but the shared embedding)."""
        if which not in ("head", "top", "all"):
            raise RidgelineError(f"trainable must be head, top or all, got {which!r}")
        params = list(self.head.parameters())
        if which == "top":
            params += list(self.decoder.layers[-1].parameters()) + list(self.decoder.norm.parameters())
        elif which == "all":
            params += list(self.decoder.layers.parameters()) + list(self.decoder.norm.parameters())
        return params


def _truncated(base: nn.Module, layers: int) -> nn.Module:
    """An empty transformers decoder of the same class as `base` with only `layers` layers."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        from transformers.modeling_utils import no_init_weights

    cfg = copy.deepcopy(base.config)
    cfg.num_hidden_layers = layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types)[:layers]
    with no_init_weights():
        decoder = type(base)(cfg)
    return decoder.to(torch.float32)


def _share_embedding(decoder: nn.Module, base: nn.Module) -> None:
    """The scorer reads the base model's embedding table (frozen, fp32; shared storage when it is fp32)."""
    weight = base.embed_tokens.weight.detach()
    decoder.embed_tokens.weight = nn.Parameter(weight.float(), requires_grad=False)


def fingerprint(weight: torch.Tensor) -> list[float]:
    """Shape-independent summary of an embedding table: its projections on two fixed pseudo-random vectors."""
    gen = torch.Generator().manual_seed(1234)
    w = weight.detach().double().cpu()
    probe = torch.randn(w.shape[1], 2, generator=gen, dtype=torch.float64)
    rows = torch.randn(w.shape[0], generator=gen, dtype=torch.float64)
    return [float(v) for v in rows @ (w @ probe)] + [float(w.shape[0]), float(w.shape[1])]


def save_scorer(scorer: LearnedScorer, folder: str | os.PathLike, record: dict | None = None,
                extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write the scorer (safetensors, no pickle) and its manifest to `folder`, atomically; return the folder.
    `extra` adds more safetensors files (a training checkpoint's optimizer state and data), by file name."""
    from safetensors.torch import save_file

    out = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in scorer.state_dict().items()
             if not k.startswith("decoder.embed_tokens.")}
    manifest = {"kind": KIND, "method": scorer.method, "layers": scorer.layers, "head_hidden": scorer.head_hidden,
                "config": scorer.decoder.config.to_dict(), "base_fingerprint": scorer.base_fingerprint,
                "record": record if record is not None else scorer.record}
    with atomic_folder(out) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "producer": "ridgeline"})
        for name, tensors in (extra or {}).items():
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / name))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    return out


def load_tensors(folder: str | os.PathLike, name: str) -> dict[str, torch.Tensor] | None:
    """A safetensors file saved beside a scorer (None when the folder has none of that name)."""
    from safetensors.torch import load_file

    path = Path(folder) / name
    return load_file(str(path)) if path.is_file() else None


def read_scorer_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a saved scorer folder."""
    file = Path(folder) / MANIFEST
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RidgelineError(f"{folder} is not a saved compression scorer (cannot read {MANIFEST}: {exc})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise RidgelineError(f"{file} is not a ridgeline compression scorer manifest (kind {KIND!r})")
    return data


def load_scorer(folder: str | os.PathLike, lm: nn.Module) -> LearnedScorer:
    """Rebuild a saved scorer on the causal LM it was trained with (its embedding is shared, not stored)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    manifest = read_scorer_manifest(folder)
    base = lm.get_decoder()
    mine = fingerprint(base.embed_tokens.weight)
    theirs = manifest["base_fingerprint"]
    if len(mine) != len(theirs) or any(abs(a - b) > 1e-2 * (abs(b) + 1e-3) for a, b in zip(mine, theirs)):
        raise RidgelineError(f"the scorer in {folder} was trained on another model (embedding fingerprint differs); "
                             "load the model it was trained with")
    cfg_dict = dict(manifest["config"])
    cfg = AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        decoder = type(base)(cfg).to(torch.float32)
    _share_embedding(decoder, base)
    scorer = LearnedScorer(decoder, int(manifest["head_hidden"]), manifest.get("method", "learned"))
    state = load_file(str(Path(folder) / WEIGHTS))
    missing, unexpected = scorer.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("decoder.embed_tokens.")]
    if missing or unexpected:
        raise RidgelineError(f"{folder}/{WEIGHTS} does not match its manifest: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}")
    scorer.base_fingerprint = theirs
    scorer.record = manifest.get("record") or {}
    return scorer.eval()
