"""The hostile-user sweep of issue 21, rerun: each defect of the review as the `ridgeline` command that showed it,
run as a real process, with what it does now.

Every case builds its own bad input in a scratch folder (a tiny random llama with a 320-token BPE tokenizer stands
in for a user's model where the bundled one is not needed; the bundled SmolLM2-135M where the defect was seen on
it), runs the command with a timeout, and judges the outcome:
- `error`: exit 2 and exactly one `error: ...` line on stderr (progress lines aside), no traceback, the needle in it;
- `ok`: exit 0 (and the case's own check, e.g. a note in the output or the contention flag in the record);
- signals: the exit code 130/143 and no output or hidden temporary file left.
After every case the scratch folder is searched for leftover temporaries and the user's files are checked.

State is isolated: RIDGELINE_HOME is a scratch folder (probes save `local` there), the converted bundled model and
the extracted corpus are shared read-only from the usual caches. Nothing is timed; run it at low priority:
  nice -n 5 .venv/bin/python benchmarks/hostile.py [--only KEY,KEY] [--out PATH] [--markdown PATH]
Writes benchmarks/results/hostile.json (one row per case; `--only` reruns those cases and replaces their rows) and
the closing note's before/after table as markdown (--markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results" / "hostile.json"
CPU = "epyc-zen4-2vcpu"
PROGRESS = re.compile(r"^\[\s*\d+ s\] ")
DEEP = "[" * 5000 + "]" * 5000


@dataclass
class Case:
    """One defect: what the review saw, the command, what must happen now."""

    key: str
    group: str
    before: str
    args: list[str]
    expect: str = "error"  # error | ok | 130 | 143
    needle: str = ""
    setup: Callable[[Path], None] | None = None
    check: Callable[[Path, subprocess.CompletedProcess], str | None] | None = None
    signal_after: float | None = None  # send the signal this many seconds after start
    env: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------ scratch inputs


def tiny_model(folder: Path) -> Path:
    """A tiny random llama folder (3 layers, 320-token byte-level BPE) like the tests' fixture."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from ridgeline.corpus import prompt_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([prompt_text()], trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=320, max_position_embeddings=256, eos_token_id=0,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def edited_model(name: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """Setup: a copy of the tiny model at S/name with its state dict edited."""
    def setup(s: Path) -> None:
        from safetensors.torch import load_file, save_file

        shutil.copytree(s / "tiny", s / name)
        state = {k: v.clone() for k, v in load_file(s / name / "model.safetensors").items()}
        edit(state)
        save_file(state, s / name / "model.safetensors", metadata={"format": "pt"})
    return setup


def write(name: str, text: str | bytes) -> Callable[[Path], None]:
    """Setup: one file under the scratch folder."""
    def setup(s: Path) -> None:
        (s / name).parent.mkdir(parents=True, exist_ok=True)
        (s / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def config(**extra) -> Callable[[Path], None]:
    """Setup: a mixtral config.json with the given fields changed."""
    base = {"model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 512}
    return write("cfg/config.json", json.dumps({**base, **extra}))


DEVICE = {"id": "x", "name": "X", "memory_bytes": 1e9, "bandwidth_Bps": 1e10, "peak_flops": {"fp32": 1e12},
          "provenance": {"kind": "theoretical", "source": "s", "date": "2026"}}


def device(**extra) -> Callable[[Path], None]:
    """Setup: a device file whose one entry has the given fields changed."""
    return write("devices.json", json.dumps({"devices": [{**DEVICE, **extra}]}))


def user_folder(s: Path) -> None:
    """Setup: a folder a user owns, with notes in it."""
    (s / "DIR").mkdir()
    (s / "DIR" / "notes.txt").write_text("my notes")


def notes_kept(s: Path, _: subprocess.CompletedProcess) -> str | None:
    ok = sorted(p.name for p in (s / "DIR").iterdir()) == ["notes.txt"]
    return None if ok and (s / "DIR" / "notes.txt").read_text() == "my notes" else "the user's folder changed"


def absent(*names: str) -> Callable[[Path, subprocess.CompletedProcess], str | None]:
    """Check: none of these outputs exists."""
    def check(s: Path, _: subprocess.CompletedProcess) -> str | None:
        there = [n for n in names if (s / n).exists() or (s / n).is_symlink() and not (s / n).exists()]
        return f"left {there}" if there else None
    return check


def pickle_folder(s: Path) -> None:
    import torch
    from safetensors.torch import load_file

    shutil.copytree(s / "tiny", s / "pickled")
    torch.save(load_file(s / "pickled" / "model.safetensors"), s / "pickled" / "pytorch_model.bin")
    (s / "pickled" / "model.safetensors").unlink()


def more_layers(s: Path) -> None:
    shutil.copytree(s / "tiny", s / "more")
    cfg = json.loads((s / "more" / "config.json").read_text())
    (s / "more" / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 4}))


def nan_gguf(s: Path) -> None:
    """A tiny llama GGUF (f32, the bundled model's tokenizer and vocabulary) with NaN in one tensor's values."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from transformers import LlamaConfig, LlamaForCausalLM

    from ridgeline.quant import export_gguf
    from ridgeline.specs import bundled_gguf

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=49152, max_position_embeddings=256, tie_word_embeddings=True)
    export_gguf(LlamaForCausalLM(cfg), None, s / "nan.gguf", "f32", source_gguf=bundled_gguf())
    reader = GGUFReader(s / "nan.gguf", "r+")
    t = next(t for t in reader.tensors if t.name == "blk.1.attn_v.weight")
    np.asarray(t.data).reshape(-1)[:32] = np.nan
    reader.data.flush()


def fifo(s: Path) -> None:
    os.mkfifo(s / "x.json")


def symlink(s: Path) -> None:
    (s / "real.json").write_text("keep")
    (s / "x.json").symlink_to(s / "real.json")


def symlink_kept(s: Path, _: subprocess.CompletedProcess) -> str | None:
    return None if (s / "x.json").is_symlink() and (s / "real.json").read_text() == "keep" else "symlink target changed"


def device_node(s: Path) -> None:
    """A character device node like /dev/full (1, 7), made inside the scratch folder (needs root)."""
    os.mknod(s / "full", 0o600 | 0o020000, os.makedev(1, 7))


def node_kept(s: Path, _: subprocess.CompletedProcess) -> str | None:
    import stat

    return None if stat.S_ISCHR((s / "full").lstat().st_mode) else "the device node was replaced"


def corrupt_local(s: Path) -> None:
    (s / "home" / "devices").mkdir(parents=True, exist_ok=True)
    (s / "home" / "devices" / "local.json").write_text('{"devices": [{"id": "local", "name": ')


def contended(s: Path, proc: subprocess.CompletedProcess) -> str | None:
    flags: list = []

    def walk(x) -> None:  # every run's contention assessment, wherever the record nests it
        if isinstance(x, dict):
            if isinstance(x.get("contention"), dict):
                flags.append(x["contention"].get("contended"))
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(json.loads((s / "busy.json").read_text()))
    return None if flags and all(flags) else f"not flagged as contended: {flags}"


def nothing_partial(*outputs: str) -> Callable[[Path, subprocess.CompletedProcess], str | None]:
    """Check: no output and no hidden temporary anywhere in the scratch folder."""
    def check(s: Path, proc: subprocess.CompletedProcess) -> str | None:
        left = leftovers(s) + [o for o in outputs if (s / o).exists()]
        return f"left {left}" if left else None
    return check


def leftovers(folder: Path) -> list[str]:
    """Hidden temporaries ridgeline writers leave when killed (`.x.ridgeline-<pid>-*.tmp*`)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if ".ridgeline-" in p.name and ".tmp" in p.name)


def stderr_has(text: str) -> Callable[[Path, subprocess.CompletedProcess], str | None]:
    def check(s: Path, proc: subprocess.CompletedProcess) -> str | None:
        return None if text in proc.stderr else f"stderr lacks {text!r}"
    return check


def quiet_output(s: Path, proc: subprocess.CompletedProcess) -> str | None:
    noisy = [ln for ln in (proc.stdout + proc.stderr).splitlines()
             if re.search(r"(Future|User|Deprecation|Runtime)Warning|warnings\.warn", ln)]
    return f"third-party warning: {noisy[0][:120]}" if noisy else None


# ------------------------------------------------------------------ the cases


def cases() -> list[Case]:
    """Every defect of the review, worst first (the order of the issue)."""
    t = "{S}/tiny"
    ppl = ["--tasks", "ppl", "--corpus", "{S}/prose.txt", "--context", "64", "--stride", "32", "--max-tokens", "256"]
    return [
        # data loss
        Case("quantize-user-folder", "data loss", "deleted everything in DIR (notes.txt gone)",
             ["quantize", "smollm2-135m", "--method", "rtn", "--bits", "8", "--out", "{S}/DIR"], needle="notes.txt",
             setup=user_folder, check=notes_kept),
        Case("gqa-user-folder", "data loss", "shares quantize's save: deleted the folder",
             ["gqa", t, "--kv-heads", "1", "--steps", "1", "--out", "{S}/DIR"], needle="notes.txt",
             setup=user_folder, check=notes_kept),
        Case("out-fifo", "data loss", "--out replaced a FIFO with a regular file",
             ["analyze", "-m", "smollm2-135m", "-d", CPU, "--out", "{S}/x.json"], needle="not a regular file",
             setup=fifo, check=lambda s, p: None if (s / "x.json").is_fifo() else "the FIFO was replaced"),
        Case("out-symlink", "data loss", "--out replaced a symlink",
             ["analyze", "-m", "smollm2-135m", "-d", CPU, "--out", "{S}/x.json"], needle="symbolic link",
             setup=symlink, check=symlink_kept),
        Case("out-device-node", "data loss", "--out /dev/full replaced the device node with JSON (as root)",
             ["analyze", "-m", "smollm2-135m", "-d", CPU, "--out", "{S}/full"], needle="not a regular file",
             setup=device_node, check=node_kept),
        # silent wrong models
        Case("missing-tensor", "silent wrong model", "randomly initialised, eval ppl 99,258 exit 0",
             ["eval", "{S}/holed", *ppl], needle="model.layers.1.mlp.down_proj.weight",
             setup=edited_model("holed", lambda st: st.pop("model.layers.1.mlp.down_proj.weight"))),
        Case("more-layers-than-weights", "silent wrong model", "extra layers randomly initialised",
             ["eval", "{S}/more", *ppl], needle="model.layers.3.", setup=more_layers),
        Case("shape-mismatch", "traceback", "transformers' RuntimeError traceback",
             ["eval", "{S}/shaped", *ppl], needle="[10, 64]",
             setup=edited_model("shaped", lambda st: st.__setitem__(
                 "model.layers.0.mlp.up_proj.weight", __import__("torch").zeros(10, 64)))),
        Case("nan-weights-eval", "silent wrong model", "eval printed ppl nan, exit 0",
             ["eval", "{S}/nan", *ppl], needle="NaN",
             setup=edited_model("nan", lambda st: st["model.layers.2.self_attn.q_proj.weight"].view(-1)[:5].fill_(
                 float("nan")))),
        Case("nan-weights-bench", "silent wrong model", "bench timed a model emitting token 0",
             ["bench", "-m", "{S}/nan", "-s", "8:4", "--device", CPU], needle="NaN",
             setup=edited_model("nan", lambda st: st["model.layers.2.self_attn.q_proj.weight"].view(-1)[:5].fill_(
                 float("nan")))),
        Case("nan-gguf-scales", "silent wrong model", "a GGUF with NaN values loaded silently",
             ["bench", "-m", "{S}/nan.gguf", "-s", "8:4", "--device", CPU], needle="blk.1.attn_v.weight",
             setup=nan_gguf),
        Case("pickle-only", "silent wrong model", "pytorch_model.bin loaded (traceback for a malicious one)",
             ["eval", "{S}/pickled", "--tasks", "ppl"], needle="pickle", setup=pickle_folder),
        Case("pickle-only-quantize", "silent wrong model", "quantize re-saved a pickle-only folder",
             ["quantize", "{S}/pickled", "--method", "rtn", "--out", "{S}/q"], needle="pickle", setup=pickle_folder,
             check=absent("q")),
        # lost work
        Case("unwritable-out-eval", "lost work", "found only after eval finished (~40 min thrown away)",
             ["eval", t, "--out", "/proc/e.json", *ppl], needle="/proc/e.json"),
        Case("unwritable-out-bench", "lost work", "found only after bench finished",
             ["bench", "-m", t, "--device", CPU, "--out", "/proc/b.json"], needle="/proc/b.json"),
        Case("unwritable-out-serve", "lost work", "found only after serve-bench finished",
             ["serve-bench", t, "--synthetic", "2", "--out", "/proc/s.json"], needle="/proc/s.json"),
        Case("unwritable-out-quantize", "lost work", "checked after quantizing",
             ["quantize", t, "--method", "rtn", "--out", "/proc/q"], needle="/proc/q"),
        # tracebacks
        Case("deep-config", "traceback", "RecursionError", ["analyze", "-m", "{S}/deep/config.json", "-d", CPU],
             needle="nests more than 64", setup=write("deep/config.json", '{"model_type": "llama", "x": %s}' % DEEP)),
        Case("huge-int-config", "traceback", "ValueError on a 5,000-digit integer",
             ["analyze", "-m", "{S}/big/config.json", "-d", CPU], needle="digits",
             setup=write("big/config.json", '{"model_type": "llama", "hidden_size": %s}' % ("9" * 5000))),
        Case("deep-task-file", "traceback", "RecursionError", ["eval", t, "--tasks", "piqa={S}/piqa.jsonl"],
             needle="nests more than", setup=write("piqa.jsonl", '{"goal": %s}\n' % DEEP)),
        Case("deep-trace", "traceback", "RecursionError", ["serve-bench", t, "--requests", "{S}/trace.jsonl"],
             needle="nests more than", setup=write("trace.jsonl", '{"prompt_len": %s}\n' % DEEP)),
        Case("device-list", "traceback", "a list where an object is expected",
             ["devices", "--device-file", "{S}/devices.json"], needle="devices.json",
             setup=write("devices.json", json.dumps({"devices": [[1, 2]]}))),
        Case("device-empty-gemv", "traceback", "an empty gemv list", ["devices", "--device-file", "{S}/devices.json"],
             needle="gemv_Bps must be an object", setup=device(gemv_Bps=[])),
        Case("device-tdp-lots", "traceback", 'tdp_w: "lots"', ["devices", "--device-file", "{S}/devices.json"],
             needle="tdp_w", setup=device(tdp_w="lots")),
        Case("device-host-match-string", "traceback", "a string host_match",
             ["devices", "--device-file", "{S}/devices.json"], needle="host_match", setup=device(host_match="AMD")),
        Case("device-file-empty-list", "traceback", "a device file that is []",
             ["devices", "--device-file", "{S}/devices.json"], needle="devices.json", setup=write("devices.json", "[]")),
        Case("scenario-overflow", "traceback", "OverflowError",
             ["analyze", "-m", "smollm2-135m", "-d", CPU, "-s", "99999999999999999999:1"], needle="limits"),
        Case("trace-id-beyond-vocab", "traceback", "IndexError after loading",
             ["serve-bench", t, "--requests", "{S}/trace.jsonl"], needle="vocabulary of 320",
             setup=write("trace.jsonl", '{"prompt_ids": [1, 5000], "max_tokens": 2}\n')),
        Case("trace-seed-above-int64", "traceback", "OverflowError", ["serve-bench", t, "--requests", "{S}/trace.jsonl"],
             needle="seed", setup=write("trace.jsonl", '{"prompt_len": 4, "max_tokens": 2, "seed": 18446744073709551616}\n')),
        Case("trace-temperature-nan", "traceback", "error after the model ran",
             ["serve-bench", t, "--requests", "{S}/trace.jsonl"], needle="temperature",
             setup=write("trace.jsonl", '{"prompt_len": 4, "max_tokens": 2, "temperature": NaN}\n')),
        Case("piqa-label-superscript", "traceback", 'a piqa label "²" raised ValueError',
             ["eval", t, "--tasks", "piqa={S}/piqa.jsonl", "--context", "64"], needle="label",
             setup=write("piqa.jsonl", '{"goal": "g", "sol1": "a", "sol2": "b", "label": "\\u00b2"}\n')),
        Case("out-dot", "traceback", "--out . raised IsADirectoryError",
             ["analyze", "-m", "smollm2-135m", "-d", CPU, "--out", "."], needle="names no file"),
        # hangs and unbounded memory
        Case("config-1e9-layers", "hang", "memory grew at 60-130 MB/s until killed",
             ["analyze", "-m", "{S}/cfg/config.json", "-d", CPU], needle="1024", setup=config(num_hidden_layers=10**9)),
        Case("analyze-layers-1e6", "hang", "memory grew until killed",
             ["analyze", "-m", "smollm2-135m", "-d", CPU, "--layers", "1000000"], needle="1024"),
        Case("trace-n-100000", "hang", "hung silently", ["serve-bench", t, "--requests", "{S}/trace.jsonl"],
             needle="n must be", setup=write("trace.jsonl", '{"prompt_len": 4, "max_tokens": 2, "n": 100000}\n')),
        Case("trace-arrival-1e9", "hang", "slept silently", ["serve-bench", t, "--requests", "{S}/trace.jsonl"],
             needle="arrival", setup=write("trace.jsonl", '{"prompt_len": 4, "max_tokens": 2, "arrival": 1e9}\n')),
        Case("calib-seq-beyond-context", "hang", "unchecked",
             ["quantize", t, "--method", "gptq", "--calib-seq", "100000", "--out", "{S}/q"], needle="--calib-seq",
             check=absent("q")),
        # accepted bad values
        Case("scenario-past-context", "accepted bad value", "priced 100,000 tokens past an 8,192 context",
             ["analyze", "-m", "smollm2-135m", "-d", CPU, "-s", "100000:100"], needle="context limit"),
        Case("negative-positions", "accepted bad value", "max_position_embeddings: -1 accepted",
             ["analyze", "-m", "{S}/cfg/config.json", "-d", CPU], needle="max_position_embeddings",
             setup=config(max_position_embeddings=-1)),
        Case("zero-experts", "accepted bad value", "mixtral with 0 experts priced as dense",
             ["analyze", "-m", "{S}/cfg/config.json", "-d", CPU], needle="num_local_experts",
             setup=config(num_local_experts=0, num_experts_per_tok=2)),
        Case("infinite-bandwidth", "accepted bad value", 'roof: inf', ["devices", "--device-file", "{S}/devices.json"],
             needle="bandwidth_Bps", setup=write("devices.json",
                                                 json.dumps({"devices": [{**DEVICE, "bandwidth_Bps": "inf"}]}))),
        Case("negative-tdp", "accepted bad value", "negative TDP accepted",
             ["devices", "--device-file", "{S}/devices.json"], needle="tdp_w", setup=device(tdp_w=-5)),
        Case("nan-eps", "accepted bad value", "rms_norm_eps: NaN accepted",
             ["analyze", "-m", "{S}/cfg/config.json", "-d", CPU], needle="rms_norm_eps",
             setup=write("cfg/config.json", json.dumps({
                 "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 512}).replace(
                 "}", ', "rms_norm_eps": NaN}'))),
        Case("bench-1000-threads", "accepted bad value", "bench -t 1000 ran",
             ["bench", "-t", "1000", "--device", CPU], needle="logical CPUs"),
        Case("memory-limit-nan", "accepted bad value", "--memory-limit nan disabled the check",
             ["bench", "--memory-limit", "nan"], needle="--memory-limit"),
        Case("layers-with-llamacpp", "accepted bad value", "--layers silently ignored with llama.cpp",
             ["bench", "--backend", "llamacpp", "--layers", "2"], needle="--layers"),
        Case("fewshot-negative", "accepted bad value", "--num-fewshot -1 accepted",
             ["eval", "smollm2-135m", "--num-fewshot", "-1"], needle="--num-fewshot"),
        Case("calib-binary", "accepted bad value", "quantize --calib accepted a binary file",
             ["quantize", t, "--method", "gptq", "--calib", "{S}/calib.bin", "--calib-seq", "16", "--out", "{S}/q"],
             needle="binary", setup=write("calib.bin", bytes(range(256)) * 4), check=absent("q")),
        # signals and state
        Case("sigterm-quantize", "signals", "SIGTERM left 12-87 MB hidden temporaries",
             ["quantize", "smollm2-135m", "--method", "rtn", "--bits", "8", "--out", "{S}/q8"], expect="143",
             signal_after=12.0, check=nothing_partial("q8")),
        Case("sigterm-export-gguf", "signals", "SIGTERM left a hidden temporary GGUF",
             ["export-gguf", "smollm2-135m", "--type", "q8_0", "--out", "{S}/m.gguf"], expect="143",
             signal_after=14.0, check=nothing_partial("m.gguf")),
        Case("sigint-serve-bench", "signals", "Ctrl-C exited 0 with a partial record",
             ["serve-bench", "smollm2-135m", "--synthetic", "40", "--rate", "inf", "--out", "{S}/s.json"],
             expect="130", signal_after=18.0, check=nothing_partial("s.json")),
        Case("corrupt-local-device", "signals", "a corrupt devices/local.json broke every command",
             ["devices"], expect="ok", setup=corrupt_local, check=stderr_has("note: saved device 'local' left out")),
        # measurements on a busy machine
        Case("busy-machine-flagged", "measurement", "6.4 tok/s against 20-32 earlier, nothing flagged",
             ["bench", "-m", t, "-s", "32:32", "--repeats", "3", "--device", CPU, "--out", "{S}/busy.json"],
             expect="ok", check=contended),
        # first contact and misleading messages
        Case("eval-default-size", "first contact", "eval without options scored all 371,296 tokens (~40 min), "
             "progress 0/?", ["eval", t, "--tasks", "ppl", "--corpus", "{S}/prose.txt", "--context", "64", "--stride", "32"],
             expect="ok", check=stderr_or_out("--max-tokens sets the size")),
        Case("empty-model", "misleading message", '-m "" said "folder ."',
             ["analyze", "-m", "", "-d", CPU], needle="empty"),
        Case("corpus-dot", "misleading message", '--corpus . said "does not exist"',
             ["eval", t, "--tasks", "ppl", "--corpus", "."], needle="folder"),
        Case("memory-limit-negative", "misleading message", '"more than -1.000 GiB allowed"',
             ["bench", "--memory-limit", "-1"], needle="--memory-limit"),
        Case("utf16-config", "misleading message", 'a UTF-16 config was called "binary"',
             ["analyze", "-m", "{S}/u16/config.json", "-d", CPU], needle="UTF-16",
             setup=write("u16/config.json", '{"model_type": "llama"}'.encode("utf-16"))),
        Case("third-party-warnings", "first contact", "a transformers FutureWarning and numpy warnings leaked",
             ["bench", "-m", "smollm2-135m", "-s", "16:8", "--repeats", "1", "--impl", "hf", "--device", CPU],
             expect="ok", check=quiet_output),
    ]


def stderr_or_out(text: str) -> Callable[[Path, subprocess.CompletedProcess], str | None]:
    def check(s: Path, proc: subprocess.CompletedProcess) -> str | None:
        return None if text in proc.stdout + proc.stderr else f"output lacks {text!r}"
    return check


# ------------------------------------------------------------------ running


def judge(case: Case, proc: subprocess.CompletedProcess, scratch: Path) -> tuple[bool, str]:
    """Whether the outcome is the one the case expects, and the line that shows it."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not PROGRESS.match(ln)]
    shown = lines[-1] if lines else (proc.stdout.strip().splitlines() or [""])[-1]
    problems = []
    if "Traceback" in proc.stderr + proc.stdout:
        problems.append("traceback")
    if case.expect == "error":
        if proc.returncode != 2:
            problems.append(f"exit {proc.returncode}")
        errors = [ln for ln in lines if ln.startswith("error: ")]
        if len(errors) != 1 or len([ln for ln in lines if not ln.startswith("note: ")]) != 1:
            problems.append(f"{len(lines)} stderr lines")
        elif case.needle and case.needle not in errors[0]:
            problems.append(f"message lacks {case.needle!r}")
    elif case.expect == "ok":
        if proc.returncode != 0:
            problems.append(f"exit {proc.returncode}")
    elif proc.returncode != int(case.expect):
        problems.append(f"exit {proc.returncode}, not {case.expect}")
    left = leftovers(scratch)
    if left:
        problems.append(f"temporaries left: {left}")
    if case.check is not None and not problems:
        extra = case.check(scratch, proc)
        if extra:
            problems.append(extra)
    return not problems, ("; ".join(problems) + f" — {shown[:200]}") if problems else shown[:240]


def run_case(case: Case, tiny: Path, env: dict[str, str], timeout: float) -> dict:
    """Run one case in its own scratch folder; the row for the table."""
    with tempfile.TemporaryDirectory(prefix=f"hostile-{case.key}-") as tmp:
        s = Path(tmp)
        shutil.copytree(tiny, s / "tiny")
        (s / "prose.txt").write_text(PROSE)
        (s / "home").mkdir()
        if case.setup is not None:
            case.setup(s)
        args = [a.replace("{S}", str(s)) for a in case.args]
        cmd = [str(ROOT / ".venv" / "bin" / "ridgeline"), *args]
        busy = None
        if case.key == "busy-machine-flagged":  # another process spinning on both cores while bench times
            busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        t0 = time.monotonic()
        try:
            # a sweep started in the background (`&`) inherits SIGINT ignored; the command must see Ctrl-C as a user's
            # terminal delivers it, so the child starts with the default disposition
            p = subprocess.Popen(cmd, cwd=s, env={**env, "RIDGELINE_HOME": str(s / "home"), **case.env},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            if case.signal_after is not None:
                try:
                    out, err = p.communicate(timeout=case.signal_after)
                except subprocess.TimeoutExpired:
                    p.send_signal(signal.SIGINT if case.expect == "130" else signal.SIGTERM)
                    out, err = p.communicate(timeout=timeout)
            else:
                out, err = p.communicate(timeout=timeout)
            proc = subprocess.CompletedProcess(cmd, p.returncode, out, err)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            proc = subprocess.CompletedProcess(cmd, -9, out, err + f"\n(killed after {timeout:.0f} s)")
        finally:
            for b in busy or []:
                b.kill()
        wall = time.monotonic() - t0
        ok, shown = judge(case, proc, s)
    command = "ridgeline " + " ".join(a if a and " " not in a else repr(a) for a in case.args)
    return {"key": case.key, "group": case.group, "before": case.before, "command": command,
            "expect": case.expect, "exit": proc.returncode, "ok": ok, "after": shown, "wall_s": round(wall, 1)}


PROSE = ""


def markdown(rows: list[dict]) -> str:
    """The closing note's before/after table."""
    out = ["| # | defect (before) | command | after (exit, message) | |", "|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        cmd = r["command"].replace("|", "\\|")
        after = r["after"].replace("|", "\\|")
        out.append(f"| {i} | {r['group']}: {r['before']} | `{cmd}` | exit {r['exit']}: {after} | "
                   f"{'ok' if r['ok'] else '**FAIL**'} |")
    return "\n".join(out)


def main() -> None:
    global PROSE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma list of case keys")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--markdown", type=Path, default=None)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from ridgeline.corpus import prompt_text
    from ridgeline.io import user_dir, write_json, write_text

    PROSE = prompt_text() * 3
    home = user_dir()
    env = {**os.environ, "RIDGELINE_MODEL_CACHE": os.environ.get("RIDGELINE_MODEL_CACHE", str(home / "models")),
           "RIDGELINE_CORPUS_CACHE": os.environ.get("RIDGELINE_CORPUS_CACHE", str(home / "corpus"))}
    chosen = [c for c in cases() if a.only is None or c.key in a.only.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="hostile-model-") as tmp:
        tiny = tiny_model(Path(tmp) / "tiny")
        for i, case in enumerate(chosen, 1):
            row = run_case(case, tiny, env, a.timeout)
            rows.append(row)
            print(f"[{i}/{len(chosen)}] {'ok  ' if row['ok'] else 'FAIL'} {case.key}: exit {row['exit']} "
                  f"{row['after'][:150]} ({row['wall_s']} s)", flush=True)
    if a.only is not None and a.out.is_file():  # rerun cases replace their rows in the existing record
        rerun = {r["key"]: r | {"rerun": True} for r in rows}
        old = json.loads(a.out.read_text())["rows"]
        rows = [rerun.pop(r["key"], r) for r in old] + list(rerun.values())
    record = {"benchmark": "hostile", "machine": machine_info(), "cases": len(rows),
              "passed": sum(r["ok"] for r in rows), "rows": rows}
    write_json(a.out, record)
    table = markdown(rows)
    if a.markdown:
        write_text(a.markdown, table + "\n")
    print(f"{record['passed']}/{len(rows)} cases as expected; wrote {a.out}")


if __name__ == "__main__":
    main()
