"""Native CPU kernels: packed-weight GEMV/small-M GEMM, fused decode ops, and a native decode loop.

Build (the README's install does it; in a checkout): `python setup.py build_ext --inplace`. Variants:
portable C++, AVX2 (+FMA, F16C) and AVX-512 (F, BW, VL, DQ, VNNI, BF16), chosen at run time by CPUID;
`RIDGELINE_KERNELS=portable` forces the portable one, `RIDGELINE_KERNELS=off` disables native code, and
`info()` says which path runs and why (records should name it). Without a compiler the package installs
without the extension and every function here raises RidgelineError with the reason; callers fall back.

Layering: kernels sits beside quant/kv/engine and imports only torch, ridgeline.errors and
ridgeline.specs at module level. `pack` reads quantized modules by duck typing (their stored buffers),
so quant may import kernels without a cycle.

Conventions: weights [out_features, in_features] ("N x K"), activations [M, K] float32, M <= 16 per
kernel call; bytes per weight are what the kernel streams (scales and padding included).
"""

from ridgeline.kernels.linear import ACT_MODES, BLOCK_FORMATS, FORMATS, PackedLinear, native_format, quantize_activation
from ridgeline.kernels.model import NativeCausalLM, check_supported, greedy
from ridgeline.kernels.pack import pack_module
from ridgeline.kernels.runtime import (available, get_num_threads, info, native, pool_overhead, set_num_threads,
                                       set_spin_us)

__all__ = ["ACT_MODES", "BLOCK_FORMATS", "FORMATS", "NativeCausalLM", "PackedLinear", "available", "check_supported",
           "get_num_threads", "greedy", "info", "native", "native_format", "pack_module", "pool_overhead",
           "quantize_activation", "set_num_threads", "set_spin_us"]
