// A persistent thread pool for decode-sized work: one `run` per kernel call or per decode step.
//
// Why not OpenMP or std::async: a batch-1 kernel on a small model lasts 1-50 us, so the fork/join cost
// must stay well under a microsecond. Workers therefore spin on a generation counter between runs
// (hot hand-off, ~100 ns), and only after `spin_us` without work do they sleep on a futex
// (std::atomic::wait), so an idle process does not burn the cores.
//
// Workers are optional helpers: jobs split their work into partitions (contiguous, statically
// computed ranges of output rows — nothing is ever reduced across threads) that any thread claims with
// an atomic counter (`Claims`), and `run` returns as soon as the caller has seen every partition done,
// skipping workers that had not started yet. On a shared, oversubscribed machine a descheduled worker
// therefore costs nothing but its partitions' share of time, instead of stalling every barrier until
// the scheduler brings it back (which made a 10 us kernel take 700 us on a busy 2-core VM).
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

  // Run job(tid, n) on the caller (tid 0) and on every worker that starts before the caller has
  // finished; the job must complete all its work on whichever threads run it (claim partitions).
  // Returns when the caller's job returned and every worker that entered has left. Not reentrant.
  void run(const Job& job) {
    if (nthreads_ == 1) { job(0, 1); return; }
    job_ = &job;
    done_.store(0, std::memory_order_relaxed);
    gate_.store(0, std::memory_order_relaxed);
    // seq_cst on both sides of the sleep hand-shake (here and in worker): a worker that is about to sleep
    // either sees the new generation or is counted in sleepers_ and gets the notify
    gen_.fetch_add(1);
    if (sleepers_.load() > 0) gen_.notify_all();
    job(0, nthreads_);
    const uint32_t entered = gate_.fetch_add(kClosed);  // workers that start from now on skip this run
    spin_until([&] { return done_.load(std::memory_order_acquire) == entered; });
  }

  template <class Pred> static void spin_until(Pred ready) {
    for (int i = 0; !ready(); ++i) {
      if (i < 2000) RL_PAUSE(); else sched_yield();  // yield: the thread we wait for may need this core
    }
  }

 private:
  static constexpr uint32_t kClosed = 1u << 24;

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
      if (gate_.fetch_add(1) < kClosed) {  // the run is still open: help
        (*job_)(tid, nthreads_);
        done_.fetch_add(1, std::memory_order_acq_rel);
      }
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
  alignas(64) std::atomic<uint32_t> done_{0};
  alignas(64) std::atomic<int> sleepers_{0};
  alignas(64) std::atomic<uint32_t> gate_{0};
  std::atomic<bool> quit_{false};
};

// Partitions of one phase of a job, claimed by whichever threads run it; `finished` once all are done.
struct Claims {
  alignas(64) std::atomic<int> next{0};
  alignas(64) std::atomic<int> done{0};
  int parts = 0;
  void reset(int n) { next.store(0, std::memory_order_relaxed); done.store(0, std::memory_order_relaxed); parts = n; }
  // run work(p) for every partition p this thread claims
  template <class Work> void work(Work&& fn) {
    for (int p; (p = next.fetch_add(1, std::memory_order_acq_rel)) < parts;) {
      fn(p);
      done.fetch_add(1, std::memory_order_acq_rel);
    }
  }
  bool finished() const { return done.load(std::memory_order_acquire) >= parts; }
  void wait() const { ThreadPool::spin_until([&] { return finished(); }); }
};

// Split [0, n) into `parts` contiguous ranges as evenly as possible; range `i`.
inline void split_range(int64_t n, int parts, int i, int64_t& begin, int64_t& end) {
  begin = n * i / parts;
  end = n * (i + 1) / parts;
}

}  // namespace rl
