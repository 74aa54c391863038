// Packed weights: the streaming layout every linear kernel reads, and the formats it covers.
//
// Layout. Output rows are cut into row groups of 16 (RG), padded with zero rows at the end. A row
// group is one contiguous, 64-byte aligned chunk: first its scale section S (per-block scales,
// zero points, exponents, 64-byte padded), then its tile section T. A tile is 64 bytes: 4 bytes for
// each of the 16 rows ("lane" r = bytes 4r..4r+3), holding the codes of 4 consecutive input columns
// (a "quad") for one row. One 512-bit load (or two 256-bit ones) therefore feeds 16 independent
// dot products, and a broadcast 4-byte activation word finishes them: no horizontal reductions.
//
// Tiles per 32-column block, by code width (codes are unsigned, offset as the format says):
//   8-bit (s8):  8 tiles, tile q = quad q (columns 4q..4q+3), one signed byte per column
//   4-bit:       4 tiles, tile t: low nibbles = quad t, high nibbles = quad t+4
//   5-bit:       the 4 nibble tiles, then a bit tile: byte j of lane r, bit q = bit 4 of column 4q+j
//   6-bit:       the 4 nibble tiles, then 2 tiles of 2-bit pairs: tile 4+q/4, byte j, bits 2(q%4)..+1
//                hold bits 4-5 of column 4q+j
//   9-bit (BFP m8, u = k + 255 = 32h + l): 4 nibble tiles + bit tile for l, then 4 nibble tiles for h
// Float weights: fp32 tiles hold 1 column of 16 rows, bf16 tiles a pair of columns (lane = 2 bf16).
//
// The bytes come from the codecs' exact encodings (ggml blocks, MX/BFP blocks, integer codes with
// scale and zero point); pack.h moves them here without changing a value. Scales stay in their
// stored precision (fp16, bf16, E8M0/BFP exponent bytes) and are widened inside the kernel.
#pragma once

#include <string>
#include "common.h"

namespace rl {

enum class Fmt : int {
  F32 = 0, BF16 = 1,
  Q8_0 = 2, Q4_0 = 3, Q4_1 = 4, Q5_0 = 5, Q5_1 = 6, Q4_K = 7, Q5_K = 8, Q6_K = 9,
  MXFP4 = 10, MXINT8 = 11, BFP4 = 12, BFP8 = 13,
  INT8 = 14, INT4 = 15,  // integer codes per channel or group: w = s * (q - z) [+ m]
  COUNT = 16
};

// What a kernel needs of the activation: float, bf16 pairs, or int8 blocks of 32 with their scales.
enum class ActKind : int { F32 = 0, BF16 = 1, Q8 = 2 };

inline const char* fmt_name(Fmt f) {
  static const char* names[] = {"f32", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k",
                                "q6_k", "mxfp4", "mxint8", "bfp32m4", "bfp32m8", "int8", "int4"};
  int i = int(f);
  return i >= 0 && i < int(Fmt::COUNT) ? names[i] : "?";
}

inline ActKind act_kind(Fmt f) {
  return f == Fmt::F32 ? ActKind::F32 : f == Fmt::BF16 ? ActKind::BF16 : ActKind::Q8;
}

// Tiles of 64 bytes per block of 32 columns (quantized formats).
inline int tiles_per_block(Fmt f) {
  switch (f) {
    case Fmt::Q8_0: case Fmt::MXINT8: case Fmt::INT8: return 8;
    case Fmt::Q4_0: case Fmt::Q4_1: case Fmt::Q4_K: case Fmt::MXFP4: case Fmt::INT4: return 4;
    case Fmt::Q5_0: case Fmt::Q5_1: case Fmt::Q5_K: case Fmt::BFP4: return 5;
    case Fmt::Q6_K: return 6;
    case Fmt::BFP8: return 9;
    default: return 0;
  }
}

struct Packed {
  Fmt fmt = Fmt::F32;
  int64_t N = 0, K = 0;   // logical shape [N, K]
  int64_t ng = 0;         // row groups (N padded to a multiple of 16)
  int64_t nb = 0;         // blocks of 32 columns (quantized formats)
  int64_t group = 0;      // INT4/INT8: columns per scale group (a multiple of 32; K for per-channel)
  int64_t ngroups = 0;    // INT4/INT8: scale groups per row
  bool has_min = false;   // INT4/INT8: an extra float term m per group (torch's int4 zero, see pack.h)
  int64_t s_bytes = 0, t_bytes = 0, group_bytes = 0;
  std::vector<int32_t> perm;  // empty, or packed column i is input column perm[i] (GPTQ act-order)
  Buffer data;

  const uint8_t* rowgroup(int64_t g) const { return data.data + g * group_bytes; }
  uint8_t* rowgroup_mut(int64_t g) { return data.data + g * group_bytes; }
  // Bytes a kernel streams for this weight (scales and padding included).
  int64_t stream_bytes() const { return ng * group_bytes; }
};

// Scale-section bytes of one row group.
inline int64_t scale_bytes(Fmt f, int64_t nb, int64_t ngroups, bool has_min) {
  switch (f) {
    case Fmt::Q8_0: case Fmt::Q4_0: case Fmt::Q5_0: return nb * 32;                      // fp16 d
    case Fmt::Q4_1: case Fmt::Q5_1: return nb * 64;                                       // fp16 d, m
    case Fmt::Q4_K: case Fmt::Q5_K: return nb / 8 * 320;   // fp16 d, dmin; u8 sc[8], m[8] per superblock
    case Fmt::Q6_K: return nb / 8 * 288;                   // fp16 d; s8 sc[16] per superblock
    case Fmt::MXFP4: case Fmt::MXINT8: case Fmt::BFP4: case Fmt::BFP8: return nb * 16;  // exponent bytes
    case Fmt::INT4: case Fmt::INT8: return ngroups * (64 + 16 + (has_min ? 64 : 0));     // f32 s, s8 z[, f32 m]
    default: return 0;
  }
}

// Fill the layout fields of `p` (fmt, N, K, group, has_min set) and allocate its zeroed buffer.
inline void layout(Packed& p) {
  p.ng = div_up(p.N, RG);
  if (p.fmt == Fmt::F32) {
    p.t_bytes = p.K * 64;
  } else if (p.fmt == Fmt::BF16) {
    if (p.K % 2) throw Error("bf16 weights need an even number of input columns, got " + std::to_string(p.K));
    p.t_bytes = p.K * 32;
  } else {
    if (p.K % BK) throw Error(std::string(fmt_name(p.fmt)) + " weights need input columns in blocks of 32, got " +
                              std::to_string(p.K));
    p.nb = p.K / BK;
    bool kquant = p.fmt == Fmt::Q4_K || p.fmt == Fmt::Q5_K || p.fmt == Fmt::Q6_K;
    if (kquant && p.K % 256) throw Error(std::string(fmt_name(p.fmt)) + " weights need input columns in superblocks of 256, got " +
                                         std::to_string(p.K));
    if (p.fmt == Fmt::INT4 || p.fmt == Fmt::INT8) {
      if (p.group <= 0 || p.group % BK) throw Error("integer weights need a group size that is a multiple of 32, got " +
                                                   std::to_string(p.group));
      p.ngroups = div_up(p.K, p.group);
    }
    p.t_bytes = p.nb * tiles_per_block(p.fmt) * 64;
  }
  p.s_bytes = align_up(scale_bytes(p.fmt, p.nb, p.ngroups, p.has_min), 64);
  p.group_bytes = p.s_bytes + p.t_bytes;
  p.data = Buffer(size_t(p.ng * p.group_bytes));
}

}  // namespace rl
