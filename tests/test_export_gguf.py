"""GGUF export: files llama.cpp loads and runs, checked against transformers, gguf-py and the bundled GGUF.

The bundled SmolLM2-135M-Instruct (loaded as the dequantized transformers model) is exported once per
type (module-scoped fixtures): F16 must decode greedily token for token like transformers, Q8_0 must
give llama.cpp the perplexity our torch model with the same Q8_0 weights has, Q4_K_M must follow
llama.cpp's recipe tensor by tensor. Tiny random llama / qwen2 / mistral models (with the bundled
49152-token vocabulary, so they can borrow its tokenizer) check the architecture variants in llama.cpp.
"""

from __future__ import annotations

import copy
import functools
import math
import time

import numpy as np
import pytest
import torch
from conftest import BASE, BUNDLED_GGUF, needs_bundled

from ridgeline.errors import RidgelineError

pytestmark = needs_bundled

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = "The capital of France is Paris. The capital of Germany is"
N_GREEDY = 32
VOCAB = 49152  # the bundled tokenizer's size: tiny models with this vocabulary can borrow it


# ----------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def one_thread():
    """Single-threaded torch: the shared 2-core machines oversubscribe badly with 2 intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smol(one_thread):
    from ridgeline import load_model

    return load_model("smollm2-135m", dtype="fp32")


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("export_gguf")


def _export(smol, folder, kind, **kwargs):
    from ridgeline.quant.export import export_gguf

    model, tok = smol
    calls = []
    t0 = time.perf_counter()
    result = export_gguf(model, tok, folder / f"smol-{kind}.gguf", kind,
                         progress=lambda done, total: calls.append((done, total)), **kwargs)
    return result, calls, time.perf_counter() - t0


@pytest.fixture(scope="module")
def f16(smol, gguf_dir):
    return _export(smol, gguf_dir, "f16", source_gguf=BUNDLED_GGUF)


@pytest.fixture(scope="module")
def q8(smol, gguf_dir):
    return _export(smol, gguf_dir, "q8_0", source_gguf=BUNDLED_GGUF)


@pytest.fixture(scope="module")
def q4km(smol, gguf_dir):
    # no source_gguf: the tokenizer metadata is built from the Hugging Face tokenizer
    return _export(smol, gguf_dir, "q4_k_m")


# ----------------------------------------------------------------------------------------------- helpers

def hf_tensors(model) -> dict[str, tuple[torch.Tensor, int | None]]:
    """GGUF name -> (transformers tensor, heads to un-permute with or None), written out independently."""
    cfg = model.config
    permute = cfg.model_type in ("llama", "mistral")
    out = {"token_embd.weight": (model.model.embed_tokens.weight, None),
           "output_norm.weight": (model.model.norm.weight, None)}
    if model.lm_head.weight is not model.model.embed_tokens.weight:
        out["output.weight"] = (model.lm_head.weight, None)
    for i, layer in enumerate(model.model.layers):
        a, m = layer.self_attn, layer.mlp
        pairs = {"attn_norm": layer.input_layernorm, "ffn_norm": layer.post_attention_layernorm,
                 "attn_q": a.q_proj, "attn_k": a.k_proj, "attn_v": a.v_proj, "attn_output": a.o_proj,
                 "ffn_gate": m.gate_proj, "ffn_up": m.up_proj, "ffn_down": m.down_proj}
        heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
        for short, mod in pairs.items():
            h = heads.get(short) if permute else None
            out[f"blk.{i}.{short}.weight"] = (mod.weight, h)
            if getattr(mod, "bias", None) is not None:
                out[f"blk.{i}.{short}.bias"] = (mod.bias, h)
    return out


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's interleaved rope rows -> Hugging Face's rotate_half rows (written out independently)."""
    rows = w.shape[0]
    half = rows // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@functools.cache
def reader(path) -> gguf.GGUFReader:
    """One GGUFReader per file (parsing a 49k-token vocabulary takes GGUFReader seconds)."""
    return gguf.GGUFReader(path)


def tensors_of(path) -> dict:
    return {t.name: t for t in reader(path).tensors}


def torch_shape(t) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(t.shape.tolist()))


def dequant(t) -> np.ndarray:
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(torch_shape(t))


def open_llama(path, **kwargs):
    return llama_cpp.Llama(model_path=str(path), verbose=False, n_threads=2, **kwargs)


def llama_greedy(path, ids: list[int], n: int) -> list[int]:
    """Greedy decoding through llama.cpp's low-level eval and the raw logits of the last position."""
    llm = open_llama(path, n_ctx=256, logits_all=False)
    try:
        llm.eval(ids)
        out = []
        for _ in range(n):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
            out.append(int(np.argmax(logits)))
            llm.eval([out[-1]])
        return out
    finally:
        llm.close()


def llama_logits(path, ids: list[int], n_ctx: int = 256) -> np.ndarray:
    """Logits of every position of `ids` from llama.cpp (logits_all, F32 KV cache: no fp16 rounding of K, V)."""
    f32 = int(gguf.GGMLQuantizationType.F32)
    llm = open_llama(path, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, type_k=f32, type_v=f32)
    try:
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], dtype=np.float64)
    finally:
        llm.close()


def llama_nll(path, ids: list[int], plan) -> tuple[float, int]:
    """Summed NLL over the scored tokens of perplexity windows (begin, end, n_scored), by llama.cpp."""
    llm = open_llama(path, n_ctx=256, n_batch=256, logits_all=True)
    nll, n = 0.0, 0
    try:
        for b, e, k in plan:
            llm.reset()
            llm.eval(ids[b:e - 1])
            logits = torch.from_numpy(np.array(llm.scores[:e - 1 - b], dtype=np.float64))
            logp = torch.log_softmax(logits, dim=-1)[-k:]
            nll -= logp.gather(1, torch.tensor(ids[e - k:e])[:, None]).sum().item()
            n += k
    finally:
        llm.close()
    return nll, n


# ----------------------------------------------------------------------------------------------- 1. F16

def test_f16_greedy_matches_transformers(smol, f16):
    model, tok = smol
    result = f16[0]
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=N_GREEDY)
    expected = out[0, len(ids):].tolist()
    assert len(expected) == N_GREEDY
    got = llama_greedy(result.path, ids, N_GREEDY)
    first_diff = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
    assert got == expected, f"llama.cpp F16 diverges from transformers fp32 at token {first_diff}"


def test_f16_result_and_metadata(f16):
    result, calls, _ = f16
    assert result.path.is_file() and result.bytes == result.path.stat().st_size
    assert result.type == "f16" and result.tensors == 272  # 30 layers x 9 + token_embd + output_norm; tied
    assert result.type_counts == {"f16": 211, "f32": 61}
    assert sum(result.type_bytes.values()) == result.tensor_bytes
    assert result.parameters == 134_515_008
    assert result.bits_per_weight == pytest.approx(result.tensor_bytes * 8 / result.parameters)
    assert 16.0 < result.bits_per_weight < 16.01
    assert calls == [(i, 272) for i in range(1, 273)]
    assert not [p for p in result.path.parent.iterdir() if p.name.startswith(".")]  # no temp file left

    ours, ref = reader(result.path), reader(BUNDLED_GGUF)
    # the same tensors, names and shapes as llama.cpp's own converter wrote into the bundled file
    assert {t.name: torch_shape(t) for t in ours.tensors} == {t.name: torch_shape(t) for t in ref.tensors}
    assert "output.weight" not in {t.name for t in ours.tensors}

    def fields(reader, prefix):
        return {k: f.contents() for k, f in reader.fields.items() if k.startswith(prefix)}

    assert fields(ours, "tokenizer.") == fields(ref, "tokenizer.")  # copied with their types
    arch_ref = fields(ref, "llama.")
    arch_ours = fields(ours, "llama.")
    for key, value in arch_ref.items():
        assert arch_ours[key] == pytest.approx(value), key
    assert arch_ours["llama.attention.key_length"] == arch_ours["llama.attention.value_length"] == 64
    assert ours.fields["general.architecture"].contents() == "llama"
    assert ours.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_F16)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        assert ours.fields[key].types == ref.fields[key].types


# ----------------------------------------------------------------------------------------------- 4. round trips

def test_f16_round_trip_exact(smol, f16):
    """Every tensor reads back as exactly the fp16 (F32 for 1-D) cast of the transformers tensor."""
    model, _ = smol
    result = f16[0]
    stored = tensors_of(result.path)
    expected = hf_tensors(model)
    assert set(stored) == set(expected)
    for name, t in stored.items():
        w, heads = expected[name]
        got = dequant(t)
        if heads is not None:
            got = unpermute(got, heads)
        want = w.detach().numpy()
        if t.tensor_type == gguf.GGMLQuantizationType.F16:
            want = want.astype(np.float16).astype(np.float32)
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32 and w.dim() == 1, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_permutation_matches_llama_cpp_converter(f16):
    """Our Q/K rows are in the bundled file's order (llama.cpp's convert_hf_to_gguf permutation):
    the bundled Q4_1 values, dequantized, equal our F16 values to fp16 rounding; un-permuted they would not."""
    ours, ref = tensors_of(f16[0].path), tensors_of(BUNDLED_GGUF)
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.17.attn_q.weight", "blk.29.attn_k.weight"):
        a, b = dequant(ours[name]), dequant(ref[name])
        np.testing.assert_allclose(a, b, rtol=2 ** -10, atol=1e-6, err_msg=name)
        heads = 9 if "attn_q" in name else 3
        assert not np.allclose(unpermute(a, heads), b, rtol=2 ** -10, atol=1e-6)


def test_q8_0_bytes_equal_gguf_oracle(smol, q8):
    """Q8_0 tensors are byte for byte what gguf-py's (bit-exact vs ggml) quantizer writes."""
    from ridgeline.quant import ggml

    model, _ = smol
    result = q8[0]
    assert result.type_counts == {"q8_0": 211, "f32": 61}
    assert 8.50 < result.bits_per_weight < 8.51
    stored = tensors_of(result.path)
    for name, (w, heads) in hf_tensors(model).items():
        t = stored[name]
        x = w.detach().numpy()
        if heads is not None:  # permute rows HF -> GGUF: the inverse of unpermute
            rows = x.shape[0]
            x = x.reshape(heads, 2, rows // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
        if w.dim() == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, name
            np.testing.assert_array_equal(np.asarray(t.data), x, err_msg=name)
            continue
        assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0, name
        oracle = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
        assert np.asarray(t.data).tobytes() == oracle.tobytes(), name
        if name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight"):
            np.testing.assert_array_equal(ggml.decode(bytes(np.asarray(t.data)), "q8_0", x.shape).numpy(),
                                          dequant(t), err_msg=name)


# ----------------------------------------------------------------------------------------------- 2. Q8_0 ppl

def test_q8_0_perplexity_matches_torch(smol, q8):
    """llama.cpp's perplexity of the Q8_0 file is within 1 % of ours for the same Q8_0 weights in torch."""
    from ridgeline.corpus import load_corpus
    from ridgeline.eval.perplexity import PerplexityConfig, perplexity, window_plan
    from ridgeline.quant import ggml

    model, tok = smol
    result = q8[0]
    stored = {t.name: t.tensor_type for t in reader(result.path).tensors}
    qmodel = copy.deepcopy(model)
    replaced = 0
    with torch.no_grad():
        for name, (w, _) in hf_tensors(qmodel).items():
            if stored[name] == gguf.GGMLQuantizationType.Q8_0:
                # Q8_0 blocks run along rows, so quantizing before or after the Q/K row permutation is the same
                w.copy_(ggml.decode(ggml.encode(w, "q8_0"), "q8_0", tuple(w.shape)))
                replaced += 1
    assert replaced == 211  # every 2-D tensor, the (tied) embedding too

    text = load_corpus("eval").text[:8000]
    config = PerplexityConfig(context=256, stride=256, batch_size=2, max_tokens=511)
    ours = perplexity(qmodel, tok, text, config)
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"][:511]
    plan = window_plan(len(ids), 256, 256)
    assert len(plan) == 2 and ours.tokens == len(ids) - 1
    nll, n = llama_nll(result.path, ids, plan)
    assert n == ours.tokens
    ppl_llama, ppl_ours = math.exp(nll / n), ours.token_perplexity
    assert abs(ppl_llama / ppl_ours - 1) < 0.01, (ppl_llama, ppl_ours)


# ----------------------------------------------------------------------------------------------- 3. Q4_K_M

def test_q4_k_m_types_follow_recipe(q4km):
    from ridgeline.specs.recipes import RecipeContext, tensor_type

    result = q4km[0]
    ctx = RecipeContext(n_layers=30, n_gqa=3, has_output=False, arch="llama")
    stored = tensors_of(result.path)
    counts: dict[str, int] = {}
    for name, t in stored.items():
        want = tensor_type("q4_k_m", name, torch_shape(t), ctx)
        assert t.tensor_type.name.lower() == want, name
        counts[want] = counts.get(want, 0) + 1
    assert counts == result.type_counts
    # SmolLM2's rows of 576 are no multiple of 256: Q4_K falls back to Q5_0, Q6_K to Q8_0
    assert stored["blk.5.attn_q.weight"].tensor_type.name == "Q5_0"
    assert stored["blk.0.attn_v.weight"].tensor_type.name == "Q8_0"
    assert stored["token_embd.weight"].tensor_type.name == "Q8_0"  # tied: the output rule, 576 -> Q8_0
    # ffn_down rows are 1536 long: Q6_K in the use_more_bits layers, Q4_K elsewhere
    assert stored["blk.0.ffn_down.weight"].tensor_type.name == "Q6_K"
    assert stored["blk.3.ffn_down.weight"].tensor_type.name == "Q4_K"
    assert reader(result.path).fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    assert 6.1 < result.bits_per_weight < 6.2


def test_q4_k_m_bytes_equal_codec(smol, q4km):
    """The stored bytes are our codec's bytes (one tensor of each kind), and gguf-py decodes them alike."""
    from ridgeline.quant import ggml

    model, _ = smol
    stored = tensors_of(q4km[0].path)
    hf = hf_tensors(model)
    seen = set()
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight", "blk.0.ffn_down.weight",
                 "blk.3.ffn_down.weight", "blk.3.ffn_up.weight", "token_embd.weight", "blk.3.attn_norm.weight"):
        t = stored[name]
        w, heads = hf[name]
        x = w.detach()
        if heads is not None:
            rows = x.shape[0]
            x = x.reshape(heads, 2, rows // heads // 2, -1).transpose(1, 2).reshape(w.shape)
        fmt = t.tensor_type.name.lower()
        seen.add(fmt)
        data = bytes(np.asarray(t.data))
        if fmt == "f32":
            assert data == x.numpy().tobytes(), name
            continue
        assert data == ggml.encode(x, fmt), name
        np.testing.assert_array_equal(ggml.decode(data, fmt, tuple(x.shape)).numpy(), dequant(t), err_msg=name)
    assert seen == {"q5_0", "q8_0", "q6_k", "q4_k", "f32"}


def test_q4_k_m_runs_in_llama_cpp(smol, q4km):
    """llama.cpp loads the Q4_K_M file (tokenizer built from the HF tokenizer) and predicts sensibly."""
    tok = smol[1]
    path = q4km[0].path
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    llm = open_llama(path, n_ctx=256, logits_all=False)
    try:
        text = "Shall I compare thee to a summer's day? <|im_start|>user\nHello, world! 12345 ça va"
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text, add_special_tokens=False)["input_ids"]
    finally:
        llm.close()
    got = llama_greedy(path, ids, 4)
    assert got[0] == tok(" Berlin", add_special_tokens=False)["input_ids"][0]
    fields = reader(path).fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False


def test_hf_tokenizer_metadata_equals_converter(smol):
    """Built from the HF tokenizer, the tokenizer metadata equals what convert_hf_to_gguf wrote (bundled)."""
    from ridgeline.quant import hf_tokenizer_kv
    from ridgeline.specs import read_gguf_kv

    model, tok = smol
    ours = {k: v for k, v, _, _ in hf_tokenizer_kv(tok, model.config, VOCAB)}
    ref = {k: v for k, v, _, _ in read_gguf_kv(BUNDLED_GGUF) if k.startswith("tokenizer.")}
    assert set(ref) <= set(ours)
    for key, value in ref.items():
        mine = ours[key]
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        assert mine == value, key


def test_read_gguf_kv_equals_gguf_reader():
    from ridgeline.specs import read_gguf_kv

    fields = reader(BUNDLED_GGUF).fields
    kv = read_gguf_kv(BUNDLED_GGUF)
    assert len(kv) == fields["GGUF.kv_count"].contents()
    for key, value, vtype, sub in kv:
        f = fields[key]
        assert f.types == ([vtype, sub] if sub is not None else [vtype]), key
        if sub == gguf.GGUFValueType.STRING:
            value = [v.decode() for v in value]
        elif vtype == gguf.GGUFValueType.STRING:
            value = value.decode()
        assert f.contents() == pytest.approx(value) if isinstance(value, float) else f.contents() == value, key


# ----------------------------------------------------------------------------------------------- variants

def _tiny(model_type: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    fields = {**BASE, "vocab_size": VOCAB, "initializer_range": 0.2, **extra}
    config = AutoConfig.for_model(model_type, **fields)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.parametrize("variant", [
    pytest.param(("qwen2", {"tie_word_embeddings": True}), id="qwen2-tied-bias"),
    pytest.param(("llama", {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": False}), id="llama-bias"),
    pytest.param(("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                 "original_max_position_embeddings": 32}}), id="llama3-rope"),
    pytest.param(("mistral", {"num_key_value_heads": 1}), id="mistral-mqa"),
])
def test_tiny_variants_match_transformers_in_llama_cpp(smol, variant, tmp_path, one_thread):
    """Random tiny models of each architecture variant: llama.cpp's F32 logits equal transformers' logits."""
    from ridgeline.quant import export_gguf, gguf_tensor_plan

    model_type, extra = variant
    model = _tiny(model_type, **extra)
    result = export_gguf(model, smol[1], tmp_path / "tiny.gguf", "f32", source_gguf=BUNDLED_GGUF)
    # (llama.cpp itself refuses a file with missing or unexpected tensors)
    names = {t.name for t in gguf_tensor_plan(model, "f32")}
    assert len(names) == result.tensors
    assert ("output.weight" in names) == (not model.config.tie_word_embeddings)
    if model_type == "qwen2" or extra.get("attention_bias"):
        assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= names
    if extra.get("mlp_bias"):
        assert {"blk.1.attn_output.bias", "blk.1.ffn_gate.bias", "blk.1.ffn_up.bias", "blk.1.ffn_down.bias"} <= names
    assert ("rope_freqs.weight" in names) == ("rope_parameters" in extra)
    ids = list(range(300, 348, 3)) + [2, 1, 40000, 17]
    with torch.inference_mode():
        want = model(torch.tensor([ids])).logits[0].double().numpy()
    got = llama_logits(result.path, ids, n_ctx=64)
    spread = np.linalg.norm(want - want.mean(-1, keepdims=True))
    # relative error ~1e-6; an unpermuted Q/K (or a missing rope_freqs) gives ~1
    assert np.linalg.norm(got - want) / spread < 1e-4


# ----------------------------------------------------------------------------------------------- 5. errors

def test_unknown_type_is_refused(smol, tmp_path):
    from ridgeline.quant.export import export_gguf

    with pytest.raises(RidgelineError, match="unknown GGUF export type 'q3_x'.*q4_k_m"):
        export_gguf(*smol, tmp_path / "x.gguf", "q3_x")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("model_type,extra", [("gpt_neox", {"rotary_pct": 0.25}), ("phi3", {"pad_token_id": 0})])
def test_unsupported_architecture_is_refused(smol, tmp_path, model_type, extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    from ridgeline.quant.export import export_gguf

    config = AutoConfig.for_model(model_type, **BASE, **extra)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(RidgelineError, match=f"supports the llama, mistral, qwen2 model types, not '{model_type}'"):
        export_gguf(model, smol[1], tmp_path / "x.gguf", "f16")
    assert not list(tmp_path.iterdir())


def test_missing_output_folder_is_refused(smol, tmp_path):
    from ridgeline.quant.export import export_gguf

    target = tmp_path / "missing" / "x.gguf"
    with pytest.raises(RidgelineError, match="does not exist"):
        export_gguf(*smol, target, "f16", source_gguf=BUNDLED_GGUF)
    assert not (tmp_path / "missing").exists()
    with pytest.raises(RidgelineError, match="is a folder"):
        export_gguf(*smol, tmp_path, "f16", source_gguf=BUNDLED_GGUF)


def test_failure_midway_leaves_nothing(smol, tmp_path):
    from ridgeline.quant.export import export_gguf

    target = tmp_path / "x.gguf"
    target.write_bytes(b"old")

    def boom(done, total):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_gguf(*smol, target, "f16", source_gguf=BUNDLED_GGUF, progress=boom)
    assert [p.name for p in tmp_path.iterdir()] == ["x.gguf"] and target.read_bytes() == b"old"


def test_quantized_modules_are_refused(tmp_path, smol):
    from ridgeline.quant.export import export_gguf

    class Int8Linear(torch.nn.Module):
        def __init__(self, linear):
            super().__init__()
            self.weight = torch.nn.Parameter(linear.weight.detach().to(torch.int8), requires_grad=False)

    model = _tiny("llama")
    model.model.layers[1].mlp.down_proj = Int8Linear(model.model.layers[1].mlp.down_proj)
    with pytest.raises(RidgelineError, match="layers.1.mlp.down_proj.*float model"):
        export_gguf(model, smol[1], tmp_path / "x.gguf", "q8_0", source_gguf=BUNDLED_GGUF)
    model = _tiny("llama")
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight = torch.nn.Parameter(
            model.model.layers[0].self_attn.q_proj.weight.to(torch.int8), requires_grad=False)
    with pytest.raises(RidgelineError, match="q_proj.weight.*not a plain floating-point"):
        export_gguf(model, smol[1], tmp_path / "x.gguf", "f16", source_gguf=BUNDLED_GGUF)
    assert not list(tmp_path.iterdir())


def test_tokenizers_that_cannot_convert_are_refused(tmp_path, smol, tiny_model_dir):
    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from ridgeline.quant.export import export_gguf

    model = _tiny("llama", vocab_size=320)
    bpe = AutoTokenizer.from_pretrained(tiny_model_dir)  # byte-level BPE whose pre-tokenizer llama.cpp does not know
    with pytest.raises(RidgelineError, match="pre-tokenizer .* not known.*source_gguf"):
        export_gguf(model, bpe, tmp_path / "x.gguf", "f16")
    unigram = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], 0)))
    with pytest.raises(RidgelineError, match="cannot convert a Unigram tokenizer"):
        export_gguf(model, unigram, tmp_path / "x.gguf", "f16")
    with pytest.raises(RidgelineError, match="49152 tokens but the model has 320"):
        export_gguf(model, bpe, tmp_path / "x.gguf", "f16", source_gguf=BUNDLED_GGUF)
    assert not list(tmp_path.iterdir())
