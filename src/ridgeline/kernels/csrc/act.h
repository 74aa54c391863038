// Activations in the forms the kernels read, and their quantization.
//
// Q8 (the W8A8 / W4A8 kernels, as llama.cpp's Q8_0 activations): each block of 32 values gets a float
// scale d = amax / 127 and int8 codes q = round_half_even(x * (127 / amax)) (all zero when amax = 0),
// plus integer sums per 16 and per 32 codes and d * sum32: the kernels use them to remove code offsets
// (q4_0's 8, the AVX-512 sign flip's 128) and to apply per-block minimums, once per block instead of
// once per weight. Per-row mode (`per_row`, W8A8Linear's dynamic per-token quantization) uses one scale
// for the whole row, xs = max(amax, 1e-12) / 127, and q = round_half_even(x / xs), exactly as
// ridgeline.quant.linear.W8A8Linear does. MXINT8 mode reproduces ridgeline.quant.mx's mxint8
// fake quantization exactly (power-of-two block scale 2^(floor(log2 amax) - 6), codes within +-127), for
// modules whose activation format is mxint8. The blocks of 32 are what the kernels iterate over.
// BF16: pairs of bf16 bits (one 32-bit word per two columns) and the same values as floats.
// An optional column permutation (GPTQ act-order) is applied before quantizing: packed column i
// reads input column perm[i].
#pragma once

#include <algorithm>
#include "common.h"

namespace rl {

// How int8 activations are scaled: per block of 32 by amax/127, one scale per row (W8A8Linear), or
// per block by a power of two (MXINT8, for modules whose activation format is mxint8).
enum ActMode : int { Q8_BLOCK = 0, Q8_ROW = 1, MXINT8_ACT = 2 };

struct Act {
  int64_t K = 0;
  const float* x = nullptr;  // the float row (F32 kernels)
  uint32_t* bf = nullptr;    // K/2 bf16 pairs, low half = even column
  float* xb = nullptr;       // K floats, the bf16 values
  int8_t* q = nullptr;       // K codes
  float* d = nullptr;        // K/32 block scales
  int32_t* s32 = nullptr;    // K/32 code sums
  int32_t* s16 = nullptr;    // K/16 code sums
  float* ds = nullptr;       // K/32 d * s32
  const int32_t* q4() const { return reinterpret_cast<const int32_t*>(q); }
};

// Storage for the activation forms of up to `rows` rows of up to `K` values each.
struct ActBuffer {
  Buffer mem;
  std::vector<Act> rows;
  int64_t cap_rows = 0, cap_k = 0;

  void ensure(int64_t nrows, int64_t K) {
    if (nrows <= cap_rows && K <= cap_k) return;
    cap_rows = std::max(nrows, cap_rows);
    cap_k = align_up(std::max(K, cap_k), 64);
    const int64_t nb = cap_k / 32;
    // per row: bf (2K) + xb (4K) + q (K) + d, s32, ds (4 nb each) + s16 (8 nb) + gathered floats (4K)
    const int64_t per = align_up(2 * cap_k + 4 * cap_k + cap_k + 12 * nb + 8 * nb + 4 * cap_k, 64);
    mem = Buffer(size_t(per * cap_rows));
    rows.assign(size_t(cap_rows), Act{});
    gathered.clear();
    for (int64_t m = 0; m < cap_rows; ++m) {
      uint8_t* p = mem.data + m * per;
      Act& a = rows[size_t(m)];
      a.bf = reinterpret_cast<uint32_t*>(p); p += 2 * cap_k;
      a.xb = reinterpret_cast<float*>(p); p += 4 * cap_k;
      a.q = reinterpret_cast<int8_t*>(p); p += cap_k;
      a.d = reinterpret_cast<float*>(p); p += 4 * nb;
      a.s32 = reinterpret_cast<int32_t*>(p); p += 4 * nb;
      a.ds = reinterpret_cast<float*>(p); p += 4 * nb;
      a.s16 = reinterpret_cast<int32_t*>(p); p += 8 * nb;
      gathered.push_back(reinterpret_cast<float*>(p));
    }
  }
  std::vector<float*> gathered;  // per-row scratch for permuted inputs
};

template <class V>
struct ActOps {
  using F = typename V::F;
  using I = typename V::I;

  // bf16 pairs of x (K even); x values are rounded to bf16 first
  static void to_bf16(const float* x, int64_t K, Act& a) {
    a.K = K;
    a.x = x;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) V::storef(a.xb + k, V::round_bf16(V::loadf(x + k)));
    for (; k < K; ++k) a.xb[k] = round_bf16(x[k]);
    for (int64_t i = 0; i < K / 2; ++i) a.bf[i] = (f32_bits(a.xb[2 * i]) >> 16) | (f32_bits(a.xb[2 * i + 1]) & 0xffff0000u);
  }

  // int8 blocks of 32 (K a multiple of 32) in mode Q8_BLOCK, Q8_ROW or MXINT8 (see ActMode);
  // perm: optional column gather; gathered: scratch of K floats
  static void to_q8(const float* x, int64_t K, Act& a, int mode, const int32_t* perm, float* gathered) {
    const bool per_row = mode == Q8_ROW;
    if (perm) {
      for (int64_t i = 0; i < K; ++i) gathered[i] = x[perm[i]];
      x = gathered;
    }
    a.K = K;
    a.x = x;
    const int64_t nb = K / 32;
    float row_scale = 0.0f;
    if (per_row) {
      F m = V::zerof();
      for (int64_t k = 0; k < K; k += 16) m = V::maxf(m, V::absf(V::loadf(x + k)));
      row_scale = std::max(V::reduce_maxf(m), 1e-12f) / 127.0f;
    }
    for (int64_t b = 0; b < nb; ++b) {
      F x0 = V::loadf(x + 32 * b), x1 = V::loadf(x + 32 * b + 16);
      I q0, q1;
      float d;
      if (mode == MXINT8_ACT) {
        // OCP MXINT8 with microxcaling's conventions (ridgeline.quant.mx): shared exponent
        // s = floor(log2 amax) in [-127, 127], codes round_half_even(x * 2^(6 - s)) within +-127
        float amax = V::reduce_maxf(V::maxf(V::absf(x0), V::absf(x1)));
        int e = 0;
        std::frexp(amax, &e);
        int s = amax > 0.0f ? std::clamp(e - 1, -127, 127) : -127;
        d = exp2i(s - 6);
        alignas(64) float t[32];
        if (s >= -120) {
          const float up = exp2i(6 - s);
          for (int i = 0; i < 32; ++i) t[i] = x[32 * b + i] * up;  // exact: a power of two
        } else {
          for (int i = 0; i < 32; ++i) t[i] = std::ldexp(x[32 * b + i], 6 - s);
        }
        q0 = V::cvt_round(V::loadf(t));
        q1 = V::cvt_round(V::loadf(t + 16));
        alignas(64) int32_t c[32];
        V::storei(c, q0);
        V::storei(c + 16, q1);
        for (int i = 0; i < 32; ++i) c[i] = std::clamp(c[i], -127, 127);
        q0 = V::loadi(c);
        q1 = V::loadi(c + 16);
      } else if (per_row) {
        d = row_scale;
        // a true division, as W8A8Linear's x / xs (a multiply by 1/xs rounds differently)
        alignas(64) float t[32];
        for (int i = 0; i < 32; ++i) t[i] = x[32 * b + i] / d;
        q0 = V::cvt_round(V::loadf(t));
        q1 = V::cvt_round(V::loadf(t + 16));
      } else {
        float amax = V::reduce_maxf(V::maxf(V::absf(x0), V::absf(x1)));
        d = amax / 127.0f;
        F id = V::setf(amax > 0.0f ? 127.0f / amax : 0.0f);
        q0 = V::cvt_round(V::mulf(x0, id));
        q1 = V::cvt_round(V::mulf(x1, id));
      }
      V::store_i8(a.q + 32 * b, q0);
      V::store_i8(a.q + 32 * b + 16, q1);
      int32_t s0 = V::reduce_addi(q0), s1 = V::reduce_addi(q1);
      a.d[b] = d;
      a.s16[2 * b] = s0;
      a.s16[2 * b + 1] = s1;
      a.s32[b] = s0 + s1;
      a.ds[b] = d * float(s0 + s1);
    }
  }
};

}  // namespace rl
