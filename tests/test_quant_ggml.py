"""ridgeline.quant.ggml: exact ggml block codecs.

Oracles: gguf-py's quantize/dequantize (legacy types and MXFP4; K-quants dequantize only), ggml's
own reference quantizers called through ctypes in the libggml-base that llama-cpp-python ships,
and llama.cpp's `llama_model_quantize` requantizing the bundled SmolLM2 GGUF.
"""

import ctypes
import os
import struct
from typing import NamedTuple

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from conftest import BUNDLED_GGUF, needs_bundled
from ridgeline.errors import RidgelineError
from ridgeline.quant.ggml import GGML_CODECS, decode, encode, quantize_dequantize, type_size
from ridgeline.specs.formats import get_format

QUANTIZED = [f for f in GGML_CODECS if f not in ("f32", "f16", "bf16")]
K_QUANTS = ["q4_k", "q5_k", "q6_k"]
LEGACY = [f for f in QUANTIZED if f not in K_QUANTS]  # gguf-py can quantize these


def _qtype(fmt: str) -> GGMLQuantizationType:
    return GGMLQuantizationType[fmt.upper()]


def _blocks(data: bytes, fmt: str) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, type_size(fmt)[1])


def _bits(t) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(t, dtype=np.float32)).view(np.uint32)


def _special_blocks(rng: np.random.Generator, row: int) -> np.ndarray:
    """Rows of hand-made blocks: zeros, negative maxima, +-a ties, and rounding ties per format."""
    rows = []
    rows.append(np.zeros(row))  # all-zero blocks
    r = rng.standard_normal(row) * 0.02
    r[::32] = -0.2  # every 32-block has a negative value of largest magnitude
    rows.append(r)
    r = rng.standard_normal(row) * 0.02
    r[0::32], r[5::32] = 0.1, -0.1  # |max| tie between +a and -a: the first one wins
    rows.append(r)
    # q8_0: amax 127 makes d = 1, so k + 0.5 is an exact roundf tie (half away from zero)
    r = (rng.integers(-100, 100, row) + 0.5)
    r[::32] = 127.0
    rows.append(r)
    # q4_0/q5_0: max = -8 / -16 gives d = 1 exactly; q4_1/q5_1: min 0, max 15 / 31 gives d = 1
    r = rng.integers(-7, 8, row) + 0.5 * rng.integers(0, 2, row)
    r[::32] = -8.0
    rows.append(r)
    r = rng.integers(0, 31, row) + 0.5 * rng.integers(0, 2, row)
    r[::32], r[1::32] = 0.0, 31.0
    rows.append(r)
    # mxfp4: amax 6 gives the grid k/2, so these are midpoints between grid values (first index wins)
    r = rng.choice([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -1.75, -5.0], row)
    r[::32] = 6.0
    rows.append(r)
    # nearest_int ties for the K-quants: halves and integers
    rows.append(rng.integers(-40, 40, row) / 2.0)
    rows.append(rng.integers(-8, 8, row).astype(float))
    # an all-negative row and a constant row (min/max clamping in make_qkx2_quants)
    rows.append(-np.abs(rng.standard_normal(row)) - 0.1)
    rows.append(np.full(row, 0.37))
    return np.stack(rows)


def _dataset(name: str, rows: int = 16, row: int = 512) -> np.ndarray:
    rng = np.random.default_rng(DATASETS.index(name))
    shape = (rows, row)
    if name == "normal":
        x = rng.standard_normal(shape) * 0.02
    elif name == "uniform":
        x = rng.uniform(-1, 1, shape)
    elif name == "heavy":
        x = rng.standard_t(2, shape) * 0.01
    elif name == "outliers":
        x = rng.standard_normal(shape) * 0.01 + (rng.random(shape) < 0.003) * 40
    elif name == "sparse":
        x = rng.standard_normal(shape) * (rng.random(shape) < 0.05)
    elif name == "tiny":
        x = rng.standard_normal(shape) * 1e-30
    elif name == "special":
        x = _special_blocks(rng, row)
    else:
        raise KeyError(name)
    return np.ascontiguousarray(x.astype(np.float32))


DATASETS = ["normal", "uniform", "heavy", "outliers", "sparse", "tiny", "special"]


# ----------------------------------------------------------------------------- gguf-py oracle


@pytest.mark.parametrize("fmt", LEGACY)
@pytest.mark.parametrize("data", DATASETS)
def test_legacy_bytes_match_gguf(fmt, data):
    # gguf-py differs from ggml on all-zero blocks holding -0.0 (it takes x[0] as the signed max,
    # C keeps +0), so zeros are made positive here; the C-reference test keeps the signs
    x = _dataset(data) + np.float32(0.0)
    ours = encode(torch.from_numpy(x), fmt)
    assert ours == gguf_quantize(x, _qtype(fmt)).tobytes()
    theirs = gguf_dequantize(np.frombuffer(ours, np.uint8).reshape(x.shape[0], -1), _qtype(fmt))
    assert np.array_equal(_bits(decode(ours, fmt, x.shape)), _bits(theirs))


@pytest.mark.parametrize("fmt", ["f32", "f16", "bf16"])
def test_float_codecs_match_gguf(fmt):
    x = _dataset("heavy")
    ours = encode(torch.from_numpy(x), fmt)
    assert ours == gguf_quantize(x, _qtype(fmt)).tobytes()
    theirs = gguf_dequantize(np.frombuffer(ours, np.uint8).reshape(x.shape[0], -1), _qtype(fmt))
    assert np.array_equal(_bits(decode(ours, fmt, x.shape)), _bits(theirs))


@pytest.mark.parametrize("fmt", K_QUANTS)
@pytest.mark.parametrize("data", DATASETS)
def test_k_quant_decode_matches_gguf(fmt, data):
    x = _dataset(data)
    ours = encode(torch.from_numpy(x), fmt)
    theirs = gguf_dequantize(np.frombuffer(ours, np.uint8).reshape(x.shape[0], -1), _qtype(fmt))
    assert np.array_equal(_bits(decode(ours, fmt, x.shape)), _bits(theirs))


# ----------------------------------------------------------------------------- ggml's C reference


def _ggml_base():
    llama_cpp = pytest.importorskip("llama_cpp")
    path = os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so")
    if not os.path.exists(path):
        pytest.skip("llama-cpp-python ships no libggml-base.so here")
    return ctypes.CDLL(path)


def _c_name(fmt: str) -> str:
    return fmt[:-2] + "_K" if fmt.endswith("_k") else fmt


def _c_quantize(lib, x: np.ndarray, fmt: str) -> bytes:
    """ggml's quantize_row_<type>_ref over the whole tensor (rows are contiguous)."""
    fn = getattr(lib, f"quantize_row_{_c_name(fmt)}_ref")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    x = np.ascontiguousarray(x, dtype=np.float32)
    block, size = type_size(fmt)
    out = np.zeros(x.size // block * size, dtype=np.uint8)
    fn(x.ctypes.data, out.ctypes.data, x.size)
    return out.tobytes()


def _c_dequantize(lib, data: bytes, fmt: str, n: int) -> np.ndarray:
    fn = getattr(lib, f"dequantize_row_{_c_name(fmt)}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    src = np.frombuffer(data, dtype=np.uint8).copy()
    out = np.zeros(n, dtype=np.float32)
    fn(src.ctypes.data, out.ctypes.data, n)
    return out


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_bytes_match_ggml_c_reference(fmt):
    lib = _ggml_base()
    for data in DATASETS:
        x = _dataset(data)
        ours = encode(torch.from_numpy(x), fmt)
        theirs = _c_quantize(lib, x, fmt)
        differ = int((_blocks(ours, fmt) != _blocks(theirs, fmt)).any(axis=1).sum())
        assert differ == 0, f"{fmt} on {data}: {differ} blocks differ from ggml's C reference"
        c_values = _c_dequantize(lib, ours, fmt, x.size).reshape(x.shape)
        assert np.array_equal(_bits(decode(ours, fmt, x.shape)), _bits(c_values))


def test_signed_zeros_match_ggml_c_reference():
    """q4_1/q5_1 store the block minimum; C keeps the sign of the first zero it meets."""
    lib = _ggml_base()
    rng = np.random.default_rng(7)
    x = np.where(rng.random((8, 256)) < 0.5, -0.0, 0.0).astype(np.float32)
    x[4:] += (rng.random((4, 256)) < 0.1) * rng.standard_normal((4, 256)).astype(np.float32)
    for fmt in QUANTIZED:
        assert encode(torch.from_numpy(x), fmt) == _c_quantize(lib, x, fmt), fmt


def test_mxfp4_exponent_near_powers_of_two_matches_c():
    """floor(log2f(amax)) rounds up for the floats just below a power of two."""
    lib = _ggml_base()
    rng = np.random.default_rng(3)
    amax = []
    for k in range(-126, 127, 3):
        a = np.float32(2.0**k)
        for _ in range(4):
            amax.append(a)
            a = np.nextafter(a, np.float32(0))
    amax = np.array(amax, dtype=np.float32)
    x = rng.uniform(-0.9, 0.9, (len(amax), 32)).astype(np.float32) * amax[:, None]
    x[:, 3] = -amax
    assert encode(torch.from_numpy(x), "mxfp4") == _c_quantize(lib, x, "mxfp4")


# ----------------------------------------------------------------------------- llama.cpp oracle

# llama_ftype values (llama_cpp/llama_cpp.py): each requantization of the bundled Q4_1 model
LLAMA_FTYPES = {"q4_0": 2, "q4_k_s": 14, "q5_k_s": 16, "q6_k": 18}
GGML_TYPE_Q8_0 = 8


class _Tensor(NamedTuple):
    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]  # ggml order: ne[0] (the row length) first
    data: np.ndarray  # raw bytes


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _gguf_tensors(path) -> list[_Tensor]:
    """Tensor index of a GGUF v2/v3 file, skipping metadata values.

    gguf.GGUFReader decodes every metadata array element (SmolLM2's 49152 tokens and merges), which
    takes seconds per file; only the tensors are needed here.
    """
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    raw = buf.data if hasattr(buf, "data") else bytes(buf)
    pos = 8
    n_tensors, n_kv = struct.unpack_from("<QQ", raw, pos)
    pos += 16

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", raw, pos)
        pos += 8 + n
        return bytes(raw[pos - n:pos]).decode()

    def skip(vtype: int) -> None:
        nonlocal pos
        if vtype == 8:
            string()
        elif vtype == 9:
            etype, count = struct.unpack_from("<IQ", raw, pos)
            pos += 12
            if etype in _SCALAR_SIZES:
                pos += count * _SCALAR_SIZES[etype]
            else:
                for _ in range(count):
                    skip(etype)
        else:
            pos += _SCALAR_SIZES[vtype]

    alignment = 32
    for _ in range(n_kv):
        key = string()
        (vtype,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if key == "general.alignment":
            (alignment,) = struct.unpack_from("<I", raw, pos)
        skip(vtype)
    infos = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = struct.unpack_from("<I", raw, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", raw, pos + 4)
        ttype, offset = struct.unpack_from("<IQ", raw, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        infos.append((name, GGMLQuantizationType(ttype), tuple(int(d) for d in dims), offset))
    start = (pos + alignment - 1) // alignment * alignment
    tensors = []
    for name, ttype, dims, offset in infos:
        block, size = GGML_QUANT_SIZES[ttype]
        nbytes = int(np.prod(dims)) // block * size
        tensors.append(_Tensor(name, ttype, dims, np.asarray(buf[start + offset:start + offset + nbytes])))
    return tensors


def test_gguf_index_agrees_with_gguf_reader(tmp_path):
    """The small index reader used below sees the same tensors as gguf.GGUFReader."""
    from gguf import GGUFWriter

    path = tmp_path / "small.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_array("tokenizer.ggml.tokens", ["a", "bc", "def"])
    writer.add_uint32("some.count", 7)
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    writer.add_tensor("w", gguf_quantize(x, GGMLQuantizationType.Q4_0), raw_dtype=GGMLQuantizationType.Q4_0)
    writer.add_tensor("v", x[0])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours = {t.name: t for t in _gguf_tensors(str(path))}
    for t in GGUFReader(str(path)).tensors:
        assert ours[t.name].tensor_type == t.tensor_type
        assert ours[t.name].shape == tuple(int(d) for d in t.shape)
        assert ours[t.name].data.tobytes() == np.asarray(t.data).tobytes()


@pytest.fixture(scope="module")
def bundled_source():
    """name -> the bundled tensor dequantized by gguf-py as float32 [rows, row] (cached)."""
    tensors = {t.name: t for t in _gguf_tensors(str(BUNDLED_GGUF))}
    cache: dict[str, torch.Tensor] = {}

    def get(name: str) -> torch.Tensor:
        if name not in cache:
            t = tensors[name]
            values = gguf_dequantize(t.data, t.tensor_type)
            cache[name] = torch.from_numpy(np.ascontiguousarray(values.reshape(-1, t.shape[0])))
        return cache[name]

    get.tensors = tensors
    return get


@pytest.fixture(scope="module")
def llama_requantized(tmp_path_factory):
    """ftype name -> tensors of the bundled model requantized by llama.cpp (each made once)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    folder = tmp_path_factory.mktemp("llama_requantized")
    cache: dict[str, list[_Tensor]] = {}

    def get(name: str) -> list[_Tensor]:
        if name not in cache:
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = LLAMA_FTYPES[name]
            params.allow_requantize = True
            params.nthread = 2
            # token_embd is already Q8_0 in the bundled file: keeping the type makes it a plain copy
            params.token_embedding_type = GGML_TYPE_Q8_0
            out = folder / f"{name}.gguf"
            rc = llama_cpp.llama_model_quantize(str(BUNDLED_GGUF).encode(), str(out).encode(),
                                                ctypes.byref(params))
            assert rc == 0, f"llama_model_quantize failed for {name}"
            cache[name] = _gguf_tensors(str(out))
        return cache[name]

    return get


def _compare_with_llama(tensors: list[_Tensor], source, fmts: set[str], names=None):
    """Per format: [matching blocks, blocks, tensors]; asserts ours is never a worse fit."""
    stats: dict[str, list[int]] = {}
    for t in tensors:
        fmt = t.tensor_type.name.lower()
        if fmt not in fmts or (names is not None and t.name not in names):
            continue
        x = source(t.name)
        ours = encode(x, fmt)
        theirs = t.data.tobytes()
        assert len(ours) == len(theirs), t.name
        same = (_blocks(ours, fmt) == _blocks(theirs, fmt)).all(axis=1)
        entry = stats.setdefault(fmt, [0, 0, 0])
        entry[0] += int(same.sum())
        entry[1] += same.size
        entry[2] += 1
        if not same.all():
            sse_ours = float(((decode(ours, fmt, tuple(x.shape)) - x) ** 2).sum())
            sse_theirs = float(((decode(theirs, fmt, tuple(x.shape)) - x) ** 2).sum())
            assert sse_ours <= 1.0001 * sse_theirs, f"{t.name}: squared error {sse_ours} vs llama.cpp {sse_theirs}"
    return stats


@needs_bundled
@pytest.mark.parametrize("ftype, fmts", [("q6_k", {"q6_k"}), ("q4_k_s", {"q4_k", "q5_k"}),
                                         ("q5_k_s", {"q5_k"})])
def test_k_quants_match_llama_cpp(llama_requantized, bundled_source, ftype, fmts, record_property):
    # rows of 576 are not a multiple of 256, so only ffn_down (rows of 1536) gets the K-quant
    stats = _compare_with_llama(llama_requantized(ftype), bundled_source, fmts)
    assert set(stats) == fmts
    for fmt, (same, total, tensors) in stats.items():
        rate = same / total
        record_property(f"{ftype}:{fmt}", f"{same}/{total} super-blocks in {tensors} tensors")
        print(f"llama.cpp {ftype} {fmt}: {same}/{total} super-blocks bit-exact ({rate:.4%}) in {tensors} tensors")
        assert rate >= 0.999


@needs_bundled
@pytest.mark.parametrize("ftype, fmts", [("q4_0", {"q4_0"}), ("q4_k_s", {"q5_0", "q5_1"}),
                                         ("q6_k", {"q8_0"})])
def test_legacy_types_match_llama_cpp(llama_requantized, bundled_source, ftype, fmts):
    """Legacy types, including the fallbacks the K recipes pick for rows of 576, on two layers."""
    names = {n for n in bundled_source.tensors if n.startswith(("blk.0.", "blk.17."))}
    stats = _compare_with_llama(llama_requantized(ftype), bundled_source, fmts, names)
    assert set(stats) == fmts
    for fmt, (same, total, _) in stats.items():
        assert same == total, f"{ftype} {fmt}: {total - same} of {total} blocks differ"


@needs_bundled
def test_reencoding_the_bundled_file_reproduces_its_bytes(bundled_source):
    """The bundled tensors are Q4_1 (layers) and Q8_0 (token_embd): encoding their values gives them back."""
    for name in ("token_embd.weight", "blk.0.ffn_down.weight", "blk.5.attn_q.weight", "blk.29.ffn_up.weight"):
        t = bundled_source.tensors[name]
        fmt = t.tensor_type.name.lower()
        assert encode(bundled_source(name), fmt) == t.data.tobytes(), name


# ----------------------------------------------------------------------------- round trips, sizes


# relative Frobenius error on N(0, 0.02^2) weights: (low, high)
EXPECTED_ERROR = {
    "f32": (0.0, 0.0), "f16": (1e-4, 3e-4), "bf16": (1e-3, 2.5e-3), "q8_0": (0.0045, 0.0065),
    "q4_0": (0.075, 0.10), "q4_1": (0.068, 0.09), "q5_0": (0.037, 0.05), "q5_1": (0.033, 0.044),
    "q4_k": (0.062, 0.082), "q5_k": (0.031, 0.042), "q6_k": (0.015, 0.021), "mxfp4": (0.10, 0.13),
}


@pytest.mark.parametrize("fmt", GGML_CODECS)
def test_error_on_gaussian_weights(fmt):
    torch.manual_seed(0)
    x = torch.randn(256, 1024) * 0.02
    y = quantize_dequantize(x, fmt)
    assert y.dtype == torch.float32 and y.shape == x.shape
    rel = float((y - x).norm() / x.norm())
    low, high = EXPECTED_ERROR[fmt]
    assert low <= rel <= high, f"{fmt}: relative error {rel:.4f} outside [{low}, {high}]"


@needs_bundled
@pytest.mark.parametrize("fmt", GGML_CODECS)
def test_round_trip_bundled_weights(bundled_source, fmt):
    errors = {}
    for name in ("blk.14.ffn_down.weight", "blk.3.attn_q.weight"):
        x = bundled_source(name)
        if x.shape[1] % type_size(fmt)[0]:
            continue
        data = encode(x, fmt)
        y = decode(data, fmt, tuple(x.shape))
        assert torch.equal(y, quantize_dequantize(x, fmt))
        errors[name] = float((y - x).norm() / x.norm())
    assert errors
    worst = max(errors.values())
    # these weights sit on a Q4_1 grid: q4_1 reproduces them, and finer formats land near Gaussian levels
    bound = {"f32": 0.0, "q4_1": 0.0}.get(fmt, 1.25 * EXPECTED_ERROR[fmt][1])
    assert worst <= bound, f"{fmt}: {errors}"


@pytest.mark.parametrize("fmt", GGML_CODECS)
def test_sizes_match_format_registry(fmt):
    block, size = type_size(fmt)
    assert (block, size) == GGML_QUANT_SIZES[_qtype(fmt)]
    shape = (3, 2 * 256)
    data = encode(torch.randn(shape), fmt)
    assert len(data) == shape[0] * shape[1] // block * size == get_format(fmt).tensor_bytes(shape)


def test_empty_tensor_and_other_inputs():
    assert encode(torch.zeros(0, 64), "q4_0") == b""
    assert decode(b"", "q4_0", (0, 64)).shape == (0, 64)
    x = torch.randn(2, 64, dtype=torch.float64)
    assert encode(x, "Q8_0") == encode(x.float(), "q8_0")  # case-insensitive, float64 rounded to float32
    data = encode(x.float().numpy(), "q8_0")
    assert data == encode(x.float(), "q8_0")
    assert torch.equal(decode(np.frombuffer(data, np.uint8), "q8_0", (2, 64)), decode(data, "q8_0", (2, 64)))


# ----------------------------------------------------------------------------- bad input


def test_unknown_format():
    with pytest.raises(RidgelineError, match=r"unknown ggml format 'q3_k'.*q8_0.*q6_k"):
        encode(torch.zeros(1, 256), "q3_k")
    with pytest.raises(RidgelineError, match="unknown ggml format"):
        type_size("int4")


@pytest.mark.parametrize("shape", [(32,), (2, 2, 32)])
def test_not_2d(shape):
    with pytest.raises(RidgelineError, match="2-D"):
        encode(torch.zeros(shape), "q8_0")
    with pytest.raises(RidgelineError, match="2-D"):
        decode(b"", "q8_0", shape)


def test_row_not_multiple_of_block():
    with pytest.raises(RidgelineError, match="row length 576 is not a multiple of the block size 256"):
        encode(torch.zeros(4, 576), "q4_k")
    with pytest.raises(RidgelineError, match="block size 32"):
        decode(bytes(34), "q8_0", (1, 33))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input(bad):
    x = torch.zeros(2, 32)
    x[1, 3] = bad
    with pytest.raises(RidgelineError, match="NaN or inf"):
        encode(x, "q4_0")


def test_non_float_input():
    with pytest.raises(RidgelineError, match="floating-point"):
        encode(torch.zeros(2, 32, dtype=torch.int32), "q8_0")


def test_decode_wrong_byte_length():
    with pytest.raises(RidgelineError, match="35 bytes do not match shape \\(1, 32\\).*34 bytes"):
        decode(bytes(35), "q8_0", (1, 32))
