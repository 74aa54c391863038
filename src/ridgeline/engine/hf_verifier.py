"""The `Verifier` interface on transformers' own forward, for any llama-family causal LM with a dynamic cache.

Tree verification passes an explicit 4-D **float additive** mask (B=1, 1, M, L+M) — 0 where a token may attend,
the dtype's minimum where not (a bool mask is silently wrong under eager attention in transformers 5) — with
explicit position ids (L + depth). `keep` compacts the cache by reassigning every layer's keys and values
to `index_select` of the positions kept. The base model's post-norm hidden states come from `model.model`'s
`last_hidden_state`; logits are `model.lm_head` of them. Sliding-window cache layers are refused (compaction
would have to re-window them).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ridgeline.errors import RidgelineError


def _cache_keyword(inner: Any) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache` (the old name warns); use whichever is current."""
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


class HFVerifier:
    """prefill / decode / verify / keep on a transformers *ForCausalLM with a DynamicCache (batch 1)."""

    impl = "transformers eager"

    def __init__(self, model: Any, max_len: int | None = None) -> None:
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(model, "lm_head"):
            raise RidgelineError("the transformers verifier needs a *ForCausalLM with .model and .lm_head")
        self.model, self.inner = model, inner
        self.max_len = max_len or getattr(model.config, "max_position_embeddings", 1 << 20)
        self.dtype = next(model.parameters()).dtype
        self._kw = _cache_keyword(inner)
        self.cache: Any = None
        self.length = 0
        self.hidden: torch.Tensor | None = None
        self._verified: int | None = None
        self.reset()
        sliding = [type(layer).__name__ for layer in self.cache.layers if "Sliding" in type(layer).__name__]
        if sliding:
            raise RidgelineError(f"the transformers verifier does not compact sliding-window caches ({sliding[0]})")

    def reset(self) -> None:
        """A fresh DynamicCache."""
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        self.length, self.hidden, self._verified = 0, None, None

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        n = ids.shape[-1]
        if self.length + n > self.max_len:
            raise RidgelineError(f"KV cache full: {self.length} + {n} tokens > max_len {self.max_len}")
        out = self.inner(input_ids=ids.view(1, n), position_ids=positions.view(1, n), attention_mask=mask,
                         use_cache=True, **{self._kw: self.cache})
        return out.last_hidden_state[0]

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(1, P) ids after the cache, causal; the last position's logits (1, V)."""
        n = input_ids.shape[-1]
        h = self._forward(input_ids, torch.arange(self.length, self.length + n), None)
        self.length, self._verified = self.length + n, None
        self.hidden = h[-1:]
        return self.model.lm_head(self.hidden)

    @torch.inference_mode()
    def decode(self, token: torch.Tensor) -> torch.Tensor:
        """One token after the cache; its logits (1, V)."""
        return self.prefill(token.view(1, 1))

    @torch.inference_mode()
    def verify(self, tokens: torch.Tensor, positions: torch.Tensor,
               visibility: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M tokens after the L cached ones with a 4-D float mask: prefix visible, the tree as `visibility` says."""
        m, start = tokens.numel(), self.length
        if visibility.shape != (m, m) or visibility.dtype != torch.bool or not bool(visibility.diagonal().all()):
            raise RidgelineError(f"verify: visibility must be a bool [{m}, {m}] tensor whose diagonal is True")
        if positions.numel() != m:
            raise RidgelineError(f"verify: {positions.numel()} positions for {m} tokens")
        mask = torch.zeros(1, 1, m, start + m, dtype=self.dtype)
        mask[0, 0, :, start:].masked_fill_(~visibility, torch.finfo(self.dtype).min)
        h = self._forward(tokens.reshape(1, m), positions.reshape(1, m), mask)
        self.length, self._verified = start + m, start
        self.hidden = h
        return self.model.lm_head(h), h

    @torch.inference_mode()
    def keep(self, indices: torch.Tensor) -> None:
        """Keep the verified tokens at L + indices[k] as L + k in every layer's keys and values."""
        start = self._verified
        if start is None:
            raise RidgelineError("keep follows verify: no verified tokens to keep")
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.length - start):
            raise RidgelineError(f"keep: indices must lie in [0, {self.length - start}), got {idx.tolist()}")
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise RidgelineError(f"keep: indices must be increasing, got {idx.tolist()}")
        order = torch.cat([torch.arange(start), idx + start])
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(2, order)
            layer.values = layer.values.index_select(2, order)
        self.length, self._verified = start + idx.numel(), None

    def crop(self, n: int) -> None:
        """Forget the cached positions n and after."""
        if not 0 <= n <= self.length:
            raise RidgelineError(f"crop: the cache holds {self.length} tokens, cannot keep {n}")
        if n == 0:
            self.reset()
            return
        # by hand: DynamicCache.crop's argument changed meaning across transformers 5 releases
        for layer in self.cache.layers:
            if getattr(layer, "keys", None) is not None:
                layer.keys, layer.values = layer.keys[..., :n, :], layer.values[..., :n, :]
        self.length, self._verified = n, None
