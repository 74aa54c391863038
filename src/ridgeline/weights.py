"""Checks on model weights and what they compute: safetensors headers, file checksums, finite values, and where a
non-finite value first appears.

- **safetensors headers** are read and checked before torch touches a file: an 8-byte little-endian header length
  (at most `MAX_HEADER_BYTES`, inside the file), a bounded JSON object (`ridgeline.inputs`), and per tensor a known
  dtype, a shape of at most 8 non-negative dimensions and data offsets inside the file whose span is exactly the
  shape's bytes. A truncated or corrupt file is one RidgelineError naming it and the tensor.
- **pickle checkpoints** (`pytorch_model.bin`, `*.pt`, `*.pth`, `*.ckpt`) are never loaded: unpickling runs code.
- **checksums**: size and zlib CRC-32 over 8 MiB chunks (about a second per GB here), what the model cache verifies.
- **finite weights**: every floating tensor is checked in chunks of `CHUNK` elements (the only temporary is one
  chunk's boolean mask), naming the first tensor holding NaN or Inf.
- **non-finite outputs**: `locate_nonfinite` reruns one input with forward hooks on every module and names the
  first module (in execution order) whose output is not finite; callers use it only after detecting a problem,
  so the normal path pays one `isfinite` reduction over the logits.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable

from ridgeline.errors import RidgelineError

MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit
MAX_DIMS = 8
#: bytes per element of each safetensors dtype
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CHUNK = 1 << 24


def safetensors_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Check a safetensors file's header against the file; return {tensor name: (dtype, shape)}."""
    from ridgeline.inputs import Node, parse_json

    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise RidgelineError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise RidgelineError(f"{path} is truncated or not a safetensors file (its header claims {n} bytes; "
                                     f"the file has {size})")
            raw = fh.read(n)
    except OSError as exc:
        raise RidgelineError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RidgelineError(f"{path}: corrupt safetensors header (not UTF-8)") from None
    root = Node(parse_json(text.rstrip(" "), f"{path} (safetensors header)"), str(path))
    data_bytes = size - 8 - n
    table, spans = {}, []
    for name, entry in root.items():
        if name == "__metadata__":
            continue
        entry.obj()
        dtype = entry["dtype"].text()
        dims = [d.integer(ge=0, le=2**48) for d in entry["shape"].entries(max_len=MAX_DIMS)]
        begin, end = (o.integer(ge=0) for o in entry["data_offsets"].entries(2, 2))
        if end > data_bytes:
            raise RidgelineError(f"{path} is truncated: tensor {name} ends at data byte {end}, but the file holds "
                                 f"{data_bytes} data bytes")
        want = math.prod(dims) * DTYPE_BYTES[dtype] if dtype in DTYPE_BYTES else None
        if end < begin or (want is not None and end - begin != want):
            raise RidgelineError(f"{path}: tensor {name} ({dtype} {dims}) has data offsets [{begin}, {end}], which "
                                 f"do not hold its {want} bytes; the file is corrupt")
        table[name] = (dtype, tuple(dims))
        spans.append((begin, end))
    if max((e for _, e in spans), default=0) != data_bytes:
        raise RidgelineError(f"{path}: its tensors end at byte {max((e for _, e in spans), default=0)} of "
                             f"{data_bytes} data bytes; the file is truncated or corrupt")
    return table


def check_weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a model folder, each header checked; a folder with only pickle checkpoints (or no
    weights at all) is refused."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
        if pickles:
            raise RidgelineError(f"{folder} holds only pickle checkpoints ({', '.join(pickles[:3])}); ridgeline loads "
                                 "safetensors or GGUF only (unpickling can run code): convert it to safetensors")
        raise RidgelineError(f"{folder} has no *.safetensors weights; expected a model folder with model.safetensors")
    for f in files:
        safetensors_header(f)
    return files


def file_checksum(path: str | os.PathLike) -> dict[str, int]:
    """{"size": bytes, "crc32": zlib CRC-32 of the whole file} (read in 8 MiB chunks)."""
    crc, size = 0, 0
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return {"size": size, "crc32": crc}


def nonfinite(tensors: Iterable[tuple[str, Any]]) -> tuple[str, int] | None:
    """(name, count) of the first floating tensor holding NaN or Inf, or None; checked chunk by chunk."""
    import torch

    for name, t in tensors:
        if not t.is_floating_point() or t.device.type == "meta" or not t.numel():
            continue
        flat = t.detach().reshape(-1)
        for start in range(0, flat.numel(), CHUNK):
            # min and max propagate NaN and reach ±Inf: both finite means every element is (and aminmax is
            # about 15x faster than isfinite(...).all() on this CPU)
            if not all(bool(torch.isfinite(v)) for v in torch.aminmax(flat[start:start + CHUNK])):
                return name, sum(int((~torch.isfinite(flat[s:s + CHUNK])).sum())
                                 for s in range(0, flat.numel(), CHUNK))
    return None


def check_finite_weights(model: Any, what: str, rename: Callable[[str], str] | None = None) -> None:
    """Refuse a model whose parameters or buffers hold NaN or Inf, naming the first such tensor (`rename` maps a
    transformers name to the file's own, e.g. the GGUF tensor)."""
    seen: set[int] = set()

    def tensors():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if id(t) not in seen and "rotary" not in name:
                seen.add(id(t))
                yield name, t

    bad = nonfinite(tensors())
    if bad is not None:
        name, count = bad
        if rename is not None:
            try:
                name = rename(name)
            except RidgelineError:
                pass
        raise RidgelineError(f"{what}: tensor {name} holds {count} NaN or infinite values; the weights are corrupt "
                             "(re-download or re-convert the model)")


def locate_nonfinite(model: Any, input_ids: Any, **kwargs: Any) -> tuple[int, str] | None:
    """Run `input_ids` [1, T] through `model` with a forward hook on every module; return (first position, first
    module name) whose output is not finite, in execution order, or None if every output is finite."""
    import torch

    found: list[tuple[int, str]] = []
    handles = []
    if not hasattr(model, "named_modules"):
        return None

    def hook(name: str) -> Callable:
        def fn(module: Any, args: Any, out: Any) -> None:
            t = out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)
            if found or not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() < 2:
                return
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                per_position = bad.reshape(t.shape[0], t.shape[1], -1).any(-1).any(0)
                found.append((int(per_position.nonzero()[0]), name))
        return fn

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.inference_mode():
            model(input_ids=input_ids, use_cache=False, **kwargs)
    except TypeError:  # not a transformers causal LM: no way to rerun it here
        return None
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def nonfinite_message(model: Any, input_ids: Any, what: str, position_offset: int = 0) -> str:
    """The one-line report of non-finite logits: the first position and the first module (and decoder layer)
    whose output is not finite, found by rerunning `input_ids` with hooks."""
    where = locate_nonfinite(model, input_ids)
    if where is None:
        return f"{what}: the model produced non-finite logits (not reproduced when rerun with hooks)"
    pos, module = where
    parts = module.split(".")
    layer = next((f"decoder layer {parts[i + 1]}" for i, p in enumerate(parts[:-1])
                  if p in ("layers", "h") and parts[i + 1].isdigit()), None)
    first = f"{layer} ({module})" if layer else module
    return (f"{what}: the logits are not finite from position {pos + position_offset}; the first non-finite output "
            f"is {first} — the weights or activations overflow (try fp32) or are corrupt")
