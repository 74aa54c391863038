"""Native CPU kernels: packed-weight GEMV/small-M GEMM, fused decode ops, and a native decode loop.

Build (the README's install does it; in a checkout): `python setup.py build_ext --inplace`. Variants:
portable C++, AVX2 (+FMA, F16C) and AVX-512 (F, BW, VL, DQ, VNNI, BF16), each one translation unit with
its own flags, chosen at run time by CPUID; `RIDGELINE_KERNELS=portable` forces the portable one,
`RIDGELINE_KERNELS=off` disables native code, and `info()` says which path runs and why (records should
name it, e.g. "avx512 (bf16, vnni)" or "avx2 (fma, f16c): avx512: CPU lacks avx512f, ..."). Without a
compiler the package installs without the extension and everything here raises RidgelineError with the
reason ("native kernels unavailable: off: extension not built: ..."); callers record it and fall back.
`RIDGELINE_BUILD_AVX512_EMU=1` adds a test-only build of the AVX-512 code against SIMDe, so the AVX-512
logic is tested on machines without AVX-512 (tests/test_kernels.py).

API
* runtime: `info()`, `available()`, `native()`, `set_num_threads(n)` / `get_num_threads()` (default
  torch.get_num_threads()), `set_spin_us(us)`, `pool_overhead()`.
* `PackedLinear` (linear.py): `from_float(w, "f32"|"bf16")`, `from_blocks(codec bytes, fmt, shape)`,
  `from_int(codes, scale, zero, bits, group, mins=None, perm=None)`; `packed(x)` is x·Wᵀ (+ bias) for
  float32 activations, M <= 16 rows per kernel call. `quantize_activation(x, act_mode)` gives the int8
  activation blocks the W8A8/W4A8 kernels use. `FORMATS`, `BLOCK_FORMATS`, `ACT_MODES`, `native_format`.
* `pack_module(module)` (pack.py): nn.Linear and ridgeline.quant's modules as `quantize_` leaves them.
* `NativeCausalLM.from_hf(model, max_len, head_format=, float_format=, kv_dtype=)` (model.py): `reset()`,
  `prefill(ids)`, `decode(token)`, `length`, `forward(tokens, positions, visibility)`, `truncate(n)`,
  `compact(keep)`, plus `greedy(model, ids, n)` and `check_supported(model, max_len)`.
* `reference` (reference.py): float64 references and the rounding bounds the tests use.

Formats with a native kernel: f32, bf16; q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k (so every tensor
of a Q4_K_M SmolLM2: q5_0, q8_0, q4_k, q6_k); mxfp4, mxint8; Harmonia BFP bfp32m4, bfp32m8; int8 per
channel (Int8Linear, W8A8Linear with its per-row activation scale) and int4 / int8 per group with zero
points (RTN, GPTQ, ragged last group, act-order through a column permutation), torch's Int4Linear.

Not here yet (precisely):
* KV caches in stored formats: attention reads the cache through `KVStore` (csrc/kv.h: write a token's
  K/V, dot a few queries with a slot range's keys, accumulate a slot range's values, move a slot), and
  only fp32/bf16/fp16 stores exist. KIVI needs a store with, per layer and KV head, packed 2/4-bit key
  codes per channel over groups of G tokens with fp16 scale/zero per (channel, group), the full-precision
  key tail of T mod R tokens, per-token value codes with per-G-channel fp16 scale/zero and the last R
  values in full precision (kv/kivi.py's exact rounding and bit order); `dot_keys` would dequantize one
  group's 32x64 codes at a time in registers. Harmonia needs sink / middle / recent BFP segments
  (bfp encode of kv/harmonia.py, 8-bit mantissa sink and recent, 4-bit middle, demotion of the oldest
  recent token). Until then the native model keeps a float cache and the quantized caches run in torch.
* A16 kernels (float activations times dequantized codes): every quantized format quantizes its
  activation to int8 blocks of 32 as llama.cpp does. On SmolLM2 that moves perplexity by a few tenths
  of a percent against the emulated (float-activation) path, in either direction (measured on 512
  tokens: q8_0 -0.45%, q4_0 -0.22%, int8 +0.59%).
* Other formats (mxint4, mxfp6/mxfp8, bfp with other blocks or mantissas, 2/3/5/6/7-bit integers, IQ
  types, LLM.int8() outlier columns) raise RidgelineError and run emulated.
"""

from ridgeline.kernels.linear import ACT_MODES, BLOCK_FORMATS, FORMATS, PackedLinear, native_format, quantize_activation
from ridgeline.kernels.model import NativeCausalLM, check_supported, greedy
from ridgeline.kernels.pack import pack_module
from ridgeline.kernels.runtime import (available, get_num_threads, info, native, pool_overhead, set_num_threads,
                                       set_spin_us)

__all__ = ["ACT_MODES", "BLOCK_FORMATS", "FORMATS", "NativeCausalLM", "PackedLinear", "available", "check_supported",
           "get_num_threads", "greedy", "info", "native", "native_format", "pack_module", "pool_overhead",
           "quantize_activation", "set_num_threads", "set_spin_us"]
