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


# one layer, one KV head of 32 dims: a token's K (or V) row is 32 numbers
ONE_HEAD = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 1,
            "num_key_value_heads": 1, "intermediate_size": 64, "vocab_size": 64}
FP16_ROW, KIVI2_ROW = 64, 12  # bytes of one row: fp16; KIVI-2 (2-bit codes + fp16 scale and zero per 32)


def _op(phase, name):
    return next(o for o in phase.ops if o.name == name)


@pytest.mark.parametrize("batch", [1, 2])
def test_kivi_decode_traffic_by_hand(batch):
    from ridgeline.specs.model import spec_from_config

    spec = spec_from_config(ONE_HEAD)
    w = build_workload(spec, Scenario(127, 3, batch), Precision("bf16", "bf16", "kivi2"))
    pre, dec = w.prefill, w.decode
    # prefill: 127 tokens, all in the fp16 residual (keys: no chunk of 128 yet; values: the last 128)
    for name in ("k_proj", "v_proj"):
        assert _op(pre, name).bytes["kv_write"].tolist() == [batch * 127 * FP16_ROW]
    assert _op(pre, "qk").bytes["kv_read"].tolist() == [batch * 127 * FP16_ROW]
    # decode steps read 128, 129, 130 tokens. Keys: the 128th completes a chunk (128 quantized, written
    # then), later keys join the fp16 tail. Values: the last 128 fp16, older ones quantized as they age out.
    assert (_op(dec, "qk").bytes["kv_read"] / batch).tolist() == [
        128 * KIVI2_ROW, 128 * KIVI2_ROW + FP16_ROW, 128 * KIVI2_ROW + 2 * FP16_ROW]
    assert (_op(dec, "av").bytes["kv_read"] / batch).tolist() == [
        128 * FP16_ROW, KIVI2_ROW + 128 * FP16_ROW, 2 * KIVI2_ROW + 128 * FP16_ROW]
    assert (_op(dec, "k_proj").bytes["kv_write"] / batch).tolist() == [128 * KIVI2_ROW, FP16_ROW, FP16_ROW]
    assert (_op(dec, "v_proj").bytes["kv_write"] / batch).tolist() == [
        FP16_ROW, FP16_ROW + KIVI2_ROW, FP16_ROW + KIVI2_ROW]
    kinds = dec.bytes_by_kind()
    assert kinds["kv_read"] == batch * (3 * 128 * KIVI2_ROW + 3 * FP16_ROW + 3 * 128 * FP16_ROW + 3 * KIVI2_ROW)
    assert kinds["kv_write"] == batch * (128 * KIVI2_ROW + 2 * FP16_ROW + 3 * FP16_ROW + 2 * KIVI2_ROW)
    # memory at 130 tokens: keys 128 quantized + 2 fp16, values 2 quantized + 128 fp16
    assert w.kv_bytes == batch * (130 * KIVI2_ROW + 130 * FP16_ROW)
    assert w.kv_bytes_per_token == 2 * KIVI2_ROW  # the long-context cost of one more token
    # attention FLOPs do not depend on the KV format
    bf16 = build_workload(spec, Scenario(127, 3, batch), Precision("bf16", "bf16", "bf16"))
    assert dec.flops == bf16.decode.flops and pre.flops == bf16.prefill.flops


def test_harmonia_decode_traffic_by_hand():
    from ridgeline.specs.model import spec_from_config

    spec = spec_from_config(ONE_HEAD)
    bfp8, bfp4 = 37, 21  # bytes of a row: 32 × (sign + 8 or 4 mantissa bits) + an 8-bit shared exponent
    w = build_workload(spec, Scenario(159, 2), Precision("bf16", "bf16", "harmonia"))
    dec = w.decode
    # step 1 holds 160 tokens, all sinks (32) or recent (128); step 2: token 33 ages out to 4 bits
    for name in ("k_proj", "v_proj"):
        assert _op(dec, name).bytes["kv_write"].tolist() == [bfp8, bfp8 + bfp4]
    assert _op(dec, "qk").bytes["kv_read"].tolist() == [160 * bfp8, 160 * bfp8 + bfp4]
    assert w.kv_bytes == 2 * (160 * bfp8 + bfp4)


def test_kivi_with_a_sliding_window_holds_the_window():
    from ridgeline.specs.model import spec_from_config

    spec = spec_from_config(ONE_HEAD).with_window(200)  # the cache holds 199 tokens
    w = build_workload(spec, Scenario(300, 1), Precision("bf16", "bf16", "kivi2"))
    # 199 held: keys 128 quantized + 71 fp16; values 71 quantized + 128 fp16
    assert w.kv_bytes == 199 * KIVI2_ROW + 199 * FP16_ROW
    # the decode step reads 199 cached + 1 new: keys 128 + 72, values 72 + 128
    assert _op(w.decode, "qk").bytes["kv_read"].tolist() == [128 * KIVI2_ROW + 72 * FP16_ROW]
