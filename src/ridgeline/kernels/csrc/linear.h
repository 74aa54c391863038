// A standalone linear call: quantize/convert the activation rows once, then split the row groups of
// the weight into contiguous ranges that the pool's threads claim (no thread ever writes another's
// rows, so nothing is reduced across threads).
#pragma once

#include <mutex>
#include "gemv.h"
#include "threadpool.h"

namespace rl {

struct Runtime {
  ThreadPool pool;
  ActBuffer acts;
  std::mutex lock;  // one native call at a time per process (the buffers and the pool are shared)
};

inline Runtime& runtime() {
  static Runtime rt;
  return rt;
}

// Fill rows[0..M) of `buf` with x [M, K] in the form `w` needs (`mode`: an ActMode for int8 activations).
template <class V>
inline void prepare_acts(const Packed& w, const float* x, int M, int mode, ActBuffer& buf) {
  buf.ensure(M, w.K);
  for (int m = 0; m < M; ++m) {
    Act& a = buf.rows[size_t(m)];
    const float* xm = x + int64_t(m) * w.K;
    switch (act_kind(w.fmt)) {
      case ActKind::F32: a.K = w.K; a.x = xm; break;
      case ActKind::BF16: ActOps<V>::to_bf16(xm, w.K, a); break;
      case ActKind::Q8: ActOps<V>::to_q8(xm, w.K, a, mode, w.perm.empty() ? nullptr : w.perm.data(), buf.gathered[size_t(m)]); break;
    }
  }
}

// y [M, N] = x [M, K] @ W^T (+ bias [N]), fp32 in and out.
template <class V>
inline void linear(const Packed& w, const float* x, int M, float* y, const float* bias, int mode) {
  if (M < 1 || M > 16) throw Error("linear takes 1 to 16 activation rows, got " + std::to_string(M));
  Runtime& rt = runtime();
  std::lock_guard<std::mutex> guard(rt.lock);
  prepare_acts<V>(w, x, M, mode, rt.acts);
  const Act* rows[16];
  for (int m = 0; m < M; ++m) rows[m] = &rt.acts.rows[size_t(m)];
  const int64_t N = w.N;
  auto epi = [&](int64_t g, int m, const float* out) {
    const int64_t n0 = g * RG, n1 = std::min(N, n0 + RG);
    float* ym = y + int64_t(m) * N;
    for (int64_t n = n0; n < n1; ++n) ym[n] = out[n - n0] + (bias ? bias[n] : 0.0f);
  };
  // a few partitions per thread: a slow or descheduled thread leaves its share to the others
  const int parts = int(std::min<int64_t>(w.ng, 4 * rt.pool.threads()));
  Claims claims;
  claims.reset(parts);
  rt.pool.run([&](int, int) {
    claims.work([&](int p) {
      int64_t g0, g1;
      split_range(w.ng, parts, p, g0, g1);
      Kernels<V>::rows(w, rows, M, g0, g1, epi);
    });
  });
}

}  // namespace rl
