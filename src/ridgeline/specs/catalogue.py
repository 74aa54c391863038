"""The bundled model catalogue: real config.json files (no weights) of the usual edge models."""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib import resources
from typing import Any

from ridgeline.errors import RidgelineError
from ridgeline.specs.model import ModelSpec, spec_from_config


def _models_dir():
    return resources.files("ridgeline.specs").joinpath("data/models")


@lru_cache(maxsize=1)
def model_index() -> tuple[dict[str, Any], ...]:
    """Entries of data/models/index.json: id, hf_id, family, published_params, notes."""
    return tuple(json.loads(_models_dir().joinpath("index.json").read_text())["models"])


def catalogue_config(model_id: str) -> dict[str, Any]:
    """The bundled config.json of a catalogue model (raises with suggestions if unknown)."""
    key = model_id.strip().lower()
    ids = [m["id"] for m in model_index()]
    by_hf = {m.get("hf_id", "").lower(): m["id"] for m in model_index()}
    key = by_hf.get(key, key)
    if key not in ids:
        close = difflib.get_close_matches(key, ids, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise RidgelineError(f"{model_id!r} is not a file, folder or catalogue model{hint} "
                             "(`ridgeline models` lists the catalogue)")
    cfg = json.loads(_models_dir().joinpath(f"{key}.json").read_text())
    cfg.pop("_ridgeline_note", None)
    return cfg


def catalogue_spec(model_id: str) -> ModelSpec:
    """ModelSpec of a catalogue model id (or its Hugging Face id)."""
    cfg = catalogue_config(model_id)
    key = model_id.strip().lower()
    name = next((m["id"] for m in model_index() if key in (m["id"], m.get("hf_id", "").lower())), key)
    return spec_from_config(cfg, name, f"catalogue:{name}")
