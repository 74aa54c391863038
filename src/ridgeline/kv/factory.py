"""One name for a KV cache everywhere: `analyze --kv`, `bench --kv`, `eval --kv` and the benchmarks.

The name is parsed once (`ridgeline.specs.formats.get_kv_format`) and turned into the cache that stores
it: KIVI, Harmonia, or uniform BFP (Harmonia's cache with no 8-bit tiers). Float formats need no cache
of ours: the model's own cache holds its dtype.
"""

from __future__ import annotations

from typing import Any

from ridgeline.errors import RidgelineError
from ridgeline.specs import KV_FORMAT_HELP, KVFormat, get_kv_format


def runnable_kv(name: str) -> KVFormat:
    """The KV format `name`, if a cache can hold it at run time (floats, KIVI, Harmonia, BFP); else raise."""
    fmt = get_kv_format(name)
    if fmt.hi is None and fmt.bulk.family not in ("float", "bfp"):
        raise RidgelineError(f"KV format {fmt.name!r} is priced by analyze but has no cache to run it; runnable KV "
                             f"formats: a float dtype, bfp{{block}}m{{mantissa}}, {KV_FORMAT_HELP}")
    return fmt


def make_kv_cache(name: str | None, model: Any) -> Any | None:
    """A fresh cache storing KV format `name` for `model`; None means the model's own (float) cache."""
    if name is None:
        return None
    fmt = runnable_kv(name)
    if fmt.key_chunk:  # KIVI
        from ridgeline.kv.kivi import KIVICache, KIVIConfig

        return KIVICache(model, KIVIConfig(int(fmt.bulk.element_bits), fmt.bulk.block, fmt.key_chunk))
    if fmt.hi is not None or fmt.bulk.family == "bfp":
        from ridgeline.kv.harmonia import HarmoniaCache, HarmoniaConfig

        lo_mantissa = int(fmt.bulk.element_bits) - 1  # BFP elements are sign + mantissa bits
        if fmt.hi is None:
            return HarmoniaCache(model, HarmoniaConfig.uniform(lo_mantissa, fmt.bulk.block))
        return HarmoniaCache(model, HarmoniaConfig(fmt.bulk.block, int(fmt.hi.element_bits) - 1, lo_mantissa,
                                                   fmt.sink, fmt.recent))
    return None
