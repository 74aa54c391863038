"""Operand types of a PE: what a number format looks like to a multiplier.

A PE mode multiplies an A operand (activations: tokens, queries, attention probabilities) by a B operand
(weights, keys, values). Its cost depends on the operand *type*: the family and the significand width the
multiplier sees, not on how the format stores scales in memory. Names:

* ``fp16``, ``bf16``, ``fp32``: IEEE-style floats; significand = mantissa + hidden bit (11, 8, 24 bits).
* ``int{w}``: a w-bit two's-complement integer (per-channel or per-group scales live outside the PE);
  ggml block types count by their nominal element bits (q4_0 -> int4, q6_k -> int6).
* ``bfp{m}``: block floating point with a sign and an m-bit magnitude per element, one shared exponent per
  block (ridgeline's ``bfp{k}m{m}``); OCP mxint8 / mxint4 are bfp7 / bfp3 (`quant.mx` explains why).

A mode ``(a, b)`` runs a pair of operand types of the same families whose widths are not larger: int4 weights
run on an int8 mode, a bfp4 KV tier on a bfp8 mode (at the wider mode's cost).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from ridgeline.errors import RidgelineError
from ridgeline.specs import NumberFormat, get_format

_FLOAT_SIGNIFICAND = {"fp16": 11, "bf16": 8, "fp32": 24}
_NAME_RE = re.compile(r"^(fp16|bf16|fp32)$|^int([1-9]|1[0-6])$|^bfp([1-9]|1[0-5])$")
_MX_INT = {"mxint8": 7, "mxint4": 3}


@dataclass(frozen=True, order=True)
class Operand:
    """An operand type: `family` "fp", "int" or "bfp" and its name; `width` is the significand bits the
    multiplier sees (fp: with the hidden bit; int: all bits; bfp: sign + magnitude)."""

    family: str
    width: int
    name: str

    @property
    def is_float(self) -> bool:
        """Whether products of this operand need floating-point exponent handling per element."""
        return self.family == "fp"

    def fits(self, mode: Operand) -> bool:
        """Whether a PE mode built for `mode` can take this operand."""
        return self.family == mode.family and (self.width <= mode.width if self.family != "fp" else
                                               self.name == mode.name or (self.name, mode.name) == ("fp16", "fp32"))


def parse_operand(name: str, where: str = "operand") -> Operand:
    """An operand type from its name (fp16, bf16, fp32, int4, int8, bfp4, bfp8, ...)."""
    key = str(name).strip().lower()
    m = _NAME_RE.match(key)
    if not m:
        raise RidgelineError(f"{where}: unknown operand type {name!r}; expected fp16, bf16, fp32, int<bits> "
                             "(1-16) or bfp<mantissa bits> (1-15)")
    if m.group(1):
        return Operand("fp", _FLOAT_SIGNIFICAND[key], key)
    if m.group(2):
        return Operand("int", int(m.group(2)), key)
    return Operand("bfp", int(m.group(3)) + 1, key)


def operand_of(fmt: NumberFormat | str) -> Operand:
    """The operand type a stored number format presents to the PE (raise for formats no PE here takes)."""
    return _operand_of(fmt.name if isinstance(fmt, NumberFormat) else fmt)


@lru_cache(maxsize=None)
def _operand_of(name: str) -> Operand:
    f = get_format(name)
    if f.family == "float":
        key = {"fp8_e4m3": None, "fp8_e5m2": None}.get(f.name, f.name)
        if key in _FLOAT_SIGNIFICAND:
            return parse_operand(key)
    elif f.family == "int":
        return parse_operand(f"int{int(f.element_bits)}")
    elif f.family == "bfp":
        return parse_operand(f"bfp{int(f.element_bits) - 1}")
    elif f.family == "mx" and f.name in _MX_INT:
        return parse_operand(f"bfp{_MX_INT[f.name]}")
    elif f.family == "ggml":
        digits = re.match(r"^i?q(\d)", f.name)
        if digits:
            return parse_operand(f"int{digits.group(1)}")
    raise RidgelineError(f"format {f.name!r} has no operand type the simulated PEs take "
                         "(fp16/bf16/fp32, int<bits>, BFP, mxint8/mxint4, ggml integer blocks)")
