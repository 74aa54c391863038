"""Fuzzing every reader: random and mutated documents get a RidgelineError or a value, never another exception.

Seeds are the real files: the bundled model's config.json, the bundled GGUF's header (its metadata without the
tokenizer's 49k-entry arrays, and its tensor table, in a sparse file of the real size), every device catalogue entry,
trace lines and the multiple-choice task files under tests/data. Mutations replace, delete or nest values at random
paths (extreme integers, NaN and infinities, wrong types, deep nesting), or flip and overwrite raw bytes.

Derandomized (a fixed seed, no example database) so CI is reproducible; 12,200 generated cases in all (the
`CASES` table). Hypothesis draws one seed per case and the mutation runs on `random.Random(seed)`: generation is
cheap, the readers take the time. Measured on the 2-core machine at a load average of 7.5 (other agents' jobs):
85 s wall, 43 s of CPU time (an idle machine's wall time), ~15 s of it the first import of torch/transformers.
"""

from __future__ import annotations

import json
import math
import random
import struct
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ridgeline.errors import RidgelineError

from conftest import BUNDLED_GGUF

#: examples per test: 12,200 in total
CASES = {"config_dict": 2000, "config_text": 1000, "predict": 300, "gguf_bytes": 1000, "gguf_values": 400,
         "device_dict": 2000, "device_text": 800, "trace_obj": 1500, "trace_text": 600, "task_docs": 1500,
         "task_text": 400, "manifest": 400, "safetensors": 300}
assert sum(CASES.values()) >= 10_000

DATA = Path(__file__).parent / "data" / "tasks"


def fuzz(name: str):
    return settings(max_examples=CASES[name], derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One scratch folder per test, reused by every case (a new temporary folder per case costs more than the
    case)."""
    root = tmp_path_factory.mktemp("fuzz")

    def folder(name: str) -> Path:
        (root / name).mkdir(exist_ok=True)
        return root / name

    return folder


def only_ridgeline_errors(fn, *args):
    """Call `fn`; a RidgelineError is a fine answer, any other exception fails the test."""
    try:
        return fn(*args)
    except RidgelineError:
        return None


# ---------------------------------------------------------------------------------------------
# values and mutations: hypothesis draws one seed per case (cheap to generate, reproducible, printed on failure);
# the mutation itself runs on random.Random(seed)

EXTREME_INTS = [0, -1, 1, 2, 3, 7, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, -2**63 - 1, 10**30, 10**400]
EXTREME_FLOATS = [0.0, -0.0, 0.5, 1.5, -1e-9, 1e-300, 1e300, 1e308, float("inf"), float("-inf"), float("nan")]
STRINGS = ["", "lots", "²", "٣", "fp32", "llama", "inf", "NaN", "1e9", "x" * 200, "\u0000", "[", "{}"]
KEYS = ["", "x", "id", "shape", "dtype", "num_hidden_layers", "devices", "peak_flops", "n", "__metadata__"]
seeds = st.integers(0, 2**32 - 1)


def random_value(rng: random.Random, depth: int = 0):
    """A random JSON-like value: extreme numbers, NaN/Inf, odd strings, and small lists/objects of those."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(EXTREME_INTS) if rng.random() < 0.6 else rng.randint(-10**6, 10**6)
    if kind == 3:
        return rng.choice(EXTREME_FLOATS) if rng.random() < 0.6 else rng.uniform(-1e3, 1e3)
    if kind in (4, 5):
        return rng.choice(STRINGS)
    if kind in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _get(value, path):
    for key in path:
        value = value[key]
    return value


def mutate(base, seed: int):
    """`base` (a JSON value) after 1 to 4 random edits: a value replaced, deleted, wrapped, nested 80 deep or a
    key added; the whole document is sometimes replaced by a random value."""
    rng = random.Random(seed)
    if rng.random() < 0.05:
        return random_value(rng)
    value = json.loads(json.dumps(base))
    for _ in range(rng.randint(1, 4)):
        path = rng.choice(list(_paths(value)))
        op = rng.choice(["replace", "replace", "replace", "delete", "wrap", "deep", "key"])
        new = {"replace": lambda: random_value(rng), "wrap": lambda: [_get(value, path)],
               "deep": lambda: json.loads("[" * 80 + "1" + "]" * 80)}.get(op, lambda: None)()
        if op == "key":
            target = _get(value, path)
            if isinstance(target, dict):
                target[rng.choice(KEYS)] = random_value(rng)
        elif not path:
            value = new if op != "delete" else value
        else:
            parent, key = _get(value, path[:-1]), path[-1]
            if op == "delete":
                parent.pop(key) if isinstance(parent, dict) or len(parent) > 0 else None
            else:
                parent[key] = new
    return value


def mutate_text(text: str, seed: int) -> str:
    """`text` with 1 to 3 random slices replaced by syntax, huge numbers, NaN, NUL, deep brackets or nothing."""
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(text) + 1)
        j = min(len(text), i + rng.randrange(13))
        insert = rng.choice(["", "[", "{", "}", '"', "9" * 30, "9" * 5000, "NaN", "-1", "\x00", "[" * 70,
                             "\\u00b2", ",", "nan", "inf", "\ud800", "1e999", " = ", "\n"])
        text = text[:i] + insert + text[j:]
    return text


def mutate_bytes(data: bytes, seed: int) -> bytes:
    """Bytes with 1 to 6 bit flips, overwritten little-endian u32/u64 counts, cuts and spliced junk."""
    rng = random.Random(seed)
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.choice(["flip", "u64", "u32", "cut", "splice"])
        i = rng.randrange(max(1, len(data)))
        if op == "flip" and data:
            data[i] ^= 1 << rng.randrange(8)
        elif op in ("u64", "u32"):
            fmt = "<Q" if op == "u64" else "<I"
            values = [0, 1, 2, 3, 8, 9, 12, 13, 255, 2**31, 2**32 - 1] + ([2**40, 2**63, 2**64 - 1] if op == "u64" else [])
            data[i:i + struct.calcsize(fmt)] = struct.pack(fmt, rng.choice(values))
        elif op == "cut":
            del data[rng.randrange(len(data) + 1):]
        else:
            data[i:i + rng.randrange(17)] = rng.randbytes(rng.randrange(17))
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# config.json


@lru_cache(maxsize=1)
def bundled_config() -> dict:
    from ridgeline.specs.catalogue import catalogue_config

    return catalogue_config("smollm2-135m")


@fuzz("config_dict")
@given(seeds)
def test_config_dicts(seed):
    from ridgeline.specs import spec_from_config

    cfg = mutate(bundled_config(), seed)
    spec = only_ridgeline_errors(spec_from_config, cfg, "fuzz", "config.json")
    if spec is not None:
        assert spec.param_count() >= 0 and spec.n_layers <= 1024


@fuzz("config_text")
@given(seeds)
def test_config_files(scratch, seed):
    from ridgeline.specs import load_spec

    folder = scratch("cfg")
    text = mutate_text(json.dumps(bundled_config(), indent=1), seed)
    (folder / "config.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    only_ridgeline_errors(load_spec, str(folder / "config.json"))


@fuzz("predict")
@given(seeds)
def test_predictions_of_mutated_configs(seed):
    """What a config lets through must also price: the roofline never raises anything but RidgelineError."""
    from ridgeline.roofline import predict
    from ridgeline.specs import spec_from_config

    cfg = mutate(bundled_config(), seed)
    spec = only_ridgeline_errors(spec_from_config, cfg, "fuzz", "config.json")
    if spec is not None:
        scenario = ["SISO", "1:0", "512:64", "LILO"][seed % 4]
        only_ridgeline_errors(lambda: predict(spec, "raspberry-pi-5", scenario))


# ---------------------------------------------------------------------------------------------
# GGUF headers


@lru_cache(maxsize=1)
def compact_gguf() -> tuple[bytes, int]:
    """(header bytes, file size) of the bundled GGUF's metadata (arrays over 64 items left out) and tensor table;
    without the bundled model, a tiny llama's."""
    import tempfile

    import gguf

    from ridgeline.specs import read_gguf_header

    folder = Path(tempfile.mkdtemp())
    out = folder / "compact.gguf"
    w = gguf.GGUFWriter(str(out), "llama")
    if BUNDLED_GGUF is not None:
        header = read_gguf_header(BUNDLED_GGUF)
        for key, value, vtype, sub in header.kv:
            if key in ("general.architecture", "GGUF.version") or (vtype == 9 and len(value) > 64):
                continue
            w.add_key_value(key, value, gguf.GGUFValueType(vtype),
                            None if sub is None else gguf.GGUFValueType(sub))
        tensors = [(t.name, t.shape, t.ggml_type, t.nbytes) for t in header.tensors]
    else:
        for key, v in (("llama.block_count", 2), ("llama.embedding_length", 64), ("llama.attention.head_count", 4),
                       ("llama.feed_forward_length", 128), ("llama.context_length", 512), ("llama.vocab_size", 256)):
            w.add_uint32(key, v)
        tensors = [("token_embd.weight", (256, 64), "f32", 256 * 64 * 4)]
    for name, shape, ggml_type, nbytes in tensors:
        qtype = gguf.GGMLQuantizationType[ggml_type.upper()]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        byte_shape = (*shape[:-1], shape[-1] // block * size)
        w.add_tensor_info(name, byte_shape, __import__("numpy").dtype("uint8"), nbytes, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    head = out.read_bytes()
    return head, len(head) + sum(t[3] + 32 for t in tensors)


def _gguf_file(folder: Path, head: bytes, size: int) -> Path:
    path = folder / "model.gguf"
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(max(size, len(head)))  # sparse: the tensor data reads as zeros, takes no disk
    return path


@fuzz("gguf_bytes")
@given(seeds)
def test_gguf_headers_byte_mutations(scratch, seed):
    from ridgeline.specs import spec_from_gguf

    head, size = compact_gguf()
    # mutations concentrate where the structure is: the counts and first keys, or the tensor table at the end
    cut = (0, 512) if seed % 3 == 0 else (max(0, len(head) - 4096), len(head)) if seed % 3 == 1 else (0, len(head))
    mutated_head = head[:cut[0]] + mutate_bytes(head[cut[0]:cut[1]], seed) + head[cut[1]:]
    path = _gguf_file(scratch("gguf"), mutated_head, size)
    spec = only_ridgeline_errors(spec_from_gguf, path)
    if spec is not None:
        assert spec.param_count() >= 0


@fuzz("gguf_values")
@given(seeds)
def test_gguf_metadata_values(scratch, seed):
    """Metadata values spec_from_gguf reads, rewritten to extreme or wrongly typed values."""
    import gguf

    from ridgeline.specs import read_gguf_header, spec_from_gguf

    head, size = compact_gguf()
    folder = scratch("ggufv")
    original = _gguf_file(folder, head, size)
    header = read_gguf_header(original)
    keys = [k for k, _, vtype, _ in header.kv if vtype != 9]
    rng = random.Random(seed)
    values = [(0, 4), (2**32 - 1, 4), (10**9, 4), (2**63, 10), (float("nan"), 6), (float("inf"), 6), (-1, 5),
              (b"lots", 8)]
    edits = {rng.choice(keys): rng.choice(values) for _ in range(rng.randint(1, 3))}
    out = folder / "edited.gguf"
    w = gguf.GGUFWriter(str(out), "llama")
    for key, value, vtype, sub in header.kv:
        if key in ("general.architecture", "GGUF.version"):
            continue
        if key in edits:
            value, vtype = edits[key]
        w.add_key_value(key, value, gguf.GGUFValueType(vtype), None if sub is None else gguf.GGUFValueType(sub))
    for t in header.tensors:
        qtype = gguf.GGMLQuantizationType[t.ggml_type.upper()]
        block, nb = gguf.GGML_QUANT_SIZES[qtype]
        w.add_tensor_info(t.name, (*t.shape[:-1], t.shape[-1] // block * nb), __import__("numpy").dtype("uint8"),
                          t.nbytes, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(out, "r+b") as fh:
        fh.truncate(size + 4096)
    only_ridgeline_errors(spec_from_gguf, out)


# ---------------------------------------------------------------------------------------------
# device files


@lru_cache(maxsize=1)
def catalogue_entries() -> list[dict]:
    from importlib import resources

    return json.loads(resources.files("ridgeline.specs").joinpath("data/devices.json").read_text())["devices"]


@fuzz("device_dict")
@given(seeds)
def test_device_entries(seed):
    from ridgeline.specs.device import device_from_dict

    entries = catalogue_entries()
    entry = mutate(entries[seed % len(entries)], seed)
    dev = only_ridgeline_errors(device_from_dict, entry, "devices.json: devices[0]")
    if dev is not None:
        assert math.isfinite(dev.bandwidth_Bps) and dev.bandwidth_Bps > 0
        assert all(math.isfinite(v) and v > 0 for v in dev.peak_flops.values())
        only_ridgeline_errors(lambda: dev.ridge("bf16"))


def _toml(entry: dict) -> str:
    """A device entry as TOML (flat keys, one table per nested object)."""
    def scalar(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
        return json.dumps(str(v))

    top = [f"{k} = {scalar(v)}" for k, v in entry.items() if not isinstance(v, dict) and v is not None]
    tables = [f"[{k}]\n" + "\n".join(f"{json.dumps(kk)} = {scalar(vv)}" for kk, vv in v.items())
              for k, v in entry.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"


@fuzz("device_text")
@given(seeds)
def test_device_files(scratch, seed):
    from ridgeline.specs import load_device_file

    entries = catalogue_entries()
    entry = entries[seed % len(entries)]
    suffix = (".json", ".toml")[seed // 7 % 2]
    text = json.dumps({"devices": [entry]}, indent=1) if suffix == ".json" else _toml(entry)
    path = scratch("dev") / f"devices{suffix}"
    path.write_text(mutate_text(text, seed), encoding="utf-8", errors="surrogatepass")
    only_ridgeline_errors(load_device_file, path)


# ---------------------------------------------------------------------------------------------
# traces

TRACE_LINES = [{"arrival": 0.5, "prompt": "hello", "max_tokens": 4},
               {"prompt_ids": [1, 2, 3], "max_tokens": 2, "temperature": 0.7, "seed": 3, "id": "x"},
               {"arrival": 2, "prompt_len": 40, "max_tokens": 8, "n": 2, "top_p": 0.9, "top_k": 5,
                "ignore_eos": False}]


@fuzz("trace_obj")
@given(seeds)
def test_trace_requests(seed):
    from ridgeline.engine.trace import parse_request

    obj = mutate(TRACE_LINES[seed % len(TRACE_LINES)], seed)
    try:
        req = parse_request(obj)
    except (ValueError, RidgelineError):  # parse_request says why with ValueError; load_trace adds the line
        return
    params = req.params()
    assert math.isfinite(params.temperature) and 1 <= params.n <= 256 and 0 <= req.arrival <= 86_400


@fuzz("trace_text")
@given(seeds)
def test_trace_files(scratch, seed):
    from ridgeline.engine import check_trace, load_trace

    text = "\n".join(json.dumps(x) for x in TRACE_LINES)
    path = scratch("trace") / "trace.jsonl"
    path.write_text(mutate_text(text, seed), encoding="utf-8", errors="surrogatepass")
    trace = only_ridgeline_errors(load_trace, path)
    if trace is not None:
        only_ridgeline_errors(check_trace, trace, 49152, 8192)


# ---------------------------------------------------------------------------------------------
# task files

TASKS = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "social_iqa", "winogrande", "openbookqa",
         "commonsense_qa", "mmlu"]


@lru_cache(maxsize=None)
def task_docs(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines() if line.strip()][:3]


@fuzz("task_docs")
@given(seeds)
def test_task_documents(seed):
    from ridgeline.eval.tasks import _Doc, task_spec

    name = TASKS[seed % len(TASKS)]
    spec = task_spec(name)
    docs = task_docs(name)
    doc = mutate(docs[seed // 11 % len(docs)], seed)
    only_ridgeline_errors(lambda: spec.read(_Doc(doc, "fuzz.jsonl line 1", name, spec.schema)))


@fuzz("task_text")
@given(seeds)
def test_task_files(scratch, seed):
    from ridgeline.eval.tasks import load_task

    name = TASKS[seed % len(TASKS)]
    text = "\n".join(json.dumps(d) for d in task_docs(name))
    path = scratch("task") / f"{name}.jsonl"
    path.write_text(mutate_text(text, seed), encoding="utf-8", errors="surrogatepass")
    only_ridgeline_errors(load_task, name, path, None, seed // 13 % 2)


# ---------------------------------------------------------------------------------------------
# quantization manifests and safetensors headers

MANIFEST = {"method": "rtn", "config": {"method": "rtn", "bits": 4, "group": 128},
            "modules": {"model.layers.0.self_attn.q_proj": {"class": "Int4Linear", "in_features": 576,
                                                            "out_features": 576, "bias": False, "group": 128,
                                                            "sym": True}},
            "tensor_formats": {"blk.0.attn_q.weight": "int4_g128"}, "quantized_bytes": 1000, "float_params": 10,
            "quantized_params": 100, "float_bytes": 40, "aliases": {"lm_head.weight": "model.embed_tokens.weight"},
            "float_dtype": "float32"}


@fuzz("manifest")
@given(seeds)
def test_quantization_manifests(scratch, seed):
    from ridgeline.quant import read_manifest
    from ridgeline.specs.model import quantized_manifest

    folder = scratch("manifest")
    (folder / "ridgeline_quant.json").write_text(json.dumps(mutate(MANIFEST, seed)))
    only_ridgeline_errors(read_manifest, folder)
    only_ridgeline_errors(quantized_manifest, folder)


@fuzz("safetensors")
@given(seeds)
def test_safetensors_headers(scratch, seed):
    from ridgeline.weights import safetensors_header

    header = {"__metadata__": {"format": "pt"}, "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]}}
    rng = random.Random(seed)
    raw = json.dumps(mutate(header, seed)).encode()
    body = rng.choice([32, 32, 0, 31, 33, 1 << 10])
    path = scratch("st") / "model.safetensors"
    length = rng.choice([len(raw), len(raw), len(raw) + 1, 0, 2**63, 2**64 - 1])
    path.write_bytes(struct.pack("<Q", length) + raw + b"\0" * body)
    table = only_ridgeline_errors(safetensors_header, path)
    if table is not None:
        assert all(len(shape) <= 8 for _, shape in table.values())
