// Shared basics of the native kernels: scalar number conversions, aligned buffers, small helpers.
//
// Everything here is plain C++ (no intrinsics), so every ISA variant compiles it the same way.
// Conventions used by every file: weights are [rows, cols] row-major ("N x K"), activations [M, K],
// outputs [M, N]; a "row group" is 16 consecutive output rows (RG); a "block" is 32 consecutive
// input columns (BK), the unit of activation quantization.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace rl {

constexpr int RG = 16;  // output rows per row group: one 16-lane vector of results
constexpr int BK = 32;  // input columns per activation block

// Raised by C++ code for bad input; module.cpp turns it into a Python ValueError (RidgelineError upstream).
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t align_up(int64_t a, int64_t b) { return div_up(a, b) * b; }

inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }

// Round to nearest even, as torch's float -> bfloat16 cast does (NaN stays NaN).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// The float a bf16 rounding gives (the value torch holds after `.to(torch.bfloat16)`).
inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// IEEE half -> float, exact for every code (subnormals included).
inline float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    if (man == 0) return bits_f32(sign);
    float v = float(man) * 5.9604644775390625e-08f;  // man * 2^-24
    return sign ? -v : v;
  }
  if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13));
  return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

// float -> IEEE half, round to nearest even (as torch's .half()).
inline uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to inf
  if (a < 0x38800000u) {  // subnormal half (or zero): scale to an integer count of 2^-24 and round
    float v = bits_f32(a) * 16777216.0f;
    float r = std::nearbyint(v);  // default rounding mode: to nearest even
    return uint16_t(sign | uint16_t(r));
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - (112u << 23);
  return uint16_t(sign | (r >> 13));
}

// 2^e as a float for an integer e, exact over the whole float range (subnormals included), 0 below.
inline float exp2i(int e) {
  if (e > 127) return INFINITY;
  if (e >= -126) return bits_f32(uint32_t(e + 127) << 23);
  if (e >= -149) return bits_f32(1u << (e + 149));
  return 0.0f;
}

// A 64-byte aligned, zero-initialised byte buffer (weights, scratch). Large ones ask for huge pages.
struct Buffer {
  uint8_t* data = nullptr;
  size_t size = 0;
  Buffer() = default;
  explicit Buffer(size_t n) : size(n) {
    // big buffers start on a 2 MiB boundary so that madvise can back them with huge pages
    size_t align = n >= (size_t(4) << 20) ? (size_t(2) << 20) : 64;
    size_t bytes = size_t(align_up(int64_t(n ? n : 1), int64_t(align)));
    data = static_cast<uint8_t*>(std::aligned_alloc(align, bytes));
    if (!data) throw Error("out of memory allocating " + std::to_string(bytes) + " bytes");
#ifdef __linux__
    if (bytes >= (size_t(4) << 20)) madvise(data, bytes, MADV_HUGEPAGE);  // fewer TLB misses when streaming
#endif
    std::memset(data, 0, bytes);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : data(o.data), size(o.size) { o.data = nullptr; o.size = 0; }
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(data, o.data);
    std::swap(size, o.size);
    return *this;
  }
  ~Buffer() { std::free(data); }
  template <class T> T* as() const { return reinterpret_cast<T*>(data); }
};

}  // namespace rl
