"""Number formats: how many bytes a tensor takes in each format, block overhead included.

One registry serves weights, activations and the KV cache. A format knows its block (how many
elements share scale metadata) and the bytes one block takes, so `tensor_bytes` is exact for the
ggml block types (sizes from the `gguf` package), per-group and per-channel integers, and MX/BFP.
Recipes such as Q4_K_M are not formats: they assign a format per tensor (see `recipes.py`).

A KV cache can also mix formats over positions (KIVI's full-precision residual, Harmonia's 8-bit sink and
recent tokens): `KVFormat` says which of the tokens a layer holds are stored in which NumberFormat, so
its bytes are exact at every context length; a plain number format is the uniform special case.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

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


# ---------------------------------------------------------------------------------------------
# KV-cache formats: number formats that may differ over the positions of the cache

#: KIVI (arXiv 2402.02750) defaults: G elements per quantization group, R full-precision residual tokens
KIVI_GROUP, KIVI_RESIDUAL = 32, 128
#: Harmonia (arXiv 2602.04595) has no public code; sinks and recent tokens kept at 8-bit mantissa (our defaults)
HARMONIA_SINK, HARMONIA_RECENT = 32, 128

_KIVI_RE = re.compile(r"^kivi_?(\d+)(?:_g(\d+))?(?:_r(\d+))?$")
_HARMONIA_RE = re.compile(r"^harmonia(?:_s(\d+))?(?:_r(\d+))?$")
KV_FORMAT_HELP = "kivi2, kivi4, kivi{b}_g{G}_r{R}, harmonia, harmonia_s{S}_r{R}"


@dataclass(frozen=True)
class KVFormat:
    """Which tokens of a layer's KV cache are stored in which format, as a function of the tokens it holds.

    `bulk` stores most tokens; `hi` (if set) the tokens a policy keeps more precise: the first `sink` and
    the last `recent` tokens held (Harmonia; KIVI's values, sink 0), except for keys when `key_chunk` > 0:
    then the last n mod key_chunk tokens (KIVI quantizes keys per channel across tokens, so only whole
    chunks of R). Positions count within the tokens held, so a sliding window's cache is priced the same way.
    """

    name: str
    bulk: NumberFormat
    hi: NumberFormat | None = None
    sink: int = 0
    recent: int = 0
    key_chunk: int = 0
    description: str = ""

    def hi_tokens(self, n, key: bool):
        """How many of `n` held tokens (int or numpy array) are stored in `hi`."""
        if self.hi is None:
            return n * 0
        if key and self.key_chunk:
            return n % self.key_chunk
        return np.minimum(n, self.sink + self.recent)

    def cache_bytes(self, n, elements: int, key: bool):
        """Bytes of the keys (`key`) or values of `n` held tokens with `elements` numbers per token."""
        if self.hi is None:
            return self.bulk.elements_bytes(elements) * n
        h = self.hi_tokens(n, key)
        return h * self.hi.elements_bytes(elements) + (n - h) * self.bulk.elements_bytes(elements)

    def layer_bytes(self, n, k_elements: int, v_elements: int):
        """Bytes of keys and values of `n` held tokens (per-token K and V element counts)."""
        if self.hi is None:  # the uniform formula, term for term as before mixed formats existed
            return self.bulk.elements_bytes(k_elements + v_elements) * n
        return self.cache_bytes(n, k_elements, True) + self.cache_bytes(n, v_elements, False)

    def write_bytes(self, c, s: int, elements: int, key: bool):
        """Bytes written when `s` tokens follow `c` in the stream: each new token once in the format of its
        position, plus every older token re-quantized into `bulk` as it leaves `hi` (a chunk of keys
        completing, a value or Harmonia token ageing out of the recent window). From c = 0 this is
        `cache_bytes(s)`; summed over the steps it is every byte ever stored."""
        if self.hi is None:
            return self.bulk.elements_bytes(elements) * s
        n = c + s
        if key and self.key_chunk:
            new_hi = np.minimum(s, n % self.key_chunk)  # the open chunk is the tail of the stream
        else:  # new positions [c, n) against sinks [0, sink) and recent [n - recent, n)
            new_hi = (np.clip(self.sink - c, 0, s) + min(s, self.recent)
                      - np.maximum(0, np.minimum(self.sink, n) - np.maximum(c, n - self.recent)))
        new_bulk = (n - self.hi_tokens(n, key)) - (c - self.hi_tokens(c, key))  # never negative: bulk only grows
        return new_hi * self.hi.elements_bytes(elements) + new_bulk * self.bulk.elements_bytes(elements)

    def check_row(self, row: int, what: str = "KV cache") -> None:
        """Raise if a cached row (a head's K or V) of `row` elements cannot be stored in this format."""
        for f in (self.bulk, self.hi):
            if f is not None:
                f.check_row(row, what)
        if self.key_chunk and row % self.bulk.block:  # KIVI: each token's values in groups of G channels
            raise RidgelineError(f"{what}: row length {row} is not a multiple of the {self.name} group size "
                                 f"{self.bulk.block} (values are quantized per token in groups of channels)")

    def to_json(self) -> dict:
        """JSON form used in records."""
        return {"name": self.name, "bulk": self.bulk.name, "hi": self.hi.name if self.hi else None,
                "sink": self.sink, "recent": self.recent, "key_chunk": self.key_chunk,
                "description": self.description}


def _kivi(name: str, bits: int, group: int, residual: int) -> KVFormat:
    if group < 1 or residual < group or residual % group:
        raise RidgelineError(f"KV format {name!r}: KIVI needs a group G >= 1 and a residual R that is a positive "
                             f"multiple of G (kivi{{b}}_g{{G}}_r{{R}}), got G {group}, R {residual}")
    if not 2 <= bits <= 8:
        raise RidgelineError(f"KV format {name!r}: KIVI needs 2..8 bits, got {bits}")
    bulk = _int(bits, group, asym=True)  # b bits + fp16 scale + fp16 zero per group: b + 32/G bits
    return KVFormat(f"kivi{bits}_g{group}_r{residual}", bulk, _FIXED["fp16"], recent=residual, key_chunk=residual,
                    description=f"KIVI-{bits}: keys per channel, values per token, {bits}-bit asym groups of {group} "
                                f"({bulk.bits:g} bits); fp16 residual: keys L mod {residual}, values the last {residual}")


def _harmonia(sink: int, recent: int) -> KVFormat:
    hi, lo = _bfp(32, 8), _bfp(32, 4)
    return KVFormat(f"harmonia_s{sink}_r{recent}", lo, hi, sink=sink, recent=recent,
                    description=f"Harmonia: BFP groups of 32 with an 8-bit exponent; first {sink} and last {recent} "
                                f"tokens at 8-bit mantissa ({hi.bits:g} bits), the rest 4-bit ({lo.bits:g} bits)")


@lru_cache(maxsize=None)
def get_kv_format(name: str) -> KVFormat:
    """Resolve a KV-cache format: any number format (uniform), KIVI or Harmonia names; raise if unknown."""
    key = name.strip().lower().replace("-", "_")
    m = _KIVI_RE.match(key)
    if m:
        return _kivi(name, int(m.group(1)), int(m.group(2) or KIVI_GROUP), int(m.group(3) or KIVI_RESIDUAL))
    m = _HARMONIA_RE.match(key)
    if m:
        return _harmonia(int(m.group(1) or HARMONIA_SINK), int(m.group(2) or HARMONIA_RECENT))
    try:
        fmt = get_format(name)
    except RidgelineError as exc:
        raise RidgelineError(f"{exc}. KV caches also take {KV_FORMAT_HELP}") from None
    return KVFormat(fmt.name, fmt, description=fmt.description)
