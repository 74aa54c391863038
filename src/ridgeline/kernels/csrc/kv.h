// KV-cache storage behind a small interface, so that attention reads each stored format directly.
//
// A store holds, per layer and KV head, the keys and values of up to `max_len` cache slots. Attention
// (attention.h) never sees the layout: it asks for the dot products of a few query vectors with the
// keys of a slot range, and for the probability-weighted sum of the values of a slot range. A format
// therefore decides how to read its own bytes (a float cache converts; a quantized cache would unpack
// codes and apply its scales inside these two loops) and nothing is dequantized in bulk.
//
// Implemented: FloatKV<T> for fp32, bf16 and fp16 slots ([layer][head][slot][head_dim]).
// Not implemented here yet (ridgeline/kernels/__init__.py says what they need): KIVI (2/4-bit keys per
// channel over G tokens with an fp residual, values per token) and Harmonia BFP (8-bit sink/recent,
// 4-bit middle) — both fit this interface: `write` appends to the fp window and quantizes completed
// groups, `dot_keys`/`add_values` walk the quantized segments, then the fp window.
#pragma once

#include <type_traits>
#include "common.h"

namespace rl {

struct KVStore {
  virtual ~KVStore() = default;
  // store one token's key and/or value (head_dim floats each; either may be null) at `slot`
  virtual void write(int layer, int head, int64_t slot, const float* k, const float* v) = 0;
  // scores[j * n + i] = <q[j], K[t0 + i]> for j < nq, i < n
  virtual void dot_keys(int layer, int head, int64_t t0, int64_t n, const float* const* q, int nq, float* scores) const = 0;
  // acc[j][:] += sum_i p[j * n + i] * V[t0 + i] for j < nq
  virtual void add_values(int layer, int head, int64_t t0, int64_t n, const float* p, int nq, float* const* acc) const = 0;
  // copy slot `from` to slot `to` in every layer and head (cache compaction)
  virtual void move(int64_t from, int64_t to) = 0;
  virtual int64_t bytes() const = 0;
};

// Element conversions of the float stores.
struct F32Elt { using T = float; static float get(T v) { return v; } static T put(float v) { return v; } };
struct BF16Elt { using T = uint16_t; static float get(T v) { return bf16_to_f32(v); } static T put(float v) { return f32_to_bf16(v); } };
struct F16Elt { using T = uint16_t; static float get(T v) { return f16_to_f32(v); } static T put(float v) { return f32_to_f16(v); } };

template <class V, class E>
class FloatKV final : public KVStore {
 public:
  using T = typename E::T;
  using F = typename V::F;

  FloatKV(int layers, int heads, int64_t max_len, int hd)
      : layers_(layers), heads_(heads), max_len_(max_len), hd_(hd),
        k_(size_t(layers) * heads * max_len * hd * sizeof(T)), v_(size_t(layers) * heads * max_len * hd * sizeof(T)) {}

  void write(int layer, int head, int64_t slot, const float* k, const float* v) override {
    if (k) { T* kp = row(k_, layer, head, slot); for (int i = 0; i < hd_; ++i) kp[i] = E::put(k[i]); }
    if (v) { T* vp = row(v_, layer, head, slot); for (int i = 0; i < hd_; ++i) vp[i] = E::put(v[i]); }
  }

  void dot_keys(int layer, int head, int64_t t0, int64_t n, const float* const* q, int nq, float* scores) const override {
    alignas(64) float kf[512];
    for (int64_t i = 0; i < n; ++i) {
      load(row(k_, layer, head, t0 + i), kf);
      for (int j = 0; j < nq; ++j) {
        F s = V::zerof();
        for (int d = 0; d < hd_; d += 16) s = V::fmadd(V::loadf(q[j] + d), V::loadf(kf + d), s);
        scores[int64_t(j) * n + i] = V::reduce_addf(s);
      }
    }
  }

  void add_values(int layer, int head, int64_t t0, int64_t n, const float* p, int nq, float* const* acc) const override {
    alignas(64) float vf[512];
    for (int64_t i = 0; i < n; ++i) {
      load(row(v_, layer, head, t0 + i), vf);
      for (int j = 0; j < nq; ++j) {
        const float pj = p[int64_t(j) * n + i];
        if (pj == 0.0f) continue;
        F pv = V::setf(pj);
        for (int d = 0; d < hd_; d += 16) V::storef(acc[j] + d, V::fmadd(pv, V::loadf(vf + d), V::loadf(acc[j] + d)));
      }
    }
  }

  void move(int64_t from, int64_t to) override {
    if (from == to) return;
    for (int l = 0; l < layers_; ++l)
      for (int h = 0; h < heads_; ++h) {
        std::memcpy(row(k_, l, h, to), row(k_, l, h, from), size_t(hd_) * sizeof(T));
        std::memcpy(row(v_, l, h, to), row(v_, l, h, from), size_t(hd_) * sizeof(T));
      }
  }

  int64_t bytes() const override { return int64_t(k_.size + v_.size); }

 private:
  T* row(const Buffer& b, int layer, int head, int64_t slot) const {
    return b.as<T>() + ((int64_t(layer) * heads_ + head) * max_len_ + slot) * hd_;
  }
  void load(const T* src, float* dst) const {
    if constexpr (std::is_same_v<T, float>) {
      std::memcpy(dst, src, size_t(hd_) * 4);
    } else if constexpr (std::is_same_v<E, BF16Elt>) {
      for (int d = 0; d < hd_; d += 16) V::storef(dst + d, V::load_bf16(src + d));
    } else {
      for (int d = 0; d < hd_; d += 16) V::storef(dst + d, V::load_f16(src + d));
    }
  }

  int layers_, heads_;
  int64_t max_len_;
  int hd_;
  Buffer k_, v_;
};

}  // namespace rl
