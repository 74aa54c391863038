"""KV caches that change what is stored: quantized (KIVI, Harmonia BFP), streaming evaluation through them.

The paged KV cache of the continuous-batching engine lives in `ridgeline.engine`; the rolling-buffer
sliding-window cache in `ridgeline.arch.swa`.
"""

from ridgeline.kv.factory import make_kv_cache, runnable_kv
from ridgeline.kv.harmonia import HarmoniaCache, HarmoniaConfig, harmonia_bytes, smooth_keys
from ridgeline.kv.kivi import KIVICache, KIVIConfig, kivi_bytes
from ridgeline.kv.stream import stream_losses, stream_nll

__all__ = ["HarmoniaCache", "HarmoniaConfig", "KIVICache", "KIVIConfig", "harmonia_bytes", "kivi_bytes",
           "make_kv_cache", "runnable_kv", "smooth_keys", "stream_losses",
           "stream_nll"]
