"""Architecture transforms: MHA<->GQA conversion, sliding-window attention with a rolling-buffer cache."""

from ridgeline.arch.gqa import expand_kv_heads, kv_bytes_per_token, pool_kv_heads
from ridgeline.arch.swa import RollingBufferCache, prefill_chunked, swa_kv_bytes, to_sliding_window

__all__ = ["RollingBufferCache", "expand_kv_heads", "kv_bytes_per_token", "pool_kv_heads", "prefill_chunked",
           "swa_kv_bytes", "to_sliding_window"]
