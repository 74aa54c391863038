"""The HTML report as a person sees it: rendered in a real headless browser (system Chromium driven by
Playwright), every figure drawn, every table filled, nothing wider than a laptop screen; and the plot defects
that were seen there stay fixed (ridge labels overlapping, fractional thread ticks)."""

from __future__ import annotations

import re
import shutil

import pytest

from ridgeline.measure import BenchConfig, Roofs, flat_rows, place_record, run_bench
from ridgeline.report import (Point, Roof, bench_plots, plot_roofline, plot_sweep, quality_rows, summary_report,
                              sweep_rows)
from ridgeline.roofline import predict, prediction_json
from ridgeline.specs import DeviceSpec, Provenance, Scenario

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _svg_texts(path) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", path.read_text())


def test_thread_sweep_ticks_are_whole_threads(tmp_path):
    rows = [{"threads": t, "measured": 10.0 * t, "run": "torch bf16", "scenario": "128:64"} for t in (1, 2)]
    svg = next(p for p in plot_sweep(rows, "threads", ["measured"], tmp_path / "t", group_by=("run",), logx=False)
               if p.suffix == ".svg")
    ticks = re.findall(r'<g id="xtick_\d+">.*?<text[^>]*>([^<]*)</text>', svg.read_text(), re.S)
    assert ticks and all(t.strip().lstrip("−-").isdigit() for t in ticks), ticks


def test_ridge_values_are_in_the_legend_not_beside_the_points(tmp_path):
    roofs = [Roof(f"{role} roof {dt}: cpu", bw, peak, style, dt)
             for dt, peak in (("bf16", 400e9), ("fp32", 190e9))
             for role, bw, style in (("catalogue", 30e9, "-"), ("probe", 28e9, "--"))]
    svg = next(p for p in plot_roofline(roofs, [Point("decode", 1.0, 2e10, "measured")], tmp_path / "r")
               if p.suffix == ".svg")
    text = svg.read_text()
    legend = text[text.index('<g id="legend_1">'):]
    ridges = [t for t in _svg_texts(svg) if "ridge" in t]
    assert len(ridges) == 4 and all(t in legend for t in ridges)  # four roofs, each ridge once, in the legend


@pytest.fixture(scope="module")
def report_page(tiny_model_dir, tmp_path_factory):
    """A report page like the demo's: roofs, predictions, measured runs with Φ, plots and a quality table."""
    out = tmp_path_factory.mktemp("report")
    dev = DeviceSpec("cpu", "test cpu", "cpu", 16e9, 30e9, {"fp32": 200e9, "bf16": 400e9},
                     Provenance("measured", "test", "2026-12-03"))
    records = [place_record(run_bench(BenchConfig(str(tiny_model_dir), "torch", Scenario(16, 8), "fp32",
                                                  threads=t, repeats=2, warmup=0)), Roofs(dev, dev))
               for t in (1, 2)]
    rows = flat_rows(records)
    plots = [(p, "measured") for p in bench_plots(rows, out / "runs") if p.suffix == ".svg"]
    pred = predict("smollm2-135m", dev, "128:64")
    quality = [{"variant": "tiny fp32", "model": {"name": "tiny", "dtype": "float32", "weights": "float32",
                                                  "params": 1000},
                "tasks": {"ppl": {"token_perplexity": 10.0, "word_perplexity": 30.0, "bits_per_byte": 1.2,
                                  "tokens": 100, "settings": {"context": 64, "stride": 32}}}}]
    assert quality_rows(quality)
    page = out / "report.html"
    page.write_text(summary_report("ridgeline report test", None, [prediction_json(pred)], rows, plots,
                                   notes=["a note"], quality=quality).render())
    assert any("threads" in str(p) for p, _ in plots) and sweep_rows(rows)
    return page


def _browser() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra installs it)")
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium on this machine (make test installs Debian's chromium where it can)")


def test_report_renders_in_a_real_browser(report_page, tmp_path):
    from playwright.sync_api import sync_playwright

    executable = _browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(report_page.as_uri())
            figures = page.evaluate("[...document.querySelectorAll('figure svg')].map(s => "
                                    "{const r = s.getBoundingClientRect(); return [r.width, r.height]})")
            tables = page.evaluate("[...document.querySelectorAll('table')].map(t => t.rows.length)")
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert len(figures) == 2 and all(w > 100 and h > 100 for w, h in figures), figures  # roofline, threads
    assert len(tables) >= 3 and all(n >= 2 for n in tables), tables  # a header row and at least one row
    assert overflow <= 0, f"the page is {overflow} px wider than a 1280 px window"
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_techniques_section_renders_in_a_real_browser(tmp_path):
    """The techniques section from the committed records: the heat map and the bars drawn, both tables filled,
    nothing wider than the window."""
    from pathlib import Path

    from ridgeline.report import Report, add_techniques_section, build_techniques, read_records, write_technique_outputs

    executable = _browser()
    from playwright.sync_api import sync_playwright

    table = build_techniques(read_records(Path(__file__).parent.parent / "benchmarks" / "results"))
    files = write_technique_outputs(table, tmp_path / "out")
    figures = [(p, p.stem) for p in files if p.suffix == ".svg"]
    rep = Report("techniques")
    add_techniques_section(rep, table, figures)
    page_path = tmp_path / "report.html"
    page_path.write_text(rep.render())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(page_path.as_uri())
            svgs = page.evaluate("[...document.querySelectorAll('figure svg')].map(s => "
                                 "{const r = s.getBoundingClientRect(); return [r.width, r.height]})")
            tables = page.evaluate("[...document.querySelectorAll('table')].map(t => t.rows.length)")
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            page.screenshot(path=str(tmp_path / "techniques.png"), full_page=True)
        finally:
            browser.close()
    assert len(svgs) == 2 and all(w > 300 and h > 300 for w, h in svgs), svgs
    assert tables == [len(table.rows) + 1] * 3, tables
    assert overflow <= 0, f"the page is {overflow} px wider than a 1280 px window"
    assert (tmp_path / "techniques.png").stat().st_size > 10_000
