// Repacking: from the exact bytes the codecs store (ggml blocks, MX/BFP blocks, integer codes) into
// the streaming layout of packed.h. Runs once per weight at load; plain C++ (no intrinsics).
//
// Sources (little-endian, one row of blocks per output row, as ridgeline.quant writes them):
//   q8_0 34 B: d, q[32]            q4_0 18 B: d, nibbles (byte j = q[j] | q[j+16] << 4)
//   q4_1 20 B: d, m, nibbles       q5_0 22 B: d, qh (bit j = bit 4 of q[j]), nibbles
//   q5_1 24 B: d, m, qh, nibbles   mxfp4 17 B: E8M0 e, nibbles (E2M1 codes)
//   q4_k 144 B / 256: d, dmin, 12 B 6-bit scales/mins, 128 B nibbles (per 64: byte l = v[l] | v[l+32] << 4)
//   q5_k 176 B / 256: d, dmin, scales, qh[32] (byte l bit j = bit 4 of v[32j+l]), nibbles as q4_k
//   q6_k 210 B / 256: ql[128], qh[64], s8 sc[16], d (value 128h+32s+l: low nibble of ql[64h+32(s&1)+l]
//                     >> 4(s>>1), bits 4-5 = qh[32h+l] >> 2s)
//   mxint8 33 B: e, two's complement k[32] (w = k * 2^(e-127-6))
//   bfp32m4 21 B / bfp32m8 37 B: e, sign-magnitude codes of 1+m bits in a little-endian bit stream
//                     (w = k * 2^(e-127-(m-1)))
//   integer codes: u8 q [N, K], f32 scale and int zero [N, groups], optional f32 m: w = s*(q - z) + m
#pragma once

#include <algorithm>
#include "packed.h"

namespace rl {
namespace pack_detail {

inline uint16_t rd16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }

// tiles of one block (t points at the block's first tile), lane r, codes c[32] in column order
inline void put_s8(uint8_t* t, int r, const int8_t* c) {
  for (int q = 0; q < 8; ++q)
    for (int j = 0; j < 4; ++j) t[q * 64 + 4 * r + j] = uint8_t(c[4 * q + j]);
}
inline void put_nib(uint8_t* t, int r, const uint8_t* c) {
  for (int tt = 0; tt < 4; ++tt)
    for (int j = 0; j < 4; ++j) t[tt * 64 + 4 * r + j] = uint8_t((c[4 * tt + j] & 15) | ((c[16 + 4 * tt + j] & 15) << 4));
}
inline void put_bit4(uint8_t* t, int r, const uint8_t* c) {
  for (int j = 0; j < 4; ++j) {
    uint8_t byte = 0;
    for (int q = 0; q < 8; ++q) byte |= uint8_t(((c[4 * q + j] >> 4) & 1) << q);
    t[4 * r + j] = byte;
  }
}
inline void put_bits45(uint8_t* t, int r, const uint8_t* c) {
  for (int half = 0; half < 2; ++half)
    for (int j = 0; j < 4; ++j) {
      uint8_t byte = 0;
      for (int s = 0; s < 4; ++s) byte |= uint8_t(((c[4 * (4 * half + s) + j] >> 4) & 3) << (2 * s));
      t[half * 64 + 4 * r + j] = byte;
    }
}

// E8M0/BFP exponent byte -> the float exponent field of the block's scale 2^(e - 127 - shift);
// 0 (a zero scale) for blocks whose scale would be subnormal (|w| < 2^-119: read as zero).
inline uint8_t exp_field(uint8_t e, int shift) { return uint8_t(std::clamp(int(e) - shift, 0, 254)); }

// the K-quant 6-bit scale and min of sub-block j (get_scale_min_k4)
inline void scale_min_k4(int j, const uint8_t* q, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// `width` bits at bit offset `bit` of a little-endian bit stream
inline uint32_t read_bits(const uint8_t* p, int64_t bit, int width) {
  uint64_t w = 0;
  int64_t byte = bit >> 3;
  int nbytes = int((((bit & 7) + width) + 7) >> 3);
  for (int i = 0; i < nbytes; ++i) w |= uint64_t(p[byte + i]) << (8 * i);
  return uint32_t((w >> (bit & 7)) & ((1u << width) - 1));
}

}  // namespace pack_detail

// Bytes per block and columns per block of a byte-coded format.
inline void block_geometry(Fmt f, int& cols, int& bytes) {
  switch (f) {
    case Fmt::Q8_0: cols = 32; bytes = 34; return;
    case Fmt::Q4_0: cols = 32; bytes = 18; return;
    case Fmt::Q4_1: cols = 32; bytes = 20; return;
    case Fmt::Q5_0: cols = 32; bytes = 22; return;
    case Fmt::Q5_1: cols = 32; bytes = 24; return;
    case Fmt::Q4_K: cols = 256; bytes = 144; return;
    case Fmt::Q5_K: cols = 256; bytes = 176; return;
    case Fmt::Q6_K: cols = 256; bytes = 210; return;
    case Fmt::MXFP4: cols = 32; bytes = 17; return;
    case Fmt::MXINT8: cols = 32; bytes = 33; return;
    case Fmt::BFP4: cols = 32; bytes = 21; return;
    case Fmt::BFP8: cols = 32; bytes = 37; return;
    default: throw Error(std::string("format ") + fmt_name(f) + " is not stored as blocks of bytes");
  }
}

// Repack a [N, K] weight stored in a byte-coded format (`src` holds N * K/cols * bytes bytes).
inline Packed pack_blocks(Fmt fmt, const uint8_t* src, int64_t N, int64_t K) {
  using namespace pack_detail;
  Packed p;
  p.fmt = fmt; p.N = N; p.K = K;
  int cols, bytes;
  block_geometry(fmt, cols, bytes);
  if (K % cols) throw Error(std::string(fmt_name(fmt)) + ": row length " + std::to_string(K) + " is not a multiple of " +
                            std::to_string(cols));
  layout(p);
  const int ntiles = tiles_per_block(fmt);
  const int64_t row_bytes = K / cols * bytes;
  for (int64_t n = 0; n < N; ++n) {
    uint8_t* S = p.rowgroup_mut(n / RG);
    uint8_t* T = S + p.s_bytes;
    uint16_t* S16 = reinterpret_cast<uint16_t*>(S);
    const int r = int(n % RG);
    const uint8_t* row = src + n * row_bytes;
    int8_t c8[32];
    uint8_t c[32];
    for (int64_t blk = 0; blk < K / cols; ++blk) {
      const uint8_t* x = row + blk * bytes;
      if (cols == 32) {
        const int64_t b = blk;
        uint8_t* t = T + b * ntiles * 64;
        switch (fmt) {
          case Fmt::Q8_0:
            S16[b * 16 + r] = rd16(x);
            std::memcpy(c8, x + 2, 32);
            put_s8(t, r, c8);
            break;
          case Fmt::Q4_0: case Fmt::Q4_1: case Fmt::MXFP4: {
            const uint8_t* qs = x + (fmt == Fmt::Q4_0 ? 2 : fmt == Fmt::Q4_1 ? 4 : 1);
            for (int j = 0; j < 16; ++j) { c[j] = qs[j] & 15; c[j + 16] = qs[j] >> 4; }
            put_nib(t, r, c);
            if (fmt == Fmt::Q4_0) S16[b * 16 + r] = rd16(x);
            else if (fmt == Fmt::Q4_1) { S16[b * 32 + r] = rd16(x); S16[b * 32 + 16 + r] = rd16(x + 2); }
            else S[b * 16 + r] = exp_field(x[0], 1);  // doubled E2M1 integers times 2^(e-127-1)
            break;
          }
          case Fmt::Q5_0: case Fmt::Q5_1: {
            const bool has_m = fmt == Fmt::Q5_1;
            const uint8_t* qh = x + (has_m ? 4 : 2);
            const uint8_t* qs = qh + 4;
            uint32_t h = uint32_t(qh[0]) | uint32_t(qh[1]) << 8 | uint32_t(qh[2]) << 16 | uint32_t(qh[3]) << 24;
            for (int j = 0; j < 16; ++j) {
              c[j] = uint8_t((qs[j] & 15) | (((h >> j) & 1) << 4));
              c[j + 16] = uint8_t((qs[j] >> 4) | (((h >> (j + 16)) & 1) << 4));
            }
            put_nib(t, r, c);
            put_bit4(t + 4 * 64, r, c);
            if (has_m) { S16[b * 32 + r] = rd16(x); S16[b * 32 + 16 + r] = rd16(x + 2); }
            else S16[b * 16 + r] = rd16(x);
            break;
          }
          case Fmt::MXINT8:
            S[b * 16 + r] = exp_field(x[0], 6);
            std::memcpy(c8, x + 1, 32);
            put_s8(t, r, c8);
            break;
          case Fmt::BFP4: case Fmt::BFP8: {
            const int m = fmt == Fmt::BFP4 ? 4 : 8;
            const int w = 1 + m, off = (1 << m) - 1;
            S[b * 16 + r] = exp_field(x[0], m - 1);
            int lo[32], hi[32];
            for (int i = 0; i < 32; ++i) {
              uint32_t code = read_bits(x + 1, int64_t(i) * w, w);
              int mag = int(code & uint32_t(off)), k = (code >> m) & 1 ? -mag : mag;
              int u = k + off;  // 0 .. 2*off
              lo[i] = m == 4 ? u : (u & 31);
              hi[i] = u >> 5;
            }
            for (int i = 0; i < 32; ++i) c[i] = uint8_t(lo[i]);
            put_nib(t, r, c);
            put_bit4(t + 4 * 64, r, c);
            if (m == 8) {
              for (int i = 0; i < 32; ++i) c[i] = uint8_t(hi[i]);
              put_nib(t + 5 * 64, r, c);
            }
            break;
          }
          default: throw Error("unreachable block format");
        }
      } else {
        // K-quants: one superblock of 256 = 8 blocks of 32
        const int64_t sb = blk, b0 = sb * 8;
        if (fmt == Fmt::Q4_K || fmt == Fmt::Q5_K) {
          uint8_t* base = S + sb * 320;
          reinterpret_cast<uint16_t*>(base)[r] = rd16(x);
          reinterpret_cast<uint16_t*>(base + 32)[r] = rd16(x + 2);
          const uint8_t* scales = x + 4;
          const uint8_t* qh = x + 16;
          const uint8_t* qs = x + (fmt == Fmt::Q5_K ? 48 : 16);
          for (int j = 0; j < 8; ++j) {
            uint8_t sc, mn;
            scale_min_k4(j, scales, sc, mn);
            base[64 + j * 16 + r] = sc;
            base[192 + j * 16 + r] = mn;
            const uint8_t* q = qs + 32 * (j / 2);
            for (int l = 0; l < 32; ++l) {
              int v = (j & 1) ? (q[l] >> 4) : (q[l] & 15);
              if (fmt == Fmt::Q5_K) v |= ((qh[l] >> j) & 1) << 4;
              c[l] = uint8_t(v);
            }
            uint8_t* t = T + (b0 + j) * ntiles * 64;
            put_nib(t, r, c);
            if (fmt == Fmt::Q5_K) put_bit4(t + 4 * 64, r, c);
          }
        } else {  // Q6_K
          uint8_t* base = S + sb * 288;
          const uint8_t* ql = x;
          const uint8_t* qh = x + 128;
          const uint8_t* sc = x + 192;
          reinterpret_cast<uint16_t*>(base)[r] = rd16(x + 208);
          for (int j = 0; j < 16; ++j) base[32 + j * 16 + r] = sc[j];
          uint8_t v[256];
          for (int h = 0; h < 2; ++h)
            for (int s = 0; s < 4; ++s)
              for (int l = 0; l < 32; ++l) {
                int lowb = ql[64 * h + 32 * (s & 1) + l];
                int low = (s >> 1) ? (lowb >> 4) : (lowb & 15);
                int high = (qh[32 * h + l] >> (2 * s)) & 3;
                v[128 * h + 32 * s + l] = uint8_t(low | (high << 4));
              }
          for (int j = 0; j < 8; ++j) {
            uint8_t* t = T + (b0 + j) * ntiles * 64;
            put_nib(t, r, v + 32 * j);
            put_bits45(t + 4 * 64, r, v + 32 * j);
          }
        }
      }
    }
  }
  return p;
}

// Repack float weights: fmt F32 takes float32 [N, K], BF16 takes bfloat16 bits [N, K].
inline Packed pack_float(Fmt fmt, const void* src, int64_t N, int64_t K) {
  Packed p;
  p.fmt = fmt; p.N = N; p.K = K;
  layout(p);
  for (int64_t n = 0; n < N; ++n) {
    uint8_t* T = p.rowgroup_mut(n / RG) + p.s_bytes;
    const int r = int(n % RG);
    if (fmt == Fmt::F32) {
      const float* row = static_cast<const float*>(src) + n * K;
      for (int64_t k = 0; k < K; ++k) std::memcpy(T + k * 64 + 4 * r, row + k, 4);
    } else {
      const uint16_t* row = static_cast<const uint16_t*>(src) + n * K;
      for (int64_t k = 0; k < K; k += 2) std::memcpy(T + (k / 2) * 64 + 4 * r, row + k, 4);
    }
  }
  return p;
}

// Repack integer codes: w[n, c] = scale[n, g] * (codes[n, c] - zero[n, g]) + (mins ? mins[n, g] : 0), where
// g is the group of the *packed* position of column c. With `perm` (act-order), packed column i is
// input column perm[i]; groups are contiguous runs of `group` packed columns (the last may be short).
inline Packed pack_int(int bits, const uint8_t* codes, const float* scale, const int32_t* zero, const float* mins,
                       const int32_t* perm, int64_t N, int64_t K, int64_t group) {
  if (bits != 4 && bits != 8) throw Error("integer kernels take 4- or 8-bit codes, got " + std::to_string(bits));
  Packed p;
  p.fmt = bits == 8 ? Fmt::INT8 : Fmt::INT4;
  p.N = N; p.K = K; p.group = group; p.has_min = mins != nullptr;
  layout(p);
  if (perm) p.perm.assign(perm, perm + K);
  const int64_t G = p.ngroups;
  const int ntiles = tiles_per_block(p.fmt);
  const int maxq = (1 << bits) - 1;
  for (int64_t n = 0; n < N; ++n) {
    uint8_t* S = p.rowgroup_mut(n / RG);
    uint8_t* T = S + p.s_bytes;
    const int r = int(n % RG);
    float* sc = reinterpret_cast<float*>(S);
    int8_t* zp = reinterpret_cast<int8_t*>(S + G * 64);
    float* mn = reinterpret_cast<float*>(S + G * 80);
    for (int64_t g = 0; g < G; ++g) {
      int32_t z = zero[n * G + g];
      if (z < 0 || z > maxq) throw Error("integer zero point " + std::to_string(z) + " outside the code range");
      sc[g * 16 + r] = scale[n * G + g];
      zp[g * 16 + r] = int8_t(bits == 8 ? z - 128 : z);
      if (mins) mn[g * 16 + r] = mins[n * G + g];
    }
    const uint8_t* row = codes + n * K;
    for (int64_t b = 0; b < p.nb; ++b) {
      uint8_t c[32];
      for (int i = 0; i < 32; ++i) {
        int64_t col = b * 32 + i;
        c[i] = row[perm ? perm[col] : col];
        if (c[i] > maxq) throw Error("integer code " + std::to_string(int(c[i])) + " outside " + std::to_string(bits) + " bits");
      }
      uint8_t* t = T + b * ntiles * 64;
      if (bits == 8) {
        int8_t c8[32];
        for (int i = 0; i < 32; ++i) c8[i] = int8_t(int(c[i]) - 128);
        pack_detail::put_s8(t, r, c8);
      } else {
        pack_detail::put_nib(t, r, c);
      }
    }
  }
  return p;
}

}  // namespace rl
