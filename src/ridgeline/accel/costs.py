"""The cost model: energy per action (pJ) and area (µm²) of PEs, SRAM, converters and vector lanes at 45 nm.

Every constant comes from `data/costs.toml`, which names its source. Functions reproduce the table values
exactly at the table's points and interpolate between them with power laws (integer multipliers in the
product of the operand widths, float units in the significand width, SRAM in the size of the bank accessed).

A PE mode's energy per MAC is composed from the units it uses:

* the significand multiplier: an integer multiplier of the two significand widths (fp16: 11 bits with the
  hidden one; intw: w; bfp m: sign + m), plus, when an operand is a float, the float overhead (exponent add,
  normalise, round) = fp multiplier − integer multiplier of the same significand;
* the accumulator: a float adder of the accumulator width when an operand is a float, else an integer adder;
* per BFP block (k products share one exponent pair): one 8-bit exponent add and one alignment shift of the
  block sum into the accumulator, amortised over the k products.

A PE's area is the union of the units of all its modes (one multiplier as wide as the widest mode; float
overhead and float accumulator only if some mode has a float operand), plus its operand and accumulator
registers. Per-group weight scales are applied once per output and group at the accumulator (≤ 1 % of the
MAC energy at group 128) and are not counted, for every design alike.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from ridgeline.accel.operands import Operand


@lru_cache(maxsize=1)
def table() -> dict:
    """The cost tables (data/costs.toml) with their sources."""
    return tomllib.loads(resources.files("ridgeline.accel").joinpath("data/costs.toml").read_text())


def _power(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise power law through the points (xs, ys), extended with the end segments' exponents."""
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    i = 0
    while i < len(xs) - 2 and x > xs[i + 1]:
        i += 1
    e = math.log(ys[i + 1] / ys[i]) / math.log(xs[i + 1] / xs[i])
    return ys[i] * (x / xs[i]) ** e


def int_add(bits: float) -> tuple[float, float]:
    """(pJ, µm²) of a `bits`-wide integer adder."""
    t = table()["int_add"]
    return _power(bits, t["bits"], t["energy_pj"]), _power(bits, t["bits"], t["area_um2"])


def int_mult(a: float, b: float) -> tuple[float, float]:
    """(pJ, µm²) of an a × b-bit integer multiplier (power law in a·b through 8×8 and 32×32)."""
    t = table()["int_mult"]
    sq = [w * w for w in t["bits"]]
    return _power(a * b, sq, t["energy_pj"]), _power(a * b, sq, t["area_um2"])


def fp_add(significand: float) -> tuple[float, float]:
    """(pJ, µm²) of a float adder with a `significand`-bit significand (11: fp16, 24: fp32)."""
    t = table()["fp_add"]
    return _power(significand, t["significand"], t["energy_pj"]), _power(significand, t["significand"], t["area_um2"])


def fp_mult(significand: float) -> tuple[float, float]:
    """(pJ, µm²) of a float multiplier (power law in the squared significand through fp16 and fp32)."""
    t = table()["fp_mult"]
    sq = [s * s for s in t["significand"]]
    x = significand * significand
    return _power(x, sq, t["energy_pj"]), _power(x, sq, t["area_um2"])


def shifter(bits: float) -> tuple[float, float]:
    """(pJ, µm²) of a `bits`-wide barrel shifter (stated as a multiple of an adder)."""
    k = table()["shifter"]["adders_equivalent"]
    e, a = int_add(bits)
    return k * e, k * a


def register_area(bits: float) -> float:
    """µm² of `bits` flip-flops."""
    return bits * table()["register"]["area_um2_per_bit"]


def sram_pj_per_byte(bank_bytes: float) -> float:
    """pJ per byte read or written in an SRAM bank of `bank_bytes` (64-bit access energy / 8)."""
    t = table()["sram"]
    return _power(bank_bytes / 1024.0, t["kib"], t["energy_pj_per_64b"]) / 8.0


def sram_area(total_bytes: float) -> float:
    """µm² of SRAM macros holding `total_bytes` (cell area / array efficiency)."""
    t = table()["sram"]
    return total_bytes * 8.0 * t["cell_um2"] / t["array_efficiency"]


def dram_pj_per_byte() -> float:
    """Default DRAM energy per byte (LPDDR4, 8 pJ/bit)."""
    return table()["dram"]["lpddr4_pj_per_bit"] * 8.0


def node_scale(node_nm: float) -> tuple[float, float]:
    """(energy, area) factors from 45 nm to `node_nm`: linear and quadratic in the feature size (stated rule)."""
    r = node_nm / 45.0
    return r, r * r


def storage_bits(op: Operand) -> int:
    """Bits a PE register holds for one operand (fp16 16, int4 4, bfp8 9: sign + mantissa)."""
    return {"fp16": 16, "bf16": 16, "fp32": 32}.get(op.name, op.width)


@dataclass(frozen=True)
class PEMode:
    """One operation a PE can do: A × B operand types, `macs` products per cycle (packed narrower lanes)."""

    a: Operand
    b: Operand
    macs: int = 1

    @property
    def label(self) -> str:
        """'bfp8×int4' (×2 when packed)."""
        return f"{self.a.name}×{self.b.name}" + (f" (×{self.macs})" if self.macs > 1 else "")

    @property
    def has_float(self) -> bool:
        """Whether a float operand takes part (float overhead and float accumulation)."""
        return self.a.is_float or self.b.is_float

    @property
    def has_bfp(self) -> bool:
        """Whether a block exponent takes part."""
        return "bfp" in (self.a.family, self.b.family)


def _float_overhead(significand: int) -> tuple[float, float]:
    fe, fa = fp_mult(significand)
    ie, ia = int_mult(significand, significand)
    return fe - ie, fa - ia


def _fp_significand(mode: PEMode) -> int:
    return max(o.width for o in (mode.a, mode.b) if o.is_float)


def mac_energy(mode: PEMode, acc_bits: int, block: int = 32) -> float:
    """pJ per multiply-accumulate in `mode` with an `acc_bits` accumulator (BFP blocks of `block` products)."""
    e = int_mult(mode.a.width, mode.b.width)[0]
    if mode.has_float:
        e += _float_overhead(_fp_significand(mode))[0]
        e += fp_add(24 if acc_bits >= 32 else 11)[0]
    else:
        e += int_add(acc_bits)[0]
    if mode.has_bfp:
        e += (int_add(8)[0] + shifter(acc_bits)[0]) / block
    return e


def pe_area(modes: tuple[PEMode, ...], acc_bits: int) -> float:
    """µm² of one PE that can run every mode (the union of their units) with its registers."""
    area = max(m.macs * int_mult(m.a.width, m.b.width)[1] for m in modes)
    floats = [m for m in modes if m.has_float]
    if floats:
        area += max(_float_overhead(_fp_significand(m))[1] for m in floats)
        area += fp_add(24 if acc_bits >= 32 else 11)[1]
    if any(not m.has_float for m in modes):
        area += int_add(acc_bits)[1]
    if any(m.has_bfp for m in modes):
        area += int_add(8)[1] + shifter(acc_bits)[1]
    regs = max(storage_bits(m.a) for m in modes) + max(storage_bits(m.b) for m in modes) + acc_bits
    return area + register_area(regs)


def converter_lane(mantissa: int, block: int = 32) -> tuple[float, float]:
    """(pJ per element, µm² per element/cycle of throughput) of an FP16→BFP converter lane: its share of the
    max-exponent tree (a 5-bit compare per element), an 11-bit alignment shift, an m-bit rounding add, and a
    block staging buffer of 2 × 16 bits per lane (one block filling while the previous one is shifted)."""
    cmp_e, cmp_a = int_add(5)
    sh_e, sh_a = shifter(11)
    rnd_e, rnd_a = int_add(mantissa)
    exp_e, exp_a = int_add(8)  # writing the shared exponent, once per block
    energy = cmp_e * (block - 1) / block + sh_e + rnd_e + exp_e / block
    return energy, cmp_a + sh_a + rnd_a + exp_a / block + register_area(32)


def vector_lane() -> tuple[float, float]:
    """(pJ per op, µm² per lane) of an fp16 vector lane: one adder and one multiplier, ops priced at their mean."""
    ae, aa = fp_add(11)
    me, ma = fp_mult(11)
    return (ae + me) / 2.0, aa + ma + register_area(48)
