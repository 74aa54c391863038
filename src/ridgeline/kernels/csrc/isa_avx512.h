// The AVX-512 ISA (F, BW, VL, DQ, VNNI, BF16): a 16-lane vector is one 512-bit register.
// dot_u8s8 is one vpdpbusd (unsigned bytes times signed bytes, 4 per lane). vpdpbusd has no signed x
// signed form, so dot_s8s8 flips the weight's sign bit (w + 128, unsigned) and the caller removes the
// extra 128 * sum(a) once per block (S8_BIAS). dot_bf16 is one vdpbf16ps.
//
// With RL_SIMDE defined the same code compiles against SIMDe's portable implementations of these
// intrinsics (a test build that checks this file's logic on CPUs without AVX-512; never shipped).
#pragma once

#ifdef RL_SIMDE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#else
#include <immintrin.h>
#endif
#include "common.h"

namespace rl {

// Intrinsics SIMDe 0.7 lacks get 256-bit-halves fill-ins under RL_SIMDE; natively they are the real ones.
#ifdef RL_SIMDE
namespace x512 {
inline __m256i lo_i(__m512i a) { return _mm512_castsi512_si256(a); }
inline __m256i hi_i(__m512i a) { return _mm512_extracti64x4_epi64(a, 1); }
inline __m512i join_i(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }
inline __m256 lo_f(__m512 a) { return _mm512_castps512_ps256(a); }
inline __m256 hi_f(__m512 a) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)); }
inline __m512 join_f(__m256 lo, __m256 hi) { return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1); }
inline __m512i cvtepu8_epi32(__m128i a) { return join_i(_mm256_cvtepu8_epi32(a), _mm256_cvtepu8_epi32(_mm_srli_si128(a, 8))); }
inline __m512i cvtepi8_epi32(__m128i a) { return join_i(_mm256_cvtepi8_epi32(a), _mm256_cvtepi8_epi32(_mm_srli_si128(a, 8))); }
inline __m512i cvtepu16_epi32(__m256i a) {
  return join_i(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(a)), _mm256_cvtepu16_epi32(_mm256_extracti128_si256(a, 1)));
}
inline __m256i cvtepi32_epi16(__m512i a) {  // truncating, as vpmovdw
  alignas(64) int32_t v[16]; alignas(32) int16_t r[16];
  _mm512_storeu_si512(v, a);
  for (int i = 0; i < 16; ++i) r[i] = int16_t(v[i]);
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(r));
}
inline __m128i cvtepi32_epi8(__m512i a) {  // truncating, as vpmovdb
  alignas(64) int32_t v[16]; alignas(16) int8_t r[16];
  _mm512_storeu_si512(v, a);
  for (int i = 0; i < 16; ++i) r[i] = int8_t(v[i]);
  return _mm_load_si128(reinterpret_cast<const __m128i*>(r));
}
inline __m512 cvtepi32_ps(__m512i a) { return join_f(_mm256_cvtepi32_ps(lo_i(a)), _mm256_cvtepi32_ps(hi_i(a))); }
inline __m512i cvtps_epi32(__m512 a) { return join_i(_mm256_cvtps_epi32(lo_f(a)), _mm256_cvtps_epi32(hi_f(a))); }
inline __m512 cvtph_ps(__m256i a) {
  return join_f(_mm256_cvtph_ps(_mm256_castsi256_si128(a)), _mm256_cvtph_ps(_mm256_extracti128_si256(a, 1)));
}
inline __m256i cvtps_ph(__m512 a) {
  __m128i lo = _mm256_cvtps_ph(lo_f(a), _MM_FROUND_TO_NEAREST_INT), hi = _mm256_cvtps_ph(hi_f(a), _MM_FROUND_TO_NEAREST_INT);
  return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}
inline int32_t reduce_add_epi32(__m512i a) {
  alignas(64) int32_t v[16]; _mm512_storeu_si512(v, a);
  int32_t s = 0; for (int i = 0; i < 16; ++i) s += v[i];
  return s;
}
inline float reduce_max_ps(__m512 a) {
  alignas(64) float v[16]; _mm512_storeu_ps(v, a);
  float m = v[0]; for (int i = 1; i < 16; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
}  // namespace x512
#define RL512(f) x512::f
#define RL512_CVTPS_PH(a) x512::cvtps_ph(a)
#else
#define RL512(f) _mm512_##f
#define RL512_CVTPS_PH(a) _mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT)
#endif

struct Isa {
#ifdef RL_SIMDE
  static constexpr const char* name = "avx512 (simde emulation)";
#else
  static constexpr const char* name = "avx512";
#endif
  static constexpr int S8_BIAS = 128;

  using B = __m512i;
  using I = __m512i;
  struct F { __m512 v; };  // a distinct type from I, so overloads and templates cannot mix them up

  // ---- bytes
  static inline B loadb(const void* p) { return _mm512_loadu_si512(p); }
  static inline B band(B x, B y) { return _mm512_and_si512(x, y); }
  static inline B bor(B x, B y) { return _mm512_or_si512(x, y); }
  static inline B set1b(uint8_t v) { return _mm512_set1_epi8(char(v)); }
  static inline B nib_lo(B x) { return _mm512_and_si512(x, _mm512_set1_epi8(0x0f)); }
  static inline B nib_hi(B x) { return _mm512_and_si512(_mm512_srli_epi16(x, 4), _mm512_set1_epi8(0x0f)); }
  static inline B srl32(B x, int n) { return _mm512_srl_epi32(x, _mm_cvtsi32_si128(n)); }
  static inline B sll32(B x, int n) { return _mm512_sll_epi32(x, _mm_cvtsi32_si128(n)); }
  static inline B lut16(B idx, const uint8_t* table) {
    __m512i t = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table)));
    return _mm512_shuffle_epi8(t, idx);
  }

  // ---- dot products
  static inline I dot_u8s8(I acc, B u, int32_t a4) { return _mm512_dpbusd_epi32(acc, u, _mm512_set1_epi32(a4)); }
  static inline I dot_s8s8(I acc, B w, int32_t a4) {
    return _mm512_dpbusd_epi32(acc, _mm512_xor_si512(w, _mm512_set1_epi8(char(0x80))), _mm512_set1_epi32(a4));
  }
  // vpdpbusd accumulates in int32 already: the narrow accumulator is the int32 one
  using W = __m512i;
  static inline W wzero() { return _mm512_setzero_si512(); }
  static inline W wdot(W acc, B u, int32_t a4) { return _mm512_dpbusd_epi32(acc, u, _mm512_set1_epi32(a4)); }
  static inline I wflush(I acc, W w) { return _mm512_add_epi32(acc, w); }
  static inline F dot_bf16(F acc, B w, uint32_t pair, float /*x0*/, float /*x1*/) {
    return {_mm512_dpbf16_ps(acc.v, (__m512bh)w, (__m512bh)_mm512_set1_epi32(int(pair)))};
  }

  // ---- int32 lanes
  static inline I seti(int32_t x) { return _mm512_set1_epi32(x); }
  static inline I addi(I x, I y) { return _mm512_add_epi32(x, y); }
  static inline I subi(I x, I y) { return _mm512_sub_epi32(x, y); }
  static inline I muli(I x, I y) { return _mm512_mullo_epi32(x, y); }
  static inline I load_u8(const uint8_t* p) { return RL512(cvtepu8_epi32)(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static inline I load_s8(const int8_t* p) { return RL512(cvtepi8_epi32)(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static inline I loadi(const int32_t* p) { return _mm512_loadu_si512(p); }
  static inline void storei(int32_t* p, I x) { _mm512_storeu_si512(p, x); }
  static inline int32_t reduce_addi(I x) { return RL512(reduce_add_epi32)(x); }

  // ---- float lanes
  static inline F setf(float x) { return {_mm512_set1_ps(x)}; }
  static inline F zerof() { return {_mm512_setzero_ps()}; }
  static inline F loadf(const float* p) { return {_mm512_loadu_ps(p)}; }
  static inline void storef(float* p, F x) { _mm512_storeu_ps(p, x.v); }
  static inline F addf(F x, F y) { return {_mm512_add_ps(x.v, y.v)}; }
  static inline F subf(F x, F y) { return {_mm512_sub_ps(x.v, y.v)}; }
  static inline F mulf(F x, F y) { return {_mm512_mul_ps(x.v, y.v)}; }
  static inline F maxf(F x, F y) { return {_mm512_max_ps(x.v, y.v)}; }
  static inline F absf(F x) { return {_mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x.v), _mm512_set1_epi32(0x7fffffff)))}; }
  static inline F fmadd(F x, F y, F z) { return {_mm512_fmadd_ps(x.v, y.v, z.v)}; }
  static inline F cvtf(I x) { return {RL512(cvtepi32_ps)(x)}; }
  static inline I cvt_round(F x) { return RL512(cvtps_epi32)(x.v); }
  static inline F roundf_even(F x) { return {_mm512_roundscale_ps(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
  static inline F pow2i(I n) { return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23))}; }
  static inline float reduce_addf(F x) {
    // the same tree as the other variants: halves, quarters, then within 128 bits
    __m256 s = _mm256_add_ps(_mm512_castps512_ps256(x.v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x.v), 1)));
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    t = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));
    return _mm_cvtss_f32(t);
  }
  static inline float reduce_maxf(F x) { return RL512(reduce_max_ps)(x.v); }
  static inline F load_f16(const uint16_t* p) { return {RL512(cvtph_ps)(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))}; }
  static inline F load_bf16(const uint16_t* p) {
    return {_mm512_castsi512_ps(_mm512_slli_epi32(RL512(cvtepu16_epi32)(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16))};
  }
  static inline __m512i bf16_bits(F x) {
    __m512i u = _mm512_castps_si512(x.v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    return _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  }
  static inline void store_bf16(uint16_t* p, F x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), RL512(cvtepi32_epi16)(bf16_bits(x))); }
  static inline void store_f16(uint16_t* p, F x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), RL512_CVTPS_PH(x.v));
  }
  static inline F round_bf16(F x) { return {_mm512_castsi512_ps(_mm512_slli_epi32(bf16_bits(x), 16))}; }
  static inline void store_i8(int8_t* p, I x) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), RL512(cvtepi32_epi8)(x)); }
};

}  // namespace rl
