"""Structural pruning of llama-style causal LMs: whole decoder layers (depth) or MLP channels (width).

Depth. Every block i maps its input hidden state h_i to h_{i+1} (residual stream, before the final norm).
On calibration text we measure the mean cosine similarity cos(h_i, h_{j+1}) over all tokens for every span
of blocks i..j (`layer_similarity`). Two criteria pick the layers to drop:
- 'cosine' (ShortGPT, Men et al. 2024, "Block Influence" BI = 1 − cos): the n single blocks whose output is
  most similar to their input, each judged alone;
- 'span' (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"): the n consecutive
  blocks whose span changes the residual stream least, i.e. with the largest cos(h_i, h_{i+n}).
Dropping removes the modules, renumbers `self_attn.layer_idx` (caches index by it) and updates the config.

Width. MLP channel j of a layer (SwiGLU: down(act(gate x) * up x)) is scored by
mean over tokens |act(gate x)_j · (up x)_j| × ‖down[:, j]‖₂, the magnitude it contributes to the output on
calibration text (a Wanda-style activation × weight score). Every layer keeps its `keep` highest-scoring
channels (one count for all layers: the config has a single `intermediate_size`), in their original order.

Both transforms work in place on the model and return a plan dataclass recording what was measured and chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ridgeline.errors import RidgelineError

CRITERIA = ("cosine", "span")
Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class DepthPlan:
    """Which layers a depth pruning dropped, by which criterion, and the similarities it was chosen from."""

    criterion: str
    dropped: tuple[int, ...]
    kept: tuple[int, ...]
    layer_cosine: tuple[float, ...]  # cos(h_i, h_{i+1}) for every block i of the original model
    span_cosine: float | None  # 'span': cos between the input and output of the dropped span
    tokens: int  # calibration tokens measured

    def to_json(self) -> dict:
        """JSON form."""
        return {"criterion": self.criterion, "dropped": list(self.dropped), "kept": list(self.kept),
                "layer_cosine": list(self.layer_cosine), "span_cosine": self.span_cosine, "tokens": self.tokens}


@dataclass(frozen=True)
class WidthPlan:
    """MLP channels kept per layer after width pruning."""

    intermediate_before: int
    intermediate_after: int
    kept_fraction: float
    tokens: int
    score_kept_share: tuple[float, ...] = field(default=())  # share of each layer's summed score the kept channels hold

    def to_json(self) -> dict:
        """JSON form."""
        return {"intermediate_before": self.intermediate_before, "intermediate_after": self.intermediate_after,
                "kept_fraction": self.kept_fraction, "tokens": self.tokens,
                "score_kept_share": list(self.score_kept_share)}


def decoder_blocks(model: Any) -> nn.ModuleList:
    """`model.model.layers` of a llama-style causal LM (Llama, Mistral, Qwen2, ...)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise RidgelineError(f"{type(model).__name__} is not a llama-style causal LM: expected model.model.layers")
    return layers


def _check_ids(ids: Any) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
        raise RidgelineError("calibration ids must be a 2-D integer tensor [sequences, tokens]")
    if ids.shape[1] < 2:
        raise RidgelineError(f"calibration sequences need at least 2 tokens, got {ids.shape[1]}")
    return ids.long()


def layer_similarity(model: Any, ids: torch.Tensor, batch_size: int = 4,
                     progress: Progress | None = None) -> torch.Tensor:
    """S[i, j] = mean over tokens of cos(h_i, h_{j+1}) for spans i <= j (NaN below the diagonal), float64."""
    ids = _check_ids(ids)
    layers = decoder_blocks(model)
    n = len(layers)
    sums = torch.zeros(n, n, dtype=torch.float64)
    states: list[torch.Tensor] = []

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        states.append((args[0] if args else kwargs["hidden_states"]).detach().float())

    def post(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        states.append((out[0] if isinstance(out, tuple) else out).detach().float())

    handles = [layer.register_forward_pre_hook(pre, with_kwargs=True) for layer in layers]
    handles.append(layers[-1].register_forward_hook(post, with_kwargs=True))
    tokens = 0
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for start in range(0, ids.shape[0], batch_size):
                states.clear()
                batch = ids[start:start + batch_size].to(device)
                model(input_ids=batch, use_cache=False)
                # states: h_0 .. h_n, each [B, T, hidden]; normalise once, then every span is one dot product
                unit = torch.stack([torch.nn.functional.normalize(h.reshape(-1, h.shape[-1]), dim=-1)
                                    for h in states])  # [n + 1, tokens, hidden]
                for i in range(n):
                    sums[i, i:] += (unit[i:i + 1] * unit[i + 1:]).sum(-1).double().sum(-1)
                tokens += batch.numel()
                if progress is not None:
                    progress("layer similarity", min(start + batch_size, ids.shape[0]), ids.shape[0])
    finally:
        for h in handles:
            h.remove()
    sim = sums / tokens
    return sim.masked_fill(torch.ones(n, n, dtype=torch.bool).tril(-1), float("nan"))


def choose_layers(similarity: torch.Tensor, n_drop: int, criterion: str = "cosine") -> tuple[list[int], float | None]:
    """The layers to drop under `criterion` ('cosine' or 'span'), and the span's cosine for 'span'."""
    n = similarity.shape[0]
    if criterion not in CRITERIA:
        raise RidgelineError(f"pruning criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if isinstance(n_drop, bool) or not isinstance(n_drop, int) or not 1 <= n_drop < n:
        raise RidgelineError(f"layers to drop must be an integer in [1, {n - 1}] for a {n}-layer model, got {n_drop!r}")
    if criterion == "cosine":
        diag = similarity.diagonal()
        # most similar first; ties broken by the later layer (deeper blocks are the usual redundant ones)
        order = sorted(range(n), key=lambda i: (-float(diag[i]), -i))
        return sorted(order[:n_drop]), None
    spans = [(float(similarity[i, i + n_drop - 1]), i) for i in range(n - n_drop + 1)]
    best, start = max(spans, key=lambda s: (s[0], s[1]))
    return list(range(start, start + n_drop)), best


def drop_layers(model: Any, drop: list[int] | tuple[int, ...]) -> Any:
    """Remove decoder layers `drop` in place (layer_idx renumbered, config updated); return the model."""
    layers = decoder_blocks(model)
    n = len(layers)
    bad = [i for i in drop if not 0 <= i < n]
    if bad or len(set(drop)) != len(drop) or len(drop) >= n:
        raise RidgelineError(f"cannot drop layers {list(drop)} of a {n}-layer model: expected distinct indices in "
                             f"[0, {n - 1}] leaving at least one layer")
    keep = [i for i in range(n) if i not in set(drop)]
    model.model.layers = nn.ModuleList([layers[i] for i in keep])
    for new, layer in enumerate(model.model.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new
    cfg = model.config
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    return model


def prune_depth(model: Any, ids: torch.Tensor, n_drop: int, criterion: str = "cosine", batch_size: int = 4,
                progress: Progress | None = None) -> DepthPlan:
    """Measure block similarities on `ids` [sequences, tokens], drop `n_drop` layers in place; return the plan."""
    n = len(decoder_blocks(model))
    if isinstance(n_drop, bool) or not isinstance(n_drop, int) or not 1 <= n_drop < n:
        raise RidgelineError(f"layers to drop must be an integer in [1, {n - 1}] for a {n}-layer model, got {n_drop!r}")
    sim = layer_similarity(model, ids, batch_size, progress)
    dropped, span = choose_layers(sim, n_drop, criterion)
    drop_layers(model, dropped)
    kept = tuple(i for i in range(n) if i not in dropped)
    return DepthPlan(criterion, tuple(dropped), kept, tuple(float(x) for x in sim.diagonal()), span,
                     int(_check_ids(ids).numel()))


def _mlp(layer: nn.Module) -> nn.Module:
    mlp = getattr(layer, "mlp", None)
    if mlp is None or not all(isinstance(getattr(mlp, p, None), nn.Linear) for p in ("gate_proj", "up_proj", "down_proj")):
        raise RidgelineError("width pruning needs SwiGLU MLPs (mlp.gate_proj, up_proj, down_proj Linear layers)")
    return mlp


def mlp_channel_scores(model: Any, ids: torch.Tensor, batch_size: int = 4) -> list[torch.Tensor]:
    """Per layer, [intermediate] scores: mean |act(gate x) * up x| over tokens × ‖down[:, j]‖₂ (float64)."""
    ids = _check_ids(ids)
    layers = decoder_blocks(model)
    mlps = [_mlp(layer) for layer in layers]
    sums = [torch.zeros(m.down_proj.in_features, dtype=torch.float64) for m in mlps]

    def hook(i: int) -> Callable:
        def fn(module: nn.Module, args: tuple) -> None:
            sums[i].add_(args[0].detach().abs().reshape(-1, args[0].shape[-1]).double().sum(0))
        return fn

    handles = [m.down_proj.register_forward_pre_hook(hook(i)) for i, m in enumerate(mlps)]
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for start in range(0, ids.shape[0], batch_size):
                model(input_ids=ids[start:start + batch_size].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    tokens = ids.numel()
    return [s / tokens * m.down_proj.weight.detach().double().norm(dim=0) for s, m in zip(sums, mlps)]


def _slice_linear(lin: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping output rows (dim 0) or input columns (dim 1) `index` of `lin`."""
    w = lin.weight.detach().index_select(dim, index.to(lin.weight.device)).clone()
    out = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if lin.bias is not None:
            out.bias.copy_(lin.bias.detach() if dim == 1 else lin.bias.detach()[index])
    return out


def prune_width(model: Any, ids: torch.Tensor, keep_fraction: float, batch_size: int = 4) -> WidthPlan:
    """Keep the top `keep_fraction` of every layer's MLP channels (scored on `ids`), in place; return the plan."""
    if not (isinstance(keep_fraction, (int, float)) and 0 < keep_fraction < 1):
        raise RidgelineError(f"width keep fraction must be in (0, 1), got {keep_fraction!r}")
    scores = mlp_channel_scores(model, ids, batch_size)
    before = scores[0].numel()
    keep = max(1, int(round(before * keep_fraction)))
    shares = []
    for layer, s in zip(decoder_blocks(model), scores):
        mlp = _mlp(layer)
        index = torch.topk(s, keep).indices.sort().values  # original order: the kept channels stay as they were
        shares.append(float(s[index].sum() / s.sum()))
        mlp.gate_proj = _slice_linear(mlp.gate_proj, index, 0)
        mlp.up_proj = _slice_linear(mlp.up_proj, index, 0)
        mlp.down_proj = _slice_linear(mlp.down_proj, index, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = keep
    model.config.intermediate_size = keep
    return WidthPlan(before, keep, keep / before, int(_check_ids(ids).numel()), tuple(shares))
