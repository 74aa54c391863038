"""Measured runs of a scenario: load once, warm up, then time the prefill and every decode step.

One repeat = `prefill` of exactly P prompt tokens from an empty cache (its time is the TTFT, the
first token's argmax included) followed by exactly N decode steps continuing from that cache, each
timed on its own. Model load and warm-up are timed and reported separately, never mixed into the
phase times (RooflineBench divided by whole-process wall time). The record carries every parameter
that produced it, the machine, and every per-repeat sample (llama-bench style).
"""

from __future__ import annotations

import math
import time
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Callable, Sequence

from ridgeline.arch import Variant
from ridgeline.errors import RidgelineError
from ridgeline.measure.contention import Contention, Watch
from ridgeline.measure.probe import MAX_REPEATS, check_threads
from ridgeline.measure.stats import Stat, machine_info, summarize
from ridgeline.specs import ModelRef, ModelSpec, Precision, Scenario, load_spec

BACKENDS = ("torch", "llamacpp")
IMPLS = ("auto", "lean", "hf")
Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines one measured run (after the model, backend, scenario and dtype: keywords only)."""

    model: str
    backend: str = "torch"
    scenario: Scenario = field(default_factory=lambda: Scenario(128, 128, name="SISO"))
    dtype: str = "fp32"  # torch: fp32 | bf16; llama.cpp: the GGUF's own types ("stored")
    _: KW_ONLY
    threads: int | None = None
    repeats: int = 3
    warmup: int = 1
    layers: int | None = None
    impl: str = "auto"  # torch only: lean (ridgeline's static-cache path), hf (transformers forward), auto
    memory_limit: float | None = None  # bytes; refuse before loading above it (default: memory available)
    variant: Variant = field(default_factory=Variant)  # torch: KV format, sliding window, K/V heads

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise RidgelineError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.impl not in IMPLS:
            raise RidgelineError(f"implementation {self.impl!r} is not one of {', '.join(IMPLS)}")
        if self.backend == "torch" and self.dtype not in ("fp32", "bf16"):
            raise RidgelineError(f"torch backend dtype {self.dtype!r} is not fp32 or bf16 (fp16 matmul is a "
                                 "2-3 GFLOP/s trap on CPUs)")
        if self.backend == "llamacpp" and self.dtype not in ("stored",):
            raise RidgelineError("the llama.cpp backend runs the GGUF's own tensor types: dtype must be 'stored'")
        if self.scenario.batch != 1:
            raise RidgelineError("measured runs are batch 1 (the paged-KV engine measures batches)")
        if not (1 <= self.repeats <= MAX_REPEATS and 0 <= self.warmup <= MAX_REPEATS):
            raise RidgelineError(f"repeats must be 1 to {MAX_REPEATS} and warm-up 0 to {MAX_REPEATS}, got "
                                 f"{self.repeats} and {self.warmup}")
        if self.threads is not None:
            check_threads(self.threads)
        if self.memory_limit is not None and not (math.isfinite(self.memory_limit) and self.memory_limit > 0):
            raise RidgelineError(f"the memory limit must be a finite number > 0, got {self.memory_limit!r}")
        if self.backend == "llamacpp" and self.layers is not None:
            raise RidgelineError("--layers (depth sweeps) runs on the torch backend; llama.cpp runs the whole GGUF")
        if self.variant.transformed:
            if self.backend != "torch":
                raise RidgelineError("--kv, --window and --kv-heads transform the torch model; llama.cpp runs the GGUF")
            if self.impl == "lean":
                raise RidgelineError("the lean decode path has a static float cache; --kv, --window and --kv-heads "
                                     "run on --impl hf (or auto)")
            self.variant.check(self.dtype)

    @property
    def kv_format(self) -> str:
        """The KV format the run holds: the variant's, else the dtype (the model's own cache)."""
        return self.variant.kv or self.dtype

    def to_json(self) -> dict:
        """Every parameter, for the record."""
        return {"model": self.model, "backend": self.backend, "impl": self.impl, "dtype": self.dtype,
                "scenario": self.scenario.to_json(), "threads": self.threads, "repeats": self.repeats,
                "warmup": self.warmup, "layers": self.layers, "memory_limit": self.memory_limit,
                "kv": self.variant.kv, "window": self.variant.window, "kv_heads": self.variant.kv_heads,
                "variant": self.variant.to_json()}


@dataclass(frozen=True)
class RunSample:
    """One timed repeat: the prefill (TTFT) and each decode step, with the tokens that went through."""

    ttft_s: float
    decode_step_s: tuple[float, ...]
    prompt_tokens: int
    generated: tuple[int, ...]
    cache_tokens: int  # tokens in the cache after the last step: P + N

    @property
    def decode_s(self) -> float:
        """All decode steps."""
        return sum(self.decode_step_s)

    def to_json(self) -> dict:
        """JSON form."""
        return {"ttft_s": self.ttft_s, "decode_s": self.decode_s, "decode_step_s": list(self.decode_step_s),
                "prompt_tokens": self.prompt_tokens, "generated_tokens": len(self.generated),
                "cache_tokens": self.cache_tokens, "generated": list(self.generated)}


@dataclass(frozen=True)
class BenchRecord:
    """A measured run: its config, what actually ran, load and warm-up times, samples and summaries."""

    config: BenchConfig
    impl: str
    threads: int
    model_name: str
    model_source: str
    gguf: str | None
    load_s: float
    warmup_s: float
    samples: tuple[RunSample, ...]
    machine: dict
    model_config: dict = field(default_factory=dict)  # the HF config dict of the model that ran (torch)
    spec: ModelSpec | None = field(default=None, compare=False)  # the model that ran, parsed once (not saved)
    contention: Contention = field(default_factory=Contention)  # how busy the machine was while timing

    @property
    def ttft(self) -> Stat:
        """Prefill time (s) over repeats."""
        return summarize([s.ttft_s for s in self.samples])

    @property
    def decode_per_token(self) -> Stat:
        """Mean decode step time (s) over repeats (one value per repeat)."""
        n = self.config.scenario.generate
        return summarize([s.decode_s / n for s in self.samples]) if n else summarize([0.0])

    @property
    def decode_tokens_per_s(self) -> Stat:
        """Decode tokens per second over repeats."""
        n = self.config.scenario.generate
        return summarize([n / s.decode_s if s.decode_s else 0.0 for s in self.samples])

    @property
    def prefill_tokens_per_s(self) -> Stat:
        """Prompt tokens per second over repeats."""
        return summarize([s.prompt_tokens / s.ttft_s for s in self.samples])

    def to_json(self) -> dict:
        """The record: parameters, what ran, machine, samples and summaries."""
        return {
            "kind": "ridgeline.bench", "params": self.config.to_json(), "impl": self.impl, "threads": self.threads,
            "model": {"name": self.model_name, "source": self.model_source, "gguf": self.gguf},
            "load_s": self.load_s, "warmup_s": self.warmup_s, "machine": self.machine,
            "summary": {"ttft_s": self.ttft.to_json(), "prefill_tokens_per_s": self.prefill_tokens_per_s.to_json(),
                        "decode_s_per_token": self.decode_per_token.to_json(),
                        "decode_tokens_per_s": self.decode_tokens_per_s.to_json()},
            "samples": [s.to_json() for s in self.samples], "contention": self.contention.to_json(),
        }


def prompt_ids(encode: Callable[[str], list[int]], n: int) -> list[int]:
    """Exactly `n` token ids of real prose (the passage repeated as needed)."""
    from ridgeline.corpus import prompt_text

    ids = encode(prompt_text())
    if not ids:
        raise RidgelineError("the tokenizer produced no tokens for the prompt passage")
    reps = -(-n // len(ids))
    return (ids * reps)[:n]


def timed_run(runner: Any, prompt: Sequence[int], n: int) -> RunSample:
    """One repeat: prefill, then `n` decode steps, each timed; tokens fed back greedily. Each step's logits are
    checked for NaN/Inf after its clock stops: a model emitting garbage is stopped, not timed."""
    t0 = time.perf_counter()
    tok = runner.prefill(prompt)
    ttft = time.perf_counter() - t0
    _check_logits(runner, prompt, [])
    steps, generated = [], []
    for _ in range(n):
        generated.append(tok)
        t0 = time.perf_counter()
        tok = runner.decode(tok)
        steps.append(time.perf_counter() - t0)
        _check_logits(runner, prompt, generated)
    return RunSample(ttft, tuple(steps), len(prompt), tuple(generated), runner.cached())


def _check_logits(runner: Any, prompt: Sequence[int], generated: Sequence[int]) -> None:
    """Refuse non-finite logits, naming the position and (torch) the first module whose output is not finite."""
    import numpy as np

    last = getattr(runner, "last", None)  # torch logits, or llama.cpp's numpy view of them
    if last is None or bool(last.isfinite().all() if hasattr(last, "isfinite") else np.isfinite(last).all()):
        return
    position = len(prompt) + len(generated) - 1
    model = getattr(runner, "model", None)
    if model is None:
        raise RidgelineError(f"{runner.impl}: the logits are not finite at position {position}; the weights or "
                             "activations overflow or are corrupt")
    import torch

    from ridgeline.weights import nonfinite_message

    ids = torch.tensor([list(prompt) + list(generated)])
    raise RidgelineError(nonfinite_message(model, ids, f"bench ({runner.impl})"))


def _max_len(sc: Scenario) -> int:
    return sc.prompt + sc.generate + 1


def _source(cfg: BenchConfig) -> ModelRef:
    """Where the weights come from; the llama.cpp backend needs a GGUF."""
    from ridgeline.loader import resolve

    src = resolve(cfg.model)
    if cfg.backend == "llamacpp" and src.gguf is None:
        raise RidgelineError(f"the llama.cpp backend runs GGUF files; {cfg.model!r} is a {src.kind} "
                             "(pass a .gguf, or the bundled model)")
    return src


def model_spec(cfg: BenchConfig) -> ModelSpec | None:
    """The analytic spec of the model the run loads (None for a hub id): the GGUF's own tensor table for
    llama.cpp, the architecture (depth, window, K/V heads as the run changes them) for torch."""
    source = _source(cfg)
    if source.kind == "hub":
        return None
    spec = load_spec(source)
    if cfg.backend == "llamacpp":
        return spec
    if cfg.layers is not None:
        if not 1 <= cfg.layers <= spec.n_layers:  # refused here, before loading, not after
            raise RidgelineError(f"--layers must be between 1 and {spec.n_layers} for this model, got {cfg.layers}")
        spec = spec.with_layers(cfg.layers)
    return cfg.variant.apply_spec(spec)


def predicted_workload(cfg: BenchConfig, spec: ModelSpec | None = None):
    """The analytic workload of the run (its memory: weights + KV + activations), before loading anything."""
    from ridgeline.roofline import build_workload

    spec = spec or model_spec(cfg)
    if spec is None:
        return None
    prec = (Precision(cfg.dtype, cfg.dtype, cfg.kv_format) if cfg.backend == "torch"
            else Precision("stored", "fp32", "fp16"))
    return build_workload(spec, cfg.scenario, prec)


def check_memory(cfg: BenchConfig, spec: ModelSpec | None = None) -> None:
    """Refuse a run predicted not to fit, with the prediction in the message."""
    from ridgeline.loader import available_memory

    w = predicted_workload(cfg, spec)
    if w is None:
        return
    limit = cfg.memory_limit if cfg.memory_limit is not None else available_memory()
    total = w.weights_bytes + w.kv_bytes + w.activation_bytes
    if total > limit:
        raise RidgelineError(
            f"{w.model.name} {cfg.dtype} at {cfg.scenario.label} is predicted to need "
            f"{total / 2**30:.3f} GiB (weights {w.weights_bytes / 2**30:.3f}, KV {w.kv_bytes / 2**30:.3f}, "
            f"activations {w.activation_bytes / 2**30:.3f}), more than the {limit / 2**30:.3f} GiB "
            f"{'allowed' if cfg.memory_limit is not None else 'available'}; not loading it")


@dataclass
class Loaded:
    """A backend ready to run: reused across the scenarios of one model, dtype and thread count."""

    runner: Any
    encode: Callable[[str], list[int]]
    name: str
    location: str
    gguf: str | None
    model_config: dict
    load_s: float
    close: Callable[[], None]
    max_len: int
    spec: ModelSpec | None = None  # llama.cpp: the GGUF's spec, parsed once for every record of this load


def load_runner(cfg: BenchConfig, max_len: int, spec: ModelSpec | None = None) -> Loaded:
    """Load the model for `cfg` (torch or llama.cpp) with room for `max_len` cached tokens; llama.cpp records
    keep `spec` (the GGUF's, from `model_spec`) or parse it here."""
    t0 = time.perf_counter()
    if cfg.backend == "torch":
        return _load_torch(cfg, max_len, t0)
    from ridgeline.measure.backends import LlamaCppRunner
    from ridgeline.measure.probe import torch_threads
    from ridgeline.specs import spec_from_gguf

    src = _source(cfg)
    with torch_threads(None) as default_threads:
        threads = cfg.threads or default_threads
    runner = LlamaCppRunner(str(src.gguf), max_len, threads)
    return Loaded(runner, runner.tokenize, src.name, src.location, str(src.gguf), {}, time.perf_counter() - t0,
                  runner.close, max_len, spec or spec_from_gguf(src.gguf))


def _load_torch(cfg: BenchConfig, max_len: int, t0: float) -> Loaded:
    from ridgeline.loader import load_model
    from ridgeline.measure.backends import HFRunner, LeanRunner
    from ridgeline.quant import bench_info

    model, tok = load_model(cfg.model, cfg.dtype, layers=cfg.layers)
    model = cfg.variant.apply(model)  # SWA returns a new (Mistral) model
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_len - 1 > limit:
        raise RidgelineError(f"{cfg.scenario.label} needs {max_len - 1} positions; the model's context limit "
                             f"(max_position_embeddings) is {limit}")
    runner = None
    if cfg.impl in ("auto", "lean") and not cfg.variant.transformed:
        try:
            runner = LeanRunner(model, max_len)
        except RidgelineError:
            if cfg.impl == "lean":
                raise
    src = model.ridgeline_source
    model_config = model.config.to_dict()
    quant = bench_info(model)
    if quant:
        model_config["ridgeline_quant"] = quant
    runner = runner or HFRunner(model, cfg.variant.kv, rolling=cfg.variant.window is not None)
    return Loaded(runner, lambda text: tok(text, add_special_tokens=False).input_ids, src.name, src.location,
                  str(src.gguf) if src.gguf else None, model_config, time.perf_counter() - t0, lambda: None, max_len)


def run_bench(cfg: BenchConfig, loaded: Loaded | None = None, progress: Progress | None = None) -> BenchRecord:
    """Time `cfg.repeats` repeats of the scenario after warm-up; loads the model (memory checked first) unless
    `loaded` is given (the grid runner checks every run before loading anything)."""
    from ridgeline.measure.probe import torch_threads

    sc = cfg.scenario
    own = loaded is None
    total = cfg.warmup + cfg.repeats
    with torch_threads(cfg.threads) as threads:
        if own:
            check_memory(cfg)
            if progress:
                progress("loading model", 0, total)
            loaded = load_runner(cfg, _max_len(sc))
        elif loaded.max_len < _max_len(sc):
            raise RidgelineError(f"the loaded backend holds {loaded.max_len} tokens; {sc.label} needs {_max_len(sc)}")
        runner = loaded.runner
        try:
            prompt = prompt_ids(loaded.encode, sc.prompt)
            with Watch() as watch:  # from before the warm-up: a busy machine then also slows the repeats
                t0 = time.perf_counter()
                for i in range(cfg.warmup):
                    if progress:
                        progress("warm-up", i, total)
                    timed_run(runner, prompt, sc.generate)
                warmup_s = time.perf_counter() - t0
                samples = []
                for i in range(cfg.repeats):
                    if progress:
                        progress(f"repeat {i + 1}/{cfg.repeats}", cfg.warmup + i, total)
                    samples.append(timed_run(runner, prompt, sc.generate))
        finally:
            if own:
                loaded.close()
    for s in samples:  # the scenario ran exactly as asked, or there is no record
        if s.prompt_tokens != sc.prompt or len(s.generated) != sc.generate or s.cache_tokens != sc.prompt + sc.generate:
            raise RidgelineError(f"backend {runner.impl} ran {s.prompt_tokens}:{len(s.generated)} with "
                                 f"{s.cache_tokens} cached tokens, not {sc.prompt}:{sc.generate}")
    if progress:
        progress("done", total, total)
    return BenchRecord(cfg, runner.impl, threads, loaded.name, loaded.location, loaded.gguf,
                       loaded.load_s, warmup_s, tuple(samples), machine_info(), loaded.model_config, loaded.spec,
                       watch.result)
