"""Whole-model regressions: roofline.md's golden numbers, evaluation on a device, the memory verdict."""

import dataclasses

import pytest

from ridgeline.roofline.evaluate import evaluate, prediction_json
from ridgeline.roofline.workload import Options, build_workload
from ridgeline.specs.catalogue import catalogue_spec
from ridgeline.specs.device import get_device
from ridgeline.specs.scenario import Precision, Scenario

GOLDEN = Options(activation_traffic="block")  # roofline.md §6 conventions: a·s·(4h + 2f) per layer


def _oi(phase):
    return phase.flops / sum(phase.bytes_by_kind().values())


@pytest.mark.parametrize("model,fmt,gflop,mb,oi128,oi4096,pf128,pf4096", [
    ("qwen2.5-0.5b", "fp16", 1.000, 990, 1.01, 1.30, 86, 991),
    ("qwen2.5-0.5b", "q8_0", 1.000, 527, 1.90, 2.34, 152, 1132),
    ("llama-3.2-1b", "fp16", 2.49, 2477, 1.01, 1.16, 97, 1526),
    ("qwen2.5-1.5b", "fp16", 3.11, 3092, 1.01, 1.19, 103, 1380),
    ("qwen3-0.6b", "fp16", 1.22, 1207, 1.01, 1.29, 89, 1240),
    ("smollm2-1.7b", "fp16", 3.45, 3449, 1.00, 1.00, 114, 1509),
])
def test_golden_numbers(model, fmt, gflop, mb, oi128, oi4096, pf128, pf4096):
    spec = catalogue_spec(model)
    prec = Precision(fmt, "fp16", "fp16")
    w128 = build_workload(spec, Scenario(128, 1), prec, GOLDEN)
    w4096 = build_workload(spec, Scenario(4096, 1), prec, GOLDEN)
    assert w128.decode.flops / 1e9 == pytest.approx(gflop, rel=0.01)
    assert sum(w128.decode.bytes_by_kind().values()) / 1e6 == pytest.approx(mb, rel=0.01)
    assert _oi(w128.decode) == pytest.approx(oi128, abs=0.015)
    assert _oi(w4096.decode) == pytest.approx(oi4096, abs=0.015)
    assert _oi(w128.prefill) == pytest.approx(pf128, rel=0.02)
    assert _oi(w4096.prefill) == pytest.approx(pf4096, rel=0.02)


def test_decode_time_is_bandwidth_bound_on_a_cpu():
    spec = catalogue_spec("smollm2-135m")
    dev = get_device("epyc-zen4-2vcpu")
    p = evaluate(build_workload(spec, Scenario(128, 128), Precision("bf16")), dev)
    assert p.decode.bound == "memory" and p.prefill.bound == "compute"
    # a memory-bound step costs its bytes / bandwidth; only the fused softmax (no bytes) adds FLOPs / peak
    wl = build_workload(spec, Scenario(128, 128), Precision("bf16"))
    softmax = sum(op.count * op.flops[0] for op in wl.decode.ops if op.name == "softmax")
    expected = wl.decode.step_bytes()[0] / dev.bandwidth_Bps + softmax / dev.peak_flops["bf16"]
    assert p.decode.step_times_s[0] == pytest.approx(expected, rel=1e-9)
    assert p.decode.step_times_s[-1] > p.decode.step_times_s[0]  # the KV cache grows
    rec = prediction_json(p)
    tpt = rec["phases"]["decode"]["time_per_token_s"]
    assert tpt["first"] <= tpt["mean"] <= tpt["last"]
    assert rec["phases"]["decode"]["tokens_per_s"] == pytest.approx(128 / p.decode.time_s)
    assert rec["model"]["params"] == 134515008


def test_memory_verdict():
    spec = catalogue_spec("llama-3.1-70b")
    prec = Precision("bf16")
    w = build_workload(spec, Scenario(4096, 4096), prec)
    assert not evaluate(w, get_device("rtx-4090")).fits  # 141 GB of weights in 24 GB
    assert evaluate(w, get_device("h200")).fits
    tiny = dataclasses.replace(get_device("h200"), memory_bytes=1e6)
    assert not evaluate(build_workload(catalogue_spec("smollm2-135m"), Scenario(8, 8), prec), tiny).fits


def test_q4_k_m_recipe_matches_llama_cpp_anchor():
    # quantization.md: Llama-3.1-8B Q4_K_M is 4.8944 bpw
    spec = catalogue_spec("llama-3.1-8b")
    w = build_workload(spec, Scenario(1, 1), Precision("q4_k_m"))
    assert w.weights_bytes * 8 / spec.param_count() == pytest.approx(4.8944, abs=0.001)


def test_depth_truncation_scales_layer_terms():
    spec = catalogue_spec("smollm2-135m")
    full = build_workload(spec, Scenario(16, 4), Precision("bf16"))
    half = build_workload(spec.with_layers(15), Scenario(16, 4), Precision("bf16"))
    assert half.model.n_layers == 15
    assert half.kv_bytes == pytest.approx(full.kv_bytes / 2)
