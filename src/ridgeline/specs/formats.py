"""Number formats: how many bytes a tensor takes in each format, block overhead included.

One registry serves weights, activations and the KV cache. A format knows its block (how many
elements share scale metadata) and the bytes one block takes, so `tensor_bytes` is exact for the
ggml block types (sizes from the `gguf` package), per-group and per-channel integers, and MX/BFP.
Recipes such as Q4_K_M are not formats: they assign a format per tensor (see `recipes.py`).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from functools import lru_cache

from ridgeline.errors import RidgelineError

#: bytes of the per-group metadata of the integer formats: an fp16 scale (and an fp16 zero if asym)
_SCALE_BYTES = 2


@dataclass(frozen=True)
class NumberFormat:
    """A storage format; `block == 0` means one scale per row (per-channel), `block == 1` no scales."""

    name: str
    family: str  # "float" | "int" | "ggml" | "mx" | "bfp"
    element_bits: float  # payload bits per element, without shared metadata
    block: int  # elements sharing one set of metadata (0: a whole row)
    block_bytes: float  # bytes of one block including metadata (ignored when block == 0)
    row_overhead_bytes: int = 0  # per-row metadata when block == 0 (per-channel scale/zero)
    description: str = ""
    dtype: str | None = None  # the compute dtype this format runs in as an activation (fp32/bf16/...)

    @property
    def bits(self) -> float:
        """Bits per element including block overhead (per-channel formats: payload bits only)."""
        if self.block == 0:
            return self.element_bits
        return self.block_bytes * 8.0 / self.block

    def bits_for_row(self, row: int) -> float:
        """Bits per element of a row of `row` elements, per-row metadata included."""
        if self.block == 0:
            return self.element_bits + 8.0 * self.row_overhead_bytes / row
        return self.bits

    def check_row(self, row: int, what: str = "tensor") -> None:
        """Raise if a row of `row` elements cannot be stored in this format (int groups may end short)."""
        if self.block > 1 and row % self.block and self.family != "int":
            raise RidgelineError(
                f"{what}: row length {row} is not a multiple of the {self.name} block size {self.block}"
            )

    def tensor_bytes(self, shape: tuple[int, ...], what: str = "tensor") -> int:
        """Exact bytes of a tensor of `shape`; rows are the last dimension (ggml's ne[0])."""
        if not shape:
            shape = (1,)
        row = shape[-1]
        rows = math.prod(shape[:-1])
        if self.block == 0:
            return rows * (math.ceil(row * self.element_bits / 8) + self.row_overhead_bytes)
        if self.family == "int":
            # integer groups: the last group of a row may be shorter (still one scale/zero of its own)
            return rows * (math.ceil(row * self.element_bits / 8)
                           + math.ceil(row / self.block) * int(self.block_bytes - self.block * self.element_bits / 8))
        self.check_row(row, what)
        if self.block == 1:
            return int(rows * row * self.block_bytes)
        # blocks of a fractional byte count (e.g. bfp4m4: 28 bits) pack as one bit stream, rounded up at the end
        return math.ceil(rows * (row // self.block) * self.block_bytes)

    def elements_bytes(self, n: float) -> float:
        """Bytes of `n` elements as a continuous stream (activations, KV), block overhead amortized."""
        return n * self.bits / 8.0


def _float(name: str, bits: int, desc: str, dtype: str | None = None) -> NumberFormat:
    return NumberFormat(name, "float", bits, 1, bits / 8, description=desc, dtype=dtype or name)


_FIXED: dict[str, NumberFormat] = {
    f.name: f
    for f in [
        _float("fp32", 32, "IEEE float32", "fp32"),
        _float("fp16", 16, "IEEE float16", "fp16"),
        _float("bf16", 16, "bfloat16", "bf16"),
        _float("fp8_e4m3", 8, "float8 E4M3 (per-tensor scale not counted)", "fp8"),
        _float("fp8_e5m2", 8, "float8 E5M2 (per-tensor scale not counted)", "fp8"),
    ]
}

_ALIASES = {
    "f32": "fp32", "float32": "fp32", "float": "fp32",
    "f16": "fp16", "float16": "fp16", "half": "fp16",
    "bfloat16": "bf16",
    "fp8": "fp8_e4m3",
    "mxfp8": "mxfp8_e4m3", "mxfp6": "mxfp6_e2m3", "mxfp4_e2m1": "mxfp4",
    "int8": "int8_pc", "int4": "int4_pc", "int3": "int3_pc",
}

# OCP MX v1.0: block 32, one E8M0 (8-bit) shared scale; element bits per format.
_MX_ELEMENT_BITS = {
    "mxint8": 8, "mxint4": 4, "mxfp8_e4m3": 8, "mxfp8_e5m2": 8,
    "mxfp6_e2m3": 6, "mxfp6_e3m2": 6, "mxfp4": 4,
}

# ggml block types that ridgeline names (lower-case), mapped to gguf's GGMLQuantizationType names.
_GGML_NAMES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
               "q8_k", "iq4_nl", "iq4_xs", "tq1_0", "tq2_0")

_INT_RE = re.compile(r"^int([2-8])_(pc|g(\d+))(_asym|_sym)?$")
_BFP_RE = re.compile(r"^bfp(\d+)m(\d+)$|^bfp\((\d+),\s*(\d+)\)$")


def _ggml(name: str) -> NumberFormat:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    qtype = GGMLQuantizationType[name.upper()]
    block, type_size = GGML_QUANT_SIZES[qtype]
    return NumberFormat(name, "ggml", type_size * 8 / block, block, type_size,
                        description=f"ggml {name.upper()}: {type_size} B per {block} elements")


def _int(bits: int, group: int, asym: bool) -> NumberFormat:
    meta = _SCALE_BYTES * (2 if asym else 1)
    kind = "asym" if asym else "sym"
    if group == 0:
        return NumberFormat(f"int{bits}_pc{'_asym' if asym else ''}", "int", bits, 0, 0,
                            row_overhead_bytes=meta,
                            description=f"int{bits} per-channel {kind}, fp16 scale{'+zero' if asym else ''} per row",
                            dtype="int8" if bits == 8 else None)
    if (group * bits) % 8:
        raise RidgelineError(f"int{bits} with group {group} does not pack into whole bytes")
    return NumberFormat(f"int{bits}_g{group}{'_asym' if asym else ''}", "int", bits, group,
                        group * bits / 8 + meta,
                        description=f"int{bits} per-group g={group} {kind}, fp16 scale{'+zero' if asym else ''} per group")


def _bfp(block: int, mantissa: int) -> NumberFormat:
    if block < 1 or not 1 <= mantissa <= 23:
        raise RidgelineError(f"bfp format needs block >= 1 and 1..23 mantissa bits, got block {block}, mantissa {mantissa}")
    # Harmonia-style BFP: each element keeps sign + `mantissa` magnitude bits; the block shares an 8-bit exponent.
    elem = 1 + mantissa
    return NumberFormat(f"bfp{block}m{mantissa}", "bfp", elem, block, (block * elem + 8) / 8,
                        description=f"block floating point: {block} elements share an 8-bit exponent, "
                                    f"sign + {mantissa}-bit mantissa each")


@lru_cache(maxsize=None)
def get_format(name: str) -> NumberFormat:
    """Resolve a format name (case-insensitive, aliases allowed) or raise with close matches."""
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key in _FIXED:
        return _FIXED[key]
    if key in _GGML_NAMES:
        return _ggml(key)
    if key in _MX_ELEMENT_BITS:
        bits = _MX_ELEMENT_BITS[key]
        return NumberFormat(key, "mx", bits, 32, (32 * bits + 8) / 8,
                            description=f"OCP MX: 32 {key[2:].upper()} elements + an E8M0 shared scale",
                            dtype="int8" if key == "mxint8" else None)
    m = _INT_RE.match(key)
    if m:
        bits, group, asym = int(m.group(1)), int(m.group(3) or 0), m.group(4) == "_asym"
        if m.group(3) is not None and group <= 0:
            raise RidgelineError(f"format {name!r}: group size must be positive")
        return _int(bits, group, asym)
    m = _BFP_RE.match(key)
    if m:
        block, mant = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        return _bfp(int(block), int(mant))
    from ridgeline.specs.recipes import RECIPES

    if key in RECIPES:
        raise RidgelineError(f"{name!r} is a per-tensor recipe, not a single number format: "
                             "use it for weights only")
    close = difflib.get_close_matches(key, list_format_names(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise RidgelineError(f"unknown number format {name!r}{hint}; see `ridgeline formats`")


def list_format_names() -> list[str]:
    """Canonical names of the registry's fixed formats (parametric ones shown with typical parameters)."""
    names = list(_FIXED) + list(_GGML_NAMES) + list(_MX_ELEMENT_BITS)
    for bits in (8, 4, 3):
        names.append(f"int{bits}_pc")
        names.append(f"int{bits}_pc_asym")
        for g in (32, 64, 128):
            names += [f"int{bits}_g{g}", f"int{bits}_g{g}_asym"]
    names += ["bfp32m4", "bfp32m8", "bfp16m4"]
    return names


def list_formats() -> list[NumberFormat]:
    """The registry's formats, in a stable order (for `ridgeline formats`)."""
    return [get_format(n) for n in list_format_names()]
