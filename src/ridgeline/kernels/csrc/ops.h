// The small fused operations of a decode step, vectorised with the ISA's 16-lane vectors.
//
// Numerics follow ridgeline.measure.lean (torch's eager ops) so that the native path and the lean path
// compute the same thing: RMSNorm statistics in fp32; rope as x*cos + roll(x, half)*sin_signed with each
// product and the sum rounded separately (no fused multiply-add, like torch's separate kernels); silu as
// x / (1 + exp(-x)). With `bf16` set (a bf16 model), every result is rounded to bf16 where the torch
// graph holds a bf16 tensor. exp is the Cephes single-precision polynomial (about 1 ulp).
#pragma once

#include "common.h"

namespace rl {

template <class V>
struct Ops {
  using F = typename V::F;
  using I = typename V::I;

  static inline F vexp(F x) {
    x = V::maxf(V::setf(-87.33654f), x);
    x = V::subf(V::setf(0.0f), V::maxf(V::setf(-88.37626f), V::subf(V::setf(0.0f), x)));  // min(x, 88.376)
    F n = V::roundf_even(V::mulf(x, V::setf(1.44269504088896341f)));
    F r = V::fmadd(n, V::setf(-0.693359375f), x);
    r = V::fmadd(n, V::setf(2.12194440e-4f), r);
    F p = V::setf(1.9875691500e-4f);
    p = V::fmadd(p, r, V::setf(1.3981999507e-3f));
    p = V::fmadd(p, r, V::setf(8.3334519073e-3f));
    p = V::fmadd(p, r, V::setf(4.1665795894e-2f));
    p = V::fmadd(p, r, V::setf(1.6666665459e-1f));
    p = V::fmadd(p, r, V::setf(5.0000001201e-1f));
    p = V::fmadd(V::mulf(p, r), r, V::addf(r, V::setf(1.0f)));
    return V::mulf(p, V::pow2i(V::cvt_round(n)));
  }

  static inline float exp1(float x) {
    alignas(64) float t[16];
    V::storef(t, vexp(V::setf(x)));
    return t[0];
  }

  static inline F maybe_round(F x, bool bf16) { return bf16 ? V::round_bf16(x) : x; }
  static inline float maybe_round(float x, bool bf16) { return bf16 ? round_bf16(x) : x; }

  // y = rmsnorm(x) * w over n values (n a multiple of 16). fp32: x * inv * w (F.rms_norm with the weight);
  // bf16: round(round(x * inv) * w) (rms_norm without weight, cast, then times the bf16 weight).
  static void rmsnorm(const float* x, const float* w, int64_t n, float eps, bool bf16, float* y) {
    F s = V::zerof();
    for (int64_t i = 0; i < n; i += 16) { F v = V::loadf(x + i); s = V::fmadd(v, v, s); }
    const float inv = 1.0f / std::sqrt(V::reduce_addf(s) / float(n) + eps);
    const F vinv = V::setf(inv);
    for (int64_t i = 0; i < n; i += 16) {
      F v = V::mulf(V::loadf(x + i), vinv);
      V::storef(y + i, bf16 ? V::round_bf16(V::mulf(V::round_bf16(v), V::loadf(w + i))) : V::mulf(v, V::loadf(w + i)));
    }
  }

  // rope in place on one head of hd values at a position's table rows: y = x*cos + roll(x, hd/2)*sin
  static void rope(float* x, const float* cos, const float* sin, int64_t hd, bool bf16) {
    const int64_t half = hd / 2;
    alignas(64) float r[512];
    for (int64_t i = 0; i < hd; ++i) r[i] = x[(i + half) % hd];
    for (int64_t i = 0; i < hd; i += 16) {
      F a = maybe_round(V::mulf(V::loadf(x + i), V::loadf(cos + i)), bf16);
      F b = maybe_round(V::mulf(V::loadf(r + i), V::loadf(sin + i)), bf16);
      V::storef(x + i, maybe_round(V::addf(a, b), bf16));
    }
  }

  // h = silu(g) * u over n values (n a multiple of 16)
  static void silu_mul(const float* g, const float* u, int64_t n, bool bf16, float* h) {
    for (int64_t i = 0; i < n; i += 16) {
      F gv = V::loadf(g + i);
      F e = vexp(V::subf(V::zerof(), gv));
      // x / (1 + exp(-x)) as a true division (torch's silu), per lane
      alignas(64) float num[16], den[16], out[16];
      V::storef(num, gv);
      V::storef(den, V::addf(V::setf(1.0f), e));
      for (int l = 0; l < 16; ++l) out[l] = num[l] / den[l];
      F s = maybe_round(V::loadf(out), bf16);
      V::storef(h + i, maybe_round(V::mulf(s, V::loadf(u + i)), bf16));
    }
  }

  // x = x + y, with bf16: round(x + round(y)) (y is a bf16 tensor in the torch graph)
  static void residual_add(float* x, const float* y, int64_t n, bool bf16) {
    for (int64_t i = 0; i < n; i += 16)
      V::storef(x + i, maybe_round(V::addf(V::loadf(x + i), maybe_round(V::loadf(y + i), bf16)), bf16));
  }
};

}  // namespace rl
