"""Which native variant this process runs, and why: the environment, CPUID and what the build produced.

`RIDGELINE_KERNELS` (read once, at first use):
  unset / auto   the best variant the CPU runs: avx512 (F, BW, VL, DQ, VNNI, BF16), else avx2 (+FMA, F16C), else portable
  portable       the plain C++ variant (same layouts and semantics, compiler-vectorised)
  avx2, avx512   that variant, if the CPU has its features (else the best one that runs, reason recorded)
  avx512emu      the test-only AVX-512 build against SIMDe (exists only when built with RIDGELINE_BUILD_AVX512_EMU=1)
  off            no native code at all: every caller takes its pure-torch path

CPU features come from the portable module (compiled for the baseline, so safe to import anywhere): a
variant module is never imported on a CPU that lacks its instructions, because the compiler may have
used them anywhere in it, module initialisation included.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

#: variants in order of preference, with the CPU features each needs
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "avx512": ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni", "avx512bf16"),
    "avx2": ("avx2", "fma", "f16c"),
    "portable": (),
}
CHOICES = ("auto", "off", "portable", "avx2", "avx512", "avx512emu")


@dataclass(frozen=True)
class KernelInfo:
    """The native path this process uses: `path` ("avx512", "avx2", "portable", "avx512emu" or "off") and why."""

    path: str
    reason: str
    module: ModuleType | None = field(default=None, repr=False, compare=False)
    features: dict[str, bool] = field(default_factory=dict, compare=False)

    @property
    def available(self) -> bool:
        """True when native kernels run."""
        return self.module is not None

    def __str__(self) -> str:
        return self.reason


def _build_error(variant: str) -> str | None:
    """The recorded reason a variant was not built, if setup.py left one."""
    marker = Path(__file__).with_name(f"_native_{variant}.build-error.txt")
    try:
        return marker.read_text().strip() or None
    except OSError:
        return None


def _import(variant: str) -> tuple[ModuleType | None, str]:
    """(module, "") or (None, why it is missing)."""
    try:
        return importlib.import_module(f"ridgeline.kernels._native_{variant}"), ""
    except ImportError as exc:
        built = _build_error(variant)
        if built:
            return None, f"extension not built: {built}"
        return None, (f"extension not built ({exc}); build it with `python setup.py build_ext --inplace` "
                      "or reinstall ridgeline with a C++ compiler present")


def _missing(variant: str, features: dict[str, bool]) -> list[str]:
    return [f for f in REQUIREMENTS.get(variant, ()) if not features.get(f, False)]


def _describe(variant: str) -> str:
    return {"avx512": "avx512 (bf16, vnni)", "avx2": "avx2 (fma, f16c)", "portable": "portable",
            "avx512emu": "avx512emu (simde, test only)"}[variant]


def load(choice: str | None = None) -> KernelInfo:
    """Pick and import the variant for `choice` (default: $RIDGELINE_KERNELS or "auto")."""
    choice = (choice if choice is not None else os.environ.get("RIDGELINE_KERNELS", "auto")).strip().lower() or "auto"
    if choice not in CHOICES:
        return KernelInfo("off", f"off: RIDGELINE_KERNELS={choice!r} is not one of {', '.join(CHOICES)}")
    if choice == "off":
        return KernelInfo("off", "off: RIDGELINE_KERNELS=off")
    portable, why = _import("portable")
    if portable is None:
        return KernelInfo("off", f"off: {why}")
    features = dict(portable.cpu_features())
    if choice == "portable":
        return KernelInfo("portable", "portable: forced by RIDGELINE_KERNELS=portable", portable, features)
    if choice == "avx512emu":
        module, why = _import("avx512emu")
        if module is not None and not _missing("avx2", features):
            return KernelInfo("avx512emu", _describe("avx512emu"), module, features)
        return KernelInfo("portable", f"portable: avx512emu unavailable ({why or 'CPU lacks avx2'})", portable, features)
    order = ["avx512", "avx2"] if choice == "auto" else [choice] + [v for v in ("avx512", "avx2") if v != choice]
    notes: list[str] = []  # why each preferred variant was passed over
    for variant in order:
        missing = _missing(variant, features)
        module, why = (None, f"CPU lacks {', '.join(missing)}") if missing else _import(variant)
        if module is not None:
            reason = _describe(variant) + (f": {'; '.join(notes)}" if notes else "")
            return KernelInfo(variant, reason, module, features)
        if variant == order[0] or not missing:  # the first choice's reason, and any build failure
            notes.append(f"{variant}: {why}" if choice == "auto" else f"RIDGELINE_KERNELS={choice}: {why}")
    return KernelInfo("portable", "portable" + (f": {'; '.join(notes)}" if notes else ""), portable, features)
