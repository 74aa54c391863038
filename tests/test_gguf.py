"""Weight bytes against tensors written by the `gguf` package; GGUF headers read into a ModelSpec."""


import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter
from gguf.quants import quantize

from conftest import BUNDLED_GGUF, needs_bundled
from ridgeline.errors import RidgelineError
from ridgeline.roofline.workload import build_workload, tensor_formats
from ridgeline.specs.formats import get_format
from ridgeline.specs import load_spec, spec_from_config
from ridgeline.specs.scenario import Precision, Scenario

H, F, V, L, NQ, NKV = 64, 128, 96, 2, 4, 2
CFG = {"model_type": "llama", "hidden_size": H, "intermediate_size": F, "vocab_size": V, "num_hidden_layers": L,
       "num_attention_heads": NQ, "num_key_value_heads": NKV, "tie_word_embeddings": False}


def _write_gguf(path, qtype: Q, tied: bool = False) -> None:
    """A tiny llama GGUF: 2-D weights in `qtype`, 1-D tensors in F32, as llama.cpp writes them."""
    rng = np.random.default_rng(0)
    spec = spec_from_config({**CFG, "tie_word_embeddings": tied})
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(L)
    w.add_context_length(256)
    w.add_embedding_length(H)
    w.add_feed_forward_length(F)
    w.add_head_count(NQ)
    w.add_head_count_kv(NKV)
    w.add_vocab_size(V)
    for t in spec.tensors():
        data = rng.standard_normal(t.shape).astype(np.float32)
        if len(t.shape) >= 2:
            w.add_tensor(t.name, quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("qtype,fmt", [(Q.Q8_0, "q8_0"), (Q.Q4_0, "q4_0"), (Q.Q4_1, "q4_1")])
def test_tensor_bytes_equal_gguf_written(tmp_path, qtype, fmt):
    path = tmp_path / f"tiny-{fmt}.gguf"
    _write_gguf(path, qtype)
    reader = GGUFReader(str(path))
    f = get_format(fmt)
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(list(t.shape)))
        expected = get_format("fp32").tensor_bytes(shape) if len(shape) == 1 else f.tensor_bytes(shape)
        assert expected == int(t.n_bytes), t.name


def test_whole_model_q8_0_bytes_equal_file(tmp_path):
    path = tmp_path / "tiny-q8_0.gguf"
    _write_gguf(path, Q.Q8_0)
    file_bytes = sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors)
    spec = spec_from_config(CFG)
    # llama.cpp's Q8_0 recipe keeps every 2-D tensor at Q8_0 and 1-D tensors at F32: same as the file
    assert build_workload(spec, Scenario(8, 8), Precision("q8_0")).weights_bytes == file_bytes


def test_gguf_header_reads_into_spec(tmp_path):
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, Q.Q8_0)
    spec = load_spec(str(path))
    assert spec.model_type == "llama" and spec.n_layers == L and spec.hidden == H and not spec.tied
    assert spec.layers[0].attention.n_kv_heads == NKV
    assert spec.param_count() == spec_from_config(CFG).param_count()
    stored = tensor_formats(spec, Precision("stored"))
    assert {v[0].name for v in stored.values()} == {"q8_0", "fp32"}
    assert sum(v[1] for v in stored.values()) == sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors)
    # re-pricing the same architecture in another format works from the tensor table's shapes
    assert build_workload(spec, Scenario(8, 8), Precision("bf16")).weights_bytes < \
        build_workload(spec, Scenario(8, 8), Precision("fp32")).weights_bytes


def test_tied_gguf_has_no_output_tensor(tmp_path):
    path = tmp_path / "tied.gguf"
    _write_gguf(path, Q.Q8_0, tied=True)
    spec = load_spec(str(path))
    assert spec.tied
    wl = build_workload(spec, Scenario(4, 4), Precision("stored"))
    head = next(op for op in wl.decode.ops if op.name == "lm_head")
    assert head.total_bytes(4)["weights"] == 4 * get_format("q8_0").tensor_bytes((V, H))


@pytest.mark.parametrize("content", [b"GGUF\x03\x00\x00\x00garbage", b"not a gguf at all" * 10, b""])
def test_corrupt_gguf_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(RidgelineError, match="GGUF"):
        load_spec(str(path))


@needs_bundled
def test_bundled_smollm2_gguf_matches_catalogue_config():
    path = str(BUNDLED_GGUF)
    spec = load_spec(path)
    from ridgeline.specs.catalogue import catalogue_spec

    cat = catalogue_spec("smollm2-135m")
    assert spec.param_count() == cat.param_count() == 134515008
    assert (spec.n_layers, spec.hidden, spec.tied) == (30, 576, True)
    assert spec.layers[0].attention.n_kv_heads == 3
    stored = build_workload(spec, Scenario(8, 8), Precision("stored")).weights_bytes
    assert stored == sum(int(t.n_bytes) for t in GGUFReader(path).tensors)
    # llama.cpp's Q4_1 recipe on the catalogue config reproduces the file's bytes exactly
    assert build_workload(cat, Scenario(8, 8), Precision("q4_1")).weights_bytes == stored
