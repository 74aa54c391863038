// The native decode model: a llama/mistral/qwen2 decoder whose whole step (every layer and the head)
// runs in one C++ call on the thread pool, as a sequence of phases separated by hand-overs.
//
// Per layer (partitions: contiguous output rows / heads / attention tasks, computed once per thread
// count and balanced by weight bytes; threads claim them, see threadpool.h):
//   P1  RMSNorm + activation quantization of x (by each thread that works in the phase, privately:
//       cheaper than another hand-over), q/k/v heads; per finished head: bias, rope at the token's
//       position, queries to the query buffer, keys/values into the KV store at the token's slot
//   P2  attention tasks (KV head x slot chunk) -> softmax partials
//   P3  merge the partials (privately), quantize, o_proj rows added into x (residual)
//   P4  RMSNorm + quantization (privately), gate/up row pairs, silu(gate)*up into h
//   P5  quantization of h (privately), down_proj rows added into x
// and after the last layer the final norm and the head's rows into the logits. Each phase starts when
// the previous one has finished: 5 hand-overs per layer. Numerics follow
// ridgeline.measure.lean (fp32 stats; with a bf16 model every tensor lean holds in bf16 is rounded to
// bf16 at the same points); the linear kernels' own arithmetic is described in gemv.h.
//
// M tokens (M <= 16) go through one call: their keys/values take the slots length..length+M-1, rope uses
// the given positions, and attention follows the given [M, length+M] visibility (causal when absent),
// which is what prefill chunks and tree verification need.
#pragma once

#include <memory>
#include "attention.h"
#include "linear.h"
#include "ops.h"

namespace rl {

struct Segment {
  const Packed* w;
  int64_t row0;  // first output row of this segment in the op's output
  int mode;      // ActMode of its int8 activations
};

// A linear operation whose output rows come from one or more packed weights (fused q/k/v, gate/up).
struct LinearOp {
  std::vector<Segment> segs;
  int64_t N = 0, K = 0;
  struct Variant { ActKind kind; int mode; const int32_t* perm; };
  std::vector<Variant> variants;  // distinct activation forms the segments need
  std::vector<int> variant_of;    // per segment

  void add(const Packed* w, int mode) {
    if (!segs.empty() && w->K != K) throw Error("fused weights must share the input width");
    if (!segs.empty() && N % RG) throw Error("fused weights need row counts that are multiples of 16");
    K = w->K;
    segs.push_back({w, N, mode});
    N += w->N;
    Variant v{act_kind(w->fmt), mode, w->perm.empty() ? nullptr : w->perm.data()};
    int idx = -1;
    for (size_t i = 0; i < variants.size(); ++i) {
      const Variant& u = variants[i];
      if (u.kind == v.kind && (v.kind != ActKind::Q8 || (u.mode == v.mode && u.perm == v.perm))) idx = int(i);
    }
    if (idx < 0) { variants.push_back(v); idx = int(variants.size()) - 1; }
    variant_of.push_back(idx);
  }
  // the segment holding global row group g, and g's index inside it
  int seg_of(int64_t g, int64_t& local) const {
    for (size_t s = 0; s < segs.size(); ++s) {
      int64_t first = segs[s].row0 / RG, count = segs[s].w->ng;
      if (g >= first && g < first + count) { local = g - first; return int(s); }
    }
    throw Error("row group out of range");
  }
  int64_t rg_bytes(int64_t g) const { int64_t l; return segs[size_t(seg_of(g, l))].w->group_bytes; }
};

struct ModelConfig {
  int layers = 0, d = 0, ffn = 0, nq = 0, nkv = 0, hd = 0, vocab = 0;
  int64_t max_len = 0;
  float eps = 1e-6f, scale = 1.0f;
  int bf16 = 0;      // a bf16 model: round where lean holds bf16 tensors
  int kv_dtype = 0;  // 0 fp32, 1 bf16, 2 fp16
};

struct Layer {
  LinearOp qkv, o, w13, w2;
  std::vector<float> attn_norm, ffn_norm, qkv_bias;
};

class Model {
 public:
  using V = Isa;
  using F = typename V::F;

  ModelConfig c;
  std::vector<Layer> layers;
  LinearOp head;
  std::vector<float> final_norm, cos, sin;  // rope tables [max_len, hd]: cos and sign-folded sin
  const void* embed = nullptr;
  int embed_bf16 = 0;
  int64_t length = 0;

  explicit Model(const ModelConfig& cfg) : c(cfg), layers(size_t(cfg.layers)) {
    if (c.hd % 16 || c.hd > 512) throw Error("native decode needs a head_dim that is a multiple of 16 (<= 512)");
    if (c.d % 32 || c.ffn % 32) throw Error("native decode needs hidden and intermediate sizes that are multiples of 32");
    if (c.nq % c.nkv) throw Error("query heads must be a multiple of the KV heads");
    if (16 * (c.nq / c.nkv) > 256) throw Error("at most 16 query heads per KV head");
    if (c.max_len < 1 || c.max_len > 65536) throw Error("native decode takes max_len 1..65536");
    if (c.kv_dtype == 0) kv_ = std::make_unique<FloatKV<V, F32Elt>>(c.layers, c.nkv, c.max_len, c.hd);
    else if (c.kv_dtype == 1) kv_ = std::make_unique<FloatKV<V, BF16Elt>>(c.layers, c.nkv, c.max_len, c.hd);
    else kv_ = std::make_unique<FloatKV<V, F16Elt>>(c.layers, c.nkv, c.max_len, c.hd);
  }

  int64_t kv_bytes() const { return kv_->bytes(); }

  // Check shapes once everything is set; allocate the shared buffers.
  void finalize() {
    const int64_t qkv_rows = int64_t(c.nq + 2 * c.nkv) * c.hd;
    for (size_t i = 0; i < layers.size(); ++i) {
      const Layer& L = layers[i];
      auto want = [&](const LinearOp& op, int64_t n, int64_t k, const char* what) {
        if (op.N != n || op.K != k)
          throw Error("layer " + std::to_string(i) + " " + what + ": expected [" + std::to_string(n) + ", " +
                      std::to_string(k) + "], got [" + std::to_string(op.N) + ", " + std::to_string(op.K) + "]");
      };
      want(L.qkv, qkv_rows, c.d, "qkv");
      want(L.o, c.d, int64_t(c.nq) * c.hd, "o_proj");
      want(L.w13, 2 * int64_t(c.ffn), c.d, "gate/up");
      want(L.w2, c.d, c.ffn, "down_proj");
      if (L.attn_norm.size() != size_t(c.d) || L.ffn_norm.size() != size_t(c.d)) throw Error("norm weights missing");
    }
    if (head.N != c.vocab || head.K != c.d) throw Error("lm_head must be [vocab, hidden]");
    if (!embed) throw Error("embedding missing");
    if (cos.size() != size_t(c.max_len * c.hd) || sin.size() != cos.size()) throw Error("rope tables missing");
    const int64_t widest = std::max<int64_t>({qkv_rows, 2 * int64_t(c.ffn), c.d, int64_t(c.nq) * c.hd});
    x_ = Buffer(size_t(16 * c.d * 4));
    y_ = Buffer(size_t(16 * widest * 4));
    q_ = Buffer(size_t(16 * c.nq * c.hd * 4));
    h_ = Buffer(size_t(16 * c.ffn * 4));
    max_chunks_ = chunks_for(c.max_len, 64);
    part_acc_ = Buffer(size_t(c.nkv) * max_chunks_ * 16 * (c.nq / c.nkv) * c.hd * 4);
    parts_.assign(size_t(c.nkv) * max_chunks_ * 16 * (c.nq / c.nkv), Partial{0, 0, nullptr});
    for (size_t i = 0; i < parts_.size(); ++i) parts_[i].acc = part_acc_.as<float>() + i * c.hd;
  }

  void reset() { length = 0; }

  // Keep the cache slots `keep` (ascending), moved to slots 0..n-1; the length becomes n.
  void compact(const int64_t* keep, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      if (keep[i] < 0 || keep[i] >= length || (i && keep[i] <= keep[i - 1]))
        throw Error("compact takes ascending cache slots below the current length");
    }
    for (int64_t i = 0; i < n; ++i) kv_->move(keep[i], i);
    length = n;
  }

  // Run M tokens; logits of every row (all_logits) or of the last one, fp32 or bf16 (logits_bf16); when
  // `hidden` is set, the same rows' post-norm hidden states (the head's input, fp32 [rows, d]) go there too.
  void forward(const int64_t* tokens, const int64_t* positions, int M, const uint8_t* vis, void* logits,
               bool all_logits, bool logits_bf16, float* hidden = nullptr) {
    if (M < 1 || M > 16) throw Error("forward takes 1 to 16 tokens");
    if (length + M > c.max_len) throw Error("KV cache full: " + std::to_string(length) + " + " + std::to_string(M) +
                                            " tokens > max_len " + std::to_string(c.max_len));
    for (int m = 0; m < M; ++m) {
      if (tokens[m] < 0 || tokens[m] >= c.vocab) throw Error("token id " + std::to_string(tokens[m]) + " out of range");
      if (positions[m] < 0 || positions[m] >= c.max_len) throw Error("position " + std::to_string(positions[m]) + " out of range");
    }
    Runtime& rt = runtime();
    std::lock_guard<std::mutex> guard(rt.lock);
    if (rt.pool.threads() > 64) throw Error("native decode runs at most 64 threads");
    prepare_threads(rt.pool.threads());
    for (int m = 0; m < M; ++m) embed_row(tokens[m], x_.as<float>() + int64_t(m) * c.d);
    const int64_t L = length + M;
    Step st{tokens, positions, M, Visibility{vis, L, length}, logits, all_logits, logits_bf16, L,
            chunks_for(L, std::max<int64_t>(1, rt.pool.threads()))};
    reset_claims(st);
    rt.pool.run([&](int tid, int) { step(st, tid); });
    length = L;
    if (hidden) {  // the rows the head read, normed again by the same kernel (a few microseconds)
      const int m0 = all_logits ? 0 : M - 1;
      for (int m = m0; m < M; ++m)
        Ops<V>::rmsnorm(x_.as<float>() + int64_t(m) * c.d, final_norm.data(), c.d, c.eps, c.bf16 != 0,
                        hidden + int64_t(m - m0) * c.d);
    }
  }

 private:
  struct Step {
    const int64_t* tokens;
    const int64_t* pos;
    int M;
    Visibility vis;
    void* logits;
    bool all_logits, logits_bf16;
    int64_t L;        // slots visible after this step
    int64_t nchunks;  // slot chunks per KV head in attention
  };
  struct Scratch {
    std::vector<ActBuffer> acts;
    Buffer normed, scores, attn;
  };
  struct Parts {  // per op kind: units [bounds[t], bounds[t+1]) belong to thread t
    std::vector<int64_t> qkv, o, w13, w2;
  };

  static int64_t chunks_for(int64_t L, int64_t threads) {
    // enough chunks to keep every thread busy at long contexts, chunks of at least 64 slots
    int64_t by_len = div_up(L, 256);
    return std::max<int64_t>(1, std::min<int64_t>(div_up(L, 64), std::max<int64_t>(by_len, threads)));
  }

  void embed_row(int64_t tok, float* out) const {
    if (embed_bf16) {
      const uint16_t* e = static_cast<const uint16_t*>(embed) + tok * c.d;
      for (int i = 0; i < c.d; ++i) out[i] = bf16_to_f32(e[i]);
    } else {
      std::memcpy(out, static_cast<const float*>(embed) + tok * c.d, size_t(c.d) * 4);
    }
  }

  // Contiguous split of `weights` into nt ranges of about equal sum (nt is clamped to the unit count).
  static std::vector<int64_t> balance(const std::vector<int64_t>& weights, int nt) {
    nt = std::max(1, std::min(nt, int(weights.size())));
    std::vector<int64_t> b(size_t(nt) + 1, int64_t(weights.size()));
    b[0] = 0;
    int64_t total = 0;
    for (int64_t w : weights) total += w;
    int64_t acc = 0;
    size_t u = 0;
    for (int t = 1; t < nt; ++t) {
      const int64_t target = total * t / nt;
      while (u < weights.size() && acc + weights[u] / 2 < target) acc += weights[u++];
      b[size_t(t)] = int64_t(u);
    }
    return b;
  }

  void prepare_threads(int threads) {
    if (threads == nthreads_) return;
    nthreads_ = threads;
    const int nt = 2 * threads;  // partitions per phase: two per thread, so a slow thread's share moves
    const int64_t per_head = c.hd / RG;
    auto rows = [&](const LinearOp& op) {
      std::vector<int64_t> v;
      for (int64_t g = 0; g < div_up(op.N, RG); ++g) v.push_back(op.rg_bytes(g));
      return balance(v, nt);
    };
    lparts_.assign(layers.size(), Parts{});
    for (size_t i = 0; i < layers.size(); ++i) {
      const Layer& Ly = layers[i];
      Parts& P = lparts_[i];
      std::vector<int64_t> w;
      for (int hh = 0; hh < c.nq + 2 * c.nkv; ++hh) {
        int64_t sum = 0;
        for (int64_t g = 0; g < per_head; ++g) sum += Ly.qkv.rg_bytes(hh * per_head + g);
        w.push_back(sum);
      }
      P.qkv = balance(w, nt);
      w.clear();
      for (int64_t j = 0; j < c.ffn / RG; ++j) w.push_back(Ly.w13.rg_bytes(j) + Ly.w13.rg_bytes(c.ffn / RG + j));
      P.w13 = balance(w, nt);
      P.o = rows(Ly.o);
      P.w2 = rows(Ly.w2);
    }
    parts_head_ = rows(head);
    size_t nvar = 1;
    for (const Layer& L : layers)
      for (const LinearOp* op : {&L.qkv, &L.o, &L.w13, &L.w2}) nvar = std::max(nvar, op->variants.size());
    nvar = std::max(nvar, head.variants.size());
    const int64_t widest = std::max<int64_t>({c.d, c.ffn, int64_t(c.nq) * c.hd});
    claims_ = std::vector<Claims>(size_t(5 * c.layers + 1));
    scratch_.clear();
    scratch_.resize(size_t(threads));
    for (Scratch& s : scratch_) {
      s.acts.resize(nvar);
      for (ActBuffer& a : s.acts) a.ensure(16, widest);
      s.normed = Buffer(size_t(16 * widest * 4));
      s.scores = Buffer(size_t(16 * (c.nq / c.nkv)) * 256 * 4 + 64);
      s.attn = Buffer(size_t(16 * c.nq * c.hd * 4));
    }
  }

  // activation forms of x [M, K] for every variant of `op`, in this thread's buffers
  void prepare(const LinearOp& op, const float* x, int M, Scratch& s) const {
    for (size_t v = 0; v < op.variants.size(); ++v) {
      const auto& var = op.variants[v];
      ActBuffer& buf = s.acts[v];
      for (int m = 0; m < M; ++m) {
        Act& a = buf.rows[size_t(m)];
        const float* xm = x + int64_t(m) * op.K;
        if (var.kind == ActKind::F32) { a.K = op.K; a.x = xm; }
        else if (var.kind == ActKind::BF16) ActOps<V>::to_bf16(xm, op.K, a);
        else ActOps<V>::to_q8(xm, op.K, a, var.mode, var.perm, buf.gathered[size_t(m)]);
      }
    }
  }

  // global row groups [g0, g1) of `op`; epi(global g, m, out16)
  template <class Epi>
  void run_rows(const LinearOp& op, int M, int64_t g0, int64_t g1, Scratch& s, Epi& epi) const {
    while (g0 < g1) {
      int64_t local;
      const int si = op.seg_of(g0, local);
      const Segment& seg = op.segs[size_t(si)];
      const int64_t first = seg.row0 / RG;
      const int64_t end = std::min(g1, first + seg.w->ng);
      const ActBuffer& buf = s.acts[size_t(op.variant_of[size_t(si)])];
      const Act* rows[16];
      for (int m = 0; m < M; ++m) rows[m] = &buf.rows[size_t(m)];
      auto local_epi = [&](int64_t g, int m, const float* out) { epi(g + first, m, out); };
      Kernels<V>::rows(*seg.w, rows, M, local, end - first, local_epi);
      g0 = end;
    }
  }

  static int parts(const std::vector<int64_t>& bounds) { return int(bounds.size()) - 1; }

  // Phase hand-overs of one forward: reset every phase's claims for this step.
  void reset_claims(const Step& st) {
    size_t i = 0;
    for (const Parts& P : lparts_) {
      claims_[i++].reset(parts(P.qkv));
      claims_[i++].reset(int(c.nkv * st.nchunks));
      claims_[i++].reset(parts(P.o));
      claims_[i++].reset(parts(P.w13));
      claims_[i++].reset(parts(P.w2));
    }
    claims_[i].reset(parts(parts_head_));
  }

  void step(const Step& st, int tid) {
    Scratch& s = scratch_[size_t(tid)];
    const int M = st.M;
    const bool bf = c.bf16 != 0;
    float* x = x_.as<float>();
    float* y = y_.as<float>();
    float* q = q_.as<float>();
    float* h = h_.as<float>();
    float* normed = s.normed.as<float>();
    float* attn = s.attn.as<float>();
    const int64_t qkv_n = int64_t(c.nq + 2 * c.nkv) * c.hd, qn = int64_t(c.nq) * c.hd;
    const int group = c.nq / c.nkv;
    size_t phase = 0;
    // run `work(part)` for the parts of the next phase this thread claims, after the previous phase is
    // done; `prepare()` (this thread's private inputs) runs once, before its first claimed part
    auto run_phase = [&](auto&& prepare, auto&& work) {
      if (phase) claims_[phase - 1].wait();
      bool ready = false;
      claims_[phase].work([&](int p) {
        if (!ready) { prepare(); ready = true; }
        work(p);
      });
      ++phase;
    };
    auto add_x = [&](int64_t g, int m, const float* out) {
      float* xr = x + int64_t(m) * c.d + g * RG;
      for (int i = 0; i < RG; ++i) xr[i] = bf ? round_bf16(xr[i] + round_bf16(out[i])) : xr[i] + out[i];
    };
    for (int li = 0; li < c.layers; ++li) {
      const Layer& Ly = layers[size_t(li)];
      const Parts& P = lparts_[size_t(li)];
      // P1: norm, q/k/v heads, rope, cache writes
      auto to_y = [&](int64_t g, int m, const float* out) { std::memcpy(y + int64_t(m) * qkv_n + g * RG, out, RG * 4); };
      run_phase(
          [&] {
            for (int m = 0; m < M; ++m)
              Ops<V>::rmsnorm(x + int64_t(m) * c.d, Ly.attn_norm.data(), c.d, c.eps, bf, normed + int64_t(m) * c.d);
            prepare(Ly.qkv, normed, M, s);
          },
          [&](int p) {
            const int64_t per = c.hd / RG;
            for (int64_t hh = P.qkv[size_t(p)]; hh < P.qkv[size_t(p) + 1]; ++hh) {
              run_rows(Ly.qkv, M, hh * per, (hh + 1) * per, s, to_y);
              for (int m = 0; m < M; ++m) {
                float* v = y + int64_t(m) * qkv_n + hh * c.hd;
                if (!Ly.qkv_bias.empty())
                  for (int i = 0; i < c.hd; ++i) v[i] += Ly.qkv_bias[size_t(hh * c.hd + i)];
                if (bf) for (int i = 0; i < c.hd; ++i) v[i] = round_bf16(v[i]);
                const int64_t slot = length + m;
                if (hh < c.nq + c.nkv) Ops<V>::rope(v, cos.data() + st.pos[m] * c.hd, sin.data() + st.pos[m] * c.hd, c.hd, bf);
                if (hh < c.nq) std::memcpy(q + int64_t(m) * qn + hh * c.hd, v, size_t(c.hd) * 4);
                else if (hh < c.nq + c.nkv) kv_->write(li, int(hh - c.nq), slot, v, nullptr);
                else kv_->write(li, int(hh - c.nq - c.nkv), slot, nullptr, v);
              }
            }
          });
      // P2: attention tasks
      run_phase([] {}, [&](int t) {
        const int kvh = int(t / st.nchunks);
        int64_t s0, s1;
        split_range(st.L, int(st.nchunks), int(t % st.nchunks), s0, s1);
        Attention<V>::task(*kv_, li, kvh, group, c.hd, M, q, qn, s0, s1, c.scale, st.vis,
                           &parts_[size_t(int64_t(t) * 16 * group)], s.scores.as<float>());
      });
      // P3: merge heads (privately), o_proj rows + residual
      run_phase(
          [&] {
            for (int m = 0; m < M; ++m)
              for (int hq = 0; hq < c.nq; ++hq) {
                const int kvh = hq / group, g = hq % group;
                const Partial* ps[1024];
                for (int64_t ch = 0; ch < st.nchunks; ++ch)
                  ps[ch] = &parts_[size_t((kvh * st.nchunks + ch) * 16 * group + m * group + g)];
                float* out = attn + int64_t(m) * qn + int64_t(hq) * c.hd;
                Attention<V>::combine(ps, int(st.nchunks), c.hd, out);
                if (bf) for (int i = 0; i < c.hd; ++i) out[i] = round_bf16(out[i]);
              }
            prepare(Ly.o, attn, M, s);
          },
          [&](int p) { run_rows(Ly.o, M, P.o[size_t(p)], P.o[size_t(p) + 1], s, add_x); });
      // P4: norm, gate/up pairs, silu(gate) * up
      const int64_t w13_n = 2 * int64_t(c.ffn), half = c.ffn / RG;
      auto to_y13 = [&](int64_t g, int m, const float* out) {
        float* dst = y + int64_t(m) * w13_n + g * RG;
        for (int i = 0; i < RG; ++i) dst[i] = bf ? round_bf16(out[i]) : out[i];
      };
      run_phase(
          [&] {
            for (int m = 0; m < M; ++m)
              Ops<V>::rmsnorm(x + int64_t(m) * c.d, Ly.ffn_norm.data(), c.d, c.eps, bf, normed + int64_t(m) * c.d);
            prepare(Ly.w13, normed, M, s);
          },
          [&](int p) {
            for (int64_t j = P.w13[size_t(p)]; j < P.w13[size_t(p) + 1]; ++j) {
              run_rows(Ly.w13, M, j, j + 1, s, to_y13);
              run_rows(Ly.w13, M, half + j, half + j + 1, s, to_y13);
              for (int m = 0; m < M; ++m)
                Ops<V>::silu_mul(y + int64_t(m) * w13_n + j * RG, y + int64_t(m) * w13_n + c.ffn + j * RG, RG, bf,
                                 h + int64_t(m) * c.ffn + j * RG);
            }
          });
      // P5: down_proj rows + residual
      run_phase([&] { prepare(Ly.w2, h, M, s); },
                [&](int p) { run_rows(Ly.w2, M, P.w2[size_t(p)], P.w2[size_t(p) + 1], s, add_x); });
    }
    // head: final norm of the rows wanted, their logits
    const int m0 = st.all_logits ? 0 : M - 1, mh = M - m0;
    const int64_t vocab = c.vocab;
    auto to_logits = [&](int64_t g, int m, const float* out) {
      const int64_t n0 = g * RG, n1 = std::min(vocab, n0 + RG);
      if (st.logits_bf16) {
        uint16_t* dst = static_cast<uint16_t*>(st.logits) + int64_t(m) * vocab;
        for (int64_t n = n0; n < n1; ++n) dst[n] = f32_to_bf16(out[n - n0]);
      } else {
        float* dst = static_cast<float*>(st.logits) + int64_t(m) * vocab;
        for (int64_t n = n0; n < n1; ++n) dst[n] = bf ? round_bf16(out[n - n0]) : out[n - n0];
      }
    };
    run_phase(
        [&] {
          for (int m = m0; m < M; ++m)
            Ops<V>::rmsnorm(x + int64_t(m) * c.d, final_norm.data(), c.d, c.eps, bf, normed + int64_t(m - m0) * c.d);
          prepare(head, normed, mh, s);
        },
        [&](int p) { run_rows(head, mh, parts_head_[size_t(p)], parts_head_[size_t(p) + 1], s, to_logits); });
    claims_[phase - 1].wait();
  }

  std::unique_ptr<KVStore> kv_;
  Buffer x_, y_, q_, h_, part_acc_;
  std::vector<Partial> parts_;
  int64_t max_chunks_ = 1;
  int nthreads_ = 0;
  std::vector<Scratch> scratch_;
  std::vector<Parts> lparts_;  // per layer
  std::vector<Claims> claims_;  // per phase of a step
  std::vector<int64_t> parts_head_;
};

}  // namespace rl
