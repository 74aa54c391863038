"""`ridgeline devices`, `models` and `formats`: what the catalogues hold (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ridgeline.cli.common import DEVICE_FILE, app, command, console, device_files, dumps

_AS_JSON = typer.Option(False, "--json", help="print as JSON")


def _show(as_json: bool, payload: dict[str, Any], *renderables: Any) -> None:
    """The JSON payload, or the tables and lines."""
    if as_json:
        print(dumps(payload))
    else:
        for r in renderables:
            console.print(r)


@app.command()
@command
def devices(as_json: bool = _AS_JSON, device_file: Optional[Path] = DEVICE_FILE) -> None:
    """List the device catalogue: bandwidth, memory, peak FLOP/s per dtype, TDP, provenance."""
    from ridgeline.report import devices_table
    from ridgeline.specs import catalogue

    devs = catalogue(device_files(device_file))  # an unreadable saved device is left out with a note
    _show(as_json, {"devices": [d.to_json() for d in devs.values()]}, devices_table(devs))


@app.command()
@command
def models(as_json: bool = _AS_JSON) -> None:
    """List the bundled model catalogue (config.json files only, no weights)."""
    from ridgeline.report import models_table
    from ridgeline.specs import model_rows

    rows = model_rows()
    _show(as_json, {"models": rows}, models_table(rows))


@app.command()
@command
def formats(as_json: bool = _AS_JSON) -> None:
    """List the number-format registry with bits per element (block overhead included)."""
    from ridgeline.report import formats_table
    from ridgeline.specs import RECIPES, list_formats

    fmts = list_formats()
    payload = {"formats": [{"name": f.name, "family": f.family, "bits": f.bits, "block": f.block,
                            "description": f.description} for f in fmts], "recipes": sorted(RECIPES)}
    _show(as_json, payload, formats_table(fmts),
          "recipes (per-tensor type assignment as llama.cpp does it): " + ", ".join(sorted(RECIPES)))
