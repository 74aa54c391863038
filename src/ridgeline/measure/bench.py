"""Measured runs of a scenario: load once, warm up, then time the prefill and every decode step.

One repeat = `prefill` of exactly P prompt tokens from an empty cache (its time is the TTFT, the
first token's argmax included) followed by exactly N decode steps continuing from that cache, each
timed on its own. Model load and warm-up are timed and reported separately, never mixed into the
phase times (RooflineBench divided by whole-process wall time). The record carries every parameter
that produced it, the machine, and every per-repeat sample (llama-bench style).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, Callable, Sequence

from ridgeline.errors import RidgelineError
from ridgeline.measure.stats import Stat, machine_info, summarize
from ridgeline.specs.scenario import Scenario

BACKENDS = ("torch", "llamacpp")
IMPLS = ("auto", "lean", "hf")
Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines one measured run."""

    model: str
    backend: str = "torch"
    scenario: Scenario = field(default_factory=lambda: Scenario(128, 128, name="SISO"))
    dtype: str = "fp32"  # torch: fp32 | bf16; llama.cpp: the GGUF's own types ("stored")
    threads: int | None = None
    repeats: int = 3
    warmup: int = 1
    layers: int | None = None
    impl: str = "auto"  # torch only: lean (ridgeline's static-cache path), hf (transformers forward), auto
    memory_limit: float | None = None  # bytes; refuse before loading above it (default: memory available)
    kv: str | None = None  # torch: KV-cache format held by the cache (kivi2, harmonia, bfp32m4, ...); None: dtype
    window: int | None = None  # torch: sliding-window attention with a rolling buffer of W keys
    kv_heads: int | None = None  # torch: K/V heads mean-pooled (GQA) to this many before the run

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
        if self.repeats < 1 or self.warmup < 0:
            raise RidgelineError(f"repeats must be >= 1 and warm-up >= 0, got {self.repeats} and {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise RidgelineError(f"threads must be >= 1, got {self.threads}")
        if self.transformed:
            from ridgeline.eval.run import check_transforms

            if self.backend != "torch":
                raise RidgelineError("--kv, --window and --kv-heads transform the torch model; llama.cpp runs the GGUF")
            if self.impl == "lean":
                raise RidgelineError("the lean decode path has a static float cache; --kv, --window and --kv-heads "
                                     "run on --impl hf (or auto)")
            check_transforms(self.dtype, self.kv, self.window, self.kv_heads)

    @property
    def transformed(self) -> bool:
        """Whether the run changes what the KV cache holds (format, window, heads)."""
        return self.kv is not None or self.window is not None or self.kv_heads is not None

    def to_json(self) -> dict:
        """Every parameter, for the record."""
        return {"model": self.model, "backend": self.backend, "impl": self.impl, "dtype": self.dtype,
                "scenario": self.scenario.to_json(), "threads": self.threads, "repeats": self.repeats,
                "warmup": self.warmup, "layers": self.layers, "memory_limit": self.memory_limit, "kv": self.kv,
                "window": self.window, "kv_heads": self.kv_heads}


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

    def step_medians(self) -> list[float]:
        """Median over repeats of each decode step's time: decode cost along the growing context."""
        import statistics

        steps = len(self.samples[0].decode_step_s)
        return [statistics.median(s.decode_step_s[i] for s in self.samples) for i in range(steps)]

    def to_json(self) -> dict:
        """The record: parameters, what ran, machine, samples and summaries."""
        return {
            "kind": "ridgeline.bench", "params": self.config.to_json(), "impl": self.impl, "threads": self.threads,
            "model": {"name": self.model_name, "source": self.model_source, "gguf": self.gguf},
            "load_s": self.load_s, "warmup_s": self.warmup_s, "machine": self.machine,
            "summary": {"ttft_s": self.ttft.to_json(), "prefill_tokens_per_s": self.prefill_tokens_per_s.to_json(),
                        "decode_s_per_token": self.decode_per_token.to_json(),
                        "decode_tokens_per_s": self.decode_tokens_per_s.to_json()},
            "samples": [s.to_json() for s in self.samples],
        }


def prompt_text() -> str:
    """The public-domain prose prompts are cut from (Austen, Pride and Prejudice ch. 1; Lincoln, Gettysburg)."""
    return resources.files("ridgeline.measure").joinpath("data/prompt.txt").read_text()


def prompt_ids(encode: Callable[[str], list[int]], n: int) -> list[int]:
    """Exactly `n` token ids of real prose (the passage repeated as needed)."""
    ids = encode(prompt_text())
    if not ids:
        raise RidgelineError("the tokenizer produced no tokens for the prompt passage")
    reps = -(-n // len(ids))
    return (ids * reps)[:n]


def timed_run(runner: Any, prompt: Sequence[int], n: int) -> RunSample:
    """One repeat: prefill, then `n` decode steps, each timed; tokens fed back greedily."""
    t0 = time.perf_counter()
    tok = runner.prefill(prompt)
    ttft = time.perf_counter() - t0
    steps, generated = [], []
    for _ in range(n):
        generated.append(tok)
        t0 = time.perf_counter()
        tok = runner.decode(tok)
        steps.append(time.perf_counter() - t0)
    return RunSample(ttft, tuple(steps), len(prompt), tuple(generated), runner.cached())


def _max_len(sc: Scenario) -> int:
    return sc.prompt + sc.generate + 1


def _source(cfg: BenchConfig):
    """Where the model comes from; the llama.cpp backend needs a GGUF."""
    from ridgeline.loader import resolve

    src = resolve(cfg.model)
    if cfg.backend == "llamacpp" and src.gguf is None:
        raise RidgelineError(f"the llama.cpp backend runs GGUF files; {cfg.model!r} is a {src.kind} "
                             "(pass a .gguf, or the bundled model)")
    return src


def predicted_workload(cfg: BenchConfig):
    """The analytic workload of the run (its memory: weights + KV + activations), before loading anything."""
    from ridgeline.roofline.workload import build_workload
    from ridgeline.specs.model import load_spec
    from ridgeline.specs.scenario import Precision

    source = _source(cfg)
    if source.kind == "hub":
        return None
    spec = load_spec(source.location)
    if cfg.layers is not None and cfg.backend == "torch":
        spec = spec.with_layers(cfg.layers)
    if cfg.window is not None:
        spec = spec.with_window(cfg.window)
    if cfg.kv_heads is not None:
        spec = spec.with_kv_heads(cfg.kv_heads)
    prec = (Precision(cfg.dtype, cfg.dtype, _kv_format(cfg)) if cfg.backend == "torch"
            else Precision("stored", "fp32", "fp16"))
    return build_workload(spec, cfg.scenario, prec)


def _kv_format(cfg: BenchConfig) -> str:
    """The KV format a torch run holds: --kv, else the dtype (the model's own cache)."""
    return cfg.kv or cfg.dtype


def check_memory(cfg: BenchConfig) -> None:
    """Refuse a run predicted not to fit, with the prediction in the message."""
    from ridgeline.loader import available_memory

    w = predicted_workload(cfg)
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


def load_runner(cfg: BenchConfig, max_len: int) -> Loaded:
    """Load the model for `cfg` (torch or llama.cpp) with room for `max_len` cached tokens."""
    from ridgeline.loader import load_model
    from ridgeline.measure.backends import HFRunner, LeanRunner, LlamaCppRunner

    t0 = time.perf_counter()
    if cfg.backend == "torch":
        model, tok = load_model(cfg.model, cfg.dtype, layers=cfg.layers)
        if cfg.transformed:
            from ridgeline.eval.run import apply_transforms

            source = model.ridgeline_source
            model = apply_transforms(model, cfg.window, cfg.kv_heads)  # SWA returns a new (Mistral) model
            model.ridgeline_source = source
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and max_len - 1 > limit:
            raise RidgelineError(f"{cfg.scenario.label} needs {max_len - 1} positions; the model's context limit "
                                 f"(max_position_embeddings) is {limit}")
        runner = None
        if cfg.impl in ("auto", "lean") and not cfg.transformed:
            try:
                runner = LeanRunner(model, max_len)
            except RidgelineError:
                if cfg.impl == "lean":
                    raise
        src = model.ridgeline_source
        model_config = model.config.to_dict()
        from ridgeline.quant.api import bench_info

        quant = bench_info(model)
        if quant:
            model_config["ridgeline_quant"] = quant
        return Loaded(runner or HFRunner(model, cfg.kv, rolling=cfg.window is not None), lambda text: tok(text, add_special_tokens=False).input_ids,
                      src.name, src.location, str(src.gguf) if src.gguf else None, model_config,
                      time.perf_counter() - t0, lambda: None, max_len)
    src = _source(cfg)
    if cfg.layers is not None:
        raise RidgelineError("--layers (depth sweeps) runs on the torch backend; llama.cpp runs the whole GGUF")
    from ridgeline.measure.probe import torch_threads

    with torch_threads(None) as default_threads:
        threads = cfg.threads or default_threads
    runner = LlamaCppRunner(str(src.gguf), max_len, threads)
    return Loaded(runner, runner.tokenize, src.name, src.location, str(src.gguf), {}, time.perf_counter() - t0,
                  runner.close, max_len)


def run_bench(cfg: BenchConfig, loaded: Loaded | None = None, progress: Progress | None = None) -> BenchRecord:
    """Time `cfg.repeats` repeats of the scenario after warm-up; loads the model unless `loaded` is given."""
    from ridgeline.measure.probe import torch_threads

    check_memory(cfg)
    sc = cfg.scenario
    own = loaded is None
    total = cfg.warmup + cfg.repeats
    with torch_threads(cfg.threads) as threads:
        if own:
            if progress:
                progress("loading model", 0, total)
            loaded = load_runner(cfg, _max_len(sc))
        elif loaded.max_len < _max_len(sc):
            raise RidgelineError(f"the loaded backend holds {loaded.max_len} tokens; {sc.label} needs {_max_len(sc)}")
        runner = loaded.runner
        try:
            prompt = prompt_ids(loaded.encode, sc.prompt)
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
                       loaded.load_s, warmup_s, tuple(samples), machine_info(), loaded.model_config)


def with_scenario(cfg: BenchConfig, scenario: Scenario) -> BenchConfig:
    """The same run at another scenario."""
    return replace(cfg, scenario=scenario)
