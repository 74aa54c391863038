// Decode attention over a KVStore: GQA, M queries, any [M, slots] visibility, split over slot chunks.
//
// Work is cut into tasks (KV head, chunk of slots). A task computes, for every query row m and every
// query head of the KV head's group, the chunk's softmax statistics (max, sum of exp) and the
// exp-weighted sum of values; `combine` merges the chunks of a head exactly as flash-decoding does:
// out = sum_c acc_c * e^(max_c - max) / sum_c sum_c * e^(max_c - max). Scores and softmax are fp32.
#pragma once

#include <limits>
#include "kv.h"
#include "ops.h"

namespace rl {

struct Partial {  // one (query row, query head) of one task; acc holds head_dim floats
  float max, sum;
  float* acc;
};

// Which slots query row m may see: an explicit [M, slots] byte mask, or causal from `first` on
// (query m sits at slot first + m and sees every slot up to it).
struct Visibility {
  const uint8_t* mask = nullptr;
  int64_t slots = 0;
  int64_t first = 0;
  bool operator()(int m, int64_t t) const { return mask ? mask[int64_t(m) * slots + t] != 0 : t <= first + m; }
};

template <class V>
struct Attention {
  using F = typename V::F;

  // Scratch one thread needs for a task: scores and probabilities of every (row, head) over a chunk.
  static size_t scratch_floats(int rows, int64_t chunk) { return size_t(rows) * size_t(chunk); }

  // q: query rows, q[m * q_stride + head * hd ...] (rope applied); out[m * group + g] for the group's heads
  static void task(const KVStore& kv, int layer, int kvh, int group, int hd, int M, const float* q, int64_t q_stride,
                   int64_t t0, int64_t t1, float scale, const Visibility& vis, Partial* out, float* scores) {
    const int nq = M * group;
    const int64_t n = t1 - t0;
    const float* qs[256];
    float* accs[256];
    for (int m = 0; m < M; ++m)
      for (int g = 0; g < group; ++g) {
        qs[m * group + g] = q + int64_t(m) * q_stride + int64_t(kvh * group + g) * hd;
        Partial& p = out[m * group + g];
        accs[m * group + g] = p.acc;
        std::memset(p.acc, 0, size_t(hd) * 4);
      }
    kv.dot_keys(layer, kvh, t0, n, qs, nq, scores);
    const float ninf = -std::numeric_limits<float>::infinity();
    for (int j = 0; j < nq; ++j) {
      const int m = j / group;
      float* s = scores + int64_t(j) * n;
      float mx = ninf;
      for (int64_t i = 0; i < n; ++i) {
        s[i] = vis(m, t0 + i) ? s[i] * scale : ninf;
        mx = std::max(mx, s[i]);
      }
      Partial& p = out[j];
      p.max = mx;
      if (mx == ninf) {  // nothing visible in this chunk
        p.sum = 0.0f;
        for (int64_t i = 0; i < n; ++i) s[i] = 0.0f;
        continue;
      }
      float sum = 0.0f;
      int64_t i = 0;
      const F vmx = V::setf(mx);
      for (; i + 16 <= n; i += 16) {
        F e = Ops<V>::vexp(V::subf(V::loadf(s + i), vmx));
        V::storef(s + i, e);
      }
      for (; i < n; ++i) s[i] = s[i] == ninf ? 0.0f : Ops<V>::exp1(s[i] - mx);
      for (i = 0; i < n; ++i) {
        if (!vis(m, t0 + i)) s[i] = 0.0f;  // exp(-inf - max) underflows to a tiny value, not 0: zero it
        sum += s[i];
      }
      p.sum = sum;
    }
    kv.add_values(layer, kvh, t0, n, scores, nq, accs);
  }

  // Merge the chunk partials parts[c] (c < nchunks) of one (row, head) into out[hd].
  static void combine(const Partial* const* parts, int nchunks, int hd, float* out) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int c = 0; c < nchunks; ++c) mx = std::max(mx, parts[c]->max);
    for (int d = 0; d < hd; ++d) out[d] = 0.0f;
    float total = 0.0f;
    for (int c = 0; c < nchunks; ++c) {
      if (parts[c]->sum == 0.0f) continue;
      const float w = Ops<V>::exp1(parts[c]->max - mx);
      total += parts[c]->sum * w;
      for (int d = 0; d < hd; ++d) out[d] += parts[c]->acc[d] * w;
    }
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    for (int d = 0; d < hd; ++d) out[d] *= inv;
  }
};

}  // namespace rl
