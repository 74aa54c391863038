// Linear kernels: y[m, n] = sum_k W[n, k] * x[m, k] for M <= 16 activation rows over packed weights.
//
// One kernel per format, all with the same shape: a row group (16 output rows) at a time, M rows of
// activations in chunks of up to 4 (MB) so that each 64-byte tile is loaded once per chunk, and for the
// quantized formats an int32 accumulator per block of 32 columns that is converted and scaled once per
// block: acc += float(sum_k u*q) * (w_scale * a_scale) [+ w_min * a_scale * sum(q)]. Code offsets
// (q4_0's 8, q5_0's 16, ...) are folded into the int32 accumulator's start value (-offset * sum(q)),
// so the inner loop is loads, nibble/bit unpacking and dot products only.
//
// Accumulation order (what the float64 references in tests allow for): per row, the int32 block sums
// are exact; blocks are added in increasing order into one fp32 accumulator with one fused multiply-add
// each (the scale product w_scale * a_scale rounded once before). Float weights: 4 fp32 partial sums
// over columns k = 0, 1, 2, 3 mod 4 (M = 1) or one (M > 1), added at the end.
#pragma once

#include "act.h"
#include "packed.h"

namespace rl {

template <class V>
struct Kernels {
  using B = typename V::B;
  using I = typename V::I;
  using F = typename V::F;

  // ---- unpacking helpers: the unsigned codes of quad q (0..7) of a block whose tiles start at t
  static inline B nib(const uint8_t* t, int q) {
    B v = V::loadb(t + 64 * (q & 3));
    return q < 4 ? V::nib_lo(v) : V::nib_hi(v);
  }
  // bit 4 of quad q's codes from a bit tile (byte j, bit q), moved to bit 4 of each byte
  static inline B bit4(B h, int q) {
    B s = q <= 4 ? V::sll32(h, 4 - q) : V::srl32(h, q - 4);
    return V::band(s, V::set1b(0x10));
  }
  // bits 4-5 of quad q's codes from the two 2-bit tiles (byte j, bits 2(q%4)..+1 of tile q/4)
  static inline B bits45(const uint8_t* t2, int q) {
    B h = V::loadb(t2 + 64 * (q >> 2));
    int s = 2 * (q & 3);
    B v = s <= 4 ? V::sll32(h, 4 - s) : V::srl32(h, s - 4);
    return V::band(v, V::set1b(0x30));
  }
  static inline F scale_from_exp(const uint8_t* e) { return V::pow2i(V::subi(V::load_u8(e), V::seti(127))); }

  using W = typename V::W;
  // s[m] += dot products of quads [q0, q1) with the codes unpack(q) gives (unsigned, small), summed in the
  // narrow accumulator and widened every FLUSH quads. FLUSH * 2 * max_code * 127 must stay below 2^15:
  // 4-bit codes 8 quads, 5-bit (and tables up to 31) 4, 6-bit 2.
  template <int MB, int FLUSH, class Unpack>
  static inline void dots(I* s, const Act* const* a, int64_t b, int q0, int q1, Unpack&& unpack) {
    for (int f = q0; f < q1; f += FLUSH) {
      W w[MB];
      for (int m = 0; m < MB; ++m) w[m] = V::wzero();
      for (int q = f; q < f + FLUSH && q < q1; ++q) {
        B u = unpack(q);
        for (int m = 0; m < MB; ++m) w[m] = V::wdot(w[m], u, a[m]->q4()[8 * b + q]);
      }
      for (int m = 0; m < MB; ++m) s[m] = V::wflush(s[m], w[m]);
    }
  }

  // ---- quantized kernels: struct with the row group's sections and `block<MB>`
  template <int OFFSET, bool FIVE>
  struct LegacyQ {  // q4_0 (offset 8), q5_0 (offset 16): fp16 d per block
    const uint16_t* d; const uint8_t* t;
    LegacyQ(const Packed& w, const uint8_t* rg) : d(reinterpret_cast<const uint16_t*>(rg)), t(rg + w.s_bytes) {}
    template <int MB> inline void block(int64_t b, const Act* const* a, F* acc) const {
      constexpr int NT = FIVE ? 5 : 4;
      const uint8_t* tb = t + b * NT * 64;
      I s[MB];
      for (int m = 0; m < MB; ++m) s[m] = V::seti(-OFFSET * a[m]->s32[b]);
      B h = FIVE ? V::loadb(tb + 256) : V::set1b(0);
      dots<MB, FIVE ? 4 : 8>(s, a, b, 0, 8, [&](int q) { B u = nib(tb, q); return FIVE ? V::bor(u, bit4(h, q)) : u; });
      F wd = V::load_f16(d + 16 * b);
      for (int m = 0; m < MB; ++m) acc[m] = V::fmadd(V::cvtf(s[m]), V::mulf(wd, V::setf(a[m]->d[b])), acc[m]);
    }
  };

  template <bool FIVE>
  struct LegacyQ1 {  // q4_1, q5_1: fp16 d and m per block, w = d*q + m
    const uint16_t* d; const uint8_t* t;
    LegacyQ1(const Packed& w, const uint8_t* rg) : d(reinterpret_cast<const uint16_t*>(rg)), t(rg + w.s_bytes) {}
    template <int MB> inline void block(int64_t b, const Act* const* a, F* acc) const {
      constexpr int NT = FIVE ? 5 : 4;
      const uint8_t* tb = t + b * NT * 64;
      I s[MB];
      for (int m = 0; m < MB; ++m) s[m] = V::seti(0);
      B h = FIVE ? V::loadb(tb + 256) : V::set1b(0);
      dots<MB, FIVE ? 4 : 8>(s, a, b, 0, 8, [&](int q) { B u = nib(tb, q); return FIVE ? V::bor(u, bit4(h, q)) : u; });
      F wd = V::load_f16(d + 32 * b), wm = V::load_f16(d + 32 * b + 16);
      for (int m = 0; m < MB; ++m) {
        F t1 = V::fmadd(wm, V::setf(a[m]->ds[b]), acc[m]);
        acc[m] = V::fmadd(V::cvtf(s[m]), V::mulf(wd, V::setf(a[m]->d[b])), t1);
      }
    }
  };

  struct Q8 {  // q8_0: signed bytes, fp16 d per block
    const uint16_t* d; const uint8_t* t;
    Q8(const Packed& w, const uint8_t* rg) : d(reinterpret_cast<const uint16_t*>(rg)), t(rg + w.s_bytes) {}
    template <int MB> inline void block(int64_t b, const Act* const* a, F* acc) const {
      const uint8_t* tb = t + b * 512;
      I s[MB];
      for (int m = 0; m < MB; ++m) s[m] = V::seti(-V::S8_BIAS * a[m]->s32[b]);
      for (int q = 0; q < 8; ++q) {
        B w = V::loadb(tb + 64 * q);
        for (int m = 0; m < MB; ++m) s[m] = V::dot_s8s8(s[m], w, a[m]->q4()[8 * b + q]);
      }
      F wd = V::load_f16(d + 16 * b);
      for (int m = 0; m < MB; ++m) acc[m] = V::fmadd(V::cvtf(s[m]), V::mulf(wd, V::setf(a[m]->d[b])), acc[m]);
    }
  };

  struct MXInt8 {  // mxint8: signed bytes, scale 2^(e-127-6) from the exponent field
    const uint8_t* e; const uint8_t* t;
    MXInt8(const Packed& w, const uint8_t* rg) : e(rg), t(rg + w.s_bytes) {}
    template <int MB> inline void block(int64_t b, const Act* const* a, F* acc) const {
      const uint8_t* tb = t + b * 512;
      I s[MB];
      for (int m = 0; m < MB; ++m) s[m] = V::seti(-V::S8_BIAS * a[m]->s32[b]);
      for (int q = 0; q < 8; ++q) {
        B w = V::loadb(tb + 64 * q);
        for (int m = 0; m < MB; ++m) s[m] = V::dot_s8s8(s[m], w, a[m]->q4()[8 * b + q]);
      }
      F ws = scale_from_exp(e + 16 * b);
      for (int m = 0; m < MB; ++m) acc[m] = V::fmadd(V::cvtf(s[m]), V::mulf(ws, V::setf(a[m]->d[b])), acc[m]);
    }
  };

  struct MXFP4 {  // mxfp4: E2M1 nibbles looked up as doubled integers + 12, scale 2^(e-128)
    const uint8_t* e; const uint8_t* t;
    MXFP4(const Packed& w, const uint8_t* rg) : e(rg), t(rg + w.s_bytes) {}
    template <int MB> inline void block(int64_t b, const Act* const* a, F* acc) const {
      alignas(16) static constexpr uint8_t table[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};
      const uint8_t* tb = t + b * 256;
      I s[MB];
      for (int m = 0; m < MB; ++m) s[m] = V::seti(-12 * a[m]->s32[b]);
      dots<MB, 4>(s, a, b, 0, 8, [&](int q) { return V::lut16(nib(tb, q), table); });
      F ws = scale_from_exp(e + 16 * b);
      for (int m = 0; m < MB; ++m) acc[m] = V::fmadd(V::cvtf(s[m]), V::mulf(ws, V::setf(a[m]->d[b])), acc[m]);
    }
  };

  template <bool EIGHT>
  struct BFP {  // bfp32m4 (u = k + 15, 5 bits), bfp32m8 (u = k + 255 = 32h + l); scale from the exponent field
    const uint8_t* e; const uint8_t* t;
    BFP(const Packed& w, const uint8_t* rg) : e(rg), t(rg + w.s_bytes) {}
    template <int MB> inline void block(int64_t b, const Act* const* a, F* acc) const {
      constexpr int NT = EIGHT ? 9 : 5, OFF = EIGHT ? 255 : 15;
      const uint8_t* tb = t + b * NT * 64;
      I s[MB], sh[MB];
      for (int m = 0; m < MB; ++m) { s[m] = V::seti(-OFF * a[m]->s32[b]); sh[m] = V::seti(0); }
      B h = V::loadb(tb + 256);
      dots<MB, 4>(s, a, b, 0, 8, [&](int q) { return V::bor(nib(tb, q), bit4(h, q)); });
      if (EIGHT) dots<MB, 8>(sh, a, b, 0, 8, [&](int q) { return nib(tb + 320, q); });
      F ws = scale_from_exp(e + 16 * b);
      for (int m = 0; m < MB; ++m) {
        I tot = EIGHT ? V::addi(s[m], V::muli(sh[m], V::seti(32))) : s[m];
        acc[m] = V::fmadd(V::cvtf(tot), V::mulf(ws, V::setf(a[m]->d[b])), acc[m]);
      }
    }
  };

  template <bool FIVE>
  struct KQuant45 {  // q4_k, q5_k: per superblock fp16 d, dmin; per block 6-bit sc, m: w = d*sc*q - dmin*m
    const uint8_t* sbase; const uint8_t* t;
    KQuant45(const Packed& w, const uint8_t* rg) : sbase(rg), t(rg + w.s_bytes) {}
    template <int MB> inline void block(int64_t b, const Act* const* a, F* acc) const {
      constexpr int NT = FIVE ? 5 : 4;
      const uint8_t* tb = t + b * NT * 64;
      const uint8_t* S = sbase + (b >> 3) * 320;
      const int j = int(b & 7);
      I s[MB];
      for (int m = 0; m < MB; ++m) s[m] = V::seti(0);
      B h = FIVE ? V::loadb(tb + 256) : V::set1b(0);
      dots<MB, FIVE ? 4 : 8>(s, a, b, 0, 8, [&](int q) { B u = nib(tb, q); return FIVE ? V::bor(u, bit4(h, q)) : u; });
      const uint16_t* S16 = reinterpret_cast<const uint16_t*>(S);
      // (d*sc) and (dmin*m) rounded to fp32 as ggml's dequantization does
      F sc = V::mulf(V::load_f16(S16), V::cvtf(V::load_u8(S + 64 + 16 * j)));
      F mn = V::mulf(V::load_f16(S16 + 16), V::cvtf(V::load_u8(S + 192 + 16 * j)));
      for (int m = 0; m < MB; ++m) {
        F t1 = V::fmadd(V::subf(V::zerof(), mn), V::setf(a[m]->ds[b]), acc[m]);
        acc[m] = V::fmadd(V::cvtf(s[m]), V::mulf(sc, V::setf(a[m]->d[b])), t1);
      }
    }
  };

  struct Q6K {  // q6_k: per superblock fp16 d; s8 scale per 16 columns; w = d*sc*(q - 32)
    const uint8_t* sbase; const uint8_t* t;
    Q6K(const Packed& w, const uint8_t* rg) : sbase(rg), t(rg + w.s_bytes) {}
    template <int MB> inline void block(int64_t b, const Act* const* a, F* acc) const {
      const uint8_t* tb = t + b * 6 * 64;
      const uint8_t* S = sbase + (b >> 3) * 288;
      const int j = int(b & 7);
      I lo[MB], hi[MB];  // the two sub-blocks of 16: quads 0-3 and 4-7
      for (int m = 0; m < MB; ++m) { lo[m] = V::seti(-32 * a[m]->s16[2 * b]); hi[m] = V::seti(-32 * a[m]->s16[2 * b + 1]); }
      auto unpack = [&](int q) { return V::bor(nib(tb, q), bits45(tb + 256, q)); };
      dots<MB, 2>(lo, a, b, 0, 4, unpack);
      dots<MB, 2>(hi, a, b, 4, 8, unpack);
      I sl = V::load_s8(reinterpret_cast<const int8_t*>(S + 32 + 16 * (2 * j)));
      I sh = V::load_s8(reinterpret_cast<const int8_t*>(S + 32 + 16 * (2 * j + 1)));
      F d = V::load_f16(reinterpret_cast<const uint16_t*>(S));
      for (int m = 0; m < MB; ++m) {
        I tot = V::addi(V::muli(lo[m], sl), V::muli(hi[m], sh));  // exact: |tot| < 2^26
        acc[m] = V::fmadd(V::cvtf(tot), V::mulf(d, V::setf(a[m]->d[b])), acc[m]);
      }
    }
  };

  template <bool EIGHT>
  struct IntG {  // integer codes per group: w = s * (q - z) [+ m]; 8-bit codes stored as q - 128, z - 128
    const float* sc; const int8_t* z; const float* mn; const uint8_t* t; int64_t group; bool has_min;
    IntG(const Packed& w, const uint8_t* rg)
        : sc(reinterpret_cast<const float*>(rg)), z(reinterpret_cast<const int8_t*>(rg + w.ngroups * 64)),
          mn(reinterpret_cast<const float*>(rg + w.ngroups * 80)), t(rg + w.s_bytes), group(w.group), has_min(w.has_min) {}
    template <int MB> inline void block(int64_t b, const Act* const* a, F* acc) const {
      const int64_t g = b * 32 / group;
      I zi = V::load_s8(z + 16 * g);
      I s[MB];
      for (int m = 0; m < MB; ++m) {
        I base = V::muli(zi, V::seti(-a[m]->s32[b]));
        s[m] = EIGHT ? V::subi(base, V::seti(V::S8_BIAS * a[m]->s32[b])) : base;
      }
      if (EIGHT) {
        const uint8_t* tb = t + b * 512;
        for (int q = 0; q < 8; ++q) {
          B w = V::loadb(tb + 64 * q);
          for (int m = 0; m < MB; ++m) s[m] = V::dot_s8s8(s[m], w, a[m]->q4()[8 * b + q]);
        }
      } else {
        const uint8_t* tb = t + b * 256;
        dots<MB, 8>(s, a, b, 0, 8, [&](int q) { return nib(tb, q); });
      }
      F ws = V::loadf(sc + 16 * g);
      for (int m = 0; m < MB; ++m) {
        F t1 = has_min ? V::fmadd(V::loadf(mn + 16 * g), V::setf(a[m]->ds[b]), acc[m]) : acc[m];
        acc[m] = V::fmadd(V::cvtf(s[m]), V::mulf(ws, V::setf(a[m]->d[b])), t1);
      }
    }
  };

  // ---- drivers
  template <class K, int MB, class Epi>
  static inline void quant_tile(const K& k, int64_t nb, const Act* const* a, int64_t g, int m0, Epi& epi) {
    F acc[MB];
    for (int m = 0; m < MB; ++m) acc[m] = V::zerof();
    for (int64_t b = 0; b < nb; ++b) k.template block<MB>(b, a, acc);
    alignas(64) float out[16];
    for (int m = 0; m < MB; ++m) { V::storef(out, acc[m]); epi(g, m0 + m, out); }
  }

  template <int MB, class Epi>
  static inline void f32_tile(const uint8_t* t, int64_t K, const Act* const* a, int64_t g, int m0, Epi& epi) {
    constexpr int P = MB == 1 ? 4 : 1;  // partial sums: hide the FMA latency when there is one row
    F acc[MB][P];
    for (int m = 0; m < MB; ++m) for (int p = 0; p < P; ++p) acc[m][p] = V::zerof();
    int64_t k = 0;
    for (; k + P <= K; k += P)
      for (int p = 0; p < P; ++p) {
        F w = V::loadf(reinterpret_cast<const float*>(t + (k + p) * 64));
        for (int m = 0; m < MB; ++m) acc[m][p] = V::fmadd(w, V::setf(a[m]->x[k + p]), acc[m][p]);
      }
    for (; k < K; ++k) {
      F w = V::loadf(reinterpret_cast<const float*>(t + k * 64));
      for (int m = 0; m < MB; ++m) acc[m][0] = V::fmadd(w, V::setf(a[m]->x[k]), acc[m][0]);
    }
    alignas(64) float out[16];
    for (int m = 0; m < MB; ++m) {
      F s = acc[m][0];
      for (int p = 1; p < P; ++p) s = V::addf(s, acc[m][p]);
      V::storef(out, s);
      epi(g, m0 + m, out);
    }
  }

  template <int MB, class Epi>
  static inline void bf16_tile(const uint8_t* t, int64_t K, const Act* const* a, int64_t g, int m0, Epi& epi) {
    constexpr int P = MB == 1 ? 4 : 1;
    const int64_t K2 = K / 2;
    F acc[MB][P];
    for (int m = 0; m < MB; ++m) for (int p = 0; p < P; ++p) acc[m][p] = V::zerof();
    int64_t k = 0;
    for (; k + P <= K2; k += P)
      for (int p = 0; p < P; ++p) {
        B w = V::loadb(t + (k + p) * 64);
        for (int m = 0; m < MB; ++m)
          acc[m][p] = V::dot_bf16(acc[m][p], w, a[m]->bf[k + p], a[m]->xb[2 * (k + p)], a[m]->xb[2 * (k + p) + 1]);
      }
    for (; k < K2; ++k) {
      B w = V::loadb(t + k * 64);
      for (int m = 0; m < MB; ++m) acc[m][0] = V::dot_bf16(acc[m][0], w, a[m]->bf[k], a[m]->xb[2 * k], a[m]->xb[2 * k + 1]);
    }
    alignas(64) float out[16];
    for (int m = 0; m < MB; ++m) {
      F s = acc[m][0];
      for (int p = 1; p < P; ++p) s = V::addf(s, acc[m][p]);
      V::storef(out, s);
      epi(g, m0 + m, out);
    }
  }

  template <class K, class Epi>
  static void quant_rows(const Packed& w, const Act* const* a, int M, int64_t g0, int64_t g1, Epi& epi) {
    for (int64_t g = g0; g < g1; ++g) {
      const uint8_t* rg = w.rowgroup(g);
      const uint8_t* next = w.rowgroup(std::min(g + 1, w.ng - 1));
      __builtin_prefetch(next);
      K k(w, rg);
      for (int m0 = 0; m0 < M; m0 += 4) {
        switch (std::min(4, M - m0)) {
          case 1: quant_tile<K, 1>(k, w.nb, a + m0, g, m0, epi); break;
          case 2: quant_tile<K, 2>(k, w.nb, a + m0, g, m0, epi); break;
          case 3: quant_tile<K, 3>(k, w.nb, a + m0, g, m0, epi); break;
          default: quant_tile<K, 4>(k, w.nb, a + m0, g, m0, epi); break;
        }
      }
    }
  }

  template <class Epi>
  static void float_rows(const Packed& w, const Act* const* a, int M, int64_t g0, int64_t g1, Epi& epi) {
    for (int64_t g = g0; g < g1; ++g) {
      const uint8_t* t = w.rowgroup(g) + w.s_bytes;
      for (int m0 = 0; m0 < M; m0 += 4) {
        const int mb = std::min(4, M - m0);
        if (w.fmt == Fmt::F32) {
          switch (mb) {
            case 1: f32_tile<1>(t, w.K, a + m0, g, m0, epi); break;
            case 2: f32_tile<2>(t, w.K, a + m0, g, m0, epi); break;
            case 3: f32_tile<3>(t, w.K, a + m0, g, m0, epi); break;
            default: f32_tile<4>(t, w.K, a + m0, g, m0, epi); break;
          }
        } else {
          switch (mb) {
            case 1: bf16_tile<1>(t, w.K, a + m0, g, m0, epi); break;
            case 2: bf16_tile<2>(t, w.K, a + m0, g, m0, epi); break;
            case 3: bf16_tile<3>(t, w.K, a + m0, g, m0, epi); break;
            default: bf16_tile<4>(t, w.K, a + m0, g, m0, epi); break;
          }
        }
      }
    }
  }

  // Row groups [g0, g1) of w for activation rows a[0..M); epi(g, m, const float* out16) receives each
  // row group's 16 results for activation row m (rows past N hold zeros).
  template <class Epi>
  static void rows(const Packed& w, const Act* const* a, int M, int64_t g0, int64_t g1, Epi& epi) {
    switch (w.fmt) {
      case Fmt::F32: case Fmt::BF16: float_rows(w, a, M, g0, g1, epi); break;
      case Fmt::Q8_0: quant_rows<Q8>(w, a, M, g0, g1, epi); break;
      case Fmt::Q4_0: quant_rows<LegacyQ<8, false>>(w, a, M, g0, g1, epi); break;
      case Fmt::Q5_0: quant_rows<LegacyQ<16, true>>(w, a, M, g0, g1, epi); break;
      case Fmt::Q4_1: quant_rows<LegacyQ1<false>>(w, a, M, g0, g1, epi); break;
      case Fmt::Q5_1: quant_rows<LegacyQ1<true>>(w, a, M, g0, g1, epi); break;
      case Fmt::Q4_K: quant_rows<KQuant45<false>>(w, a, M, g0, g1, epi); break;
      case Fmt::Q5_K: quant_rows<KQuant45<true>>(w, a, M, g0, g1, epi); break;
      case Fmt::Q6_K: quant_rows<Q6K>(w, a, M, g0, g1, epi); break;
      case Fmt::MXINT8: quant_rows<MXInt8>(w, a, M, g0, g1, epi); break;
      case Fmt::MXFP4: quant_rows<MXFP4>(w, a, M, g0, g1, epi); break;
      case Fmt::BFP4: quant_rows<BFP<false>>(w, a, M, g0, g1, epi); break;
      case Fmt::BFP8: quant_rows<BFP<true>>(w, a, M, g0, g1, epi); break;
      case Fmt::INT8: quant_rows<IntG<true>>(w, a, M, g0, g1, epi); break;
      case Fmt::INT4: quant_rows<IntG<false>>(w, a, M, g0, g1, epi); break;
      default: throw Error("no kernel for this format");
    }
  }
};

}  // namespace rl
