"""ridgeline.accel: SCALE-Sim as the cycle oracle, the cost tables, a hand-counted GEMM, the Workload lowering,
design files and their errors, exploration and the tables.

Conventions checked by hand below: a fold of an m×k×n GEMM on an R×C array costs k + R + C − 2 cycles (os) or
2R + C + T − 2 (ws: T = m, is: T = n); SCALE-Sim reports the 0-based index of its last cycle (count − 1).
"""

from __future__ import annotations

import ast
import contextlib
import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ridgeline.accel import (bundled_designs, design_from_dict, design_workload, explore, fold_cycles, get_design,
                             load_design_file, pareto, run, simulate, sram_accesses, to_prediction)
from ridgeline.accel import costs
from ridgeline.accel.tiling import Operands, best_gemm
from ridgeline.accel.pricing import array_params, area_um2
from ridgeline.errors import RidgelineError
from ridgeline.roofline import Options, build_workload
from ridgeline.specs import Precision, Scenario, spec_from_config

SRC = Path(__file__).resolve().parents[1] / "src" / "ridgeline"

# 22 GEMM shapes (M, N, K, R, C): edges, partial folds, GEMVs, rectangular arrays
SHAPES = [(4, 4, 4, 2, 2), (16, 8, 12, 4, 4), (7, 9, 13, 4, 8), (1, 64, 32, 8, 8), (33, 17, 5, 8, 4),
          (1, 1, 1, 4, 4), (5, 3, 40, 4, 4), (40, 3, 5, 4, 4), (3, 40, 5, 4, 4), (12, 12, 12, 4, 4),
          (9, 9, 9, 8, 8), (64, 16, 8, 8, 8), (2, 30, 17, 4, 8), (31, 2, 19, 8, 4), (1, 48, 48, 8, 8),
          (48, 1, 48, 8, 8), (20, 20, 3, 4, 4), (6, 7, 8, 2, 4), (8, 6, 7, 4, 2), (17, 33, 9, 4, 4),
          (10, 1, 30, 4, 4), (24, 24, 24, 8, 8)]


def _tiny_model():
    return spec_from_config({"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 256,
                             "vocab_size": 256, "tie_word_embeddings": True}, "tiny")


def _design(**over) -> dict:
    """A plain design dict (FP16 array) with overrides at dotted paths."""
    d = {"name": "t", "clock_hz": 1e9, "array": {"rows": 2, "cols": 2},
         "pe": {"accumulator_bits": 32, "modes": [{"a": "fp16", "b": "fp16"}]},
         "buffers": {b: {"bytes": 1 << 20, "banks": 1, "bytes_per_cycle": 1e6} for b in ("input", "weight", "output")},
         "dram": {"bandwidth_Bps": 8e9, "pj_per_byte": 64.0}, "vector": {"lanes": 4},
         "formats": {"weights": "fp16", "kv": "fp16", "linear_acts": "fp16", "attention_acts": "fp16"}}
    for path, v in over.items():
        node = d
        *parts, last = path.split(".")
        for p in parts:
            node = node[p]
        node[last] = v
    return d


# ---------------------------------------------------------------------------------------------
# SCALE-Sim oracle


def _scalesim(tmp: Path, M: int, N: int, K: int, R: int, C: int, df: str, monkeypatch) -> tuple[int, list[float]]:
    """SCALE-Sim 3.0.0 on one GEMM (CALC bandwidth mode: no stalls): total cycles and the access report row."""
    ss = pytest.importorskip("scalesim.scale_sim", reason="scalesim (test extra) is the cycle oracle")
    from scalesim.memory import write_buffer

    # scalesim 3.0.0 calls int() on 1-element arrays, which numpy >= 2.4 refuses; returning the write
    # buffer's service cycles flat (same values) keeps its arithmetic and results unchanged
    orig = write_buffer.write_buffer.service_writes
    monkeypatch.setattr(write_buffer.write_buffer, "service_writes", lambda self, *a, **k: orig(self, *a, **k).reshape(-1))
    d = tmp / f"{M}_{N}_{K}_{R}_{C}_{df}"
    d.mkdir()
    (d / "c.cfg").write_text(
        "[general]\nrun_name = r\n\n[architecture_presets]\n"
        f"ArrayHeight: {R}\nArrayWidth: {C}\nIfmapSramSzkB: 1024\nFilterSramSzkB: 1024\nOfmapSramSzkB: 1024\n"
        "IfmapOffset: 0\nFilterOffset: 10000000\nOfmapOffset: 20000000\nBandwidth : 10\n"
        f"Dataflow : {df}\nMemoryBanks: 1\nReadRequestBuffer: 32\nWriteRequestBuffer: 32\n\n"
        "[layout]\nIfmapCustomLayout: False\nIfmapSRAMBankBandwidth: 10\nIfmapSRAMBankNum: 10\n"
        "IfmapSRAMBankPort: 2\nFilterCustomLayout: False\nFilterSRAMBankBandwidth: 10\nFilterSRAMBankNum: 10\n"
        "FilterSRAMBankPort: 2\n\n[sparsity]\nSparsitySupport : false\nSparseRep : ellpack_block\n"
        "OptimizedMapping : false\nBlockSize : 8\nRandomNumberGeneratorSeed : 40\n\n"
        "[run_presets]\nInterfaceBandwidth: CALC\nUseRamulatorTrace: False\n")
    (d / "t.csv").write_text(f"Layer, M, N, K,\ng0, {M}, {N}, {K},\n")
    (d / "l.csv").write_text("Layer name,\n")
    with contextlib.redirect_stdout(io.StringIO()):
        sim = ss.scalesim(save_disk_space=True, verbose=False, config=str(d / "c.cfg"), topology=str(d / "t.csv"),
                          layout=str(d / "l.csv"), input_type_gemm=True)
        sim.run_scale(top_path=str(d))
    compute = (d / "r" / "COMPUTE_REPORT.csv").read_text().splitlines()[1].split(",")
    detail = (d / "r" / "DETAILED_ACCESS_REPORT.csv").read_text().splitlines()[1].split(",")
    return int(compute[2]), [float(x) for x in detail[:-1]]  # "Total Cycles" (compute, no stalls in CALC mode)


@pytest.mark.parametrize("df", ["os", "ws", "is"])
def test_cycles_and_sram_reads_equal_scalesim(df, tmp_path, monkeypatch):
    for M, N, K, R, C in SHAPES:
        cycles, detail = _scalesim(tmp_path, M, N, K, R, C, df, monkeypatch)
        ours = fold_cycles(M, K, N, R, C, df)
        assert ours == cycles + 1, (M, N, K, R, C, df)  # SCALE-Sim: 0-based index of the last cycle
        a, b, c_w, c_r = sram_accesses(M, K, N, R, C, df)
        assert (a, b) == (detail[3], detail[6]), (M, N, K, R, C, df)  # SRAM IFMAP / Filter reads
        folds = math.ceil(M / R) * math.ceil(N / C) if df == "os" else 0
        assert c_w == detail[9] - folds * (R + C), (M, N, K, R, C, df)  # os: SCALE-Sim adds R + C per fold
        # whole-GEMM buffers: A and B cross DRAM once, as in our tiled model with one tile; SCALE-Sim drains
        # every row-fold's partial sums of ws/is to DRAM, where we accumulate them in the output buffer
        psums = 1 if df == "os" else math.ceil(K / R)
        assert (detail[12], detail[15], detail[18]) == (M * K, K * N, M * N * psums)


def test_systolic_mode_of_the_tiled_model_is_scalesim_when_everything_fits():
    # one tile, DRAM effectively infinite: the tiled model's cycles are SCALE-Sim's folds (its count + 1)
    for M, N, K, R, C in SHAPES[:8]:
        for df in ("os", "ws", "is"):
            d = design_from_dict(_design(**{"array.rows": R, "array.cols": C, "dataflows": [df],
                                            "dram.bandwidth_Bps": 1e18}))
            g = best_gemm(M, K, N, Operands(2, 2, 2, 4, 1, 2.0), array_params(d), tile=(M, K, N))
            assert g.compute_cycles == fold_cycles(M, K, N, R, C, df) == pytest.approx(g.cycles)
            searched = best_gemm(M, K, N, Operands(2, 2, 2, 4, 1, 2.0), array_params(d))
            assert searched.cycles <= g.cycles


# ---------------------------------------------------------------------------------------------
# cost tables


def test_costs_reproduce_the_cited_table_values():
    assert costs.int_mult(8, 8) == pytest.approx((0.2, 282.0))
    assert costs.int_mult(32, 32) == pytest.approx((3.1, 3495.0))
    for bits, e, a in ((8, 0.03, 36), (16, 0.05, 67), (32, 0.1, 137)):
        assert costs.int_add(bits) == pytest.approx((e, a))
    assert costs.fp_mult(11) == pytest.approx((1.1, 1640.0)) and costs.fp_mult(24) == pytest.approx((3.7, 7700.0))
    assert costs.fp_add(11) == pytest.approx((0.4, 1360.0)) and costs.fp_add(24) == pytest.approx((0.9, 4184.0))
    for kib, pj64 in ((8, 10.0), (32, 20.0), (1024, 100.0)):  # Horowitz 64-bit SRAM reads
        assert costs.sram_pj_per_byte(kib * 1024) * 8 == pytest.approx(pj64)
    assert costs.dram_pj_per_byte() == 64.0  # LPDDR4 8 pJ/bit
    assert costs.table()["eyeriss"]["mac16_pj"] == 2.20
    # in between: a power law (geometric mean of the neighbours at the geometric mean size)
    assert costs.sram_pj_per_byte(16 * 1024) * 8 == pytest.approx(math.sqrt(10 * 20))
    # composed MACs: fp16×fp16 into fp32 = Horowitz fp16 mult + fp32 add
    from ridgeline.accel.costs import PEMode
    from ridgeline.accel.operands import parse_operand as op
    assert costs.mac_energy(PEMode(op("fp16"), op("fp16")), 32) == pytest.approx(1.1 + 0.9)
    assert costs.mac_energy(PEMode(op("int8"), op("int8")), 32) == pytest.approx(0.2 + 0.1)
    bfp = costs.mac_energy(PEMode(op("bfp8"), op("int4")), 32, block=32)
    assert bfp == pytest.approx(costs.int_mult(9, 4)[0] + 0.1 + (0.03 + 2 * 0.1) / 32)


def test_eyeriss_example_energies_price_a_gemm_by_hand():
    # Accelergy's Eyeriss-like table: 2.20 pJ per 16-bit MAC, 18.8 pJ per 16-bit global-buffer word, 8 pJ/bit DRAM
    d = design_from_dict(_design(**{"energy": {"mac_pj": 2.2, "input_pj_per_byte": 9.4, "weight_pj_per_byte": 9.4,
                                               "output_pj_per_byte": 9.4}, "dataflows": ["os"],
                                    "pe.accumulator_bits": 16}))
    g = best_gemm(4, 4, 4, Operands(2, 2, 2, 2, 1, 2.2), array_params(d), tile=(4, 4, 4))
    sram_bytes, dram_bytes = sum(g.sram), sum(g.dram)
    assert g.energy_pj == pytest.approx(64 * 2.2 + sram_bytes * 9.4 + dram_bytes * 64.0)
    assert dram_bytes == 3 * 16 * 2


def test_hand_counted_tiny_gemm():
    # 4×4×4 fp16 GEMM on a 2×2 output-stationary array; 8 B/cycle of DRAM; buffers hold everything
    d = design_from_dict(_design(**{"dataflows": ["os"]}))
    g = best_gemm(4, 4, 4, Operands(2, 2, 2, 4, 1, 2.0), array_params(d), tile=(4, 4, 4))
    # 4 folds (2 row × 2 column) of k + R + C − 2 = 6 cycles
    assert g.compute_cycles == 24
    # A, B, C cross DRAM once: 16 elements × 2 B each
    assert g.dram == (32.0, 32.0, 0.0, 32.0)
    # input buffer: array reads m·k·⌈n/C⌉ = 32 elements (64 B) + 32 B filled from DRAM; weight likewise;
    # output: 16 partial sums written at 4 B + 32 B drained to DRAM
    assert g.sram == (96.0, 96.0, 96.0)
    # double-buffered: max(24 compute, 96 B / 8 B = 12 transfer) + the first tiles' loads and the last store (12)
    assert g.cycles == 24 + 12
    # without double buffering: compute + all transfers, serially
    nodb = design_from_dict(_design(**{"dataflows": ["os"], "double_buffer": False}))
    assert best_gemm(4, 4, 4, Operands(2, 2, 2, 4, 1, 2.0), array_params(nodb), tile=(4, 4, 4)).cycles == 24 + 12
    # the search finds a mapping at least as fast (smaller first tiles shorten the prologue)
    assert best_gemm(4, 4, 4, Operands(2, 2, 2, 4, 1, 2.0), array_params(d)).cycles <= g.cycles
    assert g.energy == pytest.approx((64 * 2.0, 288 * costs.sram_pj_per_byte(1 << 20), 96 * 64.0))


def test_tiling_traffic_follows_loop_order_and_spills():
    # weight buffer too small for B: B is tiled along n; A must be re-read per n tile unless n is outermost... or
    # A fits whole; output tiles spill when k is not innermost
    d = design_from_dict(_design(**{"dataflows": ["os"], "buffers.weight.bytes": 2 * 16 * 8 * 2,
                                    "array.rows": 8, "array.cols": 8}))
    g = best_gemm(16, 16, 64, Operands(2, 2, 2, 4, 1, 2.0), array_params(d))
    a, b, cr, cw = g.dram
    assert b == 16 * 64 * 2  # B streamed once
    assert a in (16 * 16 * 2, 16 * 16 * 2 * math.ceil(64 / g.tile[2]))
    assert cw == 16 * 64 * 2 + cr


def test_search_beats_every_fixed_dataflow():
    for shape in ((1, 576, 1536), (512, 576, 1536), (64, 64, 4096)):
        best = None
        for df in ("os", "ws", "is"):
            d = design_from_dict(_design(**{"array.rows": 16, "array.cols": 32, "dataflows": [df],
                                            "buffers.input.bytes": 65536, "buffers.weight.bytes": 65536,
                                            "buffers.output.bytes": 65536}))
            c = best_gemm(*shape, Operands(2, 2, 2, 4, 1, 2.0), array_params(d)).cycles
            best = c if best is None else min(best, c)
        free = design_from_dict(_design(**{"array.rows": 16, "array.cols": 32, "buffers.input.bytes": 65536,
                                           "buffers.weight.bytes": 65536, "buffers.output.bytes": 65536}))
        assert best_gemm(*shape, Operands(2, 2, 2, 4, 1, 2.0), array_params(free)).cycles == best


# ---------------------------------------------------------------------------------------------
# workload lowering


def test_workload_shapes_match_flops():
    w = build_workload(_tiny_model(), Scenario(8, 3), Precision(), Options(causal=False))
    for ph in w.phases:
        for op in ph.ops:
            if op.shape is None:
                continue
            s = op.shape
            prod = 2.0 * s.batch * np.asarray(s.m) * np.asarray(s.k) * np.asarray(s.n)
            assert np.allclose(np.broadcast_to(prod, op.flops.shape), op.flops), op.name


def test_decode_attention_macs_and_kv_bytes_equal_the_workload():
    # one new token per step: no causal waste; Harmonia tiers: the KV bytes read are the roofline's exactly
    m = _tiny_model()
    d = get_design("harmonia")
    w = build_workload(m, Scenario(300, 40), Precision(weights="int4_g128", acts="bfp32m8", kv="harmonia"))
    r = simulate(w, d)
    ops = {o.name: o for o in r.decode.ops if o.group.startswith("layers")}
    assert ops["qk"].macs == pytest.approx(ops["qk"].flops / 2)
    assert ops["av"].macs == pytest.approx(ops["av"].flops / 2)
    kv = w.decode.bytes_by_kind()["kv_read"]
    assert ops["qk"].dram["kv_read"] + ops["av"].dram["kv_read"] == pytest.approx(kv)
    # decode GEMVs stream each weight exactly once per step
    for name in ("q_proj", "gate_proj", "down_proj"):
        wop = next(o for o in w.decode.ops if o.name == name)
        assert ops[name].dram["weights"] == pytest.approx(wop.total_bytes(w.decode.steps)["weights"])


def test_prefill_attention_is_causal_by_tiles():
    w = build_workload(_tiny_model(), Scenario(256, 0), Precision(weights="fp16", acts="fp16", kv="fp16"))
    r = simulate(w, get_design("fp16"))
    qk = next(o for o in r.prefill.ops if o.name == "qk")
    # tiles skip the future but compute the diagonal tiles whole: between the causal pairs and the full square
    full = 2 * 4 * 256 * 256 * 32  # layers × heads × s² × head_dim
    assert qk.flops / 2 <= qk.macs < 0.6 * full


def test_results_render_in_the_device_tables():
    from rich.console import Console

    from ridgeline.report import accel_operator_table as operator_table, accel_phase_table as phase_table
    from ridgeline.report import operator_table as roofline_ops, summary_table

    w = design_workload(_tiny_model(), Scenario(16, 4), get_design("harmonia"))
    r = simulate(w, get_design("harmonia"))
    con = Console(width=240, record=True, file=io.StringIO())
    p = to_prediction(r)
    for t in (summary_table(p), roofline_ops(p, "decode"), phase_table(r), operator_table(r, "prefill")):
        con.print(t)
    text = con.export_text()
    assert "harmonia" in text and "q_proj" in text and "bfp8×int4" in text
    assert p.prefill.time_s == pytest.approx(r.prefill.time_s)


# ---------------------------------------------------------------------------------------------
# designs and bad input


def test_bundled_designs_have_a_source_for_every_parameter_and_equal_area():
    import tomllib
    from importlib import resources

    assert set(bundled_designs()) >= {"fp16", "figna-w4a16", "anda-bfp-linear", "harmonia"}
    areas = {}
    for name in bundled_designs():
        raw = tomllib.loads(resources.files("ridgeline.accel").joinpath(f"data/designs/{name}.toml").read_text())

        def leaves(node, prefix=""):
            for k, v in node.items():
                if k in ("name", "description", "sources"):
                    continue
                path = f"{prefix}{k}"
                yield from leaves(v, path + ".") if isinstance(v, dict) else [path]
        missing = [p for p in leaves(raw) if p not in raw["sources"]]
        assert not missing, (name, missing)
        areas[name] = sum(area_um2(get_design(name)).values())
    for name in ("figna-w4a16", "anda-bfp-linear", "harmonia"):
        assert abs(areas[name] / areas["fp16"] - 1) < 0.015, name


@pytest.mark.parametrize("over, needle", [
    ({"array.rows": "32"}, "'array.rows' must be a positive integer"),
    ({"dram.bandwidth_Bps": 0}, "'dram.bandwidth_Bps' must be positive"),
    ({"dram.bandwidth_Bps": float("inf")}, "'dram.bandwidth_Bps' must be a finite number"),
    ({"buffers.weight.bytes_per_cycle": float("nan")}, "'buffers.weight.bytes_per_cycle' must be a finite number"),
    ({"pe.modes": [{"a": "fp16", "b": "fp13"}]}, "'pe.modes[0].b': unknown operand type"),
    ({"formats.kv": "kivi9"}, "'formats.kv'"),
    ({"dataflows": ["rs"]}, "'dataflows'"),
    ({"energy": {"mac": 1.0}}, "unknown field 'energy.mac'"),
])
def test_malformed_designs_name_the_field(over, needle):
    with pytest.raises(RidgelineError) as e:
        design_from_dict(_design(**over), "bad.toml")
    assert needle in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("bad.toml")


def test_missing_field_and_files(tmp_path):
    d = _design()
    del d["array"]["cols"]
    with pytest.raises(RidgelineError, match="missing field 'array.cols'"):
        design_from_dict(d, "x.toml")
    bad = tmp_path / "d.toml"
    bad.write_text('name = "x"\nclock_hz = inf\n')
    with pytest.raises(RidgelineError, match="'clock_hz' must be a finite number"):
        load_design_file(bad)
    bad.write_text("name = [")
    with pytest.raises(RidgelineError, match="not valid TOML"):
        load_design_file(bad)
    with pytest.raises(RidgelineError, match="unknown accelerator design"):
        get_design("tpu-v9")
    with pytest.raises(RidgelineError, match="positive finite"):
        get_design("fp16").with_(dram_Bps=0.0)


def test_a_design_that_cannot_hold_a_tile():
    d = design_from_dict(_design(**{f"buffers.{b}.bytes": 16 for b in ("input", "weight", "output")}))
    w = build_workload(_tiny_model(), Scenario(8, 2), Precision(weights="fp16", acts="fp16", kv="fp16"))
    with pytest.raises(RidgelineError) as e:
        simulate(w, d)
    assert "fits the buffers" in str(e.value) and "\n" not in str(e.value)


def test_a_format_pair_the_pe_does_not_take():
    w = build_workload(_tiny_model(), Scenario(8, 2), Precision(weights="fp16", acts="bfp32m8", kv="harmonia"))
    with pytest.raises(RidgelineError, match=r"no PE mode for bfp8 × fp16 \((lm_head|q_proj)"):
        simulate(w, get_design("harmonia"))
    d = design_from_dict(_design(**{"formats.linear_acts": "bfp32m8"}))
    with pytest.raises(RidgelineError, match="no \\[converter\\]"):
        simulate(w, d)


# ---------------------------------------------------------------------------------------------
# exploration, the run, layering


def test_pareto_front_by_hand():
    v = np.array([[1, 5, 1], [2, 2, 1], [3, 3, 1], [5, 1, 1], [1, 5, 2]])
    assert list(pareto(v)) == [0, 1, 3]


def test_explore_keeps_prefill_and_decode_fronts_apart():
    axes = {"rows": (8, 32), "cols": (16, 64), "kv": ("harmonia", "bfp32m8")}
    ex = explore(get_design("harmonia"), _tiny_model(), Scenario(64, 16), axes)
    assert len(ex.points) == 8 and all(p.error is None for p in ex.points)
    for phase, (lat, en) in (("prefill", ("prefill_s", "prefill_j")),
                             ("decode", ("decode_s_per_token", "decode_j_per_token"))):
        front = [ex.points[i].metrics for i in ex.fronts[phase]]
        assert front
        for p in ex.points:
            m = p.metrics
            dominated = any(f[lat] <= m[lat] and f[en] <= m[en] and f["area_mm2"] <= m["area_mm2"]
                            and (f[lat], f[en], f["area_mm2"]) != (m[lat], m[en], m["area_mm2"]) for f in front)
            assert dominated or m in front


def test_run_compares_with_the_baseline():
    rep = run(_tiny_model(), "64:8")
    assert [c["design"] for c in rep.comparisons] == ["fp16", "figna-w4a16", "anda-bfp-linear", "harmonia"]
    assert rep.comparisons[0]["total"]["speedup"] == pytest.approx(1.0)
    h = rep.comparisons[-1]
    assert h["prefill"]["speedup"] > 1 and h["total"]["energy_efficiency"] > 1
    base, harm = rep.results[0], rep.results[-1]
    assert h["total"]["area_efficiency"] == pytest.approx(base.total_s / harm.total_s * base.area_mm2 / harm.area_mm2)


def test_accel_never_imports_torch():
    allowed = ("ridgeline.accel", "ridgeline.roofline", "ridgeline.specs", "ridgeline.errors", "ridgeline.io")
    for path in (SRC / "accel").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                assert not n.startswith("torch"), (path.name, n)
                if n.startswith("ridgeline"):
                    assert n.startswith(allowed), (path.name, n)
    code = ("import sys, ridgeline.accel as a; from ridgeline.specs.scenario import Scenario; "
            "r = a.run('smollm2-135m', '32:4', explore_points=2); assert 'torch' not in sys.modules, 'torch'")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(SRC.parent), "PATH": ""})


# ---------------------------------------------------------------------------------------------
# FPGA / HLS estimate, outputs


def test_hls_naive_latency_by_hand():
    from ridgeline.accel.fpga import fpga_device, naive, pe_cost

    dev, pe = fpga_device("zcu102"), pe_cost("fp16xfp16")
    n = naive(64, 64, 64, pe, dev)
    assert n.tile == (64, 64, 64) and n.unroll == (1, 1, 1) and n.pipelined == "none"
    depth = 4 + 8 + 2  # multiply, one add (no tree), BRAM read + write
    bpc = 19.2e9 / 200e6
    load = (64 * 64 * 16 * 2) / 8 / bpc  # A and B tiles, fp16
    store = 64 * 64 * 2 / bpc
    assert n.cycles == pytest.approx(64 ** 3 * depth + load + store)


def test_hls_search_respects_the_budget_and_breaks_the_recurrence():
    from ridgeline.accel.fpga import fpga_device, naive, optimise, pe_cost

    dev = fpga_device("kv260")
    for name in ("fp16xfp16", "int8xint8", "bfp8xint4"):
        pe = pe_cost(name)
        b = optimise(256, 512, 512, pe, dev)
        assert b.dsp <= dev.dsp and b.lut <= dev.lut and b.bram36 <= dev.bram36
        assert b.ii == 1  # a float accumulation pipelined over n (distance Tn/Un) or an integer add over k
        lanes = math.prod(b.unroll)
        assert b.cycles >= 256 * 512 * 512 / lanes  # never faster than its lanes allow
        assert naive(256, 512, 512, pe, dev).cycles / b.cycles > 100


def test_hls_compare_on_a_workload():
    from ridgeline.accel.fpga import hls_compare

    w = build_workload(_tiny_model(), Scenario(64, 4), Precision(weights="fp16", acts="fp16", kv="fp16"))
    r = hls_compare(w, "zcu102", "bfp8xint4", "prefill")
    assert {o["op"] for o in r["ops"]} >= {"q_proj", "down_proj", "lm_head"}
    assert r["speedup"] == pytest.approx(r["naive_s"] / r["optimised_s"]) and r["speedup"] > 1
    with pytest.raises(RidgelineError, match="unknown FPGA"):
        hls_compare(w, "u250")


def test_outputs_are_written(tmp_path):
    from ridgeline.report import accel_compare_table as compare_table, write_accel_outputs as write_outputs

    rep = run(_tiny_model(), "32:4", designs=("fp16", "harmonia"), explore_points=6,
              axes={"rows": (8, 16), "cols": (16, 32), "kv": ("harmonia",)})
    files = write_outputs(rep, tmp_path)
    names = {f.name for f in files}
    assert {"accel.json", "pareto_prefill.png", "pareto_decode.svg", "accel_roofline.png"} <= names
    import json
    rec = json.loads((tmp_path / "accel.json").read_text())
    assert rec["exploration"]["points"] == 4 and rec["designs"][1]["design"]["name"] == "harmonia"
    con_text = io.StringIO()
    from rich.console import Console
    Console(file=con_text, width=200).print(compare_table(rep))
    assert "harmonia" in con_text.getvalue()


def test_cli_accel(tmp_path):
    from typer.testing import CliRunner

    from ridgeline.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["accel", "-m", "smollm2-135m", "-s", "64:4", "-d", "fp16,harmonia", "--explore", "4",
                            "--axes", "rows=8,16;cols=32,64", "--out", str(tmp_path), "--per-operator",
                            "--fpga", "kv260"])
    assert r.exit_code == 0, r.output
    assert "harmonia" in r.output and "q_proj" in r.output and (tmp_path / "pareto_decode.png").exists()
    assert "HLS estimate on AMD Kria KV260" in r.output
    bad = runner.invoke(app, ["accel", "-d", "tpu-v9"])
    assert bad.exit_code == 2 and "unknown accelerator design" in bad.output
    bad = runner.invoke(app, ["accel", "--axes", "rows"])
    assert bad.exit_code == 2 and "--axes" in bad.output


def test_a_prompt_compressor_runs_on_the_array_and_reads_the_whole_prompt():
    """The compressor's layers are the target's GEMMs and attention: lowered onto the PE array like them (shapeless,
    they used to be priced as elementwise work on the vector unit, which made SCRL ×0.13 on Harmonia)."""
    from dataclasses import replace

    from ridgeline.accel import design_precision
    from ridgeline.roofline import compressed
    from ridgeline.specs import load_spec

    spec, d = load_spec("smollm2-135m"), get_design("harmonia")
    prec = design_precision(d)
    sc = Scenario(2048, 8)
    base = simulate(build_workload(spec, sc, prec), d)
    csc, comp = compressed(sc, spec, 2.0, "self:4")
    tech = simulate(build_workload(spec, csc, prec, None, comp), d)
    ops = {o.name: o for o in tech.prefill.ops}
    for name in ("compressor:q_proj", "compressor:gate_proj", "compressor:down_proj", "compressor:qk", "compressor:av"):
        assert ops[name].unit == "array" and ops[name].macs > 0, name
    assert ops["compressor:scorer_head"].unit == "vector"  # fp32 weights: no PE mode takes them
    # 4 layers over the full 2048 tokens cost what the target's same layers cost over the same 2048 tokens
    target = {o.name: o for o in base.prefill.ops}
    for name in ("gate_proj", "qk"):
        assert ops[f"compressor:{name}"].macs == pytest.approx(target[name].macs * 4 / 30, rel=1e-6), name
    one = replace(sc, prompt=1024)  # what the target prefills after 2x compression
    assert tech.prefill.time_s < base.prefill.time_s
    assert tech.prefill.time_s > simulate(build_workload(spec, one, prec), d).prefill.time_s
