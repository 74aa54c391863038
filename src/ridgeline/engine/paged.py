"""Paged KV storage and gather-based attention that runs inside the model's own attention modules.

The engine flattens every scheduled token of a step into one row [1, N] (prefill chunks and one decode
token per running sequence), with explicit position ids. Each attention module projects q/k/v and applies
its rotary embedding as usual; then, instead of sdpa, transformers calls `paged_attention` (registered
through `AttentionInterface`). It writes the step's keys and values into the pool slots of their
sequences and attends every query to its own sequence's keys, gathered from the pool through the block
table. Decode queries of all sequences share one batched, padded SDPA call; prefill chunks run one
sequence at a time with a causal mask offset by the cached context.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F

ATTN_NAME = "ridgeline_paged"


@dataclass
class PrefillSegment:
    """A prefill chunk: queries start..end of the step row, `context` cached tokens before it."""

    start: int
    end: int
    context: int
    slots: torch.Tensor  # slot ids of positions 0 .. context + (end - start) - 1


@dataclass
class StepLayout:
    """Where every token of one engine step goes in the pool and what it attends to."""

    write_slots: torch.Tensor  # [N] slot of each new token
    prefills: list[PrefillSegment]
    decode_rows: torch.Tensor  # [Bd] positions in the step row of the decode queries
    decode_slots: torch.Tensor  # [Bd, Lmax] slots of each decode sequence's keys (padded with 0)
    decode_mask: torch.Tensor  # [Bd, 1, 1, Lmax] float additive mask hiding the padding
    window: int | None = None  # sliding window: query i sees keys j with i - j < window


class PagedKVCache:
    """Key and value pools of shape [layers, num_blocks * block_size, kv_heads, head_dim]."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, num_blocks: int, block_size: int,
                 dtype: torch.dtype = torch.float32) -> None:
        shape = (layers, num_blocks * block_size, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.block_size = block_size

    @property
    def nbytes(self) -> int:
        """Bytes the pools hold (allocated once, up front)."""
        return self.k.numel() * self.k.element_size() * 2

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: block src's slots into block dst, in every layer."""
        B = self.block_size
        for src, dst in copies:
            self.k[:, dst * B:(dst + 1) * B] = self.k[:, src * B:(src + 1) * B]
            self.v[:, dst * B:(dst + 1) * B] = self.v[:, src * B:(src + 1) * B]


def paged_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                    paged_cache: PagedKVCache | None = None, paged_layout: StepLayout | None = None,
                    **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention over the paged cache for a flattened step; query [1, H, N, d] -> output [1, N, H, d]."""
    cache, lay, layer = paged_cache, paged_layout, module.layer_idx
    kp, vp = cache.k[layer], cache.v[layer]
    # write first: a prefill chunk attends to its own keys, read back through the same slots
    kp.index_copy_(0, lay.write_slots, key[0].transpose(0, 1).to(kp.dtype))
    vp.index_copy_(0, lay.write_slots, value[0].transpose(0, 1).to(vp.dtype))
    out = query.new_empty(query.shape[2], query.shape[1], query.shape[3])  # [N, H, d]
    q = query[0].transpose(0, 1)  # [N, H, d]
    for seg in lay.prefills:
        qs = q[seg.start:seg.end].transpose(0, 1)[None]  # [1, H, n, d]
        n = seg.end - seg.start
        if seg.context == 0 and (lay.window is None or n <= lay.window):
            # the whole prefix is in this chunk: plain causal attention on the new keys, no gather
            ks, vs = key[:, :, seg.start:seg.end], value[:, :, seg.start:seg.end]
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scaling, enable_gqa=True)
        else:
            ks = kp[seg.slots].transpose(0, 1)[None]  # [1, kvh, L, d]
            vs = vp[seg.slots].transpose(0, 1)[None]
            # query i (absolute position context + i) sees keys 0 .. context + i (the last `window` of them)
            k_pos, q_pos = torch.arange(seg.slots.shape[0])[None, :], (seg.context + torch.arange(n))[:, None]
            allowed = k_pos <= q_pos
            if lay.window is not None:
                allowed &= q_pos - k_pos < lay.window
            mask = torch.zeros(n, allowed.shape[1], dtype=qs.dtype).masked_fill_(~allowed, torch.finfo(qs.dtype).min)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scaling, enable_gqa=True)
        out[seg.start:seg.end] = o[0].transpose(0, 1)
    if lay.decode_rows.numel():
        qd = q[lay.decode_rows][:, :, None]  # [Bd, H, 1, d]
        kd = kp[lay.decode_slots].transpose(1, 2)  # [Bd, kvh, Lmax, d]
        vd = vp[lay.decode_slots].transpose(1, 2)
        o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=lay.decode_mask.to(qd.dtype), scale=scaling,
                                           enable_gqa=True)
        out[lay.decode_rows] = o[:, :, 0]
    return out[None], None


def register() -> None:
    """Make `paged_attention` selectable as the attention implementation `ridgeline_paged`."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, paged_attention)


@contextlib.contextmanager
def attention_impl(model: Any, name: str = ATTN_NAME) -> Iterator[None]:
    """Run the model with attention implementation `name` inside the block (restored afterwards)."""
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values()
    old = [(c, c._attn_implementation) for c in configs]
    for c, _ in old:
        c._attn_implementation = name
    try:
        yield
    finally:
        for c, impl in old:
            c._attn_implementation = impl
