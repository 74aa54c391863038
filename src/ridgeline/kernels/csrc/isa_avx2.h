// The AVX2 ISA (plus FMA and F16C): a 16-lane vector is two 256-bit registers, rows 0-7 and 8-15.
// There is no 8-bit dot-product instruction, so dot_u8s8 is vpmaddubsw + vpmaddwd (exact while
// 2 * u * |a| < 2^15, i.e. u <= 127: every 4/5/6-bit code and table here), and dot_s8s8 is
// llama.cpp's sign trick (|w| unsigned times a carrying w's sign), exact for all int8 w.
#pragma once

#include <immintrin.h>
#include "common.h"

namespace rl {

struct Isa {
  static constexpr const char* name = "avx2";
  static constexpr int S8_BIAS = 0;

  struct B { __m256i a, b; };
  struct I { __m256i a, b; };
  struct F { __m256 a, b; };

  // ---- bytes
  static inline B loadb(const void* p) {
    auto q = static_cast<const __m256i*>(p);
    return {_mm256_loadu_si256(q), _mm256_loadu_si256(q + 1)};
  }
  static inline B band(B x, B y) { return {_mm256_and_si256(x.a, y.a), _mm256_and_si256(x.b, y.b)}; }
  static inline B bor(B x, B y) { return {_mm256_or_si256(x.a, y.a), _mm256_or_si256(x.b, y.b)}; }
  static inline B set1b(uint8_t v) { __m256i s = _mm256_set1_epi8(char(v)); return {s, s}; }
  static inline B nib_lo(B x) { __m256i m = _mm256_set1_epi8(0x0f); return {_mm256_and_si256(x.a, m), _mm256_and_si256(x.b, m)}; }
  static inline B nib_hi(B x) {
    __m256i m = _mm256_set1_epi8(0x0f);
    return {_mm256_and_si256(_mm256_srli_epi16(x.a, 4), m), _mm256_and_si256(_mm256_srli_epi16(x.b, 4), m)};
  }
  static inline B srl32(B x, int n) { __m128i c = _mm_cvtsi32_si128(n); return {_mm256_srl_epi32(x.a, c), _mm256_srl_epi32(x.b, c)}; }
  static inline B sll32(B x, int n) { __m128i c = _mm_cvtsi32_si128(n); return {_mm256_sll_epi32(x.a, c), _mm256_sll_epi32(x.b, c)}; }
  static inline B lut16(B idx, const uint8_t* table) {
    __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table)));
    return {_mm256_shuffle_epi8(t, idx.a), _mm256_shuffle_epi8(t, idx.b)};
  }

  // ---- integer dot products
  static inline I dot_u8s8(I acc, B u, int32_t a4) {
    const __m256i a = _mm256_set1_epi32(a4), ones = _mm256_set1_epi16(1);
    __m256i pa = _mm256_madd_epi16(_mm256_maddubs_epi16(u.a, a), ones);
    __m256i pb = _mm256_madd_epi16(_mm256_maddubs_epi16(u.b, a), ones);
    return {_mm256_add_epi32(acc.a, pa), _mm256_add_epi32(acc.b, pb)};
  }
  static inline I dot_s8s8(I acc, B w, int32_t a4) {
    const __m256i a = _mm256_set1_epi32(a4), ones = _mm256_set1_epi16(1);
    // |w| as unsigned bytes (|-128| = 0x80 = 128 unsigned) times a with w's sign: 2*128*127 < 2^15
    __m256i pa = _mm256_maddubs_epi16(_mm256_sign_epi8(w.a, w.a), _mm256_sign_epi8(a, w.a));
    __m256i pb = _mm256_maddubs_epi16(_mm256_sign_epi8(w.b, w.b), _mm256_sign_epi8(a, w.b));
    return {_mm256_add_epi32(acc.a, _mm256_madd_epi16(pa, ones)), _mm256_add_epi32(acc.b, _mm256_madd_epi16(pb, ones))};
  }
  // Narrow accumulator for small codes: vpmaddubsw results summed in int16 over a few quads (the caller
  // bounds how many: sum of 2*u*127 per quad must stay below 2^15), widened once by vpmaddwd. Saves the
  // widening multiply of every quad: 2 instead of 3 operations per 8 rows and 4 columns.
  struct W { __m256i a, b; };
  static inline W wzero() { __m256i z = _mm256_setzero_si256(); return {z, z}; }
  static inline W wdot(W acc, B u, int32_t a4) {
    const __m256i a = _mm256_set1_epi32(a4);
    return {_mm256_add_epi16(acc.a, _mm256_maddubs_epi16(u.a, a)), _mm256_add_epi16(acc.b, _mm256_maddubs_epi16(u.b, a))};
  }
  static inline I wflush(I acc, W w) {
    const __m256i ones = _mm256_set1_epi16(1);
    return {_mm256_add_epi32(acc.a, _mm256_madd_epi16(w.a, ones)), _mm256_add_epi32(acc.b, _mm256_madd_epi16(w.b, ones))};
  }
  static inline F dot_bf16(F acc, B w, uint32_t /*pair*/, float x0, float x1) {
    const __m256i hi = _mm256_set1_epi32(int(0xffff0000u));
    const __m256 v0 = _mm256_set1_ps(x0), v1 = _mm256_set1_ps(x1);
    __m256 ea = _mm256_castsi256_ps(_mm256_slli_epi32(w.a, 16)), oa = _mm256_castsi256_ps(_mm256_and_si256(w.a, hi));
    __m256 eb = _mm256_castsi256_ps(_mm256_slli_epi32(w.b, 16)), ob = _mm256_castsi256_ps(_mm256_and_si256(w.b, hi));
    return {_mm256_fmadd_ps(oa, v1, _mm256_fmadd_ps(ea, v0, acc.a)), _mm256_fmadd_ps(ob, v1, _mm256_fmadd_ps(eb, v0, acc.b))};
  }

  // ---- int32 lanes
  static inline I seti(int32_t x) { __m256i s = _mm256_set1_epi32(x); return {s, s}; }
  static inline I addi(I x, I y) { return {_mm256_add_epi32(x.a, y.a), _mm256_add_epi32(x.b, y.b)}; }
  static inline I subi(I x, I y) { return {_mm256_sub_epi32(x.a, y.a), _mm256_sub_epi32(x.b, y.b)}; }
  static inline I muli(I x, I y) { return {_mm256_mullo_epi32(x.a, y.a), _mm256_mullo_epi32(x.b, y.b)}; }
  static inline I load_u8(const uint8_t* p) {
    return {_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))),
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)))};
  }
  static inline I load_s8(const int8_t* p) {
    return {_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))),
            _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)))};
  }
  static inline I loadi(const int32_t* p) {
    auto q = reinterpret_cast<const __m256i*>(p);
    return {_mm256_loadu_si256(q), _mm256_loadu_si256(q + 1)};
  }
  static inline void storei(int32_t* p, I x) {
    auto q = reinterpret_cast<__m256i*>(p);
    _mm256_storeu_si256(q, x.a);
    _mm256_storeu_si256(q + 1, x.b);
  }
  static inline int32_t reduce_addi(I x) {
    __m256i s = _mm256_add_epi32(x.a, x.b);
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    t = _mm_add_epi32(t, _mm_unpackhi_epi64(t, t));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 1));
    return _mm_cvtsi128_si32(t);
  }

  // ---- float lanes
  static inline F setf(float x) { __m256 s = _mm256_set1_ps(x); return {s, s}; }
  static inline F zerof() { __m256 z = _mm256_setzero_ps(); return {z, z}; }
  static inline F loadf(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static inline void storef(float* p, F x) { _mm256_storeu_ps(p, x.a); _mm256_storeu_ps(p + 8, x.b); }
  static inline F addf(F x, F y) { return {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
  static inline F subf(F x, F y) { return {_mm256_sub_ps(x.a, y.a), _mm256_sub_ps(x.b, y.b)}; }
  static inline F mulf(F x, F y) { return {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
  static inline F maxf(F x, F y) { return {_mm256_max_ps(x.a, y.a), _mm256_max_ps(x.b, y.b)}; }
  static inline F absf(F x) {
    __m256 m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    return {_mm256_and_ps(x.a, m), _mm256_and_ps(x.b, m)};
  }
  static inline F fmadd(F x, F y, F z) { return {_mm256_fmadd_ps(x.a, y.a, z.a), _mm256_fmadd_ps(x.b, y.b, z.b)}; }
  static inline F cvtf(I x) { return {_mm256_cvtepi32_ps(x.a), _mm256_cvtepi32_ps(x.b)}; }
  static inline I cvt_round(F x) { return {_mm256_cvtps_epi32(x.a), _mm256_cvtps_epi32(x.b)}; }
  static inline F roundf_even(F x) {
    constexpr int m = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    return {_mm256_round_ps(x.a, m), _mm256_round_ps(x.b, m)};
  }
  static inline F pow2i(I n) {
    __m256i b = _mm256_set1_epi32(127);
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n.a, b), 23)),
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n.b, b), 23))};
  }
  static inline float reduce_addf(F x) {
    __m256 s = _mm256_add_ps(x.a, x.b);                                               // l + (l+8)
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));    // l + (l+4)
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));                                           // l + (l+2)
    t = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));                                       // l + (l+1)
    return _mm_cvtss_f32(t);
  }
  static inline float reduce_maxf(F x) {
    __m256 s = _mm256_max_ps(x.a, x.b);
    __m128 t = _mm_max_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    t = _mm_max_ps(t, _mm_movehl_ps(t, t));
    t = _mm_max_ss(t, _mm_shuffle_ps(t, t, 1));
    return _mm_cvtss_f32(t);
  }
  static inline F load_f16(const uint16_t* p) {
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)))};
  }
  static inline F load_bf16(const uint16_t* p) {
    auto q = reinterpret_cast<const __m128i*>(p);
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(q)), 16)),
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(q + 1)), 16))};
  }
  // bf16 bits of 8 floats, round to nearest even (the integer trick; NaN inputs never reach here)
  static inline __m256i bf16_bits8(__m256 x) {
    __m256i u = _mm256_castps_si256(x);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    return _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  }
  static inline void store_bf16(uint16_t* p, F x) {
    __m256i v = _mm256_packus_epi32(bf16_bits8(x.a), bf16_bits8(x.b));  // per 128-bit lane: a0-3 b0-3 a4-7 b4-7
    v = _mm256_permute4x64_epi64(v, 0xd8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  }
  static inline void store_f16(uint16_t* p, F x) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x.a, _MM_FROUND_TO_NEAREST_INT));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 8), _mm256_cvtps_ph(x.b, _MM_FROUND_TO_NEAREST_INT));
  }
  static inline F round_bf16(F x) {
    __m256i a = _mm256_slli_epi32(bf16_bits8(x.a), 16), b = _mm256_slli_epi32(bf16_bits8(x.b), 16);
    return {_mm256_castsi256_ps(a), _mm256_castsi256_ps(b)};
  }
  static inline void store_i8(int8_t* p, I x) {
    __m256i w = _mm256_packs_epi32(x.a, x.b);       // a0-3 b0-3 | a4-7 b4-7 (int16)
    __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
    __m128i bytes = _mm_packs_epi16(lo, hi);         // a0-3 b0-3 a4-7 b4-7 (int8)
    bytes = _mm_shuffle_epi8(bytes, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), bytes);
  }
};

}  // namespace rl
