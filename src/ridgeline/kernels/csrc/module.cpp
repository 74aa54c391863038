// CPython bindings (the C API: no pybind11, no torch headers, so the build needs only a C++ compiler).
//
// Tensors cross as raw addresses (tensor.data_ptr()) plus shapes: the Python side (ridgeline.kernels)
// checks dtype, contiguity and shape before calling, and keeps the tensors alive. Packed weights and
// models are PyCapsules owning their C++ objects. Every entry point releases the GIL while it computes.
// METH_FASTCALL keeps a call at ~0.1 us; one decode step of the native model is one call.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <chrono>
#include <ctime>
#include "linear.h"
#include "pack.h"
#include "model.h"

#ifndef RL_MODULE
#error "RL_MODULE (the extension's module name) must be defined by the variant translation unit"
#endif
#define RL_STR2(x) #x
#define RL_STR(x) RL_STR2(x)
#define RL_CAT2(a, b) a##b
#define RL_CAT(a, b) RL_CAT2(a, b)

using rl::Isa;

namespace {

const char* kPackedName = "ridgeline.kernels.Packed";
const char* kModelName = "ridgeline.kernels.Model";

template <class T> T arg_int(PyObject* o, bool& ok) {
  if (!ok) return T(0);
  long long v = PyLong_AsLongLong(o);
  if (v == -1 && PyErr_Occurred()) { ok = false; return T(0); }
  return T(v);
}
template <class T> T* arg_ptr(PyObject* o, bool& ok) {
  if (!ok) return nullptr;
  unsigned long long v = PyLong_AsUnsignedLongLong(o);
  if (v == (unsigned long long)-1 && PyErr_Occurred()) { ok = false; return nullptr; }
  return reinterpret_cast<T*>(uintptr_t(v));
}
bool nargs(Py_ssize_t n, Py_ssize_t want, const char* fn) {
  if (n == want) return true;
  PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", fn, want, n);
  return false;
}

// ridgeline.errors.RidgelineError (a ValueError), looked up at import; ValueError if that failed
PyObject* g_error = nullptr;

// Run `f` without the GIL, turning C++ exceptions into RidgelineError.
template <class Fn> bool guarded(Fn&& f) {
  std::string err;
  Py_BEGIN_ALLOW_THREADS
  try { f(); } catch (const std::exception& e) { err = e.what(); if (err.empty()) err = "native kernel error"; }
  Py_END_ALLOW_THREADS
  if (!err.empty()) { PyErr_SetString(g_error ? g_error : PyExc_ValueError, err.c_str()); return false; }
  return true;
}

void packed_free(PyObject* cap) { delete static_cast<rl::Packed*>(PyCapsule_GetPointer(cap, kPackedName)); }

void model_free(PyObject* cap) { delete static_cast<rl::Model*>(PyCapsule_GetPointer(cap, kModelName)); }
rl::Packed* get_packed(PyObject* cap) { return static_cast<rl::Packed*>(PyCapsule_GetPointer(cap, kPackedName)); }
rl::Model* get_model(PyObject* cap) { return static_cast<rl::Model*>(PyCapsule_GetPointer(cap, kModelName)); }

PyObject* wrap_packed(rl::Packed&& p) {
  auto* heap = new rl::Packed(std::move(p));
  PyObject* cap = PyCapsule_New(heap, kPackedName, packed_free);
  if (!cap) delete heap;
  return cap;
}

// ---------------------------------------------------------------- runtime

PyObject* py_isa(PyObject*, PyObject* const*, Py_ssize_t) { return PyUnicode_FromString(Isa::name); }

PyObject* py_cpu_features(PyObject*, PyObject* const*, Py_ssize_t) {
  PyObject* d = PyDict_New();
  if (!d) return nullptr;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  const char* names[] = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni", "avx512bf16"};
  const int have[] = {__builtin_cpu_supports("avx2"), __builtin_cpu_supports("fma"), __builtin_cpu_supports("f16c"),
                      __builtin_cpu_supports("avx512f"), __builtin_cpu_supports("avx512bw"),
                      __builtin_cpu_supports("avx512vl"), __builtin_cpu_supports("avx512dq"),
                      __builtin_cpu_supports("avx512vnni"), __builtin_cpu_supports("avx512bf16")};
  for (size_t i = 0; i < sizeof(have) / sizeof(have[0]); ++i) PyDict_SetItemString(d, names[i], have[i] ? Py_True : Py_False);
#endif
  return d;
}

PyObject* py_set_num_threads(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 1, "set_num_threads")) return nullptr;
  bool ok = true;
  int t = arg_int<int>(a[0], ok);
  if (!ok) return nullptr;
  if (!guarded([&] { std::lock_guard<std::mutex> g(rl::runtime().lock); rl::runtime().pool.set_threads(t); })) return nullptr;
  Py_RETURN_NONE;
}

PyObject* py_get_num_threads(PyObject*, PyObject* const*, Py_ssize_t) { return PyLong_FromLong(rl::runtime().pool.threads()); }

PyObject* py_set_spin_us(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 1, "set_spin_us")) return nullptr;
  bool ok = true;
  int us = arg_int<int>(a[0], ok);
  if (!ok) return nullptr;
  rl::runtime().pool.set_spin_us(us);
  Py_RETURN_NONE;
}

// pool_overhead(iters, barriers) -> (seconds per empty run, seconds per barrier)
PyObject* py_pool_overhead(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 2, "pool_overhead")) return nullptr;
  bool ok = true;
  int iters = arg_int<int>(a[0], ok), barriers = arg_int<int>(a[1], ok);
  if (!ok) return nullptr;
  double run_s = 0, bar_s = 0;
  if (!guarded([&] {
        auto& rt = rl::runtime();
        std::lock_guard<std::mutex> g(rt.lock);
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < iters; ++i) rt.pool.run([](int, int) {});
        auto t1 = std::chrono::steady_clock::now();
        // a phase hand-over: every thread claims one of n empty partitions, then waits for all of them
        std::vector<rl::Claims> phases(size_t(std::max(barriers, 1)));
        for (auto& c : phases) c.reset(rt.pool.threads());
        rt.pool.run([&](int, int) {
          for (int i = 0; i < barriers; ++i) { phases[size_t(i)].work([](int) {}); phases[size_t(i)].wait(); }
        });
        auto t2 = std::chrono::steady_clock::now();
        run_s = std::chrono::duration<double>(t1 - t0).count() / std::max(iters, 1);
        bar_s = std::chrono::duration<double>(t2 - t1).count() / std::max(barriers, 1);
      }))
    return nullptr;
  return Py_BuildValue("(dd)", run_s, bar_s);
}

// ---------------------------------------------------------------- packing

PyObject* py_pack_blocks(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 4, "pack_blocks")) return nullptr;
  bool ok = true;
  int fmt = arg_int<int>(a[0], ok);
  const uint8_t* src = arg_ptr<const uint8_t>(a[1], ok);
  int64_t N = arg_int<int64_t>(a[2], ok), K = arg_int<int64_t>(a[3], ok);
  if (!ok) return nullptr;
  rl::Packed p;
  if (!guarded([&] { p = rl::pack_blocks(rl::Fmt(fmt), src, N, K); })) return nullptr;
  return wrap_packed(std::move(p));
}

PyObject* py_pack_float(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 4, "pack_float")) return nullptr;
  bool ok = true;
  int fmt = arg_int<int>(a[0], ok);
  const void* src = arg_ptr<const void>(a[1], ok);
  int64_t N = arg_int<int64_t>(a[2], ok), K = arg_int<int64_t>(a[3], ok);
  if (!ok) return nullptr;
  rl::Packed p;
  if (!guarded([&] { p = rl::pack_float(rl::Fmt(fmt), src, N, K); })) return nullptr;
  return wrap_packed(std::move(p));
}

// pack_int(bits, codes, scale, zero, mins|0, perm|0, N, K, group)
PyObject* py_pack_int(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 9, "pack_int")) return nullptr;
  bool ok = true;
  int bits = arg_int<int>(a[0], ok);
  const uint8_t* codes = arg_ptr<const uint8_t>(a[1], ok);
  const float* scale = arg_ptr<const float>(a[2], ok);
  const int32_t* zero = arg_ptr<const int32_t>(a[3], ok);
  const float* mins = arg_ptr<const float>(a[4], ok);
  const int32_t* perm = arg_ptr<const int32_t>(a[5], ok);
  int64_t N = arg_int<int64_t>(a[6], ok), K = arg_int<int64_t>(a[7], ok), group = arg_int<int64_t>(a[8], ok);
  if (!ok) return nullptr;
  rl::Packed p;
  if (!guarded([&] { p = rl::pack_int(bits, codes, scale, zero, mins, perm, N, K, group); })) return nullptr;
  return wrap_packed(std::move(p));
}

// packed_info(p) -> (fmt, N, K, stream_bytes)
PyObject* py_packed_info(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 1, "packed_info")) return nullptr;
  rl::Packed* p = get_packed(a[0]);
  if (!p) return nullptr;
  return Py_BuildValue("(iLLL)", int(p->fmt), (long long)p->N, (long long)p->K, (long long)p->stream_bytes());
}

// ---------------------------------------------------------------- kernels

// linear(p, x, M, y, bias|0, act_mode): y [M, N] = x [M, K] @ W^T + bias, float32
PyObject* py_linear(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 6, "linear")) return nullptr;
  rl::Packed* p = get_packed(a[0]);
  if (!p) return nullptr;
  bool ok = true;
  const float* x = arg_ptr<const float>(a[1], ok);
  int M = arg_int<int>(a[2], ok);
  float* y = arg_ptr<float>(a[3], ok);
  const float* bias = arg_ptr<const float>(a[4], ok);
  int mode = arg_int<int>(a[5], ok);
  if (!ok) return nullptr;
  if (!guarded([&] { rl::linear<Isa>(*p, x, M, y, bias, mode); })) return nullptr;
  Py_RETURN_NONE;
}

// time_linear(p, x, M, y, act_mode, iters) -> (wall seconds, this thread's CPU seconds) per call, timed in
// C++ (no Python in the loop); with one thread the CPU time ignores time the thread spent descheduled
double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

PyObject* py_time_linear(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 6, "time_linear")) return nullptr;
  rl::Packed* p = get_packed(a[0]);
  if (!p) return nullptr;
  bool ok = true;
  const float* x = arg_ptr<const float>(a[1], ok);
  int M = arg_int<int>(a[2], ok);
  float* y = arg_ptr<float>(a[3], ok);
  int mode = arg_int<int>(a[4], ok), iters = arg_int<int>(a[5], ok);
  if (!ok) return nullptr;
  double secs = 0, cpu = 0;
  if (!guarded([&] {
        auto t0 = std::chrono::steady_clock::now();
        double c0 = thread_cpu_seconds();
        for (int i = 0; i < iters; ++i) rl::linear<Isa>(*p, x, M, y, nullptr, mode);
        cpu = (thread_cpu_seconds() - c0) / std::max(iters, 1);
        secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / std::max(iters, 1);
      }))
    return nullptr;
  return Py_BuildValue("(dd)", secs, cpu);
}

// quantize_act(x, M, K, act_mode, perm|0, q, d, s32): the int8 activation blocks the kernels use
PyObject* py_quantize_act(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 8, "quantize_act")) return nullptr;
  bool ok = true;
  const float* x = arg_ptr<const float>(a[0], ok);
  int M = arg_int<int>(a[1], ok);
  int64_t K = arg_int<int64_t>(a[2], ok);
  int mode = arg_int<int>(a[3], ok);
  const int32_t* perm = arg_ptr<const int32_t>(a[4], ok);
  int8_t* q = arg_ptr<int8_t>(a[5], ok);
  float* d = arg_ptr<float>(a[6], ok);
  int32_t* s32 = arg_ptr<int32_t>(a[7], ok);
  if (!ok) return nullptr;
  if (!guarded([&] {
        if (K % 32) throw rl::Error("activation rows must be a multiple of 32 long");
        rl::ActBuffer buf;
        buf.ensure(1, K);
        for (int m = 0; m < M; ++m) {
          rl::Act& act = buf.rows[0];
          rl::ActOps<Isa>::to_q8(x + int64_t(m) * K, K, act, mode, perm, buf.gathered[0]);
          std::memcpy(q + int64_t(m) * K, act.q, size_t(K));
          std::memcpy(d + int64_t(m) * (K / 32), act.d, size_t(K / 32) * 4);
          std::memcpy(s32 + int64_t(m) * (K / 32), act.s32, size_t(K / 32) * 4);
        }
      }))
    return nullptr;
  Py_RETURN_NONE;
}


// ---------------------------------------------------------------- native model

// model_new(layers, d, ffn, nq, nkv, hd, vocab, max_len, eps, scale, bf16, kv_dtype)
PyObject* py_model_new(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 12, "model_new")) return nullptr;
  bool ok = true;
  rl::ModelConfig c;
  c.layers = arg_int<int>(a[0], ok); c.d = arg_int<int>(a[1], ok); c.ffn = arg_int<int>(a[2], ok);
  c.nq = arg_int<int>(a[3], ok); c.nkv = arg_int<int>(a[4], ok); c.hd = arg_int<int>(a[5], ok);
  c.vocab = arg_int<int>(a[6], ok); c.max_len = arg_int<int64_t>(a[7], ok);
  if (!ok) return nullptr;
  c.eps = float(PyFloat_AsDouble(a[8]));
  c.scale = float(PyFloat_AsDouble(a[9]));
  if (PyErr_Occurred()) return nullptr;
  c.bf16 = arg_int<int>(a[10], ok); c.kv_dtype = arg_int<int>(a[11], ok);
  if (!ok) return nullptr;
  rl::Model* m = nullptr;
  if (!guarded([&] { m = new rl::Model(c); })) return nullptr;
  PyObject* cap = PyCapsule_New(m, kModelName, model_free);
  if (!cap) delete m;
  return cap;
}

// model_add_linear(model, layer, which, packed, act_mode): which 0 qkv, 1 o, 2 gate/up, 3 down, 4 head
PyObject* py_model_add_linear(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 5, "model_add_linear")) return nullptr;
  rl::Model* m = get_model(a[0]);
  if (!m) return nullptr;
  bool ok = true;
  int layer = arg_int<int>(a[1], ok), which = arg_int<int>(a[2], ok);
  rl::Packed* p = get_packed(a[3]);
  if (!p) return nullptr;
  int mode = arg_int<int>(a[4], ok);
  if (!ok) return nullptr;
  if (!guarded([&] {
        if (which == 4) { m->head.add(p, mode); return; }
        if (layer < 0 || layer >= m->c.layers || which < 0 || which > 3) throw rl::Error("bad layer or linear index");
        rl::Layer& L = m->layers[size_t(layer)];
        rl::LinearOp* ops[] = {&L.qkv, &L.o, &L.w13, &L.w2};
        ops[which]->add(p, mode);
      }))
    return nullptr;
  Py_RETURN_NONE;
}

// model_set_vector(model, layer, which, ptr, n): which 0 attn_norm, 1 ffn_norm, 2 qkv_bias, 3 final_norm
PyObject* py_model_set_vector(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 5, "model_set_vector")) return nullptr;
  rl::Model* m = get_model(a[0]);
  if (!m) return nullptr;
  bool ok = true;
  int layer = arg_int<int>(a[1], ok), which = arg_int<int>(a[2], ok);
  const float* src = arg_ptr<const float>(a[3], ok);
  int64_t len = arg_int<int64_t>(a[4], ok);
  if (!ok) return nullptr;
  if (!guarded([&] {
        std::vector<float> v(src, src + len);
        if (which == 3) { m->final_norm = std::move(v); return; }
        if (layer < 0 || layer >= m->c.layers || which < 0 || which > 2) throw rl::Error("bad layer or vector index");
        rl::Layer& L = m->layers[size_t(layer)];
        (which == 0 ? L.attn_norm : which == 1 ? L.ffn_norm : L.qkv_bias) = std::move(v);
      }))
    return nullptr;
  Py_RETURN_NONE;
}

// model_set_tables(model, embed_ptr, embed_bf16, cos_ptr, sin_ptr): the embedding stays owned by Python
PyObject* py_model_set_tables(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 5, "model_set_tables")) return nullptr;
  rl::Model* m = get_model(a[0]);
  if (!m) return nullptr;
  bool ok = true;
  const void* embed = arg_ptr<const void>(a[1], ok);
  int bf = arg_int<int>(a[2], ok);
  const float* cs = arg_ptr<const float>(a[3], ok);
  const float* sn = arg_ptr<const float>(a[4], ok);
  if (!ok) return nullptr;
  const size_t len = size_t(m->c.max_len * m->c.hd);
  m->embed = embed;
  m->embed_bf16 = bf;
  m->cos.assign(cs, cs + len);
  m->sin.assign(sn, sn + len);
  Py_RETURN_NONE;
}

PyObject* py_model_finalize(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 1, "model_finalize")) return nullptr;
  rl::Model* m = get_model(a[0]);
  if (!m) return nullptr;
  if (!guarded([&] { m->finalize(); })) return nullptr;
  return PyLong_FromLongLong(m->kv_bytes());
}

// model_forward(model, tokens, positions, M, vis|0, logits, all_logits, logits_bf16, hidden|0)
PyObject* py_model_forward(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 9, "model_forward")) return nullptr;
  rl::Model* m = get_model(a[0]);
  if (!m) return nullptr;
  bool ok = true;
  const int64_t* tokens = arg_ptr<const int64_t>(a[1], ok);
  const int64_t* pos = arg_ptr<const int64_t>(a[2], ok);
  int M = arg_int<int>(a[3], ok);
  const uint8_t* vis = arg_ptr<const uint8_t>(a[4], ok);
  void* logits = arg_ptr<void>(a[5], ok);
  int all = arg_int<int>(a[6], ok), lbf = arg_int<int>(a[7], ok);
  float* hidden = arg_ptr<float>(a[8], ok);
  if (!ok) return nullptr;
  if (!guarded([&] { m->forward(tokens, pos, M, vis, logits, all != 0, lbf != 0, hidden); })) return nullptr;
  return PyLong_FromLongLong(m->length);
}

// model_length(model, new_length or -1): the cache length (set it with a value in 0..length: truncation)
PyObject* py_model_length(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 2, "model_length")) return nullptr;
  rl::Model* m = get_model(a[0]);
  if (!m) return nullptr;
  bool ok = true;
  int64_t len = arg_int<int64_t>(a[1], ok);
  if (!ok) return nullptr;
  if (len >= 0) {
    if (len > m->length) { PyErr_SetString(PyExc_ValueError, "cannot extend the cache length"); return nullptr; }
    m->length = len;
  }
  return PyLong_FromLongLong(m->length);
}

// model_compact(model, keep_ptr, n): keep these ascending slots, moved to 0..n-1
PyObject* py_model_compact(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (!nargs(n, 3, "model_compact")) return nullptr;
  rl::Model* m = get_model(a[0]);
  if (!m) return nullptr;
  bool ok = true;
  const int64_t* keep = arg_ptr<const int64_t>(a[1], ok);
  int64_t cnt = arg_int<int64_t>(a[2], ok);
  if (!ok) return nullptr;
  if (!guarded([&] { std::lock_guard<std::mutex> g(rl::runtime().lock); m->compact(keep, cnt); })) return nullptr;
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"isa", (PyCFunction)(void (*)(void))py_isa, METH_FASTCALL, "name of the instruction set this module was compiled for"},
    {"cpu_features", (PyCFunction)(void (*)(void))py_cpu_features, METH_FASTCALL, "CPUID feature flags that matter here"},
    {"set_num_threads", (PyCFunction)(void (*)(void))py_set_num_threads, METH_FASTCALL, "threads of the kernel pool"},
    {"get_num_threads", (PyCFunction)(void (*)(void))py_get_num_threads, METH_FASTCALL, "threads of the kernel pool"},
    {"set_spin_us", (PyCFunction)(void (*)(void))py_set_spin_us, METH_FASTCALL, "how long idle workers spin before sleeping"},
    {"pool_overhead", (PyCFunction)(void (*)(void))py_pool_overhead, METH_FASTCALL, "seconds per empty run and per phase hand-over"},
    {"pack_blocks", (PyCFunction)(void (*)(void))py_pack_blocks, METH_FASTCALL, "repack codec bytes"},
    {"pack_float", (PyCFunction)(void (*)(void))py_pack_float, METH_FASTCALL, "repack float weights"},
    {"pack_int", (PyCFunction)(void (*)(void))py_pack_int, METH_FASTCALL, "repack integer codes"},
    {"packed_info", (PyCFunction)(void (*)(void))py_packed_info, METH_FASTCALL, "(fmt, N, K, stream bytes)"},
    {"linear", (PyCFunction)(void (*)(void))py_linear, METH_FASTCALL, "y = x @ W^T + b"},
    {"time_linear", (PyCFunction)(void (*)(void))py_time_linear, METH_FASTCALL, "seconds per linear call"},
    {"quantize_act", (PyCFunction)(void (*)(void))py_quantize_act, METH_FASTCALL, "int8 activation blocks"},
    {"model_new", (PyCFunction)(void (*)(void))py_model_new, METH_FASTCALL, "a native decode model"},
    {"model_add_linear", (PyCFunction)(void (*)(void))py_model_add_linear, METH_FASTCALL, "append a weight segment"},
    {"model_set_vector", (PyCFunction)(void (*)(void))py_model_set_vector, METH_FASTCALL, "norm weights, biases"},
    {"model_set_tables", (PyCFunction)(void (*)(void))py_model_set_tables, METH_FASTCALL, "embedding, rope tables"},
    {"model_finalize", (PyCFunction)(void (*)(void))py_model_finalize, METH_FASTCALL, "check and allocate"},
    {"model_forward", (PyCFunction)(void (*)(void))py_model_forward, METH_FASTCALL, "run up to 16 tokens"},
    {"model_length", (PyCFunction)(void (*)(void))py_model_length, METH_FASTCALL, "cache length"},
    {"model_compact", (PyCFunction)(void (*)(void))py_model_compact, METH_FASTCALL, "keep cache slots"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, RL_STR(RL_MODULE), "ridgeline native kernels", -1, methods,
                          nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC RL_CAT(PyInit_, RL_MODULE)(void) {
  PyObject* errors = PyImport_ImportModule("ridgeline.errors");
  if (errors) {
    g_error = PyObject_GetAttrString(errors, "RidgelineError");
    Py_DECREF(errors);
  }
  if (!g_error) PyErr_Clear();
  return PyModule_Create(&module_def);
}
