"""The techniques table (`ridgeline.report.techniques`, `ridgeline techniques`): speedups counted by hand from a small
records folder, every number traceable to its record, reasons for absent numbers, predictions equal to `predict`,
explanations exactly outside the seed's 2x band, JSON and CSV written atomically with equal content, the report
section rendered."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ridgeline.cli import app
from ridgeline.errors import RidgelineError
from ridgeline.report import (TECHNIQUES, Report, add_techniques_section, build_techniques, read_records, resolve,
                              techniques_json)
from ridgeline.roofline import predict
from ridgeline.specs import Speculation

RESULTS = Path(__file__).parent.parent / "benchmarks" / "results"
MACHINE = {"cpu": "AMD EPYC", "cores": 2}


def _stats(median: float) -> dict:
    return {"median": median, "min": median, "max": median}


def _records() -> dict[str, dict]:
    """Numbers small enough to check by hand."""
    quant = {"machine": MACHINE, "rows": [
        {"variant": "bf16", "bytes": 200, "ppl": 30.0, "ttft_s": _stats(0.2), "decode_tokens_per_s": _stats(20.0)},
        {"variant": "llm_int8", "bytes": 100, "ppl": 33.0, "ttft_s": _stats(0.1), "decode_tokens_per_s": _stats(30.0),
         "emulated": False},
        {"variant": "bfp-mxint8", "bytes": 50, "ppl": 36.0, "ttft_s": _stats(0.4), "decode_tokens_per_s": _stats(5.0),
         "emulated": True}]}
    kv = {"machine": MACHINE, "rows": [
        {"variant": "fp32", "kv_bytes_16bit_float": 3000, "ppl": 40.0, "decode": {"tokens_per_s": 10.0},
         "decode_emulated": False},
        {"variant": "gqa1", "kv_bytes_16bit_float": 1000, "ppl": 80.0, "decode": {"tokens_per_s": 11.0},
         "decode_emulated": False}]}
    serve = {"machine": MACHINE, "engine_vs_sequential": 3.0, "engine_vs_generate_batch": 1.25,
             "throughput": {"engine": {"last_run": {"kv_in_use_bytes": {"peak": 4096}}}}}
    medusa = {"machine": MACHINE, "complete": False, "heldout_accuracy": {}}
    return {"quant.json": quant, "kv.json": kv, "serve.json": serve, "medusa.json": medusa}


@pytest.fixture()
def folder(tmp_path) -> Path:
    for name, rec in _records().items():
        (tmp_path / name).write_text(json.dumps(rec))
    return tmp_path


@pytest.fixture(scope="module")
def committed():
    """The table from the committed records (what benchmarks/techniques.py writes)."""
    records = read_records(RESULTS)
    return records, build_techniques(records)


def _row(table, key):
    return next(r for r in table.rows if r.key == key)


def test_speedups_memory_and_quality_from_hand_made_records(folder):
    table = build_techniques(read_records(folder))
    r = _row(table, "llm_int8")
    assert r.values["prefill_speedup"] == pytest.approx(0.2 / 0.1)  # baseline TTFT / technique TTFT
    assert r.values["decode_speedup"] == pytest.approx(30 / 20)
    assert r.values["memory_ratio"] == pytest.approx(200 / 100)
    assert r.values["ppl"] == 33.0 and r.values["ppl_change"] == pytest.approx(0.1)
    assert not r.notes  # not emulated
    mx = _row(table, "mxint8")
    assert mx.values["decode_speedup"] == pytest.approx(0.25) and mx.notes and mx.notes[0].startswith("emulated")
    g = _row(table, "gqa")
    assert g.values["decode_speedup"] == pytest.approx(1.1) and g.values["memory_ratio"] == pytest.approx(3.0)
    assert g.values["ppl_change"] == pytest.approx(1.0)
    assert _row(table, "paged").values["decode_speedup"] == 3.0
    assert _row(table, "paged_vs_batch").values["decode_speedup"] == 1.25
    assert table.host == "epyc-zen4-2vcpu"  # the records' machine's catalogue entry


def test_missing_and_partial_records_say_why(folder):
    table = build_techniques(read_records(folder))
    scrl = _row(table, "scrl")
    assert scrl.values["prefill_speedup"] is None
    assert scrl.why["prefill_speedup"] == ("not measured: benchmarks/results/compress.json missing — run "
                                           "benchmarks/compress.py")
    assert "distill.json missing" in _row(table, "distill").why["decode_speedup"]
    medusa = _row(table, "medusa")
    assert "partial (complete: false)" in medusa.why["decode_speedup"]
    assert "kv.json" in _row(table, "gqa").why["prefill_speedup"]  # present record, phase not timed
    assert "combos.json missing — run benchmarks/techniques.py --measure" in _row(table, "swa_gqa").why["decode_speedup"]
    for key in ("int8_paged", "medusa_int8"):
        assert "combos.json missing — run benchmarks/techniques.py --measure" in _row(table, key).why["decode_speedup"]
    for r in table.rows:  # never a blank cell: every value or its reason
        for key, v in r.values.items():
            assert v is not None or r.why.get(key), (r.key, key)
        for col, v in table.matrix[r.key].items():
            assert isinstance(v, float) or (isinstance(v, str) and v), (r.key, col)


def test_a_complete_medusa_record_is_read_and_predicted_with_its_speculation(folder):
    rec = {"machine": MACHINE, "complete": True, "decode": {"medusa_greedy": {"speedup_vs_greedy_same_path": 1.8}},
           "roofline": {"speculation": {"tokens": 6, "accepted": 2.5, "heads": 3, "untied": False, "draft_vocab": 0}}}
    (folder / "medusa.json").write_text(json.dumps(rec))
    table = build_techniques(read_records(folder))
    m = _row(table, "medusa")
    assert m.values["decode_speedup"] == 1.8
    base = predict("smollm2-135m", "epyc-zen4-2vcpu", "128:128", weights="fp32", acts="fp32", kv="fp32")
    spec = predict("smollm2-135m", "epyc-zen4-2vcpu", "128:128", weights="fp32", acts="fp32", kv="fp32",
                   speculation=Speculation(6, 2.5, 3))
    assert m.values["predicted_decode"] == pytest.approx(spec.decode.tokens_per_s / base.decode.tokens_per_s)
    assert "medusa.json:roofline.speculation" in m.sources["predicted_decode"]


def test_an_empty_medusa_tree_is_named_in_the_explanation(folder):
    rec = {"machine": MACHINE, "complete": True, "decode": {"medusa_greedy": {"speedup_vs_greedy_same_path": 1.05}},
           "roofline": {"speculation": {"tokens": 1, "accepted": 1.0, "heads": 0}}}
    (folder / "medusa.json").write_text(json.dumps(rec))
    m = _row(build_techniques(read_records(folder)), "medusa")
    assert m.values["predicted_decode"] == pytest.approx(1.0)
    assert "checks 1 token and keeps 1.00" in m.explanation and "decodes as plain greedy" in m.explanation
    rec["roofline"]["speculation"] = {"tokens": 6, "accepted": 1.1, "heads": 3}  # still outside ×2.35–×2.83 / 2
    (folder / "medusa.json").write_text(json.dumps(rec))
    m = _row(build_techniques(read_records(folder)), "medusa")
    assert "checks 6 tokens and keeps 1.10" in m.explanation and "plain greedy" not in m.explanation


def _refs(source: str) -> list[str]:
    return [p.strip() for part in source.split(" / ") for p in part.split(" + ")]


@pytest.mark.parametrize("which", ["hand-made", "committed"])
def test_every_number_has_a_source_that_resolves_to_it(which, folder, committed):
    records = read_records(folder) if which == "hand-made" else committed[0]
    table = build_techniques(records) if which == "hand-made" else committed[1]
    for r in table.rows:
        for key, v in r.values.items():
            if v is None:
                continue
            src = r.sources[key]
            if src.startswith("roofline:"):
                continue
            refs = _refs(src)
            nums = [resolve(records, ref) for ref in refs]
            assert all(isinstance(n, (int, float)) for n in nums), (r.key, key, src)
            if len(refs) == 1 and " / " not in src:
                assert nums[0] == v
            elif " / " in src and " + " not in src:
                expect = nums[0] / nums[1] - (1 if key == "ppl_change" else 0)
                assert expect == pytest.approx(v), (r.key, key)


def test_resolve_follows_keys_and_selectors_and_names_what_is_missing():
    recs = {"a.json": {"rows": [{"k": "x.1", "v": {"w": 3}}, {"k": "y", "rate": 2.0, "v": 5}]}}
    assert resolve(recs, "a.json:rows[k=x.1].v.w") == 3
    assert resolve(recs, "a.json:rows[k=y,rate=2.0].v") == 5
    assert resolve(recs, "a.json:rows[1].v") == 5
    with pytest.raises(RidgelineError, match="no item with k=z"):
        resolve(recs, "a.json:rows[k=z].v")
    with pytest.raises(RidgelineError, match="b.json is not among"):
        resolve(recs, "b.json:rows")


def _independent_prediction(t, device="epyc-zen4-2vcpu") -> tuple[float | None, float | None]:
    """The technique's predicted (prefill, decode) speedups, computed here from `predict` directly."""
    p = t.projection
    spec = Speculation(*p.speculation) if p.speculation else None
    base = predict("smollm2-135m", device, p.scenario, batch=p.base_batch, weights=p.base, acts=p.base, kv=p.base)
    tech = predict("smollm2-135m", device, p.scenario, batch=p.batch, weights=p.weights or p.base,
                   acts=p.acts or p.base, kv=p.kv or p.base, compute=p.compute, window=p.window, kv_heads=p.kv_heads,
                   layers=p.layers, compress=p.compress, compressor=p.compressor, speculation=spec)
    prefill = (base.prefill.time_s / p.base_batch) / (tech.prefill.time_s / p.batch)
    return prefill, tech.decode.tokens_per_s / base.decode.tokens_per_s


def test_predicted_speedups_equal_predict_on_the_same_inputs(folder):
    table = build_techniques(read_records(folder))  # no medusa speculation in these records: the stated assumption
    for t in TECHNIQUES:
        r = _row(table, t.key)
        if t.projection.not_applicable:
            assert r.values["predicted_decode"] is None and "not applicable" in r.why["predicted_decode"]
            continue
        prefill, decode = _independent_prediction(t)
        assert r.values["predicted_prefill"] == pytest.approx(prefill, rel=1e-9), t.key
        assert r.values["predicted_decode"] == pytest.approx(decode, rel=1e-9), t.key
        headline = t.headline if t.headline == "prefill" else "decode"
        for dev in ("rtx-3090", "raspberry-pi-5"):
            p2, d2 = _independent_prediction(t, dev)
            assert table.matrix[t.key][dev] == pytest.approx(p2 if headline == "prefill" else d2, rel=1e-9)


def test_explanations_appear_exactly_outside_the_band_and_come_from_the_prediction(folder, committed):
    for table in (build_techniques(read_records(folder)), committed[1]):
        for r in table.rows:
            m = r.values["prefill_speedup" if r.headline == "prefill" else "decode_speedup"]
            lo, hi = r.literature_low, r.literature_high
            outside = m is not None and lo is not None and (m < lo / 2 or m > hi * 2)
            assert (r.explanation is not None) == outside, (r.key, m, lo, hi)
    table = build_techniques(read_records(folder))
    gqa, paged, llm = _row(table, "gqa"), _row(table, "paged"), _row(table, "llm_int8")
    assert llm.explanation is None and paged.explanation is None  # ×1.5 at ×1.5, ×3 inside ×2–×4
    base = predict("smollm2-135m", "epyc-zen4-2vcpu", "2048:32", weights="fp32", acts="fp32", kv="fp32")
    assert f"{base.decode.intensity:.3g} FLOP/B" in gqa.explanation and "memory-bound" in gqa.explanation
    assert f"×{gqa.values['predicted_decode']:.2f}" in gqa.explanation and "135 M-parameter" in gqa.explanation


def _cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def test_cli_writes_json_and_csv_with_equal_content(folder, tmp_path):
    out = tmp_path / "out"
    res = _cli("techniques", "--results", folder, "--out", out)
    assert res.exit_code == 0, res.output
    assert "LLM.int8" in res.output and "compress.json" in res.output  # a row, and a missing record's reason
    data = json.loads((out / "techniques.json").read_text())
    rows = list(csv.DictReader(io.StringIO((out / "techniques.csv").read_text())))
    assert [r["key"] for r in rows] == [r["key"] for r in data["rows"]] == [t.key for t in TECHNIQUES]
    assert list(rows[0]) == data["columns"]
    for c, j in zip(rows, data["rows"]):
        for k, v in j.items():
            if isinstance(v, bool):
                assert c[k] == str(v)
            elif isinstance(v, float):
                assert float(c[k]) == v
            else:
                assert c[k] == ("" if v is None else str(v)), (j["key"], k)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    assert {p.name for p in out.iterdir()} >= {"techniques_matrix.svg", "techniques_vs_literature.svg"}


def test_an_interrupted_write_leaves_the_previous_files(folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert _cli("techniques", "--results", folder, "--out", out).exit_code == 0
    csv_before = (out / "techniques.csv").read_text()
    (folder / "serve.json").write_text(json.dumps({**_records()["serve.json"], "engine_vs_sequential": 9.0}))
    real = os.replace

    def failing(src, dst, *a, **k):
        if str(dst).endswith("techniques.csv"):
            raise OSError(28, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing)
    res = _cli("techniques", "--results", folder, "--out", out, "--json")
    assert res.exit_code == 2 and "No space left" in res.output
    assert not [p for p in out.iterdir() if ".ridgeline-" in p.name]  # the temporary is gone
    assert (out / "techniques.csv").read_text() == csv_before  # the old CSV stands, whole
    assert json.loads((out / "techniques.json").read_text())["rows"]  # the JSON (written first) is whole


def test_bad_results_folder_is_one_line(tmp_path):
    res = _cli("techniques", "--results", tmp_path / "nope")
    assert res.exit_code == 2 and "is not a folder of benchmark records" in res.output
    (tmp_path / "quant.json").write_text("{not json")
    res = _cli("techniques", "--results", tmp_path)
    assert res.exit_code == 2 and "cannot be read as JSON" in res.output


def test_report_section_has_its_tables_every_row_and_the_figures(committed, tmp_path):
    from ridgeline.report.techniques_view import plot_literature, plot_matrix

    table = committed[1]
    figs = [(next(p for p in plot_matrix(table, tmp_path / "m") if p.suffix == ".svg"), "matrix"),
            (next(p for p in plot_literature(table, tmp_path / "b") if p.suffix == ".svg"), "bars")]
    rep = Report("techniques")
    add_techniques_section(rep, table, figs)
    page = rep.render()
    tables = re.findall(r"<table>.*?</table>", page, re.S)
    assert len(tables) == 3 and all(t.count("<tr>") == len(TECHNIQUES) + 1 for t in tables)
    assert page.count("<svg") == 2
    assert "<td></td>" not in page  # never a blank cell
    assert all(r.technique.split(" (")[0] in page for r in table.rows)
    assert techniques_json(table)["matrix"]["gqa"]["rtx-3090"] > 1


def test_demo_section_takes_seconds_and_adds_its_files(tmp_path):
    import time

    from ridgeline.cli.techniques import OUT_FILES, demo_techniques

    rep = Report("demo")
    t0 = time.perf_counter()
    demo_techniques(rep, tmp_path)
    assert time.perf_counter() - t0 < 120  # seconds on an idle machine; generous for a shared one
    assert {p.name for p in tmp_path.iterdir()} == set(OUT_FILES)
    page = rep.render()
    assert "committed benchmark records" in page and page.count("<svg") == 2


def test_readme_table_is_generated_from_the_committed_techniques_json():
    from ridgeline.report import techniques_markdown

    record = json.loads((RESULTS / "techniques.json").read_text())
    readme = (RESULTS.parent.parent / "README.md").read_text()
    assert techniques_markdown(record) in readme  # regenerate: benchmarks/techniques.py --markdown
    assert [r["key"] for r in record["rows"]] == [t.key for t in TECHNIQUES]


def test_compress_and_distill_records_in_their_scripts_shape_are_read(folder):
    """The shapes benchmarks/compress.py and benchmarks/distill.py write (the parts the table reads)."""
    compress = {"machine": MACHINE, "timing": {"rows": [
        {"length": 2048, "rate": None, "method": "full", "kv_bytes_fp32": 4000, "speedup_vs_full": 1.0},
        {"length": 2048, "rate": 2.0, "method": "scrl", "kv_bytes_fp32": 2000, "speedup_vs_full": 1.6},
        {"length": 2048, "rate": 4.0, "method": "scrl", "kv_bytes_fp32": 1000, "speedup_vs_full": 2.5}]},
        "quality": {"summary": [{"length": 2048, "rate": 2.0, "method": "scrl", "cloze_accuracy": 0.5}]}}
    distill = {"machine": MACHINE, "rows": [
        {"stage": "teacher", "kind": "teacher", "model_bytes": 300, "ppl": 20.0, "decode_tok_s": 10.0,
         "prefill_tok_s": 100.0},
        {"stage": "kd-adamw-s0", "kind": "kd", "optimizer": "adamw", "seed": 0, "model_bytes": 200, "ppl": 30.0,
         "decode_tok_s": 14.0, "prefill_tok_s": 150.0, "cloze_acc": 0.2, "mc_acc_norm": 0.3},
        {"stage": "kd-muon-s0", "kind": "kd", "optimizer": "muon", "seed": 0, "model_bytes": 200, "ppl": 25.0,
         "decode_tok_s": 15.0, "prefill_tok_s": 140.0, "cloze_acc": 0.25, "mc_acc_norm": 0.4}]}
    (folder / "compress.json").write_text(json.dumps(compress))
    (folder / "distill.json").write_text(json.dumps(distill))
    table = build_techniques(read_records(folder))
    s = _row(table, "scrl")
    assert s.values["prefill_speedup"] == 1.6 and s.values["memory_ratio"] == 2.0 and s.values["cloze"] == 0.5
    assert s.explanation is None and s.why["decode_speedup"].startswith("not measured: compress.json times TTFT")
    d = _row(table, "distill")
    assert d.values["decode_speedup"] == pytest.approx(1.5) and d.values["prefill_speedup"] == pytest.approx(1.4)
    assert d.values["memory_ratio"] == pytest.approx(1.5) and d.values["ppl_change"] == pytest.approx(0.25)
    assert (d.values["cloze"], d.values["mc"]) == (0.25, 0.4)


def _combos() -> dict:
    """combos.json as benchmarks/techniques.py --measure writes it (the parts the table reads), countable by hand."""
    return {"machine": MACHINE, "rows": [
        {"variant": "base", "ttft_s": _stats(2.0), "decode_tokens_per_s": _stats(10.0)},
        {"variant": "swa512+gqa1", "ttft_s": _stats(1.0), "decode_tokens_per_s": _stats(12.0)}],
        "int8_paged": {"baseline": "fp32_sequential_generate", "weights_bytes": {"fp32": 400, "int8": 160}, "rows": [
            {"system": "fp32_sequential_generate", "throughput_tokens_per_s": _stats(10.0)},
            {"system": "fp32_engine", "throughput_tokens_per_s": _stats(30.0)},
            {"system": "int8_engine", "throughput_tokens_per_s": _stats(45.0)}]},
        "medusa_int8": {"baseline": "fp32_greedy", "rows": [
            {"system": "fp32_greedy", "decode_tokens_per_s": _stats(20.0), "tokens_per_step": 1.0},
            {"system": "int8_greedy", "decode_tokens_per_s": _stats(30.0), "tokens_per_step": 1.0},
            {"system": "int8_medusa_greedy", "decode_tokens_per_s": _stats(50.0), "tokens_per_step": 2.5,
             "identical_to_greedy": True}],
            "speculation": {"tokens": 6, "accepted": 2.5, "heads": 3}}}


@pytest.fixture()
def combos_folder(folder) -> Path:
    quant = json.loads((folder / "quant.json").read_text())
    quant["rows"] += [{"variant": "fp32", "bytes": 400, "ppl": 30.0}, {"variant": "rtn-w8", "bytes": 160, "ppl": 33.0}]
    (folder / "quant.json").write_text(json.dumps(quant))
    (folder / "combos.json").write_text(json.dumps(_combos()))
    return folder


def test_the_combinations_are_read_from_combos_json(combos_folder):
    table = build_techniques(read_records(combos_folder))
    sg = _row(table, "swa_gqa")
    assert sg.values["prefill_speedup"] == pytest.approx(2.0) and sg.values["decode_speedup"] == pytest.approx(1.2)
    p = _row(table, "int8_paged")
    assert p.values["decode_speedup"] == pytest.approx(45 / 10)  # int8 engine / fp32 sequential generate
    assert p.values["memory_ratio"] == pytest.approx(400 / 160) and p.values["ppl_change"] == pytest.approx(0.1)
    assert p.why["prefill_speedup"].startswith("not measured: combos.json reports end-to-end throughput")
    assert "sequential" in p.baseline and p.sources["decode_speedup"] == (
        "combos.json:int8_paged.rows[system=int8_engine].throughput_tokens_per_s.median / "
        "combos.json:int8_paged.rows[system=fp32_sequential_generate].throughput_tokens_per_s.median")
    m = _row(table, "medusa_int8")
    assert m.values["decode_speedup"] == pytest.approx(50 / 20)  # int8 Medusa greedy / fp32 plain greedy
    assert m.values["memory_ratio"] == pytest.approx(2.5) and m.values["ppl_change"] == pytest.approx(0.1)
    assert m.notes and m.notes[0].startswith("lossless")
    base = predict("smollm2-135m", "epyc-zen4-2vcpu", "128:128", weights="fp32", acts="fp32", kv="fp32")
    spec = predict("smollm2-135m", "epyc-zen4-2vcpu", "128:128", weights="int8_pc", acts="fp32", kv="fp32",
                   speculation=Speculation(6, 2.5, 3))
    assert m.values["predicted_decode"] == pytest.approx(spec.decode.tokens_per_s / base.decode.tokens_per_s)
    assert "combos.json:medusa_int8.speculation" in m.sources["predicted_decode"]
    for r in (p, m):  # every number traces to what it was computed from
        for key, src in r.sources.items():
            if not src.startswith("roofline"):
                for ref in _refs(src):
                    resolve(read_records(combos_folder), ref)


def test_a_combination_the_record_did_not_measure_says_why(combos_folder):
    combos = _combos()
    combos["medusa_int8"] = {"reason": "no Medusa heads in /nowhere (train them with benchmarks/medusa.py)"}
    (combos_folder / "combos.json").write_text(json.dumps(combos))
    table = build_techniques(read_records(combos_folder))
    m = _row(table, "medusa_int8")
    assert m.why["decode_speedup"] == "not measured: no Medusa heads in /nowhere (train them with benchmarks/medusa.py)"
    assert isinstance(m.values["predicted_decode"], float)  # predicted with the assumed speculation
    assert "assumed" in m.sources["predicted_decode"]
    old = {"machine": MACHINE, "rows": combos["rows"]}  # a combos.json from before the int8 combinations
    (combos_folder / "combos.json").write_text(json.dumps(old))
    table = build_techniques(read_records(combos_folder))
    assert _row(table, "swa_gqa").values["decode_speedup"] == pytest.approx(1.2)
    for key in ("int8_paged", "medusa_int8"):
        assert _row(table, key).why["decode_speedup"].startswith("not measured: combos.json lacks combos.json:")


def test_scrl_on_the_simulated_harmonia_design_is_a_speedup(folder):
    """Compressing a 2048-token prompt 2x with a 4-layer scorer shortens Harmonia's prefill (it read x0.13 while
    the compressor's products were priced on the vector unit)."""
    table = build_techniques(read_records(folder))
    v = table.matrix["scrl"]["accel:harmonia"]
    assert isinstance(v, float) and 1.2 < v < 2.0
