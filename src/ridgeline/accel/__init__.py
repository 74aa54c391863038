"""Simulated accelerators: BFP PE arrays, tiled dataflows, a cost model with sources, design-space exploration.

`simulate(workload, design)` prices every operator of a Workload on a design (`get_design` for the bundled
ones: fp16, figna-w4a16, anda-bfp-linear, harmonia; or a TOML/JSON file); `run(...)` is what `ridgeline accel`
does (designs compared with a baseline, an optional exploration); `explore` sweeps a design space and keeps
prefill and decode Pareto fronts apart; `to_prediction` and `result_json` turn results into the shapes the
roofline tables and records use; `hls_compare` estimates naive against explored HLS designs on an FPGA.
torch-free, like `specs` and `roofline`.
"""

from ridgeline.accel.costs import PEMode
from ridgeline.accel.design import Design, bundled_designs, design_from_dict, get_design, load_design_file
from ridgeline.accel.dse import DEFAULT_AXES, Exploration, apply, explore, pareto
from ridgeline.accel.operands import Operand, operand_of, parse_operand
from ridgeline.accel.fpga import FPGADevice, HLSPoint, fpga_device, hls_compare, naive, optimise, pe_cost
from ridgeline.accel.record import result_json, to_prediction
from ridgeline.accel.run import BASELINES, DESIGNS, AccelReport, design_precision, design_workload, ratios, run
from ridgeline.accel.simulate import AccelOp, AccelPhase, AccelResult, simulate
from ridgeline.accel.systolic import fold_cycles, sram_accesses

__all__ = ["AccelOp", "AccelPhase", "AccelReport", "AccelResult", "BASELINES", "DEFAULT_AXES", "DESIGNS", "Design",
           "Exploration", "FPGADevice", "HLSPoint", "Operand", "PEMode", "apply", "bundled_designs", "design_from_dict", "design_precision",
           "design_workload", "explore", "fold_cycles", "fpga_device", "get_design", "hls_compare", "load_design_file",
           "naive", "operand_of", "optimise", "pareto", "parse_operand", "pe_cost", "ratios", "result_json", "run", "simulate", "sram_accesses",
           "to_prediction"]
