// A persistent thread pool for decode-sized work: one `run` per kernel call or per decode step, and
// spin barriers inside a run (SPMD: every thread executes the same function with its own index).
//
// Why not OpenMP or std::async: a batch-1 kernel on a small model lasts 1-50 us, so the fork/join cost
// must stay well under a microsecond. Workers therefore spin on a generation counter between runs
// (hot hand-off, ~100 ns), and only after `spin_us` without work do they sleep on a futex
// (std::atomic::wait), so an idle process does not burn the cores. Barriers spin too, with a yield
// after a while in case the machine is oversubscribed. Work is split statically by the callers
// (no work stealing, no cross-thread reductions): each thread owns a fixed slice of output rows.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>
#include <vector>
#include <sched.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define RL_PAUSE() _mm_pause()
#else
#define RL_PAUSE() std::this_thread::yield()
#endif

namespace rl {

class ThreadPool {
 public:
  using Job = std::function<void(int tid, int nthreads)>;

  ThreadPool() = default;
  ~ThreadPool() { stop(); }

  int threads() const { return nthreads_; }
  int spin_us() const { return spin_us_; }
  void set_spin_us(int us) { spin_us_ = us < 0 ? 0 : us; }

  // (Re)start with n threads in total, the caller included.
  void set_threads(int n) {
    if (n < 1) n = 1;
    if (n == nthreads_) return;
    stop();
    nthreads_ = n;
    quit_.store(false);
    // the generation the workers start from is read here, not in the new threads: a run() issued before
    // a worker first looks would otherwise be mistaken for an old one and never executed
    const uint32_t start = gen_.load();
    for (int t = 1; t < n; ++t) workers_.emplace_back([this, t, start] { worker(t, start); });
  }

  // Run job(tid, n) on every thread (the caller is tid 0); returns when all are done.
  // Not reentrant: a job must not call run() again.
  void run(const Job& job) {
    if (nthreads_ == 1) { job(0, 1); return; }
    job_ = &job;
    done_.store(0, std::memory_order_relaxed);
    // seq_cst on both sides of the sleep hand-shake (here and in worker): a worker that is about to sleep
    // either sees the new generation or is counted in sleepers_ and gets the notify
    gen_.fetch_add(1);
    if (sleepers_.load() > 0) gen_.notify_all();
    job(0, nthreads_);
    spin_until([&] { return done_.load(std::memory_order_acquire) == nthreads_ - 1; });
  }

  // All threads of the current run wait here until every one has arrived.
  void barrier() {
    if (nthreads_ == 1) return;
    uint32_t phase = bar_phase_.load(std::memory_order_acquire);
    if (bar_count_.fetch_add(1, std::memory_order_acq_rel) == uint32_t(nthreads_ - 1)) {
      bar_count_.store(0, std::memory_order_relaxed);
      bar_phase_.store(phase + 1, std::memory_order_release);
    } else {
      spin_until([&] { return bar_phase_.load(std::memory_order_acquire) != phase; });
    }
  }

 private:
  template <class Pred> static void spin_until(Pred ready) {
    for (int i = 0; !ready(); ++i) {
      if (i < 2000) RL_PAUSE(); else sched_yield();  // yield: the thread we wait for may need this core
    }
  }

  void worker(int tid, uint32_t seen) {
    for (;;) {
      uint32_t g = gen_.load(std::memory_order_acquire);
      if (g == seen) {
        auto start = std::chrono::steady_clock::now();
        auto limit = std::chrono::microseconds(spin_us_);
        for (int i = 0;; ++i) {
          g = gen_.load(std::memory_order_acquire);
          if (g != seen) break;
          RL_PAUSE();
          if ((i & 255) == 255 && std::chrono::steady_clock::now() - start > limit) {
            sleepers_.fetch_add(1);
            gen_.wait(seen);
            sleepers_.fetch_sub(1);
            start = std::chrono::steady_clock::now();
          }
        }
      }
      seen = g;
      if (quit_.load(std::memory_order_acquire)) return;
      (*job_)(tid, nthreads_);
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
  }

  void stop() {
    if (workers_.empty()) { nthreads_ = 1; return; }
    quit_.store(true, std::memory_order_release);
    gen_.fetch_add(1, std::memory_order_acq_rel);
    gen_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    nthreads_ = 1;
  }

  int nthreads_ = 1;
  int spin_us_ = 300;
  const Job* job_ = nullptr;
  std::vector<std::thread> workers_;
  alignas(64) std::atomic<uint32_t> gen_{0};
  alignas(64) std::atomic<int> done_{0};
  alignas(64) std::atomic<int> sleepers_{0};
  alignas(64) std::atomic<uint32_t> bar_count_{0};
  alignas(64) std::atomic<uint32_t> bar_phase_{0};
  std::atomic<bool> quit_{false};
};

// Split [0, n) into `parts` contiguous ranges as evenly as possible; range `i`.
inline void split_range(int64_t n, int parts, int i, int64_t& begin, int64_t& end) {
  begin = n * i / parts;
  end = n * (i + 1) / parts;
}

}  // namespace rl
