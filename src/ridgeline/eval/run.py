"""One evaluation run: a model (or an already transformed model object) over a list of tasks -> one record.

Tasks: `ppl` (rolling-window perplexity on the held-out corpus), `cloze` (LAMBADA-style last word of
held-out passages) and the multiple-choice tasks of `tasks.py`, each read from a local file in its
public data set's format. Every later transform (quantization, KV formats, GQA, SWA, Medusa) is judged
by passing its model object here with a variant name; the quality table compares the records.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ridgeline.arch import Variant
from ridgeline.errors import RidgelineError

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how; every field lands in the record."""

    model: str
    tasks: tuple[str, ...] = ("ppl",)
    task_files: dict[str, str] = field(default_factory=dict)  # multiple-choice task -> local JSON/JSONL
    dtype: str = "fp32"
    name: str = ""  # the row label in quality tables (default: the model name, dtype and variant)
    limit: int | None = None  # documents per multiple-choice task, items for cloze
    batch_size: int = 8
    corpus: str | None = None  # None: the held-out split of the default corpus; else a text file or hf:<id>
    context: int = 1024
    stride: int = 512
    max_tokens: int | None = None  # cap on the perplexity text
    num_fewshot: int = 0
    fewshot_files: dict[str, str] = field(default_factory=dict)
    cloze_items: int = 200
    # KV format for ppl (each window streamed through the cache), sliding window (the model converted, HF's
    # window mask), K/V heads mean-pooled (or expanded), no uptraining
    variant: Variant = field(default_factory=Variant)

    def __post_init__(self) -> None:
        from ridgeline.eval.tasks import TASKS, task_spec

        self.variant.check(self.dtype)
        if self.variant.kv is not None and set(self.tasks) - {"ppl"}:
            raise RidgelineError(f"--kv {self.variant.kv} applies to ppl, which streams each window through the "
                                 "cache; cloze and multiple choice score short prompts in one forward pass")

        if not self.tasks:
            raise RidgelineError("no tasks given; expected ppl, cloze or a multiple-choice task")
        names, files = [], {}
        for t in self.tasks:
            if t in ("ppl", "cloze"):
                names.append(t)
                continue
            try:
                canonical = task_spec(t).name  # aliases such as siqa
            except RidgelineError:
                raise RidgelineError(f"unknown task {t!r}; expected ppl, cloze or one of {', '.join(TASKS)}") from None
            path = self.task_files.get(t, self.task_files.get(canonical))
            if path is None:
                raise RidgelineError(f"task {t} needs a local file in its public format: {t}=PATH (or --task-dir)")
            names.append(canonical)
            files[canonical] = path
        object.__setattr__(self, "tasks", tuple(names))
        object.__setattr__(self, "task_files", files)
        if self.limit is not None and self.limit < 1:
            raise RidgelineError(f"limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise RidgelineError(f"batch size must be >= 1, got {self.batch_size}")
        if self.num_fewshot < 0:
            raise RidgelineError(f"--num-fewshot must be >= 0, got {self.num_fewshot}")
        if "ppl" in self.tasks:  # the window settings, checked before any model loads
            from ridgeline.eval.perplexity import PerplexityConfig

            PerplexityConfig(context=self.context, stride=self.stride, batch_size=self.batch_size,
                             max_tokens=self.max_tokens, kv=self.variant.kv)

    @property
    def label(self) -> str:
        """The variant's row label."""
        if self.name:
            return self.name
        return " · ".join([f"{self.model} {self.dtype}"] + self.variant.labels)


def parse_tasks(text: str, task_dir: str | Path | None = None) -> tuple[tuple[str, ...], dict[str, str]]:
    """'ppl,cloze,arc_easy=path.jsonl,piqa' -> task names and files (`name=PATH`, else `<name>.jsonl` in
    `task_dir`)."""
    names, files = [], {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, path = item.partition("=")
        names.append(name.strip())
        if path:
            files[name.strip()] = path.strip()
    if not names:
        raise RidgelineError(f"--tasks: expected a comma-separated list, got {text!r}")
    missing = tuple(n for n in names if n not in ("ppl", "cloze") and n not in files)
    if missing and task_dir is not None:
        files.update(task_files_from_dir(task_dir, missing))
    return tuple(names), files


@dataclass(frozen=True)
class PreparedEval:
    """What an evaluation reads besides the model (the corpus text, the task files), read and checked before any
    model loads; `key` says which settings it was read for."""

    key: tuple
    text: str | None
    corpus: dict | None
    tasks: dict[str, Any]


def _inputs_key(cfg: EvalConfig) -> tuple:
    return (cfg.tasks, tuple(sorted(cfg.task_files.items())), cfg.corpus, cfg.limit, cfg.num_fewshot,
            tuple(sorted(cfg.fewshot_files.items())))


def check_context(cfg: EvalConfig, spec: Any) -> None:
    """Refuse, before loading, a perplexity context longer than the model's positions (`spec`: its ModelSpec)."""
    if spec is not None and "ppl" in cfg.tasks and spec.max_position is not None and cfg.context > spec.max_position:
        raise RidgelineError(f"--context {cfg.context} is longer than {spec.name}'s {spec.max_position} positions")


def prepare_eval(cfg: EvalConfig) -> PreparedEval:
    """Read and check the corpus and every task file of `cfg`, so bad input is refused before a model loads."""
    from ridgeline.eval.tasks import load_task

    text, corpus = _corpus_text(cfg) if {"ppl", "cloze"} & set(cfg.tasks) else (None, None)
    tasks = {t: load_task(t, cfg.task_files[t], limit=cfg.limit, num_fewshot=cfg.num_fewshot,
                          fewshot_path=cfg.fewshot_files.get(t)) for t in cfg.tasks if t not in ("ppl", "cloze")}
    return PreparedEval(_inputs_key(cfg), text, corpus, tasks)


def _corpus_text(cfg: EvalConfig) -> tuple[str, dict]:
    from ridgeline.corpus import corpus_info, load_corpus

    corpus = load_corpus("eval", cfg.corpus)
    info = corpus_info() if cfg.corpus is None else {"source": cfg.corpus, "chars": corpus.n_chars}
    return corpus.text, info


def _params(model: Any) -> int:
    """Parameters of the model, the quantized weights (buffers, not nn.Parameters) included."""
    quant = getattr(model, "ridgeline_quant", None)
    if quant:
        return int(quant["quantized_params"] + quant["float_params"])
    return sum(p.numel() for p in model.parameters())


def run_eval(cfg: EvalConfig, model: Any = None, tokenizer: Any = None, progress: Progress | None = None,
             prepared: PreparedEval | None = None) -> dict:
    """Evaluate `cfg.tasks` on the model (loaded from `cfg.model` unless given) and return the record; the corpus
    and task files are read and checked first (or taken from `prepared`, when read for the same settings)."""
    from ridgeline.loader import load_model
    from ridgeline.measure import Watch, machine_info
    from ridgeline.quant import precision_label

    if prepared is None or prepared.key != _inputs_key(cfg):
        prepared = prepare_eval(cfg)
    t_load = time.perf_counter()
    if model is None:
        model, tokenizer = load_model(cfg.model, cfg.dtype)
    model = cfg.variant.apply(model)
    load_s = time.perf_counter() - t_load
    out: dict[str, Any] = {"kind": "ridgeline.eval", "variant": cfg.label, "config": _config_json(cfg),
                           "model": {"name": cfg.model, "params": _params(model), "weights": precision_label(model),
                                     "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")},
                           "load_s": load_s, "tasks": {}, "machine": machine_info()}
    with Watch(bandwidth=False) as watch:  # the wall times in the record mean little on a busy machine
        _run_tasks(cfg, model, tokenizer, out, progress, prepared)
    out["contention"] = watch.result.to_json()
    return out


def _run_tasks(cfg: EvalConfig, model: Any, tokenizer: Any, out: dict[str, Any], progress: Progress | None,
               prepared: PreparedEval) -> None:
    """Score every task of `cfg` into `out["tasks"]` (and the corpus description into `out["corpus"]`)."""
    text = prepared.text
    if prepared.corpus is not None:
        out["corpus"] = prepared.corpus
    for task in cfg.tasks:
        report = (lambda d, t, task=task: progress(task, d, t)) if progress else None
        t0 = time.perf_counter()
        if task == "ppl":
            from ridgeline.eval.perplexity import PerplexityConfig, perplexity

            pc = PerplexityConfig(context=cfg.context, stride=cfg.stride, batch_size=cfg.batch_size,
                                  max_tokens=cfg.max_tokens, kv=cfg.variant.kv)
            result = perplexity(model, tokenizer, text, pc, progress=report).to_json()
        elif task == "cloze":
            from ridgeline.eval.cloze import build_cloze, evaluate_cloze

            items = build_cloze(text, cfg.limit or cfg.cloze_items)
            result = evaluate_cloze(model, tokenizer, items, batch_size=cfg.batch_size).to_json()
        else:
            from ridgeline.eval.multiple_choice import evaluate_task

            result = evaluate_task(model, tokenizer, prepared.tasks[task], batch_size=cfg.batch_size,
                                   progress=report).to_json()
        result["wall_s"] = time.perf_counter() - t0
        out["tasks"][task] = result


def _config_json(cfg: EvalConfig) -> dict:
    d = asdict(cfg)
    d["tasks"] = list(cfg.tasks)
    d["variant"] = cfg.variant.to_json()
    d.update(kv=cfg.variant.kv, window=cfg.variant.window, kv_heads=cfg.variant.kv_heads)  # flat keys, as before
    return d


def task_files_from_dir(folder: str | Path, tasks: tuple[str, ...]) -> dict[str, str]:
    """`<task>.jsonl` or `<task>.json` in `folder` for every multiple-choice task in `tasks`."""
    folder = Path(folder)
    out = {}
    for t in tasks:
        if t in ("ppl", "cloze"):
            continue
        hits = [folder / f"{t}{ext}" for ext in (".jsonl", ".json") if (folder / f"{t}{ext}").is_file()]
        if not hits:
            raise RidgelineError(f"no {t}.jsonl or {t}.json in {folder}")
        out[t] = str(hits[0])
    return out


def estimate(cfg: EvalConfig, windows: int, device: str = "local") -> float | None:
    """The roofline's lower bound on the time of `windows` perplexity windows (each a forward of the context with
    logits at every position) on `device`, or this host's catalogue entry without a probe; None when the
    architecture is unknown without loading the model (a hub id) or the host has no catalogue entry."""
    import os

    from ridgeline.measure import cpu_model
    from ridgeline.roofline import Options, predict
    from ridgeline.specs import Scenario, get_device, host_device, load_spec, parse_model_ref

    try:
        spec = load_spec(cfg.model)
    except RidgelineError:
        return None
    try:
        dev = get_device(device)
    except RidgelineError:
        dev = host_device(cpu_model(), os.cpu_count())
    if dev is None:
        return None
    # a GGUF is dequantized to float at load; only a ridgeline-quantized folder runs its stored formats
    quantized_folder = parse_model_ref(cfg.model).kind == "folder" and spec.gguf_tensors is not None
    pred = predict(spec, dev, Scenario(cfg.context, 1), weights="stored" if quantized_folder else cfg.dtype,
                   acts=cfg.dtype, options=Options(logits="all"))
    return windows * pred.ttft_s
