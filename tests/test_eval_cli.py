"""`ridgeline eval`: the quality table across variants, records, and bad input (one line, exit 2)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from conftest import one_line_error
from typer.testing import CliRunner

from ridgeline import cli
from ridgeline.cli import app

TASKS = Path(__file__).parent / "data" / "tasks"


@pytest.fixture(autouse=True)
def _wide(monkeypatch):
    monkeypatch.setattr(cli.console, "_width", 240)


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def prose(tmp_path):
    from ridgeline.corpus import prompt_text

    f = tmp_path / "prose.txt"
    f.write_text(prompt_text() * 3)
    return f


def test_quality_table_json_and_csv_across_variants(tiny_model_dir, prose, tmp_path):
    out, table = tmp_path / "q.json", tmp_path / "q.csv"
    res = run("eval", tiny_model_dir, "--tasks", "ppl,cloze,arc_easy,winogrande", "--task-dir", TASKS,
              "--dtype", "fp32,bf16", "--corpus", prose, "--context", "64", "--stride", "32", "--limit", "4",
              "--out", out, "--csv", table)
    assert res.exit_code == 0, (res.stderr, res.exception)
    assert "token ppl" in res.stdout and "arc_easy acc_norm" in res.stdout and "winogrande acc" in res.stdout
    records = json.loads(out.read_text())["records"]
    assert [r["model"]["dtype"] for r in records] == ["float32", "bfloat16"]
    for r in records:
        assert set(r["tasks"]) == {"ppl", "cloze", "arc_easy", "winogrande"}
        assert r["tasks"]["arc_easy"]["n"] == 4 and r["tasks"]["cloze"]["n"] == 4
        assert r["tasks"]["ppl"]["settings"]["context"] == 64
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert len(rows) == 2 and float(rows[0]["ppl"]) > 1 and rows[0]["arc_easy_metric"] == "acc_norm"


def test_alias_and_task_file_given_inline(tiny_model_dir):
    res = run("eval", tiny_model_dir, "--tasks", f"siqa={TASKS / 'social_iqa.jsonl'}", "--limit", "3", "--json")
    assert res.exit_code == 0, (res.stderr, res.exception)
    rec = json.loads(res.stdout)["records"][0]
    assert list(rec["tasks"]) == ["social_iqa"] and rec["tasks"]["social_iqa"]["metric"] == "acc"


BAD = {
    "missing task file": (["--tasks", "arc_easy=nowhere/arc.jsonl"], ["nowhere/arc.jsonl"]),
    "task without a file": (["--tasks", "piqa"], ["piqa", "--task-dir"]),
    "unknown task": (["--tasks", "trivia"], ["'trivia'", "arc_easy"]),
    "not in task dir": (["--tasks", "hellaswag", "--task-dir", "{empty_dir}"], ["hellaswag.jsonl"]),
    "malformed JSONL line": (["--tasks", "arc_easy={bad_jsonl}"], ["bad.jsonl", "line 2"]),
    "empty corpus file": (["--tasks", "ppl", "--corpus", "{empty_txt}"], ["empty.txt"]),
    "context beyond the model": (["--tasks", "ppl", "--corpus", "{prose}", "--context", "4096"], ["4096", "256"]),
    "stride above context": (["--tasks", "ppl", "--corpus", "{prose}", "--context", "64", "--stride", "65"],
                             ["stride"]),
    "limit 0": (["--tasks", "ppl", "--limit", "0"], ["limit"]),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_is_one_line(case, tiny_model_dir, prose, tmp_path):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty.txt").write_text("")
    lines = (TASKS / "arc_easy.jsonl").read_text().splitlines()
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n{\"question\": \"unterminated\n")
    files = {"empty_dir": tmp_path / "empty_dir", "empty_txt": tmp_path / "empty.txt",
             "bad_jsonl": tmp_path / "bad.jsonl", "prose": prose}
    args, needles = BAD[case]
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    out = tmp_path / "never.json"
    one_line_error(run("eval", tiny_model_dir, *args, "--out", out), *needles)
    assert not out.exists()


def test_interrupted_eval_leaves_no_result_file(tiny_model_dir, prose, tmp_path, monkeypatch):
    import ridgeline.eval as run_mod

    calls = {"n": 0}
    real = run_mod.run_eval

    def interrupted(cfg, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second variant is interrupted
            raise KeyboardInterrupt
        return real(cfg, *a, **k)

    monkeypatch.setattr(run_mod, "run_eval", interrupted)
    out = tmp_path / "q.json"
    res = run("eval", tiny_model_dir, "--tasks", "ppl", "--corpus", prose, "--context", "64", "--stride", "64",
              "--dtype", "fp32,bf16", "--out", out, "--csv", tmp_path / "q.csv")
    assert res.exit_code == 130
    assert not out.exists() and not (tmp_path / "q.csv").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
