"""The `ridgeline` command line: bad input gives one `error:` line and exit code 2, good input the contract."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ridgeline import cli
from ridgeline.cli import app

SMOL = "smollm2-135m"
CPU = "epyc-zen4-2vcpu"

TINY_CONFIG = {
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}

TINY_DEVICE = {
    "id": "tiny", "name": "Tiny Board", "kind": "soc", "memory_bytes": 1e6, "bandwidth_Bps": 1e9,
    "peak_flops": {"fp32": 1e10, "bf16": 2e10},
    "provenance": {"kind": "theoretical", "source": "test", "date": "2025-01"},
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No user state leaks in (saved devices), and tables are wide enough that ids are not cut."""
    monkeypatch.setenv("RIDGELINE_HOME", str(tmp_path / "ridgeline-home"))
    monkeypatch.setattr(cli.console, "_width", 240)


def run(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def ok(*args: str):
    result = run(*args)
    assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)
    return result


def assert_one_line_error(result, *needles: str) -> str:
    """Exit 2, stderr is exactly one line starting with `error:` naming every needle, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    err = result.stderr
    assert "Traceback" not in result.output and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def no_tmp_left(folder: Path) -> None:
    stray = [p.name for p in folder.rglob("*") if ".tmp" in p.name]
    assert not stray, stray


# ---------------------------------------------------------------------------------------------
# bad input


def _gguf_writer(path: Path, n_layers: int = 2):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n_layers)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_feed_forward_length(128)
    w.add_context_length(512)
    w.add_vocab_size(256)
    return w


def _write_gguf(path: Path) -> Path:
    """A complete tiny llama GGUF: every tensor ridgeline expects, f32 zeros."""
    w = _gguf_writer(path)
    z = lambda *shape: np.zeros(shape, dtype=np.float32)
    w.add_tensor("token_embd.weight", z(256, 64))
    for i in range(2):
        for name, shape in (("attn_norm", (64,)), ("ffn_norm", (64,)), ("attn_q", (64, 64)), ("attn_k", (32, 64)),
                            ("attn_v", (32, 64)), ("attn_output", (64, 64)), ("ffn_gate", (128, 64)),
                            ("ffn_up", (128, 64)), ("ffn_down", (64, 128))):
            w.add_tensor(f"blk.{i}.{name}.weight", z(*shape))
    w.add_tensor("output_norm.weight", z(64))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def files(tmp_path, tiny_model_dir):
    """Bad (and a few good) inputs on disk."""
    f = {"tiny_dir": tiny_model_dir}
    (f_cfg := tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    f["config"] = f_cfg
    missing = {k: v for k, v in TINY_CONFIG.items() if k != "hidden_size"}
    (f_missing := tmp_path / "missing.json").write_text(json.dumps(missing))
    f["missing"] = f_missing
    (f_neg := tmp_path / "negative.json").write_text(json.dumps({**TINY_CONFIG, "hidden_size": -64}))
    f["negative"] = f_neg
    (f_text := tmp_path / "notes.txt").write_text("this is not json {")
    f["not_json"] = f_text
    (f_empty := tmp_path / "empty.json").write_text("")
    f["empty"] = f_empty
    (f_bin := tmp_path / "blob.bin").write_bytes(bytes([0xFF, 0xFE, 0x00, 0x80]) + bytes(range(256)) * 8)
    f["binary"] = f_bin
    (f_dir := tmp_path / "no_config").mkdir()
    (f_dir / "README.md").write_text("weights elsewhere")
    f["no_config_dir"] = f_dir
    rng = np.random.default_rng(0)
    (f_rand := tmp_path / "random.gguf").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    f["random_gguf"] = f_rand
    full = _write_gguf(tmp_path / "full.gguf.src")
    (f_trunc := tmp_path / "truncated.gguf").write_bytes(full.read_bytes()[:120])
    f["truncated_gguf"] = f_trunc
    (f_toml := tmp_path / "devices.toml").write_text('id = "x"\nname = \n')
    f["bad_toml"] = f_toml
    (f_djson := tmp_path / "devices.json").write_text('{"id": "x", ')
    f["bad_device_json"] = f_djson
    (f_dneg := tmp_path / "negbw.json").write_text(json.dumps({**TINY_DEVICE, "bandwidth_Bps": -1}))
    f["negative_bandwidth"] = f_dneg
    return f


BAD = {
    # name: (args with {file} placeholders, needles in the error line)
    "missing field": (["analyze", "-m", "{missing}", "-d", CPU], ["'hidden_size'", "missing"]),
    "negative field": (["analyze", "-m", "{negative}", "-d", CPU], ["'hidden_size'", "-64"]),
    "unknown device": (["analyze", "-m", SMOL, "-d", "rtx-309"], ["'rtx-309'", "rtx-3090"]),
    "bad scenario": (["analyze", "-m", SMOL, "-d", CPU, "--scenario", "0:-3"], ["'0:-3'"]),
    "scenario word": (["analyze", "-m", SMOL, "-d", CPU, "--scenario", "MIDDLE"], ["'MIDDLE'", "SISO"]),
    "non-JSON file": (["analyze", "-m", "{not_json}", "-d", CPU], ["notes.txt", "not valid JSON"]),
    "unknown format": (["analyze", "-m", SMOL, "-d", CPU, "--weights", "q9_9"], ["'q9_9'"]),
    "block does not divide row": (["analyze", "-m", SMOL, "-d", CPU, "--weights", "q4_k"], ["576", "q4_k", "256"]),
    "unknown KV format": (["analyze", "-m", SMOL, "-d", CPU, "--kv", "fp9"], ["'fp9'"]),
    "empty file": (["analyze", "-m", "{empty}", "-d", CPU], ["empty.json"]),
    "binary file": (["analyze", "-m", "{binary}", "-d", CPU], ["blob.bin", "binary"]),
    "folder without config": (["analyze", "-m", "{no_config_dir}", "-d", CPU], ["no_config", "config.json"]),
    "random .gguf": (["analyze", "-m", "{random_gguf}", "-d", CPU], ["random.gguf", "GGUF"]),
    "truncated .gguf": (["analyze", "-m", "{truncated_gguf}", "-d", CPU], ["truncated.gguf", "GGUF"]),
    "unknown model": (["analyze", "-m", "smollm2-135", "-d", CPU], ["'smollm2-135'", "smollm2-135m"]),
    "batch 0": (["analyze", "-m", SMOL, "-d", CPU, "--batch", "0"], ["batch"]),
    "layers 0": (["analyze", "-m", SMOL, "-d", CPU, "--layers", "0"], ["layers", "0"]),
    "bad option value": (["analyze", "-m", SMOL, "-d", CPU, "--attention", "sparse"], ["'sparse'", "fused"]),
    "malformed device TOML": (["analyze", "-m", SMOL, "-d", CPU, "--device-file", "{bad_toml}"],
                              ["devices.toml", "TOML"]),
    "malformed device JSON": (["analyze", "-m", SMOL, "-d", CPU, "--device-file", "{bad_device_json}"],
                              ["devices.json", "JSON"]),
    "negative device field": (["devices", "--device-file", "{negative_bandwidth}"], ["bandwidth_Bps", "-1"]),
    "missing device file": (["devices", "--device-file", "nowhere/devices.toml"], ["nowhere"]),
    "no local device": (["analyze", "-m", SMOL, "-d", "local"], ["'local'", "probe"]),
    "sweep prompt abc": (["sweep", "-m", SMOL, "-d", CPU, "--prompt", "abc"], ["--prompt", "'abc'"]),
    "sweep batch 0": (["sweep", "-m", SMOL, "-d", CPU, "--batch", "1,0"], ["--batch", "0"]),
    "sweep layers 0": (["sweep", "-m", SMOL, "-d", CPU, "--layers", "0"], ["--layers", "0"]),
    "sweep unknown format": (["sweep", "-m", SMOL, "-d", CPU, "--weights", "bf16,q9_9"], ["'q9_9'"]),
    "sweep unknown device": (["sweep", "-m", SMOL, "-d", f"{CPU},rtx-409"], ["'rtx-409'", "rtx-4090"]),
    "sweep empty device list": (["sweep", "-m", SMOL, "-d", ","], ["--device"]),
    "sweep bad scenario": (["sweep", "-m", SMOL, "-d", CPU, "-s", "SISO,5:-1"], ["'5:-1'"]),
    "sweep plot unknown column": (["sweep", "-m", SMOL, "-d", CPU, "--plot", "p", "--y", "tps"], ["--y", "'tps'"]),
    "plot unknown device": (["plot", "-m", SMOL, "-d", "rtx-309"], ["'rtx-309'"]),
    "plot nothing to draw": (["plot", "-m", SMOL], ["--model and --device", "--records"]),
    "plot records not bench JSON": (["plot", "--records", "{config}"], ["config.json", "bench results"]),
    "bench unknown backend": (["bench", "--backend", "onnx"], ["'onnx'", "torch, llamacpp"]),
    "bench fp16": (["bench", "--dtype", "fp16"], ["'fp16'", "fp32 or bf16"]),
    "bench bad scenario": (["bench", "-s", "SISO,0:3"], ["'0:3'"]),
    "bench threads 0": (["bench", "--threads", "0"], ["threads", "0"]),
    "bench on a folder with llama.cpp": (["bench", "-m", "{tiny_dir}", "--backend", "llamacpp"], ["GGUF"]),
    "probe zero repeats": (["probe", "--repeats", "0", "--no-save"], ["repeats"]),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_is_one_line_exit_2(case, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, needles = BAD[case]
    args = [a.format(**files) if a.startswith("{") else a for a in args]
    assert_one_line_error(run(*args), *needles)
    no_tmp_left(tmp_path)


def test_bad_input_in_a_real_process(files):
    """The console script itself: exit 2, one stderr line, nothing on stdout, no traceback."""
    env = {**os.environ, "RIDGELINE_HOME": os.environ["RIDGELINE_HOME"]}
    proc = subprocess.run([sys.executable, "-m", "ridgeline.cli", "analyze", "-m", str(files["missing"]),
                           "-d", "rtx-309"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")


def test_markup_in_a_path_is_printed_verbatim(tmp_path):
    """A path with rich markup (`[/x]`) in the error must not crash the error printer."""
    folder = tmp_path / "[b]" / "[/x]"  # folders "[b]", "[" and "x]"
    folder.mkdir(parents=True)
    line = assert_one_line_error(run("analyze", "-m", folder, "-d", CPU), "[b]/[/x]")
    assert "config.json" in line


def test_out_to_a_folder_is_an_error_not_a_traceback(tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    assert_one_line_error(run("analyze", "-m", SMOL, "-d", CPU, "--out", target), "cannot write", "results")
    assert_one_line_error(run("sweep", "-m", SMOL, "-d", CPU, "--out", target), "cannot write")
    no_tmp_left(tmp_path)


def test_binary_device_file(tmp_path):
    f = tmp_path / "dev.toml"
    f.write_bytes(b"\xff\xfe\x00garbage")
    assert_one_line_error(run("devices", "--device-file", f), "dev.toml")


@pytest.mark.parametrize("extra", [{"text_config": 5}, {"rope_parameters": 5}, {"partial_rotary_factor": "x"}],
                         ids=["text_config", "rope_parameters", "partial_rotary_factor"])
def test_wrongly_typed_config_fields(tmp_path, extra):
    f = tmp_path / "config.json"
    cfg = {**TINY_CONFIG, **extra}
    if "text_config" in extra:
        del cfg["hidden_size"]
    f.write_text(json.dumps(cfg))
    assert_one_line_error(run("analyze", "-m", f, "-d", CPU), next(iter(extra)))


# ---------------------------------------------------------------------------------------------
# analyze: the JSON contract


def test_analyze_json_contract():
    rec = json.loads(ok("analyze", "--model", SMOL, "--device", CPU, "--scenario", "SISO", "--json").stdout)
    m = rec["model"]
    assert {"name", "params", "params_non_embedding", "kv_bytes_per_token", "layers"} <= set(m)
    assert m["name"] == SMOL and m["params"] == 134515008 and m["layers"] == 30
    assert 0 < m["params_non_embedding"] < m["params"]
    # 30 layers × 3 KV heads × 64 dims × K and V × 2 bytes (bf16)
    assert m["kv_bytes_per_token"] == 30 * 3 * 64 * 2 * 2
    d = rec["device"]
    assert d["name"] == CPU and d["bandwidth_Bps"] > 0
    assert isinstance(d["peak_flops"], dict) and d["peak_flops"]["fp32"] > 0
    assert rec["scenario"]["prompt"] == 128 and rec["scenario"]["generate"] == 128 and rec["scenario"]["batch"] == 1
    assert rec["precision"]["weights"] == "bf16"
    for name in ("prefill", "decode"):
        ph = rec["phases"][name]
        assert {"flops", "bytes", "bytes_by_kind", "intensity", "attainable_flops", "bound", "time_s",
                "tokens_per_s"} <= set(ph)
        assert set(ph["bytes_by_kind"]) == {"weights", "activations", "kv_read", "kv_write"}
        assert ph["flops"] > 0 and ph["bytes"] > 0 and ph["time_s"] > 0 and ph["tokens_per_s"] > 0
        assert ph["bytes"] == pytest.approx(sum(ph["bytes_by_kind"].values()))
        assert ph["intensity"] == pytest.approx(ph["flops"] / ph["bytes"])
        assert 0 < ph["attainable_flops"] <= max(d["peak_flops"].values())
        assert ph["bound"] in ("memory", "compute")
    pre, dec = rec["phases"]["prefill"], rec["phases"]["decode"]
    assert dec["bound"] == "memory"
    assert pre["intensity"] > dec["intensity"]
    assert pre["bytes_by_kind"]["kv_write"] > 0 and dec["bytes_by_kind"]["kv_read"] > 0
    tpt = dec["time_per_token_s"]
    assert 0 < tpt["first"] <= tpt["mean"] <= tpt["last"]
    assert tpt["mean"] == pytest.approx(dec["time_s"] / 128)
    assert dec["tokens_per_s"] == pytest.approx(128 / dec["time_s"])
    mem = rec["memory"]
    assert {"weights_bytes", "kv_bytes", "activation_bytes", "total_bytes", "fits"} <= set(mem)
    assert mem["weights_bytes"] == pytest.approx(2 * 134515008)  # bf16, tied head counted once
    assert mem["kv_bytes"] == pytest.approx(256 * m["kv_bytes_per_token"])  # 128 + 128 tokens
    assert mem["total_bytes"] == pytest.approx(mem["weights_bytes"] + mem["kv_bytes"] + mem["activation_bytes"])
    assert mem["fits"] is True
    assert rec["ttft_s"] == pytest.approx(pre["time_s"])
    assert rec["total_time_s"] == pytest.approx(pre["time_s"] + dec["time_s"])
    assert "operators" not in rec


def test_analyze_per_operator():
    rec = json.loads(ok("analyze", "-m", SMOL, "-d", CPU, "--per-operator", "--json").stdout)
    ops = rec["operators"]
    for phase in ("prefill", "decode"):
        names = {o["name"] for o in ops if o["phase"] == phase}
        assert {"embedding", "final_norm", "lm_head"} <= names
        assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names
        model_level = {o["name"] for o in ops if o["phase"] == phase and o["group"] == "model"}
        assert model_level == {"embedding", "final_norm", "lm_head"}
        # operators add up to the phase
        assert sum(o["flops"] for o in ops if o["phase"] == phase) == pytest.approx(rec["phases"][phase]["flops"])
        assert sum(o["time_s"] for o in ops if o["phase"] == phase) == pytest.approx(rec["phases"][phase]["time_s"])
    q = next(o for o in ops if o["phase"] == "decode" and o["name"] == "q_proj")
    assert q["count"] == 30 and q["kind"] == "gemm"


def test_per_operator_json_is_strict_json():
    """An operator moving no bytes has infinite intensity: that must not print as `Infinity`."""
    out = ok("analyze", "-m", SMOL, "-d", CPU, "--per-operator", "--json", "--act-traffic", "fused").stdout

    def reject(const):
        raise ValueError(f"non-standard JSON constant {const}")

    rec = json.loads(out, parse_constant=reject)
    assert rec["operators"]


def test_analyze_tables_and_per_operator_tables():
    out = ok("analyze", "-m", SMOL, "-d", CPU, "--per-operator").stdout
    for word in ("prefill", "decode", "FLOPs", "KV read", "KV write", "bound", "memory footprint", "fits",
                 "lm_head", "q_proj", "down_proj", "embedding", "final_norm", "TTFT"):
        assert word in out, word
    assert "does not fit" not in out


def test_analyze_config_file_and_model_folder(tmp_path):
    f = tmp_path / "tiny.json"
    f.write_text(json.dumps(TINY_CONFIG))
    rec = json.loads(ok("analyze", "-m", f, "-d", CPU, "--json").stdout)
    h, L, V, ff = 64, 2, 256, 128
    per_layer = 2 * h + h * h + 2 * 32 * h + h * h + 3 * h * ff
    assert rec["model"]["params"] == V * h + L * per_layer + h
    assert rec["model"]["name"] == "tiny"
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    rec2 = json.loads(ok("analyze", "-m", folder, "-d", CPU, "--json").stdout)
    assert rec2["model"]["name"] == "tiny-llama"
    assert rec2["phases"] == rec["phases"]
    # config.json given directly is named after its folder
    rec3 = json.loads(ok("analyze", "-m", folder / "config.json", "-d", CPU, "--json").stdout)
    assert rec3["model"]["name"] == "tiny-llama"


def test_analyze_options_change_the_numbers():
    base = json.loads(ok("analyze", "-m", SMOL, "-d", CPU, "--json").stdout)
    q8 = json.loads(ok("analyze", "-m", SMOL, "-d", CPU, "--json", "--weights", "q8_0").stdout)
    assert q8["memory"]["weights_bytes"] < base["memory"]["weights_bytes"]
    assert q8["precision"]["weights"] == "q8_0"
    short = json.loads(ok("analyze", "-m", SMOL, "-d", CPU, "--json", "--layers", "3", "-s", "64:16", "-b", "2").stdout)
    assert short["model"]["layers"] == 3
    assert short["scenario"] == {"name": "64:16", "prompt": 64, "generate": 16, "batch": 2}
    assert short["phases"]["decode"]["steps"] == 16
    assert short["phases"]["decode"]["tokens"] == 32


def test_analyze_out_is_atomic(tmp_path):
    target = tmp_path / "res" / "a.json"
    out = ok("analyze", "-m", SMOL, "-d", CPU, "--out", target).stdout
    assert "memory footprint" in out  # tables still printed
    rec = json.loads(target.read_text())
    assert rec["model"]["params"] == 134515008
    no_tmp_left(tmp_path)


def test_tiny_device_does_not_fit(tmp_path):
    dev = tmp_path / "tiny.json"
    dev.write_text(json.dumps(TINY_DEVICE))
    rec = json.loads(ok("analyze", "-m", SMOL, "-d", "tiny", "--device-file", dev, "--json").stdout)
    assert rec["memory"]["fits"] is False
    assert rec["device"]["name"] == "tiny"
    assert rec["memory"]["total_bytes"] > 1e6
    out = ok("analyze", "-m", SMOL, "-d", "tiny", "--device-file", dev).stdout
    assert "does not fit in Tiny Board memory" in " ".join(out.split())
    # a device file path given directly as --device
    rec2 = json.loads(ok("analyze", "-m", SMOL, "-d", dev, "--json").stdout)
    assert rec2["memory"]["fits"] is False


def test_gguf_with_explicit_weights(tmp_path):
    g = _write_gguf(tmp_path / "tiny.gguf")
    rec = json.loads(ok("analyze", "-m", g, "-d", CPU, "--weights", "q8_0", "--json").stdout)
    assert rec["model"]["layers"] == 2 and rec["model"]["params"] > 0
    assert rec["phases"]["decode"]["flops"] > 0


def test_gguf_default_weights_as_stored(tmp_path):
    g = _write_gguf(tmp_path / "tiny.gguf")
    rec = json.loads(ok("analyze", "-m", g, "-d", CPU, "--json").stdout)
    assert rec["precision"]["weights"] == "stored"
    assert rec["memory"]["weights_bytes"] == pytest.approx(4 * rec["model"]["params"])  # f32 tensors


# ---------------------------------------------------------------------------------------------
# catalogue listings


def test_devices_table_and_json(tmp_path):
    out = ok("devices").stdout
    assert "rtx-3090" in out and "raspberry-pi-5" in out and CPU in out
    data = json.loads(ok("devices", "--json").stdout)
    ids = {d["id"] for d in data["devices"]}
    assert {"rtx-3090", "raspberry-pi-5", CPU, "rtx-4090"} <= ids
    assert all(d["bandwidth_Bps"] > 0 and d["peak_flops"]["fp32"] > 0 for d in data["devices"])
    dev = tmp_path / "tiny.toml"
    dev.write_text('id = "tiny"\nname = "Tiny Board"\nmemory_bytes = 1e6\nbandwidth_Bps = 1e9\n'
                   '[peak_flops]\nfp32 = 1e10\n[provenance]\nkind = "theoretical"\nsource = "t"\ndate = "2025"\n')
    ids = {d["id"] for d in json.loads(ok("devices", "--json", "--device-file", dev).stdout)["devices"]}
    assert "tiny" in ids and "rtx-3090" in ids


def test_models_and_formats():
    assert SMOL in ok("models").stdout
    rows = {r["id"]: r for r in json.loads(ok("models", "--json").stdout)["models"]}
    assert rows[SMOL]["params"] == 134515008 and rows[SMOL]["layers"] == 30
    out = ok("formats").stdout
    assert "q8_0" in out and "q4_k_m" in out and "bf16" in out
    data = json.loads(ok("formats", "--json").stdout)
    assert "q4_k_m" in data["recipes"]
    fmts = {f["name"]: f for f in data["formats"]}
    assert fmts["bf16"]["bits"] == 16 and fmts["q8_0"]["bits"] == pytest.approx(8.5)


def test_help_lists_commands():
    out = ok("--help").stdout
    for cmd in ("analyze", "devices", "models", "formats", "sweep", "plot"):
        assert cmd in out


# ---------------------------------------------------------------------------------------------
# sweep and plot


def test_sweep_csv(tmp_path):
    target = tmp_path / "out" / "X.csv"
    ok("sweep", "--model", SMOL, "--device", f"{CPU},rtx-4090", "--scenario", "SISO,LISO",
       "--weights", "bf16,q8_0", "--out", target)
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) == 8
    assert {(r["device"], r["scenario"], r["weights"]) for r in rows} == {
        (d, s, w) for d in (CPU, "rtx-4090") for s in ("SISO", "LISO") for w in ("bf16", "q8_0")}
    assert all(r["error"] == "" and float(r["decode_tokens_per_s"]) > 0 for r in rows)
    no_tmp_left(tmp_path)


def test_sweep_json_and_row_errors(tmp_path):
    res = ok("sweep", "-m", SMOL, "-d", CPU, "--prompt", "64,256", "--generate", "8", "--weights", "bf16,q4_k",
             "--json")
    data = json.loads(res.stdout)
    assert res.stderr == ""
    rows = data["rows"]
    assert len(rows) == 4 and data["wall_time_s"] >= 0
    good = [r for r in rows if r["weights"] == "bf16"]
    bad = [r for r in rows if r["weights"] == "q4_k"]
    assert all(r["error"] is None and r["decode_bound"] == "memory" for r in good)
    assert {r["prompt"] for r in good} == {64, 256}
    # a format whose block does not divide the model's rows: the row says why, the sweep goes on
    assert all("576" in r["error"] for r in bad)
    # the table output shows both
    out = ok("sweep", "-m", SMOL, "-d", CPU, "--weights", "bf16,q4_k").stdout
    assert "sweep: 2 rows" in out and "576" in out


def test_sweep_json_file_and_plot(tmp_path):
    target = tmp_path / "s.json"
    ok("sweep", "-m", SMOL, "-d", CPU, "--prompt", "128,512", "--out", target, "--plot", tmp_path / "pl" / "sweep")
    assert len(json.loads(target.read_text())["rows"]) == 2
    assert (tmp_path / "pl" / "sweep.png").stat().st_size > 0
    assert (tmp_path / "pl" / "sweep.svg").stat().st_size > 0
    no_tmp_left(tmp_path)


def test_plot_writes_png_and_svg(tmp_path):
    stem = tmp_path / "tmp" / "stem"
    out = ok("plot", "-m", SMOL, "-d", CPU, "--out", stem).stdout
    png, svg = stem.with_name("stem.png"), stem.with_name("stem.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg.read_bytes()[:2000]
    assert "stem.png" in out and "stem.svg" in out
    no_tmp_left(tmp_path)


# ---------------------------------------------------------------------------------------------
# the measured side: probe, bench, plot --records


def test_probe_json_and_local_device():
    res = ok("probe", "--array-mib", "16", "--repeats", "2", "--threads", "1", "--json")
    data = json.loads(res.stdout)
    assert data["device"]["id"] == "local" and data["device"]["provenance"]["kind"] == "measured"
    assert data["probe"]["threads"] == 1 and data["probe"]["bandwidth_Bps"]["triad"]["n"] == 2
    assert set(data["probe"]["gemm_flops"]) == {"fp32", "bf16", "fp16", "int8"}
    out = ok("analyze", "-m", SMOL, "-d", "local", "--json")  # saved: every later command can use it
    assert json.loads(out.stdout)["device"]["provenance"] == "measured"


def test_bench_json_out_plot_and_depth_sweep(tiny_model_dir, tmp_path):
    ok("probe", "--array-mib", "16", "--repeats", "1", "--threads", "1")
    stem = tmp_path / "plots" / "bench"
    res = ok("bench", "-m", tiny_model_dir, "-s", "8:4,16:4", "--layers", "1,all", "--threads", "1", "--repeats", "2",
             "--reference", "epyc-zen4-2vcpu", "--out", tmp_path / "bench.json", "--plot", stem, "--json")
    data = json.loads(res.stdout)
    results = data["results"]
    assert len(results) == 4  # 2 depths x 2 scenarios
    assert {(r["params"]["scenario"]["prompt"], r["model"]["layers"]) for r in results} == {(8, 1), (8, 3), (16, 1), (16, 3)}
    for r in results:
        assert [x["role"] for x in r["roofline"]] == ["probe", "catalogue"]
        for s in r["samples"]:
            assert s["prompt_tokens"] == r["params"]["scenario"]["prompt"] and s["generated_tokens"] == 4
        assert r["roofline"][0]["decode"]["phi"]["n"] == 2
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["kind"] == "ridgeline.bench.results" and len(saved["results"]) == 4
    for name in ("bench.png", "bench.svg", "bench_layers.png", "bench_layers.svg"):
        assert (stem.parent / name).stat().st_size > 1000
    # plot --records: the measured points beside an analytic roofline
    out = tmp_path / "both"
    ok("plot", "-m", tiny_model_dir, "-d", "local", "--records", tmp_path / "bench.json", "-o", out)
    assert (tmp_path / "both.svg").read_text().count("measured torch fp32") >= 1
    no_tmp_left(tmp_path)


def test_bench_table_prints_prediction_error(tiny_model_dir):
    ok("probe", "--array-mib", "16", "--repeats", "1", "--threads", "1")
    res = ok("bench", "-m", tiny_model_dir, "-s", "8:4", "--repeats", "1", "--impl", "hf")
    assert "torch-hf fp32" in res.stdout
    assert "predicted on the probe roof (error" in res.stdout


def test_bench_without_probe_says_so(tiny_model_dir):
    res = ok("bench", "-m", tiny_model_dir, "-s", "8:2", "--repeats", "1", "--reference", "none", "--json")
    assert "ridgeline probe" in res.stderr
    assert json.loads(res.stdout)["results"][0]["roofline"] == []


def test_bench_refuses_what_does_not_fit(tiny_model_dir):
    res = run("bench", "-m", tiny_model_dir, "-s", "64:64", "--memory-limit", "0.000001")
    assert_one_line_error(res, "predicted to need", "weights", "KV", "not loading")
