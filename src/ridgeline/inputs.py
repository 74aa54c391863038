"""Reading what users hand ridgeline: bounded, typed readers for files, and a small schema helper.

Every file ridgeline reads (config.json, device TOML/JSON, manifests, safetensors headers, task and trace JSON
lines, corpus text) goes through these readers, so a bad file is one RidgelineError naming the file (and the
line, and the field's path), never a traceback and never an unbounded read. The limits, and why:

- `MAX_DEPTH` = 64 nesting levels. No file ridgeline reads nests deeper than 6; Python's `json` and `tomllib`
  recurse once per level and raise RecursionError near 1,000.
- integers within int64 (`|n| < 2**63`): every count, size, id and seed ridgeline uses fits there, and torch and
  numpy need it. Python itself refuses integers of more than 4,300 digits with a ValueError; both are turned
  into one line here.
- file sizes: `MAX_SMALL_BYTES` = 64 MiB for configs, device files, manifests and safetensors headers (real ones
  are kilobytes to a few MiB); `MAX_DATA_BYTES` = 1 GiB for JSON-lines task files and traces; `MAX_TEXT_BYTES` =
  2 GiB for corpus and calibration text (read whole, then tokenized: more would not fit a laptop's memory).
- text is UTF-8 (a BOM is allowed), with no NUL byte: a UTF-16 file is named as such, anything else as binary.

`Node` is the schema helper: a parsed value with its file and path, whose typed getters check type, finiteness,
range and presence and fail with `devices.toml: devices[2].peak_flops.bf16 must be a finite number > 0, got 'lots'`.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NoReturn

from ridgeline.errors import RidgelineError

MAX_DEPTH = 64
INT64 = 2**63
MAX_SMALL_BYTES = 64 << 20
MAX_DATA_BYTES = 1 << 30
MAX_TEXT_BYTES = 2 << 30


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def read_bytes(path: str | os.PathLike, what: str = "file", limit: int = MAX_SMALL_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (a folder, a FIFO or a device is refused unread)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise RidgelineError(f"{what} {p} does not exist") from None
    except OSError as exc:
        raise RidgelineError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise RidgelineError(f"{what} {p} is a folder; expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise RidgelineError(f"{what} {p} is not a regular file (a FIFO, socket or device); expected a file")
    if st.st_size > limit:
        raise RidgelineError(f"{what} {p} is {_size(st.st_size)}, more than the {_size(limit)} ridgeline reads "
                             f"for a {what}")
    try:
        with open(p, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise RidgelineError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if len(data) > limit:  # grew while we looked
        raise RidgelineError(f"{what} {p} is more than the {_size(limit)} ridgeline reads for a {what}")
    return data


def decode_text(data: bytes, where: str) -> str:
    """UTF-8 text (BOM allowed); UTF-16/32 text and binary data are named as such."""
    for bom, codec in ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
                       (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError:
                break
            if not any(ord(c) < 32 and c not in "\t\n\r\f" for c in text):
                raise RidgelineError(f"{where} is {codec.upper()} text; save it as UTF-8")
            break
    nul = data.find(b"\0")
    if nul >= 0:
        raise RidgelineError(f"{where} is binary, not text (a NUL byte at offset {nul}); expected UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RidgelineError(f"{where} is not UTF-8 text (bad byte at offset {exc.start}); expected UTF-8 text") \
            from None


def read_text(path: str | os.PathLike, what: str = "file", limit: int = MAX_SMALL_BYTES) -> str:
    """A UTF-8 text file of at most `limit` bytes (see `decode_text`)."""
    return decode_text(read_bytes(path, what, limit), f"{what} {path}")


def check_tree(value: Any, where: str) -> Any:
    """Refuse nesting deeper than MAX_DEPTH and integers outside int64 (walked without recursion; the message
    names the integer's path, e.g. `trace.jsonl line 3: seed is an integer of 20 digits`)."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        v, depth, path = stack.pop()
        if isinstance(v, bool):
            continue
        if isinstance(v, int):
            if not -INT64 <= v < INT64:
                raise RidgelineError(f"{where}: {path or 'the value'} is an integer of {len(str(abs(v)))} digits; "
                                     "integers must fit in 64 bits")
        elif isinstance(v, (dict, list)):
            if depth > MAX_DEPTH:
                raise RidgelineError(f"{where} nests more than {MAX_DEPTH} levels deep")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            stack.extend((x, depth + 1, _sep(path, k)) for k, x in items)
    return value


class _Unreadable(Exception):
    """Why a JSON text could not be read: `syntax` (a JSON error) or a limit; the callers add where."""

    def __init__(self, reason: str, syntax: bool) -> None:
        super().__init__(reason)
        self.syntax = syntax


_TOO_DEEP = f"nests more than {MAX_DEPTH} levels deep"
_TOO_LONG = "holds an integer of more than 4,300 digits; integers must fit in 64 bits"


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Unreadable(f"{exc.msg} at line {exc.lineno} column {exc.colno}", True) from None
    except RecursionError:
        raise _Unreadable(_TOO_DEEP, False) from None
    except ValueError:  # integers beyond Python's 4,300-digit limit
        raise _Unreadable(_TOO_LONG, False) from None


def parse_json(text: str, where: str) -> Any:
    """JSON text -> value, bounded (depth, integer size); errors name `where` and the line."""
    try:
        value = _loads(text)
    except _Unreadable as exc:
        raise RidgelineError(f"{where} is not valid JSON ({exc})" if exc.syntax else f"{where} {exc}") from None
    return check_tree(value, where)


def parse_toml(text: str, where: str) -> Any:
    """TOML text -> dict, bounded like `parse_json`."""
    try:
        value = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RidgelineError(f"{where} is not valid TOML ({exc})") from None
    except RecursionError:
        raise RidgelineError(f"{where} {_TOO_DEEP}") from None
    except ValueError:
        raise RidgelineError(f"{where} {_TOO_LONG}") from None
    return check_tree(value, where)


def read_json(path: str | os.PathLike, what: str = "file", limit: int = MAX_SMALL_BYTES) -> Any:
    """A JSON file, bounded; errors name `what` and the path."""
    where = f"{what} {path}" if what != "file" else str(path)
    return parse_json(decode_text(read_bytes(path, what, limit), where), where)


def read_structured(path: str | os.PathLike, what: str = "file", limit: int = MAX_SMALL_BYTES) -> Any:
    """A TOML file (by its `.toml` suffix) or a JSON file, bounded."""
    where = f"{what} {path}" if what != "file" else str(path)
    text = decode_text(read_bytes(path, what, limit), where)
    return parse_toml(text, where) if Path(path).suffix.lower() == ".toml" else parse_json(text, where)


def json_lines(text: str, where: str, bad: str = "not JSON") -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line of JSON-lines text; a bad line is an error naming it
    (`where line N: <bad> (why)`)."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                value = _loads(line)
            except _Unreadable as exc:
                why = str(exc).replace("at line 1 column", "at column")
                raise RidgelineError(f"{where} line {number}: {bad} ({why})" if exc.syntax
                                     else f"{where} line {number} {why}") from None
            yield number, check_tree(value, f"{where} line {number}")


def read_json_lines(path: str | os.PathLike, what: str = "file", limit: int = MAX_DATA_BYTES,
                    bad: str = "not JSON") -> list[tuple[int, Any]]:
    """Every JSON line of a file (see `json_lines`)."""
    return list(json_lines(decode_text(read_bytes(path, what, limit), f"{what} {path}"), str(path), bad))


# ---------------------------------------------------------------------------------------------
# the schema helper

class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def show(value: Any) -> str:
    """A short repr of a value for messages."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _sep(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


@dataclass(frozen=True)
class Node:
    """A parsed value with where it sits (`file`, and its path inside such as `devices[2].peak_flops`); the typed
    getters check it and fail naming both."""

    value: Any
    file: str
    path: str = ""

    # -- navigation ------------------------------------------------------------------------------

    def __getitem__(self, key: str | int) -> "Node":
        """The child at `key` (MISSING when absent, or when this is not an object / list)."""
        v = self.value
        if isinstance(key, int):
            child = v[key] if isinstance(v, list) and -len(v) <= key < len(v) else MISSING
        else:
            child = v.get(key, MISSING) if isinstance(v, dict) else MISSING
            if child is None:
                child = MISSING  # null means "not given", as in transformers configs
        return Node(child, self.file, _sep(self.path, key))

    @property
    def missing(self) -> bool:
        """Whether the value is absent (or null)."""
        return self.value is MISSING

    def fail(self, expected: str) -> NoReturn:
        """Raise: this value must be `expected`."""
        name = self.path or "the document"
        got = "it is missing" if self.missing else f"got {show(self.value)}"
        prefix = f"{self.file}: " if self.file else ""
        raise RidgelineError(f"{prefix}{name} must be {expected}, {got}")

    def obj(self) -> dict:
        """The value as an object (dict)."""
        if not isinstance(self.value, dict):
            self.fail("an object")
        return self.value

    def entries(self, min_len: int = 0, max_len: int | None = None) -> list["Node"]:
        """The value as a list of child nodes, `min_len` to `max_len` of them."""
        if not isinstance(self.value, list):
            self.fail("a list")
        n = len(self.value)
        if n < min_len or (max_len is not None and n > max_len):
            span = f"at least {min_len}" if max_len is None else f"{min_len} to {max_len}"
            self.fail(f"a list of {span} {'entry' if span == 'at least 1' else 'entries'}")
        return [self[i] for i in range(n)]

    def items(self) -> list[tuple[str, "Node"]]:
        """The value as (key, child node) pairs of an object."""
        return [(k, self[k]) for k in self.obj()]

    # -- scalars ---------------------------------------------------------------------------------

    def number(self, *, gt: float | None = None, ge: float | None = None, le: float | None = None,
               default: Any = MISSING) -> float:
        """A finite number (not a bool) within the bounds; `default` when missing (if given)."""
        if self.missing and default is not MISSING:
            return default
        v = self.value
        bounds = [f"> {gt:g}" if gt is not None else "", f">= {ge:g}" if ge is not None else "",
                  f"<= {le:g}" if le is not None else ""]
        expected = " ".join(["a finite number", " and ".join(b for b in bounds if b)]).strip()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(expected)
        try:
            x = float(v)
        except OverflowError:
            self.fail(expected)
        if not math.isfinite(x) or (gt is not None and not x > gt) or (ge is not None and not x >= ge) \
                or (le is not None and not x <= le):
            self.fail(expected)
        return x

    def integer(self, *, ge: int | None = None, le: int | None = None, default: Any = MISSING) -> int:
        """An integer (a float with an integral value is accepted, a bool is not) within the bounds."""
        if self.missing and default is not MISSING:
            return default
        v = self.value
        bounds = " and ".join(b for b in (f">= {ge}" if ge is not None else "", f"<= {le}" if le is not None else "")
                              if b)
        expected = f"an integer {bounds}".strip()
        if isinstance(v, float) and math.isfinite(v) and v.is_integer() and abs(v) < INT64:
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(expected)
        if (ge is not None and v < ge) or (le is not None and v > le):
            self.fail(expected)
        return v

    def text(self, *, nonempty: bool = True, default: Any = MISSING) -> str:
        """A string (non-empty unless told)."""
        if self.missing and default is not MISSING:
            return default
        if not isinstance(self.value, str) or (nonempty and not self.value):
            self.fail("a non-empty string" if nonempty else "a string")
        return self.value

    def boolean(self, default: Any = MISSING) -> bool:
        """true or false."""
        if self.missing and default is not MISSING:
            return default
        if not isinstance(self.value, bool):
            self.fail("true or false")
        return self.value

    def choice(self, options: tuple[str, ...], default: Any = MISSING) -> str:
        """One of `options`."""
        if self.missing and default is not MISSING:
            return default
        if self.value not in options:
            self.fail(f"one of {', '.join(map(repr, options))}")
        return self.value
