"""One small config dataclass per quantization method (the torchao shape: `quantize_(model, config)`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ridgeline.errors import RidgelineError
from ridgeline.quant.calib import CalibrationConfig
from ridgeline.quant.intq import check_bits


@dataclass(frozen=True)
class RTNConfig:
    """Round-to-nearest weight-only: `bits`, `group` (0 per channel; default 0 for 8 bits, else 128), symmetry."""

    bits: int = 4
    group: int | None = None
    sym: bool | None = None  # default: symmetric at 8 bits (the int8 kernel's form), asymmetric below
    kernel: bool = True  # use a CPU kernel when the format has one (else always emulate)
    include_lm_head: bool = False
    method = "rtn"

    def __post_init__(self) -> None:
        """Fill bit-width-dependent defaults and validate."""
        check_bits(self.bits)
        if self.group is None:
            object.__setattr__(self, "group", 0 if self.bits == 8 else 128)
        if self.sym is None:
            object.__setattr__(self, "sym", self.bits == 8)


@dataclass(frozen=True)
class GPTQConfig:
    """GPTQ (Frantar et al. 2022): Hessian-aware rounding from calibration inputs, layer by layer."""

    bits: int = 4
    group: int | None = None
    sym: bool | None = None
    act_order: bool = False
    static_groups: bool = False
    damp: float = 0.01
    block_size: int = 128
    true_sequential: bool = True
    kernel: bool = True
    include_lm_head: bool = False
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    method = "gptq"

    def __post_init__(self) -> None:
        """Fill bit-width-dependent defaults and validate."""
        check_bits(self.bits)
        if self.group is None:
            object.__setattr__(self, "group", 0 if self.bits == 8 else 128)
        if self.sym is None:
            object.__setattr__(self, "sym", self.bits == 8)
        if not 0 <= self.damp < 1:
            raise RidgelineError(f"GPTQ damp must be in [0, 1), got {self.damp}")


@dataclass(frozen=True)
class LLMInt8Config:
    """LLM.int8() (Dettmers et al. 2022): vector-wise int8 with float outlier columns above `threshold`."""

    threshold: float = 6.0
    include_lm_head: bool = False
    method = "llm_int8"

    def __post_init__(self) -> None:
        """A non-positive threshold would make every column an outlier."""
        if not self.threshold > 0:
            raise RidgelineError(f"LLM.int8() threshold must be positive, got {self.threshold}")


@dataclass(frozen=True)
class SmoothQuantConfig:
    """SmoothQuant (Xiao et al. 2023): migrate activation outliers into weights (α), then W8A8 via `_int_mm`."""

    alpha: float = 0.5
    search: bool = False  # pick α from `grid` by calibration loss
    grid: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    include_lm_head: bool = False
    calibration: CalibrationConfig = field(default_factory=lambda: CalibrationConfig(n_samples=32, seq_len=512))
    method = "smoothquant"

    def __post_init__(self) -> None:
        """α is a migration strength in [0, 1]."""
        for a in (self.alpha, *self.grid):
            if not 0 <= a <= 1:
                raise RidgelineError(f"SmoothQuant alpha must be in [0, 1], got {a}")


@dataclass(frozen=True)
class BFPConfig:
    """Block floating point / OCP MX for the weights and activations of every linear layer (emulated)."""

    weight_format: str = "mxint8"
    act_format: str | None = "mxint8"
    include_lm_head: bool = False
    method = "bfp"

    def __post_init__(self) -> None:
        """Both formats must be MX or BFP formats."""
        from ridgeline.specs import get_format

        for what, name in (("weight", self.weight_format), ("activation", self.act_format)):
            if name is not None and get_format(name).family not in ("mx", "bfp"):
                raise RidgelineError(f"bfp method: {what} format {name!r} is not an MX/BFP format "
                                     "(e.g. mxint8, mxfp4, bfp32m4)")


@dataclass(frozen=True)
class GGUFConfig:
    """A llama.cpp type or recipe (q8_0, q4_0, q4_k_m, ...) applied in torch with the exact ggml codecs."""

    recipe: str = "q4_k_m"
    include_embeddings: bool = True  # quantize token_embd / output as llama.cpp does
    method = "gguf"

    def __post_init__(self) -> None:
        """Known recipe or single ggml type."""
        from ridgeline.specs import RECIPES

        if self.recipe.strip().lower() not in RECIPES:
            raise RidgelineError(f"unknown GGUF recipe {self.recipe!r}; expected one of {', '.join(sorted(RECIPES))}")


Config = RTNConfig | GPTQConfig | LLMInt8Config | SmoothQuantConfig | BFPConfig | GGUFConfig

#: method name -> config class
METHODS: dict[str, type] = {c.method: c for c in (RTNConfig, LLMInt8Config, SmoothQuantConfig, GPTQConfig,
                                                   BFPConfig, GGUFConfig)}


def config_to_dict(config: Config) -> dict[str, Any]:
    """JSON-ready dict with the method name."""
    return {"method": config.method, **asdict(config)}


def make_config(method: str, *, bits: int | None = None, group: int | None = None, sym: bool | None = None,
                act_order: bool = False, static_groups: bool = False, damp: float = 0.01, alpha: float = 0.5,
                alpha_search: bool = False, threshold: float = 6.0, weight_format: str = "mxint8",
                act_format: str | None = "mxint8", recipe: str = "q4_k_m", include_lm_head: bool = False,
                kernel: bool = True, calibration: CalibrationConfig | None = None) -> Config:
    """The config for `method` from flat options (what the CLI and the benchmark pass); unused ones are ignored."""
    key = method.strip().lower().replace("-", "_")
    if key not in METHODS:
        raise RidgelineError(f"unknown quantization method {method!r}; expected one of {', '.join(METHODS)}")
    if key in ("rtn", "gptq"):
        common = dict(bits=4 if bits is None else bits, group=group, sym=sym, kernel=kernel,
                      include_lm_head=include_lm_head)
        if key == "rtn":
            return RTNConfig(**common)
        return GPTQConfig(**common, act_order=act_order, static_groups=static_groups, damp=damp,
                          calibration=calibration or CalibrationConfig())
    if bits not in (None, 8) and key in ("llm_int8", "smoothquant"):
        raise RidgelineError(f"{key} is an 8-bit method; --bits {bits} does not apply")
    if key == "llm_int8":
        return LLMInt8Config(threshold=threshold, include_lm_head=include_lm_head)
    if key == "smoothquant":
        return SmoothQuantConfig(alpha=alpha, search=alpha_search, include_lm_head=include_lm_head,
                                 **({"calibration": calibration} if calibration else {}))
    if key == "bfp":
        return BFPConfig(weight_format=weight_format, act_format=act_format, include_lm_head=include_lm_head)
    return GGUFConfig(recipe=recipe)
