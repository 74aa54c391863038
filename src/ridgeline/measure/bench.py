"""Measured runs of a scenario: load once, warm up, then time the prefill and every decode step.

One repeat = `prefill` of exactly P prompt tokens from an empty cache (its time is the TTFT, the
first token's argmax included) followed by exactly N decode steps continuing from that cache, each
timed on its own. Model load and warm-up are timed and reported separately, never mixed into the
phase times (RooflineBench divided by whole-process wall time). The record carries every parameter
that produced it, the machine, and every per-repeat sample (llama-bench style).

Speculative runs (`BenchConfig.spec`, `bench --spec`): the prefill is the same; then each timed step is one
verify step of a speculative runner (built by a factory the caller passes, e.g. `ridgeline.engine.spec_runner`:
measure does not depend on the engine), caching at most the tokens left, until P + N tokens are cached. A
repeat records every step's time, the tokens it yielded (accepted drafts plus the base's own token: plain decode
yields 1) and the tokens it verified; decode tokens/s stays N / decode time, so plain and speculative runs
compare directly.
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
IMPLS = ("auto", "native", "lean", "hf")
Progress = Callable[[str, int, int], None]  # (what, done, total)
#: drafters a speculative run can use: Medusa heads (medusa:DIR), prompt lookup (prompt-lookup[:N]) and a draft
#: model (draft:N for the base's first N layers, draft:MODEL for another model with the same vocabulary)
SPEC_KINDS = ("medusa", "prompt-lookup", "draft")
#: cache room a speculative run needs beyond P + N + 1 (the largest tree or chain verified after the last token)
SPEC_ROOM = 64


@dataclass(frozen=True)
class SpecSetting:
    """A speculative-decoding run: the drafter (kind and argument), the tree ('auto': chosen from the measured
    verify-cost curve) and the acceptance rule ('greedy', or 'typical[:T[:eps[:alpha]]]', defaults 0.7, 0.09, 0.3)."""

    kind: str
    arg: str | None = None
    tree: str = "auto"
    accept: str = "greedy"

    def __post_init__(self) -> None:
        if self.kind not in SPEC_KINDS:
            raise RidgelineError(f"speculative drafter {self.kind!r} is not one of {', '.join(SPEC_KINDS)} "
                                 "(medusa:DIR, prompt-lookup[:N], draft:N|MODEL)")
        if self.kind in ("medusa", "draft") and not self.arg:
            form = "medusa:DIR (a heads folder)" if self.kind == "medusa" else "draft:N (first N layers) or draft:MODEL"
            raise RidgelineError(f"--spec {self.kind} needs an argument: {form}")
        if self.kind == "prompt-lookup" and self.arg is not None and not (self.arg.isdigit() and int(self.arg) >= 1):
            raise RidgelineError(f"--spec prompt-lookup:N takes N >= 1 tokens per lookup, got {self.arg!r}")
        if self.tree != "auto" and self.kind != "medusa":
            raise RidgelineError("--tree applies to medusa runs (prompt lookup and draft models verify a chain)")
        cap = self.tree.partition(":")[2]
        if self.tree.startswith("auto") and self.tree != "auto" and not (self.tree[4:5] == ":" and cap.isdigit()
                                                                         and 2 <= int(cap) <= SPEC_ROOM):
            raise RidgelineError(f"--tree {self.tree!r}: auto:M takes M from 2 to {SPEC_ROOM} verified tokens")
        self.acceptance()

    @classmethod
    def parse(cls, text: str, tree: str = "auto", accept: str = "greedy") -> SpecSetting:
        """'medusa:DIR', 'prompt-lookup', 'prompt-lookup:N', 'draft:N' or 'draft:MODEL'."""
        kind, sep, arg = text.strip().partition(":")
        return cls(kind.strip().lower(), arg.strip() if sep and arg.strip() else None, tree.strip() or "auto", accept)

    def acceptance(self) -> dict[str, Any]:
        """The acceptance rule as keywords: kind, and for typical temperature, eps, alpha."""
        kind, *nums = [p.strip() for p in self.accept.strip().lower().split(":")]
        if kind == "greedy" and not nums:
            return {"kind": "greedy"}
        if kind != "typical" or len(nums) > 3:
            raise RidgelineError(f"--accept {self.accept!r} is not 'greedy' or 'typical[:T[:eps[:alpha]]]'")
        try:
            values = [float(x) for x in nums]
        except ValueError:
            raise RidgelineError(f"--accept {self.accept!r}: T, eps and alpha must be numbers") from None
        if any(not (v > 0) or v != v or v == float("inf") for v in values):
            raise RidgelineError(f"--accept {self.accept!r}: T, eps and alpha must be finite and > 0")
        return {"kind": "typical", **dict(zip(("temperature", "eps", "alpha"), values))}

    @property
    def label(self) -> str:
        """'medusa greedy', 'medusa typical', 'prompt-lookup greedy', 'draft 8 greedy'."""
        what = {"medusa": "medusa", "prompt-lookup": "prompt-lookup", "draft": f"draft {self.arg}"}[self.kind]
        return f"{what} {self.acceptance()['kind']}"

    def to_json(self) -> dict:
        """JSON form."""
        return {"kind": self.kind, "arg": self.arg, "tree": self.tree, "accept": self.accept, "label": self.label}


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
    impl: str = "auto"  # torch only: native (ridgeline.kernels), lean (static-cache torch), hf (transformers), auto
    memory_limit: float | None = None  # bytes; refuse before loading above it (default: memory available)
    variant: Variant = field(default_factory=Variant)  # torch: KV format, sliding window, K/V heads
    spec: SpecSetting | None = None  # torch: speculative decoding (Medusa, prompt lookup, a draft model)

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
            if self.impl in ("native", "lean"):
                raise RidgelineError(f"the {self.impl} decode path has a static float cache; --kv, --window and "
                                     "--kv-heads run on --impl hf (or auto)")
            self.variant.check(self.dtype)
        if self.spec is not None and (self.backend != "torch" or self.variant.transformed):
            raise RidgelineError("--spec runs on the torch backend with the model's own cache (no --kv, --window, "
                                 "--kv-heads)")

    @property
    def max_len(self) -> int:
        """Cache positions the run needs: P + N + 1, plus room for a verified tree when speculative."""
        return self.scenario.prompt + self.scenario.generate + 1 + (SPEC_ROOM if self.spec is not None else 0)

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
                "variant": self.variant.to_json(), "spec": self.spec.to_json() if self.spec else None}


@dataclass(frozen=True)
class RunSample:
    """One timed repeat: the prefill (TTFT) and each decode step, with the tokens that went through."""

    ttft_s: float
    decode_step_s: tuple[float, ...]
    prompt_tokens: int
    generated: tuple[int, ...]
    cache_tokens: int  # tokens in the cache after the last step: P + N
    tokens_per_step: tuple[int, ...] = ()  # speculative: tokens each verify step yielded (the base's own counted)
    verified_per_step: tuple[int, ...] = ()  # speculative: tokens each verify step processed (root + drafts)

    @property
    def decode_s(self) -> float:
        """All decode steps."""
        return sum(self.decode_step_s)

    @property
    def mean_tokens_per_step(self) -> float:
        """Tokens per decode (verify) step: 1 for plain decoding."""
        return sum(self.tokens_per_step) / len(self.tokens_per_step) if self.tokens_per_step else 1.0

    def to_json(self) -> dict:
        """JSON form."""
        out = {"ttft_s": self.ttft_s, "decode_s": self.decode_s, "decode_step_s": list(self.decode_step_s),
               "prompt_tokens": self.prompt_tokens, "generated_tokens": len(self.generated),
               "cache_tokens": self.cache_tokens, "generated": list(self.generated)}
        if self.tokens_per_step:
            out.update(tokens_per_step=list(self.tokens_per_step), verified_per_step=list(self.verified_per_step))
        return out


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
    speculative: dict | None = None  # the speculative runner's own account: drafter, tree, cost curve, heads
    fallback: str | None = None  # torch auto: why faster paths were passed over ("native: ...; lean: ...")

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

    @property
    def tokens_per_step(self) -> Stat:
        """Tokens per decode step over repeats (speculative: per verify step, the base's own token counted)."""
        return summarize([s.mean_tokens_per_step for s in self.samples])

    @property
    def verified_per_step(self) -> float:
        """Mean tokens a verify step processed, over every step of every repeat (1 for plain decoding)."""
        steps = [v for s in self.samples for v in s.verified_per_step]
        return sum(steps) / len(steps) if steps else 1.0

    def to_json(self) -> dict:
        """The record: parameters, what ran, machine, samples and summaries."""
        return {
            "kind": "ridgeline.bench", "params": self.config.to_json(), "impl": self.impl, "threads": self.threads,
            **({"impl_fallback": self.fallback} if self.fallback else {}),
            "model": {"name": self.model_name, "source": self.model_source, "gguf": self.gguf},
            "load_s": self.load_s, "warmup_s": self.warmup_s, "machine": self.machine,
            "summary": {"ttft_s": self.ttft.to_json(), "prefill_tokens_per_s": self.prefill_tokens_per_s.to_json(),
                        "decode_s_per_token": self.decode_per_token.to_json(),
                        "decode_tokens_per_s": self.decode_tokens_per_s.to_json(),
                        "tokens_per_step": self.tokens_per_step.to_json()},
            "samples": [s.to_json() for s in self.samples], "contention": self.contention.to_json(),
            **({"speculative": {**self.config.spec.to_json(), **(self.speculative or {}),
                                "verified_per_step": self.verified_per_step}} if self.config.spec else {}),
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


def timed_spec_run(runner: Any, prompt: Sequence[int], n: int) -> RunSample:
    """One speculative repeat: prefill, then verify steps (each timed) until P + n tokens are cached."""
    t0 = time.perf_counter()
    tok = runner.prefill(prompt)
    ttft = time.perf_counter() - t0
    end, generated, steps, tokens, verified = len(prompt) + n, [tok], [], [], []
    while runner.cached() < end:
        t0 = time.perf_counter()
        new = runner.step(end - runner.cached())
        steps.append(time.perf_counter() - t0)
        generated += new
        tokens.append(len(new))
        verified.append(runner.steps[-1].verified)
    return RunSample(ttft, tuple(steps), len(prompt), tuple(generated[:n]), runner.cached(), tuple(tokens),
                     tuple(verified))
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
    model: Any = None  # torch: the transformers model (speculative runners build on it)
    tokenizer: Any = None
    speculative: dict = field(default_factory=dict)  # SpecSetting -> its runner, built once per load


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
    from ridgeline.measure.backends import HFRunner, LeanRunner, NativeRunner
    from ridgeline.quant import bench_info

    model, tok = load_model(cfg.model, cfg.dtype, layers=cfg.layers)
    model = cfg.variant.apply(model)  # SWA returns a new (Mistral) model
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_len - 1 > limit:
        raise RidgelineError(f"{cfg.scenario.label} needs {max_len - 1} positions; the model's context limit "
                             f"(max_position_embeddings) is {limit}")
    runner, fallback = None, []
    # auto: the native kernels, else the lean torch path, else transformers; why each was passed over is recorded
    for impl, make in (("native", NativeRunner), ("lean", LeanRunner)):
        if runner is None and cfg.impl in ("auto", impl) and not cfg.variant.transformed:
            try:
                runner = make(model, max_len)
            except RidgelineError as exc:
                if cfg.impl == impl:
                    raise
                fallback.append(f"{impl}: {exc}")
    src = model.ridgeline_source
    model_config = model.config.to_dict()
    quant = bench_info(model)
    if quant:
        model_config["ridgeline_quant"] = quant
    runner = runner or HFRunner(model, cfg.variant.kv, rolling=cfg.variant.window is not None)
    runner.fallback = "; ".join(fallback) or None
    return Loaded(runner, lambda text: tok(text, add_special_tokens=False).input_ids, src.name, src.location,
                  str(src.gguf) if src.gguf else None, model_config, time.perf_counter() - t0, lambda: None, max_len,
                  model=model, tokenizer=tok)


SpecFactory = Callable[[SpecSetting, Loaded], Any]  # builds a speculative runner on a loaded model


def spec_runner_for(cfg: BenchConfig, loaded: Loaded, factory: SpecFactory | None) -> Any:
    """The runner a config times: the loaded backend, or (speculative) the factory's runner, built once per load."""
    if cfg.spec is None:
        return loaded.runner
    if factory is None:
        raise RidgelineError("speculative runs need a runner factory (pass ridgeline.engine.spec_runner)")
    if cfg.spec not in loaded.speculative:
        loaded.speculative[cfg.spec] = factory(cfg.spec, loaded)
    return loaded.speculative[cfg.spec]


def run_bench(cfg: BenchConfig, loaded: Loaded | None = None, progress: Progress | None = None,
              spec_factory: SpecFactory | None = None) -> BenchRecord:
    """Time `cfg.repeats` repeats of the scenario after warm-up; loads the model (memory checked first) unless
    `loaded` is given (the grid runner checks every run before loading anything). Speculative configs need
    `spec_factory` (e.g. `ridgeline.engine.spec_runner`)."""
    from ridgeline.measure.probe import torch_threads

    sc = cfg.scenario
    own = loaded is None
    total = cfg.warmup + cfg.repeats
    with torch_threads(cfg.threads) as threads:
        if own:
            check_memory(cfg)
            if progress:
                progress("loading model", 0, total)
            loaded = load_runner(cfg, cfg.max_len)
        elif loaded.max_len < cfg.max_len:
            raise RidgelineError(f"the loaded backend holds {loaded.max_len} tokens; {sc.label} needs {cfg.max_len}")
        try:
            if progress and cfg.spec is not None:
                progress(f"building the {cfg.spec.label} runner", 0, total)
            runner = spec_runner_for(cfg, loaded, spec_factory)
            timed = timed_spec_run if cfg.spec is not None else timed_run
            prompt = prompt_ids(loaded.encode, sc.prompt)
            with Watch() as watch:  # from before the warm-up: a busy machine then also slows the repeats
                t0 = time.perf_counter()
                for i in range(cfg.warmup):
                    if progress:
                        progress("warm-up", i, total)
                    timed(runner, prompt, sc.generate)
                warmup_s = time.perf_counter() - t0
                samples = []
                for i in range(cfg.repeats):
                    if progress:
                        progress(f"repeat {i + 1}/{cfg.repeats}", cfg.warmup + i, total)
                    samples.append(timed(runner, prompt, sc.generate))
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
                       watch.result, getattr(runner, "info", None) if cfg.spec is not None else None,
                       getattr(loaded.runner, "fallback", None))
