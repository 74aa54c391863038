"""Sliding-window attention (Mistral 7B, arXiv 2310.06825): model conversion and a rolling-buffer KV cache.

Convention (HF's, Mistral's): with window W the query at position i attends to keys j with
0 <= i - j < W, i.e. W keys including itself. HF's `DynamicSlidingWindowLayer` keeps W - 1 past keys and
concatenates the new one; the `RollingBufferCache` here is the paper's buffer: exactly W slots per layer,
absolute position p in slot p mod W, allocated once and overwritten in place.

How the buffer is read:
- decode (one new token, buffer full): the token overwrites the slot of position p - W (the only key that
  just left the window) and attention reads the W slots as they lie. Keys are stored already rotated by
  RoPE at their absolute position, and softmax attention does not care about key order, so no unrolling
  and no mask are needed: every slot is inside the window.
- a chunk of several tokens (prefill, or decode before the buffer is full): the buffer is unrolled in
  position order and the chunk appended, the model attends over both, then the chunk's last W tokens are
  written into their slots. The cache reports `get_mask_sizes` (kv length, offset of the first key) so the
  model's own sliding mask (built by transformers' masking_utils) hides the keys older than i - W + 1.

Any chunk length is correct because the chunk attends before it is written; a chunk of c tokens costs a
transient W + c keys, so `prefill_chunked` splits prompts into chunks of at most W (working set <= 2W).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from transformers import MistralConfig, MistralForCausalLM
from transformers.cache_utils import Cache, CacheLayerMixin

from ridgeline.errors import RidgelineError

#: config fields a Llama checkpoint shares with Mistral (same tensor names, same forward without a window)
_MISTRAL_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
                   "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "attention_dropout",
                   "bos_token_id", "eos_token_id", "pad_token_id")


def _check_window(window: int | None, allow_none: bool = True) -> None:
    if window is None and allow_none:
        return
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise RidgelineError(f"sliding window must be an integer >= 1 token, got {window!r}")


def _sliding_config(config: Any, window: int | None) -> tuple[type, Any]:
    """The model class and config of the same architecture with every layer sliding over `window` keys."""
    mt = getattr(config, "model_type", None)
    if mt == "llama":
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            raise RidgelineError("to_sliding_window needs a Llama without attention/MLP biases (Mistral has none); "
                                 "this config has attention_bias or mlp_bias set")
        fields = {k: getattr(config, k) for k in _MISTRAL_FIELDS if getattr(config, k, None) is not None}
        return MistralForCausalLM, MistralConfig(**fields, sliding_window=window)
    if mt == "mistral":
        cfg = copy.deepcopy(config)
        cfg.sliding_window = window
        return MistralForCausalLM, cfg
    if mt == "qwen2":
        from transformers import Qwen2ForCausalLM

        cfg = copy.deepcopy(config)
        cfg.use_sliding_window, cfg.sliding_window, cfg.max_window_layers = window is not None, window, 0
        cfg.layer_types = ["sliding_attention" if window else "full_attention"] * cfg.num_hidden_layers
        return Qwen2ForCausalLM, cfg
    raise RidgelineError(f"to_sliding_window supports llama, mistral and qwen2 causal LMs, got model_type {mt!r}")


def to_sliding_window(model: Any, window: int | None) -> Any:
    """A new model with the same weights whose every layer attends to the last `window` keys (None: no window).

    A Llama becomes a `MistralForCausalLM` (same tensor names); Mistral and Qwen2 keep their class. The
    original model is left untouched (its parameters are copied, not shared).
    """
    _check_window(window)
    cls, cfg = _sliding_config(getattr(model, "config", None), window)
    cfg._attn_implementation = model.config._attn_implementation
    param = next(model.parameters())
    new = cls(cfg).to(dtype=param.dtype, device=param.device)
    new.load_state_dict(model.state_dict(), strict=True)  # tied models carry lm_head = embed_tokens in both
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = copy.deepcopy(model.generation_config)  # eos ids etc. for generate()
    return new.train(model.training)


def _writable(buf: torch.Tensor) -> bool:
    # a buffer filled under torch.inference_mode (e.g. by stream_nll) cannot be written in place outside it
    return not buf.is_inference() or torch.is_inference_mode_enabled()


class RollingBufferLayer(CacheLayerMixin):
    """One layer's rolling buffer: W slots, position p in slot p mod W (see the module docstring)."""

    is_sliding = True
    is_compileable = False
    is_croppable = False

    def __init__(self, window: int):
        super().__init__()
        _check_window(window, allow_none=False)
        self.window = window
        self.cumulative_length = 0  # tokens seen so far = absolute position of the next token

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Start with empty [B, H, 0, D] tensors; they grow to W slots and then stay."""
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states[:, :, :0].clone()
        self.values = value_states[:, :, :0].clone()
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values and return the keys/values the new queries attend to."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, q, w = self.cumulative_length, key_states.shape[-2], self.window
        self.cumulative_length = n + q
        if q == 1 and n >= w:  # steady decode: overwrite position n - W in place, attend over the slots as they lie
            if not _writable(self.keys):
                self.keys, self.values = self.keys.clone(), self.values.clone()
            self.keys[:, :, n % w] = key_states[:, :, 0]
            self.values[:, :, n % w] = value_states[:, :, 0]
            return self.keys, self.values
        keys = torch.cat([self._unrolled(self.keys, n), key_states], dim=-2)
        values = torch.cat([self._unrolled(self.values, n), value_states], dim=-2)
        self.keys = self._stored(self.keys, keys, n + q)
        self.values = self._stored(self.values, values, n + q)
        return keys, values

    def _unrolled(self, buf: torch.Tensor, n: int) -> torch.Tensor:
        """The buffer in position order (slot n mod W holds the oldest position once full)."""
        return buf.roll(-(n % self.window), dims=-2) if n >= self.window else buf

    def _stored(self, buf: torch.Tensor, ordered: torch.Tensor, total: int) -> torch.Tensor:
        """Write the last min(total, W) positions of `ordered` into their slots (in place once the buffer is full)."""
        if total < self.window:
            return ordered  # still growing: slot == position
        tail = ordered[:, :, -self.window:].roll(total % self.window, dims=-2)  # position p -> slot p mod W
        if buf.shape[-2] == self.window and _writable(buf):
            return buf.copy_(tail)  # keep the same storage once it has W slots
        return tail.contiguous()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """(kv length, absolute position of the first key) of what the next `update` returns."""
        n, w = self.cumulative_length, self.window
        if query_length == 1 and n >= w:
            return w, n + 1 - w  # the slots hold positions n+1-W .. n (in some order: masking keeps them all)
        return min(n, w) + query_length, max(n - w, 0)

    def get_seq_length(self) -> int:
        """Tokens seen so far (the absolute position of the next token), not the slots held."""
        return self.cumulative_length

    def get_max_length(self) -> int:
        """The number of slots."""
        return self.window

    def reset(self) -> None:
        """Forget everything (the next update allocates again)."""
        self.keys = self.values = None
        self.is_initialized = False
        self.cumulative_length = 0

    def crop(self, tokens_to_remove: int) -> None:
        """Not supported: overwritten slots cannot be restored."""
        raise RidgelineError("a rolling-buffer cache cannot be cropped: its overwritten slots are gone")

    @property
    def held_bytes(self) -> int:
        """Bytes of key and value storage this layer holds."""
        if not self.is_initialized:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()


class RollingBufferCache(Cache):
    """A KV cache of exactly `window` slots per layer for sliding-window models (memory bounded by W)."""

    def __init__(self, window: int, num_layers: int):
        _check_window(window, allow_none=False)
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise RidgelineError(f"num_layers must be an integer >= 1, got {num_layers!r}")
        super().__init__(layers=[RollingBufferLayer(window) for _ in range(num_layers)])
        self.window = window

    @classmethod
    def for_model(cls, model: Any) -> "RollingBufferCache":
        """A cache sized for `model`, whose config must slide over a window on every layer."""
        cfg = model.config
        window = getattr(cfg, "sliding_window", None)
        types = getattr(cfg, "layer_types", None) or ["sliding_attention"]
        if window is None or any(t != "sliding_attention" for t in types):
            raise RidgelineError("a rolling-buffer cache needs a model with sliding_window set on every layer "
                                 f"(use to_sliding_window); this one has sliding_window={window!r}")
        return cls(window, cfg.num_hidden_layers)

    @property
    def held_bytes(self) -> int:
        """Bytes of key and value storage held by all layers."""
        return sum(layer.held_bytes for layer in self.layers)


def swa_kv_bytes(tokens: int, window: int | None, layers: int, kv_heads: int, head_dim: int,
                 elem_bytes: float) -> float:
    """KV bytes a rolling buffer holds after `tokens` tokens: 2·L·H_kv·d_h·min(tokens, W)·bytes (W=None: all)."""
    held = tokens if window is None else min(tokens, window)
    return 2.0 * layers * kv_heads * head_dim * held * elem_bytes


def prefill_chunked(model: Any, ids: torch.Tensor, cache: Cache, chunk: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Feed `ids` [B, T] through `cache` in chunks (at most the cache window) and return the last logits [B, V]."""
    if ids.dim() != 2 or ids.shape[1] < 1:
        raise RidgelineError(f"prefill_chunked takes token ids of shape [B, T] with T >= 1, got {tuple(ids.shape)}")
    window = getattr(cache, "window", None)
    chunk = chunk or window or ids.shape[1]
    if chunk < 1:
        raise RidgelineError(f"chunk must be >= 1 token, got {chunk}")
    if window is not None:
        chunk = min(chunk, window)  # bounds the transient working set at 2W keys
    start0, T = cache.get_seq_length(), ids.shape[1]
    logits = None
    with torch.no_grad():  # not inference_mode: the cache must stay writable by a later decode
        for s in range(0, T, chunk):
            e = min(s + chunk, T)
            pos = torch.arange(start0 + s, start0 + e, device=ids.device)[None].expand(ids.shape[0], -1)
            logits = model(input_ids=ids[:, s:e], position_ids=pos, cache=cache, use_cache=True).logits
            if progress is not None:
                progress(e, T)
    return logits[:, -1]
