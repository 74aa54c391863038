"""The full analytic grid for a 70B config: 4 scenarios × the whole device catalogue × 6 formats.

Target: under 1 s of wall time on the 2-core development machine. Writes benchmarks/results/sweep.json.
Run: .venv/bin/python benchmarks/sweep.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import machine_info, timed  # noqa: E402

from ridgeline.io import write_json  # noqa: E402
from ridgeline.roofline.sweep import SweepAxes, run_sweep  # noqa: E402
from ridgeline.specs.catalogue import catalogue_spec  # noqa: E402
from ridgeline.specs.device import catalogue  # noqa: E402
from ridgeline.specs.scenario import GRID, parse_scenario  # noqa: E402

FORMATS = ("fp32", "bf16", "q8_0", "q4_k_m", "q4_0", "int4_g128")


def main() -> None:
    """Time the grid and write the record."""
    model = catalogue_spec("llama-3.1-70b")
    devices = tuple(catalogue().values())
    axes = SweepAxes(models=(model,), devices=devices, scenarios=tuple(parse_scenario(s) for s in GRID),
                     weights=FORMATS)
    rows: list = []
    timing = timed(lambda: rows.__setitem__(slice(None), run_sweep(axes)), repeats=5, warmup=1)
    record = {
        "benchmark": "sweep", "model": model.name, "scenarios": list(GRID), "formats": list(FORMATS),
        "devices": [d.id for d in devices], "rows": len(rows), "wall_time": timing,
        "target_s": 1.0, "meets_target": timing["median_s"] < 1.0, "machine": machine_info(),
        "errors": sorted({r["error"] for r in rows if r.get("error")}),
        "sample_rows": [r for r in rows if r["device"] in ("rtx-4090", "h100-sxm") and r["scenario"] == "SISO"],
    }
    out = write_json(Path(__file__).parent / "results" / "sweep.json", record)
    print(f"{len(rows)} rows, median {timing['median_s'] * 1e3:.0f} ms (min {timing['min_s'] * 1e3:.0f}, "
          f"max {timing['max_s'] * 1e3:.0f}) -> {out}")


if __name__ == "__main__":
    main()
