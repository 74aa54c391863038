"""A design priced: energy per action and area per unit, from the cost model or the design's own overrides.

Node scaling (`costs.node_scale`) applies to on-chip energies and areas; DRAM energy per byte is the design's
own number. Area = PE array + the three buffers + converter lanes + vector lanes (control, clocking and I/O
are not modelled, for every design alike).
"""

from __future__ import annotations

from functools import lru_cache

from ridgeline.accel import costs
from ridgeline.accel.costs import PEMode
from ridgeline.accel.design import Design
from ridgeline.accel.operands import Operand
from ridgeline.accel.tiling import ArrayParams
from ridgeline.errors import RidgelineError


def _escale(d: Design) -> float:
    return costs.node_scale(d.node_nm)[0]


def _ascale(d: Design) -> float:
    return costs.node_scale(d.node_nm)[1]


def buffer_pj(d: Design, which: str) -> float:
    """pJ per byte accessed in the `which` buffer (its bank size sets the energy)."""
    key = f"{which}_pj_per_byte"
    if key in d.energy:
        return d.energy[key]
    b = getattr(d, which)
    return costs.sram_pj_per_byte(b.bytes / b.banks) * _escale(d)


def array_params(d: Design) -> ArrayParams:
    """The hashable view of a design that the tiled GEMM search needs."""
    return ArrayParams(d.rows, d.cols, d.input.bytes, d.weight.bytes, d.output.bytes,
                       d.input.bytes_per_cycle, d.weight.bytes_per_cycle, d.output.bytes_per_cycle,
                       d.dram_Bps / d.clock_hz, buffer_pj(d, "input"), buffer_pj(d, "weight"), buffer_pj(d, "output"),
                       d.energy.get("dram_pj_per_byte", d.dram_pj_per_byte), d.double_buffer, d.dataflows)


def find_mode(d: Design, a: Operand, b: Operand, what: str) -> PEMode:
    """The design's mode that runs a × b fastest (then cheapest); a clear error when none can."""
    fits = [m for m in d.modes if a.fits(m.a) and b.fits(m.b)]
    if not fits:
        modes = ", ".join(m.label for m in d.modes)
        raise RidgelineError(f"design {d.name!r} has no PE mode for {a.name} × {b.name} ({what}); its modes: {modes}")
    return min(fits, key=lambda m: (-m.macs, mac_pj(d, m)))


def mac_pj(d: Design, mode: PEMode) -> float:
    """pJ per MAC of a mode (the design's `mac_pj` override wins)."""
    if "mac_pj" in d.energy:
        return d.energy["mac_pj"]
    block = d.converter.block if d.converter else 32
    return _mac_pj(mode, d.accumulator_bits, block) * _escale(d)


@lru_cache(maxsize=4096)
def _mac_pj(mode: PEMode, acc: int, block: int) -> float:
    return costs.mac_energy(mode, acc, block)


def _act_mantissa(d: Design) -> int:
    from ridgeline.accel.operands import operand_of

    ops = [operand_of(f) for f in (d.formats.linear_acts, d.formats.attention_acts)]
    return max((o.width - 1 for o in ops if o.family == "bfp"), default=8)


def converter_pj(d: Design) -> float:
    """pJ per element converted FP16→BFP."""
    if "converter_pj_per_element" in d.energy:
        return d.energy["converter_pj_per_element"]
    block = d.converter.block if d.converter else 32
    return costs.converter_lane(_act_mantissa(d), block)[0] * _escale(d)


def vector_pj(d: Design) -> float:
    """pJ per vector-unit op."""
    return d.energy.get("vector_pj_per_op", costs.vector_lane()[0] * _escale(d))


def area_um2(d: Design) -> dict[str, float]:
    """Area by unit, µm²: pe_array, input/weight/output buffers, converter, vector."""
    s = _ascale(d)
    pe = d.area.get("pe_um2", costs.pe_area(d.modes, d.accumulator_bits) * s)
    out = {"pe_array": pe * d.pes}
    for b in ("input", "weight", "output"):
        out[f"{b}_buffer"] = costs.sram_area(getattr(d, b).bytes) * s
    if d.converter:
        block = d.converter.block
        lane = d.area.get("converter_um2", costs.converter_lane(_act_mantissa(d), block)[1] * s)
        out["converter"] = lane * d.converter.elements_per_cycle
    out["vector"] = d.area.get("vector_um2", costs.vector_lane()[1] * s) * d.vector_lanes
    return out


def pe_um2(d: Design) -> float:
    """Area of one PE."""
    return d.area.get("pe_um2", costs.pe_area(d.modes, d.accumulator_bits) * _ascale(d))
