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


def catalogue_entry(model_id: str) -> dict[str, Any] | None:
    """The index entry of a catalogue id or its Hugging Face id (case-insensitive); None if unknown."""
    key = model_id.strip().lower()
    for m in model_index():
        if key in (m["id"], m.get("hf_id", "").lower()):
            return m
    return None


def catalogue_config(model_id: str) -> dict[str, Any]:
    """The bundled config.json of a catalogue model (raises with suggestions if unknown)."""
    entry = catalogue_entry(model_id)
    if entry is None:
        ids = [m["id"] for m in model_index()]
        close = difflib.get_close_matches(model_id.strip().lower(), ids, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise RidgelineError(f"{model_id!r} is not a file, folder or catalogue model{hint} "
                             "(`ridgeline models` lists the catalogue)")
    cfg = json.loads(_models_dir().joinpath(f"{entry['id']}.json").read_text())
    cfg.pop("_ridgeline_note", None)
    return cfg


def catalogue_spec(model_id: str) -> ModelSpec:
    """ModelSpec of a catalogue model id (or its Hugging Face id)."""
    cfg = catalogue_config(model_id)
    name = catalogue_entry(model_id)["id"]
    return spec_from_config(cfg, name, f"catalogue:{name}")


def model_rows() -> list[dict]:
    """One row per catalogue model: architecture, parameters, KV bytes per token in bf16."""
    rows = []
    for entry in model_index():
        spec = catalogue_spec(entry["id"])
        rows.append({"id": entry["id"], "hf_id": entry.get("hf_id"), "model_type": spec.model_type,
                     "params": spec.param_count(), "published_params": entry.get("published_params"),
                     "layers": spec.n_layers, "hidden": spec.hidden,
                     "attention": "/".join(sorted({layer.attention.kind for layer in spec.layers})),
                     "kv_bytes_per_token_bf16": sum(2 * spec.kv_elements_per_token(la) for la in spec.layers),
                     "tied": spec.tied, "moe": any(la.moe for la in spec.layers)})
    return rows
