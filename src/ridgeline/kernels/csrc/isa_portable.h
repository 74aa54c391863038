// The portable ISA: 16-lane vectors as plain arrays, written so that compilers auto-vectorise the
// loops for whatever baseline the host has (SSE2 on x86-64, NEON on aarch64). Same semantics as the
// SIMD variants lane for lane, which is what lets the tests compare the variants.
#pragma once

#include <algorithm>
#include <cmath>
#include "common.h"

namespace rl {

struct Isa {
  static constexpr const char* name = "portable";
  // dot_s8s8 returns the exact signed dot product here (no bias to remove)
  static constexpr int S8_BIAS = 0;

  struct B { alignas(64) uint8_t v[64]; };  // 16 lanes x 4 bytes
  struct I { alignas(64) int32_t v[16]; };
  struct F { alignas(64) float v[16]; };

  // ---- bytes
  static inline B loadb(const void* p) { B r; std::memcpy(r.v, p, 64); return r; }
  static inline B band(B a, B b) { for (int i = 0; i < 64; ++i) a.v[i] &= b.v[i]; return a; }
  static inline B bor(B a, B b) { for (int i = 0; i < 64; ++i) a.v[i] |= b.v[i]; return a; }
  static inline B set1b(uint8_t x) { B r; std::memset(r.v, x, 64); return r; }
  static inline B nib_lo(B a) { for (int i = 0; i < 64; ++i) a.v[i] &= 0x0f; return a; }
  static inline B nib_hi(B a) { for (int i = 0; i < 64; ++i) a.v[i] >>= 4; return a; }
  // shifts of each 32-bit lane (bit planes)
  static inline B srl32(B a, int n) {
    for (int l = 0; l < 16; ++l) { uint32_t x; std::memcpy(&x, a.v + 4 * l, 4); x >>= n; std::memcpy(a.v + 4 * l, &x, 4); }
    return a;
  }
  static inline B sll32(B a, int n) {
    for (int l = 0; l < 16; ++l) { uint32_t x; std::memcpy(&x, a.v + 4 * l, 4); x <<= n; std::memcpy(a.v + 4 * l, &x, 4); }
    return a;
  }
  // bytes of `idx` (each < 16) replaced by table[idx]
  static inline B lut16(B idx, const uint8_t* table) { for (int i = 0; i < 64; ++i) idx.v[i] = table[idx.v[i] & 15]; return idx; }

  // ---- integer dot products of 4 bytes per lane with a broadcast 4-byte activation word
  static inline I dot_u8s8(I acc, B u, int32_t a4) {
    int8_t a[4]; std::memcpy(a, &a4, 4);
    for (int l = 0; l < 16; ++l)
      acc.v[l] += u.v[4 * l] * a[0] + u.v[4 * l + 1] * a[1] + u.v[4 * l + 2] * a[2] + u.v[4 * l + 3] * a[3];
    return acc;
  }
  static inline I dot_s8s8(I acc, B w, int32_t a4) {
    int8_t a[4]; std::memcpy(a, &a4, 4);
    const int8_t* s = reinterpret_cast<const int8_t*>(w.v);
    for (int l = 0; l < 16; ++l)
      acc.v[l] += s[4 * l] * a[0] + s[4 * l + 1] * a[1] + s[4 * l + 2] * a[2] + s[4 * l + 3] * a[3];
    return acc;
  }
  // the narrow accumulator of small-code dot products (int16 on AVX2) is plain int32 here
  using W = I;
  static inline W wzero() { return seti(0); }
  static inline W wdot(W acc, B u, int32_t a4) { return dot_u8s8(acc, u, a4); }
  static inline I wflush(I acc, W w) { return addi(acc, w); }
  // acc + w[2l]*x0 + w[2l+1]*x1 for bf16 pairs per lane; x0, x1 are bf16-valued floats, pair their bits
  static inline F dot_bf16(F acc, B w, uint32_t /*pair*/, float x0, float x1) {
    for (int l = 0; l < 16; ++l) {
      uint16_t h[2]; std::memcpy(h, w.v + 4 * l, 4);
      acc.v[l] += bf16_to_f32(h[0]) * x0;
      acc.v[l] += bf16_to_f32(h[1]) * x1;
    }
    return acc;
  }

  // ---- int32 lanes
  static inline I seti(int32_t x) { I r; for (int l = 0; l < 16; ++l) r.v[l] = x; return r; }
  static inline I addi(I a, I b) { for (int l = 0; l < 16; ++l) a.v[l] += b.v[l]; return a; }
  static inline I subi(I a, I b) { for (int l = 0; l < 16; ++l) a.v[l] -= b.v[l]; return a; }
  static inline I muli(I a, I b) { for (int l = 0; l < 16; ++l) a.v[l] *= b.v[l]; return a; }
  static inline I load_u8(const uint8_t* p) { I r; for (int l = 0; l < 16; ++l) r.v[l] = p[l]; return r; }
  static inline I load_s8(const int8_t* p) { I r; for (int l = 0; l < 16; ++l) r.v[l] = p[l]; return r; }
  static inline I loadi(const int32_t* p) { I r; std::memcpy(r.v, p, 64); return r; }
  static inline void storei(int32_t* p, I a) { std::memcpy(p, a.v, 64); }
  static inline int32_t reduce_addi(I a) { int32_t s = 0; for (int l = 0; l < 16; ++l) s += a.v[l]; return s; }

  // ---- float lanes
  static inline F setf(float x) { F r; for (int l = 0; l < 16; ++l) r.v[l] = x; return r; }
  static inline F zerof() { return setf(0.0f); }
  static inline F loadf(const float* p) { F r; std::memcpy(r.v, p, 64); return r; }
  static inline void storef(float* p, F a) { std::memcpy(p, a.v, 64); }
  static inline F addf(F a, F b) { for (int l = 0; l < 16; ++l) a.v[l] += b.v[l]; return a; }
  static inline F subf(F a, F b) { for (int l = 0; l < 16; ++l) a.v[l] -= b.v[l]; return a; }
  static inline F mulf(F a, F b) { for (int l = 0; l < 16; ++l) a.v[l] *= b.v[l]; return a; }
  static inline F maxf(F a, F b) { for (int l = 0; l < 16; ++l) a.v[l] = std::max(a.v[l], b.v[l]); return a; }
  static inline F absf(F a) { for (int l = 0; l < 16; ++l) a.v[l] = std::fabs(a.v[l]); return a; }
  // a*b + c; not fused here (a baseline CPU has no FMA and std::fma would be a slow libm call), so the
  // portable path differs from the SIMD ones in the last bit of some sums: the tests allow for that
  static inline F fmadd(F a, F b, F c) { for (int l = 0; l < 16; ++l) c.v[l] = a.v[l] * b.v[l] + c.v[l]; return c; }
  static inline F cvtf(I a) { F r; for (int l = 0; l < 16; ++l) r.v[l] = float(a.v[l]); return r; }
  // round to the nearest integer, ties to even (the default rounding mode)
  static inline I cvt_round(F a) { I r; for (int l = 0; l < 16; ++l) r.v[l] = int32_t(std::nearbyint(a.v[l])); return r; }
  static inline F roundf_even(F a) { for (int l = 0; l < 16; ++l) a.v[l] = std::nearbyint(a.v[l]); return a; }
  static inline F pow2i(I n) { F r; for (int l = 0; l < 16; ++l) r.v[l] = bits_f32(uint32_t(n.v[l] + 127) << 23); return r; }
  static inline float reduce_addf(F a) {
    // pairwise, in the same tree as the SIMD variants (16 -> 8 -> 4 -> 2 -> 1)
    for (int w = 8; w >= 1; w /= 2) for (int l = 0; l < w; ++l) a.v[l] += a.v[l + w];
    return a.v[0];
  }
  static inline float reduce_maxf(F a) { float m = a.v[0]; for (int l = 1; l < 16; ++l) m = std::max(m, a.v[l]); return m; }
  static inline F load_f16(const uint16_t* p) { F r; for (int l = 0; l < 16; ++l) r.v[l] = f16_to_f32(p[l]); return r; }
  static inline F load_bf16(const uint16_t* p) { F r; for (int l = 0; l < 16; ++l) r.v[l] = bf16_to_f32(p[l]); return r; }
  static inline void store_bf16(uint16_t* p, F a) { for (int l = 0; l < 16; ++l) p[l] = f32_to_bf16(a.v[l]); }
  static inline void store_f16(uint16_t* p, F a) { for (int l = 0; l < 16; ++l) p[l] = f32_to_f16(a.v[l]); }
  static inline F round_bf16(F a) { for (int l = 0; l < 16; ++l) a.v[l] = rl::round_bf16(a.v[l]); return a; }
  // 16 int32 already in [-128, 127] -> 16 bytes
  static inline void store_i8(int8_t* p, I a) { for (int l = 0; l < 16; ++l) p[l] = int8_t(a.v[l]); }
};

}  // namespace rl
