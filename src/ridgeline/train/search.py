"""Bayesian hyperparameter search for KD with Optuna (TPE): learning rate, temperature T, α and LoRA rank.

Trial evaluation is a pure function of (config, seed) returning a dict: `evaluate_trial(config, seed)` reads the
student checkpoint and the cached KD data from the paths in `config` (plain JSON), trains with the trial's
hyperparameters on a short budget and returns the objective (validation KL to the teacher or perplexity).
`run_search` asks Optuna for `parallel` trials at a time, maps `trial_task` over the [(config, seed)] items with
`map_fn(fn, items, progress)` (default: one after the other here; a cluster map such as a future
`ridgeline.fleet.map_tasks(fn, items, cluster, progress)` fits as `lambda fn, items, p: map_tasks(fn, items,
cluster, p)`) and tells the results back.

The study is stored in SQLite (`<dir>/study.db`) under its name and resumes: completed trials count towards
`n_trials`, and trials an interrupted process left RUNNING are evaluated again with their stored parameters
(the evaluation being pure, the result is what it would have been) and told; one left before its parameters
were drawn is marked failed. Optuna's own logging is silenced
while the search runs (library code prints nothing).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from ridgeline.errors import RidgelineError
from ridgeline.train.kd import KDLossConfig
from ridgeline.train.kd_train import KDTrainConfig
from ridgeline.train.lora import LoRAConfig

Progress = Callable[[str, int, int], None]  # (what, done, total)
MapFn = Callable[[Callable[[Any], dict], list, Any], list]
OBJECTIVES = ("kl", "ppl")


@dataclass(frozen=True)
class SearchSpace:
    """Ranges searched: lr log-uniform, T and α uniform, rank from a list (LoRA α follows as 2·rank)."""

    lr: tuple[float, float] = (1e-4, 5e-3)
    temperature: tuple[float, float] = (1.0, 4.0)
    alpha: tuple[float, float] = (0.0, 1.0)
    ranks: tuple[int, ...] = (4, 8, 16, 32)


def suggest(trial: Any, space: SearchSpace, lora: bool = True) -> dict:
    """The trial's hyperparameters."""
    params = {"lr": trial.suggest_float("lr", *space.lr, log=True),
              "temperature": trial.suggest_float("temperature", *space.temperature),
              "alpha": trial.suggest_float("alpha", *space.alpha)}
    if lora:
        params["rank"] = trial.suggest_categorical("rank", list(space.ranks))
    return params


def train_config_from_json(d: dict) -> KDTrainConfig:
    """A KDTrainConfig from its JSON form (`KDTrainConfig.to_json`)."""
    keys = {f for f in KDTrainConfig.__dataclass_fields__} - {"loss", "lora"}
    lora = d.get("lora")
    return KDTrainConfig(**{k: d[k] for k in keys if k in d}, loss=KDLossConfig(**d["loss"]),
                         lora=LoRAConfig(**{**lora, "targets": tuple(lora["targets"])}) if lora else None)


def trial_config(train: KDTrainConfig, params: dict, student_dir: str, data: str, valid: str,
                 objective: str = "kl") -> dict:
    """The JSON config of one trial: the training config with `params` applied, and the files it reads."""
    loss = replace(train.loss, temperature=params["temperature"], alpha=params["alpha"])
    lora = replace(train.lora, rank=int(params["rank"]), alpha=2.0 * int(params["rank"])) \
        if train.lora is not None and "rank" in params else train.lora
    cfg = replace(train, lr=params["lr"], loss=loss, lora=lora, checkpoint_every=0)
    return {"train": cfg.to_json(), "student": student_dir, "data": data, "valid": valid, "objective": objective,
            "params": params}


def evaluate_trial(config: dict, seed: int) -> dict:
    """Train the student of `config` with its hyperparameters and `seed`; validation KL and ppl (a pure function)."""
    from ridgeline.loader import load_model
    from ridgeline.train.kd_data import read_kd_data
    from ridgeline.train.kd_train import heldout_quality, train_kd

    if config.get("objective") not in OBJECTIVES:
        raise RidgelineError(f"trial objective must be one of {', '.join(OBJECTIVES)}, got {config.get('objective')!r}")
    t0 = time.perf_counter()
    train = replace(train_config_from_json(config["train"]), seed=seed)
    student = load_model(config["student"], "fp32")[0]
    model, result = train_kd(student, read_kd_data(config["data"]), train)
    q = heldout_quality(model, read_kd_data(config["valid"]))
    value = q["kl"] if config["objective"] == "kl" else q["ppl"]
    return {"objective": value, "ppl": q["ppl"], "kl": q["kl"], "last_loss": result.losses[-1],
            "seconds": time.perf_counter() - t0, "seed": seed, "params": config["params"]}


def trial_task(item: tuple[dict, int]) -> dict:
    """`evaluate_trial` on one (config, seed) item: the function a map runs."""
    config, seed = item
    return evaluate_trial(config, seed)


def local_map(fn: Callable[[Any], dict], items: list, progress: Any = None) -> list:
    """Run `fn` over `items` here, one after the other."""
    out = []
    for i, item in enumerate(items):
        out.append(fn(item))
        if progress is not None:
            progress("trial", i + 1, len(items))
    return out


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[Any]:
    try:
        import optuna
    except ImportError:
        raise RidgelineError("the hyperparameter search needs optuna (pip install 'ridgeline[search]')") from None
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield optuna
    finally:
        optuna.logging.set_verbosity(level)


@dataclass(frozen=True)
class SearchResult:
    """The best trial and every completed one."""

    study: str
    storage: str
    best_params: dict
    best_value: float
    trials: list[dict]

    def to_json(self) -> dict:
        """JSON form."""
        return asdict(self)


def run_search(train: KDTrainConfig, files: dict[str, str], n_trials: int, folder: str | Path, name: str,
               space: SearchSpace = SearchSpace(), objective: str = "kl", seed: int = 0, parallel: int = 1,
               map_fn: MapFn | None = None, progress: Progress | None = None) -> SearchResult:
    """Search lr, T, α (and rank) for `train` on the files {'student', 'data', 'valid'}; resumable (see module doc)."""
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise RidgelineError(f"search trials must be an integer >= 1, got {n_trials!r}")
    if objective not in OBJECTIVES:
        raise RidgelineError(f"search objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{folder / 'study.db'}"
    mapper = map_fn or local_map
    with _quiet_optuna() as optuna:
        from optuna.trial import TrialState

        study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True,
                                    sampler=optuna.samplers.TPESampler(seed=seed))

        def config_of(params: dict) -> dict:
            return trial_config(train, params, files["student"], files["data"], files["valid"], objective)

        def finish(numbers: list[int], configs: list[dict]) -> None:
            results = mapper(trial_task, [(c, seed) for c in configs], None)
            for number, res in zip(numbers, results):
                study.tell(number, res["objective"])
                study.set_user_attr(f"trial_{number}", res)

        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        whole = [t for t in stale if set(t.params) >= {"lr", "temperature", "alpha"}]
        for t in stale:
            if t not in whole:  # asked but never given its parameters: nothing to redo
                study.tell(t.number, state=TrialState.FAIL)
        if whole:  # an interrupted process left these: same parameters, same (pure) result
            finish([t.number for t in whole], [config_of(t.params) for t in whole])
        while (done := len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))) < n_trials:
            if progress is not None:
                progress(f"{name} trial", done, n_trials)
            batch = [study.ask() for _ in range(min(parallel, n_trials - done))]
            finish([t.number for t in batch], [config_of(suggest(t, space, train.lora is not None)) for t in batch])
        trials = [{"number": t.number, "params": t.params, "value": t.value,
                   **study.user_attrs.get(f"trial_{t.number}", {})}
                  for t in study.get_trials(states=(TrialState.COMPLETE,))]
        return SearchResult(name, storage, dict(study.best_params), float(study.best_value), trials)


def search_hyperparameters(ctx: Any, teacher: Any, settings: Any) -> dict[str, dict]:
    """The pipeline's search: one study per optimizer on the pruned student; the best parameters of each."""
    from ridgeline.train.kd_data import heldout_targets, load_kd_data, save_kd_data

    ev = ctx.config.eval
    valid = ctx.out / "data" / "valid.safetensors"
    n = max(1, ev.heldout_windows // 2)
    fp = {"teacher": ctx.config.teacher, "windows": n, "length": ev.heldout_len, "topk": ev.heldout_topk,
          "between": ev.heldout_windows}
    if load_kd_data(valid, fp) is None:  # validation windows between the evaluation windows, never on them
        save_kd_data(heldout_targets(teacher, ctx.tokenizer, n, ev.heldout_len, ev.heldout_topk,
                                     progress=ctx.progress, between=ev.heldout_windows), valid, fp)
    files = {"student": str(ctx.stage_dir("student") / "model"), "data": str(ctx.out / "data" / "train.safetensors"),
             "valid": str(valid)}
    out = {}
    for opt in ctx.config.optimizers:
        train = replace(ctx.config.train, optimizer=opt)
        steps = settings.steps or max(1, train.steps // 2)  # a short budget per trial
        train = replace(train, steps=steps, warmup=min(train.warmup, steps // 10))
        res = run_search(train, files, settings.trials, ctx.out / "search", f"kd-{opt}", objective=settings.objective,
                         seed=settings.seed, progress=ctx.progress)
        out[opt] = {**res.best_params, "objective": settings.objective, "best_value": res.best_value,
                    "trials": len(res.trials)}
    return out
