"""What a distillation run is: the student, the data, training, quantization, evaluation and speed settings.

Option text as the command takes it is parsed here (one place for the rules):
- student: 'prune:N' (drop N decoder layers by block cosine similarity), 'prune:N:span' (the N consecutive
  layers whose span changes the residual stream least), ',width:F' appended keeps a fraction F of every
  MLP's channels; anything else is a model reference (folder, GGUF, hub id) sharing the teacher's tokenizer;
- data: 'calib' or 'calib:N' (calibration-split windows), 'synthetic:N' (teacher continuations), comma-joined;
- quantize: 'gptq-w4g128', 'gptq-w3g128', 'rtn-w4g128', optionally '-actorder' for GPTQ; 'none' for no stage.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ridgeline.errors import RidgelineError
from ridgeline.train.kd import KDLossConfig
from ridgeline.train.kd_data import DataConfig
from ridgeline.train.kd_train import KDTrainConfig

LOSSES = {"kl": "forward", "forward-kl": "forward", "reverse-kl": "reverse", "rkl": "reverse"}
_QUANT = re.compile(r"^(gptq|rtn)-w([2-8])(?:g(\d+))?(-actorder)?$")


@dataclass(frozen=True)
class StudentSpec:
    """How the student is made: pruned from the teacher (layers dropped, optional MLP width) or loaded."""

    drop: int = 0
    criterion: str = "cosine"
    width: float | None = None
    model: str | None = None

    @staticmethod
    def parse(text: str) -> "StudentSpec":
        """'prune:N[:cosine|span][,width:F]' or a model reference."""
        text = text.strip()
        if not text.startswith("prune:"):
            if text.startswith("width:"):
                raise RidgelineError("--student width:F needs layers to drop too: prune:N,width:F")
            return StudentSpec(model=text)
        head, _, rest = text.partition(",")
        parts = head.split(":")
        try:
            drop = int(parts[1])
        except (IndexError, ValueError):
            raise RidgelineError(f"--student {text!r}: expected prune:N (N layers to drop)") from None
        criterion = parts[2] if len(parts) > 2 else "cosine"
        width = None
        if rest:
            key, _, value = rest.partition(":")
            try:
                width = float(value)
            except ValueError:
                width = None
            if key.strip() != "width" or width is None:
                raise RidgelineError(f"--student {text!r}: after the comma expected width:F (MLP channels kept, 0 < F < 1)")
        return StudentSpec(drop=drop, criterion=criterion, width=width)

    @property
    def label(self) -> str:
        """Short text for records."""
        if self.model:
            return self.model
        return f"prune:{self.drop}:{self.criterion}" + (f",width:{self.width:g}" if self.width else "")


@dataclass(frozen=True)
class QuantSpec:
    """A final quantization stage: method, bits, group size (0 per channel), act-order."""

    method: str
    bits: int
    group: int
    act_order: bool = False

    @staticmethod
    def parse(text: str) -> "QuantSpec":
        """'gptq-w4g128', 'rtn-w4g128', 'gptq-w3g128-actorder', ..."""
        m = _QUANT.match(text.strip().lower())
        if not m:
            raise RidgelineError(f"--quantize {text!r}: expected gptq-w<bits>g<group> or rtn-w<bits>g<group> "
                                 "(e.g. gptq-w4g128, gptq-w3g128, rtn-w4g128), optionally -actorder")
        if m.group(4) and m.group(1) != "gptq":
            raise RidgelineError(f"--quantize {text!r}: act-order is a GPTQ option")
        return QuantSpec(m.group(1), int(m.group(2)), int(m.group(3) or 0), bool(m.group(4)))

    @property
    def name(self) -> str:
        """The stage suffix, e.g. 'gptq-w4g128'."""
        return f"{self.method}-w{self.bits}" + (f"g{self.group}" if self.group else "") + \
            ("-actorder" if self.act_order else "")

    def config(self, calibration: Any) -> Any:
        """The `ridgeline.quant` config."""
        from ridgeline.quant import make_config

        return make_config(self.method, bits=self.bits, group=self.group, act_order=self.act_order,
                           calibration=calibration)


@dataclass(frozen=True)
class EvalSettings:
    """Evaluation at every stage: held-out windows (ppl, KL), cloze items, next-line MC items, seed benchmarks."""

    heldout_windows: int = 16
    heldout_len: int = 256
    heldout_topk: int = 128
    cloze_items: int = 64
    mc_items: int = 100
    batch_size: int = 8
    task_dir: str | None = None  # the eight seed benchmarks' local files (<task>.jsonl) run when given
    tasks: tuple[str, ...] = ("arc_easy", "commonsense_qa", "hellaswag", "openbookqa", "piqa", "social_iqa",
                              "winogrande", "mmlu")
    task_limit: int | None = None


@dataclass(frozen=True)
class SpeedSettings:
    """Decode speed of every stage: which measured path, scenario, rounds interleaved across stages."""

    impl: str = "auto"  # the ridgeline.measure torch path: auto takes the native kernels where they run, else lean
    prompt: int = 64
    generate: int = 32
    rounds: int = 3
    threads: int | None = None
    enabled: bool = True


@dataclass(frozen=True)
class SearchSettings:
    """Optuna search before the KD stages (0 trials: none), per optimizer, on a shorter budget."""

    trials: int = 0
    steps: int | None = None  # training steps per trial (default: half the run's)
    objective: str = "kl"  # 'kl' or 'ppl' on validation windows disjoint from the evaluation windows
    seed: int = 0


@dataclass(frozen=True)
class DistillConfig:
    """The whole run; every field lands in the record."""

    teacher: str
    student: StudentSpec = field(default_factory=lambda: StudentSpec(drop=10))
    data: DataConfig = field(default_factory=DataConfig)
    train: KDTrainConfig = field(default_factory=KDTrainConfig)
    optimizers: tuple[str, ...] = ("adamw", "muon")
    seeds: int = 3
    quantize: tuple[QuantSpec, ...] = (QuantSpec("gptq", 4, 128),)
    gptq_samples: int = 32
    gptq_seq_len: int = 256
    prune_sequences: int = 16
    prune_seq_len: int = 128
    eval: EvalSettings = field(default_factory=EvalSettings)
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    search: SearchSettings = field(default_factory=SearchSettings)

    def __post_init__(self) -> None:
        if not self.optimizers or any(o not in ("adamw", "muon") for o in self.optimizers):
            raise RidgelineError(f"optimizers must be adamw and/or muon, got {', '.join(self.optimizers) or 'none'}")
        if len(set(self.optimizers)) != len(self.optimizers):
            raise RidgelineError(f"optimizers are listed twice: {', '.join(self.optimizers)}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise RidgelineError(f"seeds must be an integer >= 1, got {self.seeds!r}")
        if self.student.model is None and self.student.drop < 1:
            raise RidgelineError("the student drops no layers: use prune:N with N >= 1, or give a student model")
        if self.search.objective not in ("kl", "ppl"):
            raise RidgelineError(f"search objective must be kl or ppl, got {self.search.objective!r}")

    def to_json(self) -> dict:
        """JSON form (nested dataclasses as dicts)."""
        d = asdict(self)
        d["train"] = self.train.to_json()
        d["student"]["label"] = self.student.label
        d["quantize"] = [q.name for q in self.quantize]
        return d


def parse_data(text: str, base: DataConfig = DataConfig()) -> DataConfig:
    """'calib[,synthetic:N]', 'calib:N,synthetic:N' or 'synthetic:N' -> the DataConfig (other fields from `base`)."""
    calib, synthetic = 0, 0
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, _, count = item.partition(":")
        try:
            n = int(count) if count else None
        except ValueError:
            raise RidgelineError(f"--data {item!r}: expected calib[:N] or synthetic:N") from None
        if name == "calib":
            calib = base.calib if n is None else n
        elif name == "synthetic" and n is not None:
            synthetic = n
        else:
            raise RidgelineError(f"--data {item!r}: expected calib[:N] or synthetic:N (N sequences)")
    return replace(base, calib=calib, synthetic=synthetic)


def parse_loss(text: str, temperature: float, alpha: float) -> KDLossConfig:
    """'kl' (forward), 'reverse-kl' -> the loss config."""
    key = text.strip().lower()
    if key not in LOSSES:
        raise RidgelineError(f"--loss {text!r}: expected one of {', '.join(LOSSES)}")
    return KDLossConfig(LOSSES[key], temperature, alpha)


def parse_quantize(text: str) -> tuple[QuantSpec, ...]:
    """Comma-separated quantization stages ('none' for no stage)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items == ["none"]:
        return ()
    return tuple(QuantSpec.parse(t) for t in items)
