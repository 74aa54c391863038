"""The one GGUF reader: a file's header — metadata key/values and the tensor table — read with `struct`.

Layout (GGUF v2/v3, little-endian): magic `GGUF`, version (u32), tensor count (u64), metadata count (u64),
the metadata (key string, value type u32, value; arrays: item type u32, count u64, items), then per tensor its
name, dimension count (u32), dimensions (u64 each, ggml order: innermost first), ggml type (u32) and data
offset (u64). Strings are a u64 length and raw bytes. Only the header is read, in growing chunks, so a
50k-token vocabulary takes milliseconds (gguf-py's GGUFReader memory-maps the file and slices every item).
Every count, length and type is checked against the file's size, and every tensor's data against the data
section (after the header, at `general.alignment`), so a corrupt or truncated file is a RidgelineError naming the
file (and the tensor), never an exception from deep inside `struct` or a load that fails later.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ridgeline.errors import RidgelineError

#: GGUFValueType number -> struct format of a scalar (8 is STRING, 9 ARRAY)
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
MAX_DIM = 1 << 40
MAX_ELEMENTS = 1 << 44


@dataclass(frozen=True)
class GGUFTensor:
    """One entry of the tensor table: name, torch-order shape, ggml type (lower-case name) and data bytes."""

    name: str
    shape: tuple[int, ...]
    ggml_type: str
    nbytes: int
    offset: int


@dataclass(frozen=True)
class GGUFHeader:
    """A GGUF file's header: version, metadata as (key, value, value type, array item type), tensor table."""

    path: Path
    version: int
    kv: tuple[tuple[str, Any, int, int | None], ...]
    tensors: tuple[GGUFTensor, ...]

    def value(self, key: str, default: Any = None) -> Any:
        """A metadata value (strings decoded as UTF-8; arrays of strings kept as bytes)."""
        for k, v, vtype, _ in self.kv:
            if k == key:
                return v.decode("utf-8", "replace") if vtype == STRING else v
        return default


class _Reader:
    """Little-endian reads from the start of a file, in growing chunks, never past its end."""

    def __init__(self, fh: IO[bytes], path: Path, size: int) -> None:
        self.fh, self.path, self.size, self.buf, self.pos = fh, path, size, bytearray(), 0

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise RidgelineError(f"{self.path}: truncated or corrupt GGUF header (reads past the end of the file)")
        while len(self.buf) < self.pos + n:
            chunk = self.fh.read(max(n, len(self.buf), 1 << 20))
            if not chunk:
                raise RidgelineError(f"{self.path}: truncated GGUF header")
            self.buf.extend(chunk)
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos])

    def take(self, fmt: str) -> Any:
        return struct.unpack("<" + fmt, self.raw(struct.calcsize("<" + fmt)))[0]

    def count(self, what: str, item_bytes: int = 1) -> int:
        """A u64 count whose items (at least `item_bytes` each) must fit in the rest of the file."""
        n = self.take("Q")
        if n * item_bytes > self.size - self.pos:
            raise RidgelineError(f"{self.path}: corrupt GGUF header ({what} count {n} does not fit in the file)")
        return n

    def string(self) -> bytes:
        return self.raw(self.count("string length"))

    def array(self, vtype: int, count: int) -> list:
        fmt = f"<{count}{_SCALAR[vtype]}"
        return list(struct.unpack(fmt, self.raw(struct.calcsize(fmt))))


def _value(r: _Reader, key: str) -> tuple[Any, int, int | None]:
    vtype = r.take("I")
    if vtype == ARRAY:
        sub = r.take("I")
        if sub == ARRAY:
            raise RidgelineError(f"{r.path}: key {key} is a nested array; not supported")
        if sub != STRING and sub not in _SCALAR:
            raise RidgelineError(f"{r.path}: key {key} has an unknown array item type {sub}")
        n = r.count(f"{key} items", 8 if sub == STRING else struct.calcsize(_SCALAR[sub]))
        return ([r.string() for _ in range(n)] if sub == STRING else r.array(sub, n)), vtype, sub
    if vtype == STRING:
        return r.string(), vtype, None
    if vtype not in _SCALAR:
        raise RidgelineError(f"{r.path}: key {key} has an unknown value type {vtype}")
    return r.take(_SCALAR[vtype]), vtype, None


def _tensor(r: _Reader) -> GGUFTensor:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    name = r.string().decode("utf-8", "replace")
    n_dims = r.take("I")
    if not 1 <= n_dims <= 4:
        raise RidgelineError(f"{r.path}: tensor {name} has {n_dims} dimensions (ggml allows 1 to 4)")
    dims = [r.take("Q") for _ in range(n_dims)]
    if any(d > MAX_DIM for d in dims) or math.prod(dims) > MAX_ELEMENTS:
        raise RidgelineError(f"{r.path}: tensor {name} has dimensions {dims}, beyond any model (corrupt header)")
    code = r.take("I")
    try:
        qtype = GGMLQuantizationType(code)
    except ValueError:
        raise RidgelineError(f"{r.path}: tensor {name} has an unknown ggml type {code}") from None
    block, size = GGML_QUANT_SIZES[qtype]
    if dims[0] % block:
        raise RidgelineError(f"{r.path}: tensor {name} rows of {dims[0]} are not whole {qtype.name} blocks of {block}")
    nbytes = math.prod(dims[1:]) * (dims[0] // block) * size
    return GGUFTensor(name, tuple(reversed(dims)), qtype.name.lower(), nbytes, r.take("Q"))


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Read the metadata and tensor table of a GGUF file (raises RidgelineError on anything malformed)."""
    path = Path(path)
    try:
        fh = path.open("rb")
        size = path.stat().st_size
    except OSError as exc:
        raise RidgelineError(f"cannot read GGUF {path}: {exc.strerror or exc}") from None
    with fh:
        r = _Reader(fh, path, size)
        if size < 4 or r.raw(4) != b"GGUF":
            raise RidgelineError(f"{path} is not a GGUF file (no GGUF magic bytes)")
        version = r.take("I")
        if version not in (2, 3):
            raise RidgelineError(f"{path}: GGUF version {version} is not supported (2 or 3, little-endian)")
        n_tensors = r.count("tensor", 24)
        kv = []
        for _ in range(r.count("metadata", 12)):
            try:
                key = r.string().decode("utf-8")
            except UnicodeDecodeError:
                raise RidgelineError(f"{path}: malformed GGUF metadata (a key is not UTF-8)") from None
            kv.append((key, *_value(r, key)))
        tensors = tuple(_tensor(r) for _ in range(n_tensors))
    _check_data(path, size, r.pos, dict((k, v) for k, v, _, _ in kv), tensors)
    return GGUFHeader(path, version, tuple(kv), tensors)


def _check_data(path: Path, size: int, header_end: int, meta: dict[str, Any], tensors: tuple[GGUFTensor, ...]) -> None:
    """Every tensor's bytes lie inside the data section, which starts at the header's end rounded up to
    `general.alignment` (default 32): a truncated download is named here, not by a crash while loading."""
    align = meta.get("general.alignment", 32)
    if isinstance(align, bool) or not isinstance(align, int) or not 1 <= align <= 1 << 20 or align & (align - 1):
        raise RidgelineError(f"{path}: general.alignment must be a power of two up to 1 MiB, got {align!r}")
    start = -(-header_end // align) * align
    for t in tensors:
        if t.offset % align or start + t.offset + t.nbytes > size:
            raise RidgelineError(f"{path} is truncated or corrupt: tensor {t.name} ({t.nbytes} bytes at data offset "
                                 f"{t.offset}) does not lie inside the file's {max(0, size - start)} data bytes")


def read_gguf_kv(path: str | Path) -> list[tuple[str, Any, int, int | None]]:
    """The metadata of a GGUF file as (key, value, GGUFValueType, array item type or None), in file order;
    strings as raw bytes (what gguf-py's GGUFWriter.add_key_value takes back)."""
    return list(read_gguf_header(path).kv)
