"""Save and load quantized models: safetensors + `ridgeline_quant.json`, never pickle.

A saved folder holds the transformers `config.json`, the tokenizer files, `model.safetensors` (the float
parameters and every quantized module's stored buffers: int8/int4 codes, scales, ggml/MX bytes) and
`ridgeline_quant.json` (the manifest `quantize_` returns: method, config, each quantized module's spec).
Loading builds the float model from the config, swaps in empty quantized modules from the specs and
assigns the saved tensors: the same kernels on the same bytes, so the logits are identical. Tensors that
share storage (tied embeddings) are saved once and re-tied. The folder is written to a temporary sibling and
renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ridgeline.errors import RidgelineError
from ridgeline.io import atomic_folder

MANIFEST = "ridgeline_quant.json"
WEIGHTS = "model.safetensors"


def is_quantized_folder(path: str | os.PathLike) -> bool:
    """True when `path` is a folder written by `save_quantized`."""
    return (Path(path) / MANIFEST).is_file()


def _dedup(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors that alias an earlier one (same storage, offset, shape); return (unique, alias → kept)."""
    seen: dict[tuple, str] = {}
    unique, aliases = {}, {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        unique[name] = t.contiguous()
    return unique, aliases


def save_quantized(model: nn.Module, tokenizer: Any, out_dir: str | os.PathLike) -> Path:
    """Write a quantized model (with its tokenizer) to `out_dir` atomically; return the folder."""
    from safetensors.torch import save_file

    manifest = getattr(model, "ridgeline_quant", None)
    if not manifest:
        raise RidgelineError("the model is not quantized by ridgeline (quantize_ it first)")
    out = Path(out_dir)
    with atomic_folder(out) as tmp:
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        unique, aliases = _dedup(model.state_dict())
        save_file(unique, str(tmp / WEIGHTS), metadata={"format": "pt", "producer": "ridgeline"})
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        data = dict(manifest, aliases=aliases, float_dtype=str(dtype).removeprefix("torch."))
        (tmp / MANIFEST).write_text(json.dumps(data, indent=1, default=str) + "\n")
    return out


#: the largest linear ridgeline rebuilds from a manifest (rows or columns): beyond every published model
MAX_FEATURES = 1 << 20


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a saved quantized folder, read bounded and checked field by field (raises naming the field)."""
    from ridgeline.inputs import Node, read_json

    file = Path(path) / MANIFEST
    data = read_json(file, "quantization manifest")
    node = Node(data, str(file))
    node.obj()
    if "modules" not in data or "config" not in data:
        raise RidgelineError(f"{file} is not a ridgeline quantization manifest (needs 'config' and 'modules')")
    node["config"].obj()
    for name, spec in node["modules"].items():
        spec.obj()
        spec["class"].text()
        for key in ("in_features", "out_features"):
            spec[key].integer(ge=1, le=MAX_FEATURES)
        spec["bias"].boolean()
        if not spec["group"].missing:
            spec["group"].integer(ge=1, le=MAX_FEATURES)
    for key in ("quantized_bytes", "float_params", "quantized_params", "float_bytes"):
        node[key].number(ge=0, default=None)
    for key in ("aliases", "tensor_formats"):
        if not node[key].missing:
            for _, v in node[key].items():
                v.text()
    node["float_dtype"].choice(("float32", "bfloat16", "float16"), default=None)
    return data


def load_quantized(path: str | os.PathLike, dtype: torch.dtype | None = None) -> nn.Module:
    """Rebuild a model saved by `save_quantized` (float parameters in `dtype`, default as saved)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from ridgeline.quant.modules import set_module
    from ridgeline.quant.linear import module_from_spec

    folder = Path(path)
    manifest = read_manifest(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        hint = f" (found {', '.join(pickles)}: pickle checkpoints are refused)" if pickles else ""
        raise RidgelineError(f"{folder} has no {WEIGHTS}{hint}")
    saved_dtype = getattr(torch, manifest.get("float_dtype", "float32"))
    config = AutoConfig.from_pretrained(folder)
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=saved_dtype)
    for fqn, spec in manifest["modules"].items():
        try:
            module = module_from_spec(spec)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise RidgelineError(f"{folder / MANIFEST}: modules.{fqn} cannot be rebuilt ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:120]})") from None
        try:
            set_module(model, fqn, module)
        except (AttributeError, KeyError, IndexError) as exc:
            raise RidgelineError(f"{folder / MANIFEST}: modules.{fqn} names no module of the model "
                                 f"({type(exc).__name__})") from None
    state = load_file(str(weights))
    for name in list(state):
        # fresh, aligned allocations: tensors cut from the file's buffer can sit at offsets the packed
        # kernels do not expect (the int8 kernel crashed on one)
        state[name] = state[name].clone()
    for alias, kept in manifest.get("aliases", {}).items():
        if kept in state:
            state[alias] = state[kept]
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected or missing:
        raise RidgelineError(f"{weights} does not match its manifest: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}")
    if "lm_head" not in manifest["modules"] and getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    if dtype is not None and dtype != saved_dtype:
        for p in model.parameters():
            if p.is_floating_point():
                p.data = p.data.to(dtype)
    model.eval()
    model.ridgeline_quant = {k: v for k, v in manifest.items() if k not in ("aliases", "float_dtype")}
    return model
