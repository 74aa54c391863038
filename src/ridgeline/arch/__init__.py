"""Architecture transforms: MHA<->GQA conversion, sliding-window attention with a rolling-buffer cache, structural
pruning (layers, MLP channels), and the `Variant` (KV format, window, K/V heads) that bench, eval and serve carry."""

from ridgeline.arch.gqa import check_groups, expand_kv_heads, kv_bytes_per_token, pool_kv_heads
from ridgeline.arch.prune import (DepthPlan, WidthPlan, choose_layers, drop_layers, layer_similarity,
                                   mlp_channel_scores, prune_depth, prune_width)
from ridgeline.arch.swa import RollingBufferCache, prefill_chunked, swa_kv_bytes, to_sliding_window
from ridgeline.arch.variant import Variant

__all__ = ["DepthPlan", "WidthPlan", "choose_layers", "drop_layers", "layer_similarity", "mlp_channel_scores",
           "prune_depth", "prune_width", "check_groups", "RollingBufferCache", "expand_kv_heads", "kv_bytes_per_token", "pool_kv_heads", "prefill_chunked",
           "swa_kv_bytes", "to_sliding_window", "Variant"]
