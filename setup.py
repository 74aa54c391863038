"""Builds ridgeline's native CPU kernels; the package metadata stays in pyproject.toml.

Each instruction-set variant is one CPython extension compiled from one translation unit
(`src/ridgeline/kernels/csrc/variant_<isa>.cpp`) with its own flags, so no AVX-512 instruction can end up
in the module a CPU without AVX-512 imports; `ridgeline.kernels` picks the variant at run time from
CPUID. Only a C++20 compiler is needed (no torch headers, no downloads).

The build never fails the install: a missing compiler or an unsupported flag prints one warning, the
variant is skipped and its reason is written next to where the module would have been
(`_native_<isa>.build-error.txt`), which `ridgeline.kernels.info()` reports; the pure-torch paths keep
working. Developers build in place with `python setup.py build_ext --inplace`.
RIDGELINE_BUILD_AVX512_EMU=1 also builds a test-only AVX-512 variant against SIMDe (libsimde-dev), which
runs the AVX-512 code paths on CPUs without AVX-512.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = "src/ridgeline/kernels/csrc"
COMMON_FLAGS = ["-std=c++20", "-O3", "-ffp-contract=off", "-fvisibility=hidden", "-fno-math-errno", "-fno-trapping-math", "-pthread"]
X86 = platform.machine().lower() in ("x86_64", "amd64")
VARIANTS: dict[str, list[str]] = {"portable": []}
if X86:
    VARIANTS["avx2"] = ["-mavx2", "-mfma", "-mf16c"]
    VARIANTS["avx512"] = ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                          "-mavx512vnni", "-mavx512bf16",
                          # GCC 12's own avx512fintrin.h trips -Wuninitialized on its _mm512_undefined_*()
                          # placeholders (a known false positive); without this an install prints ~1,500 lines
                          "-Wno-uninitialized", "-Wno-maybe-uninitialized"]
    if os.environ.get("RIDGELINE_BUILD_AVX512_EMU") == "1" and Path("/usr/include/simde/x86/avx512.h").exists():
        VARIANTS["avx512emu"] = ["-mavx2", "-mfma", "-mf16c"]


def _extension(isa: str, flags: list[str]) -> Extension:
    headers = [str(p) for p in Path(CSRC).glob("*.h")] + [f"{CSRC}/module.cpp"]
    return Extension(f"ridgeline.kernels._native_{isa}", sources=[f"{CSRC}/variant_{isa}.cpp"], depends=headers,
                     language="c++", extra_compile_args=COMMON_FLAGS + flags, extra_link_args=["-pthread"])


class BuildNative(build_ext):
    """build_ext that turns a failed variant into a warning and a recorded reason, never an error."""

    def run(self) -> None:
        self._failed: set[str] = set()
        try:
            super().run()
        except Exception as exc:  # no compiler at all: distutils fails before any extension
            self._warn_all(f"{type(exc).__name__}: {exc}")

    def copy_extensions_to_source(self) -> None:
        """--inplace: copy only the variants that were built."""
        built = [e for e in self.extensions if e.name not in self._failed]
        everything, self.extensions = self.extensions, built
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = everything

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._failed.add(ext.name)
            self._record(ext, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}")
            return
        for marker in self._markers(ext):
            marker.unlink(missing_ok=True)

    def _markers(self, ext: Extension) -> list[Path]:
        """Where the reason a variant is missing goes: beside the built module, and in the source tree."""
        name = ext.name.rsplit(".", 1)[1] + ".build-error.txt"
        return [Path(self.get_ext_fullpath(ext.name)).with_name(name), Path(CSRC).parent / name]

    def _record(self, ext: Extension, reason: str) -> None:
        if reason not in getattr(self, "_warned", set()):  # one warning per distinct reason
            self._warned = getattr(self, "_warned", set()) | {reason}
            print(f"WARNING: ridgeline native kernels not built ({reason}): {ext.name} and any other variant with "
                  "the same error are skipped; the pure-torch paths still work", file=sys.stderr)
        for marker in self._markers(ext):
            try:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(reason + "\n")
            except OSError:
                pass

    def _warn_all(self, reason: str) -> None:
        for ext in self.extensions:
            if ext.name not in self._failed and not Path(self.get_ext_fullpath(ext.name)).exists():
                self._record(ext, reason)


setup(ext_modules=[_extension(isa, flags) for isa, flags in VARIANTS.items()], cmdclass={"build_ext": BuildNative})
