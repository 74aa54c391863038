"""The survey's speedup table, measured: every technique ridgeline implements, from the committed benchmark records,
with the roofline's prediction for this machine and the projection to the seed devices and the simulated Harmonia
design (`ridgeline.report.techniques`; `ridgeline techniques` prints the same table).

Default: no timing at all — reads benchmarks/results/*.json (quant, kv, serve, native, accel, and medusa, compress,
distill, combos when present; a missing or partial record becomes its rows' reason) and writes
benchmarks/results/techniques.json: the flat rows (every value or the reason it is absent; `sources` traces every
number to `file.json:key.path` or to the roofline's inputs), the full rows, the technique x device matrix, the
records read (with their machines and dates) and this machine and its versions.

`--measure` (opt-in, minutes; takes /tmp/ridgeline-timing.lock itself, so do not wrap it in flock) first measures the
combination no record has: SWA (W = 512) + GQA (1 KV head) against the unchanged model, fp32, 2048:32, on
ridgeline's torch path, `--rounds` interleaved rounds (one timed repeat per round after one warm-up); it writes
benchmarks/results/combos.json, which the table then reads. (The other combinations — a quantized model in the
paged engine, Medusa on a quantized model — are predicted only; their rows say so.)

Run: .venv/bin/python benchmarks/techniques.py [--measure] [--rounds 3] [--threads 2] [--results DIR] [--out PATH]
     .venv/bin/python benchmarks/techniques.py --markdown   # the README's table, from --out
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import machine_info  # noqa: E402

from ridgeline.io import write_json  # noqa: E402
from ridgeline.report import build_techniques, read_records, techniques_json, techniques_markdown  # noqa: E402

RESULTS = Path(__file__).parent / "results"
LOCK = "/tmp/ridgeline-timing.lock"
MODEL = "smollm2-135m"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def timing_lock():
    """The machine-wide timing lock (other benchmarks share the cores)."""
    with open(LOCK, "a") as fh:
        say(f"waiting for {LOCK} ...")
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def measure_combos(rounds: int, threads: int | None) -> dict:
    """SWA + GQA against the unchanged model, interleaved rounds; the combos.json record."""
    from ridgeline.arch import Variant
    from ridgeline.measure import BenchConfig, run_bench
    from ridgeline.specs import Scenario

    variants = {"base": Variant(), "swa512+gqa1": Variant(window=512, kv_heads=1)}
    samples: dict[str, list[dict]] = {k: [] for k in variants}
    impls: dict[str, str] = {}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            say(f"round {r + 1}/{rounds}: {name}")
            rec = run_bench(BenchConfig(MODEL, "torch", Scenario(2048, 32), "fp32", threads=threads, repeats=1,
                                        warmup=1, variant=variants[name]))
            impls[name] = rec.impl
            samples[name].append({"ttft_s": rec.ttft.median, "decode_tokens_per_s": rec.decode_tokens_per_s.median})
    rows = []
    for name, xs in samples.items():
        row = {"variant": name, "impl": impls[name], "rounds": rounds}
        for key in ("ttft_s", "decode_tokens_per_s"):
            vals = [x[key] for x in xs]
            row[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "samples": vals}
        rows.append(row)
    return {"benchmark": "combos", "model": MODEL, "dtype": "fp32", "scenario": "2048:32", "rows": rows,
            "note": "interleaved rounds (order alternates), one timed repeat per round after one warm-up; "
                    "model load excluded"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, default=RESULTS / "techniques.json")
    ap.add_argument("--measure", action="store_true", help="measure SWA + GQA first (minutes; takes the timing lock)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--markdown", action="store_true", help="print --out's table as Markdown (the README's) and stop")
    a = ap.parse_args()
    if a.markdown:
        import json

        print(techniques_markdown(json.loads(a.out.read_text())), end="")
        return
    start = {"uptime": uptime(), "machine": machine_info()}
    if a.measure:
        with timing_lock():
            before = uptime()
            combos = measure_combos(a.rounds, a.threads)
            combos |= {"machine": machine_info(), "uptime_before": before, "uptime_after": uptime(),
                       "timing_lock": LOCK}
        write_json(a.results / "combos.json", combos)
        say(f"wrote {a.results / 'combos.json'}")
    records = read_records(a.results)
    table = build_techniques(records)
    record = {"benchmark": "techniques", "machine": start["machine"], "uptime": start["uptime"],
              "results_folder": str(a.results),
              "records_read": {name: {"machine": rec.get("machine", {}).get("cpu") if isinstance(rec.get("machine"),
                                                                                                  dict) else None,
                                      "date": rec.get("machine", {}).get("date") if isinstance(rec.get("machine"),
                                                                                                dict) else None,
                                      "complete": rec.get("complete", True)}
                               for name, rec in records.items()},
              **techniques_json(table)}
    write_json(a.out, record)
    say(f"wrote {a.out}: {len(table.rows)} techniques, predicted on {table.host or table.host_why}")
    for r in table.rows:
        say(f"{r.technique:58s} measured {r.measured_headline if r.measured_headline is not None else '-'!s:>8.8s} "
            f"seed {r.literature}")


if __name__ == "__main__":
    main()
