"""The lean decode path reproduces transformers exactly: logits, cache continuation and greedy tokens."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import family_config  # noqa: E402
from ridgeline.errors import RidgelineError  # noqa: E402
from ridgeline.measure.lean import LeanCausalLM, greedy  # noqa: E402

LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=32)

#: name -> (conftest family, extra config fields)
VARIANTS = {
    "llama": ("llama", {}),
    "qwen2": ("qwen2", {}),  # q/k/v biases (randomised below: transformers initialises them to zero)
    "llama3_tied": ("llama", dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True)),
    "llama_mqa": ("llama_mqa", {}),
    "mistral_no_window": ("mistral", dict(sliding_window=None)),
}
MAX_LEN = 64


def tiny(key: str, dtype=torch.float32, **extra):
    """A tiny random transformers model of family `key`; norm weights and biases randomised too."""
    cfg = {**family_config(key), **extra}
    config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in name:
                p.normal_(1.0, 0.2)
    return model.to(dtype)


def variant(name: str, dtype=torch.float32):
    """The tiny model of VARIANTS[name]."""
    key, extra = VARIANTS[name]
    return tiny(key, dtype, **extra)


def prompt(n: int = 7, seed: int = 1):
    """A (1, n) prompt of random token ids."""
    torch.manual_seed(seed)
    return torch.randint(3, 320, (1, n))


def hf_greedy(model, ids, n: int) -> list[int]:
    """transformers' own greedy generation of exactly n new tokens (no EOS stop, no padding inferred)."""
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_prefill_and_decode_logits_match_transformers(name):
    model = variant(name)
    lean = LeanCausalLM.from_hf(model, MAX_LEN)
    ids = prompt()
    with torch.inference_mode():
        cache = transformers.DynamicCache(config=model.config)
        ref = model(ids, cache=cache, use_cache=True).logits[:, -1]
        got = lean.prefill(ids)
        assert got.shape == (1, model.config.vocab_size)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
        for _ in range(5):
            token = ref.argmax(-1, keepdim=True)
            ref = model(token, cache=cache, use_cache=True).logits[:, -1]
            got = lean.decode(token)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert lean.length == ids.shape[1] + 5


@pytest.mark.parametrize("name", list(VARIANTS))
def test_greedy_matches_generate_fp32(name):
    model = variant(name)
    ids = prompt()
    assert greedy(LeanCausalLM.from_hf(model, MAX_LEN), ids, 20) == hf_greedy(model, ids, 20)


@pytest.mark.parametrize("name", ["llama", "qwen2", "llama3_tied"])
def test_greedy_matches_generate_bf16(name):
    # Exact in bf16 too: every step rounds where transformers rounds (rope products and sum, the norm's cast
    # before its weight, the same SDPA kernel), so the logits are bit-identical, not merely close.
    model = variant(name, torch.bfloat16)
    lean = LeanCausalLM.from_hf(model, MAX_LEN)
    assert lean.kv.dtype == torch.bfloat16 and lean.layers[0].wqkv.weight.dtype == torch.bfloat16
    ids = prompt()
    assert greedy(lean, ids, 20) == hf_greedy(model, ids, 20)


def test_prefill_in_chunks_continues_the_cache():
    model = variant("qwen2")
    lean = LeanCausalLM.from_hf(model, MAX_LEN)
    ids = prompt(11)
    with torch.inference_mode():
        ref = model(ids).logits
        first = lean.prefill(ids[:, :4])
        second = lean.prefill(ids[:, 4:])  # non-empty cache: explicit causal mask with an offset
        torch.testing.assert_close(first, ref[:, 3], atol=1e-5, rtol=0)
        torch.testing.assert_close(second, ref[:, -1], atol=1e-5, rtol=0)
        nxt = ref[:, -1].argmax(-1, keepdim=True)
        ref2 = model(torch.cat([ids, nxt], 1)).logits[:, -1]
        torch.testing.assert_close(lean.decode(nxt), ref2, atol=1e-5, rtol=0)


def test_reset_reuses_the_cache_and_overflow_is_refused():
    model = variant("llama")
    lean = LeanCausalLM.from_hf(model, 10)
    ids = prompt(6)
    first = greedy(lean, ids, 5)  # 6 + 4 decoded = 10 positions: exactly full
    assert greedy(lean, ids, 5) == first
    with pytest.raises(RidgelineError, match="max_len"):
        lean.decode(torch.tensor([[first[-1]]]))
    lean.reset()
    with pytest.raises(RidgelineError, match="max_len"):
        lean.prefill(prompt(11))


def test_structure_shares_weights_and_keeps_linears():
    model = variant("llama3_tied")
    lean = LeanCausalLM.from_hf(model, MAX_LEN)
    hf0, layer0 = model.model.layers[0], lean.layers[0]
    for lin in (layer0.wqkv, layer0.wo, layer0.w13, layer0.w2, lean.lm_head):
        assert isinstance(lin, torch.nn.Linear)
    assert layer0.wo.weight.data_ptr() == hf0.self_attn.o_proj.weight.data_ptr()
    assert layer0.w2.weight.data_ptr() == hf0.mlp.down_proj.weight.data_ptr()
    assert lean.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    assert layer0.wqkv.weight.shape == (4 * 16 + 2 * 2 * 16, 64)
    assert layer0.w13.weight.shape == (2 * 96, 64)
    keys = lean.kv[0, :, :2]  # layer 0's keys: (1, n_kv_heads, max_len, head_dim)
    assert keys.shape == (1, 2, MAX_LEN, 16)


@pytest.mark.parametrize("key,extra,max_len,match", [
    ("gpt_neox", {}, MAX_LEN, "gpt_neox"),
    ("qwen3", {}, MAX_LEN, "qwen3"),
    ("llama_bias", {}, MAX_LEN, "attention_bias"),
    ("llama", dict(mlp_bias=True), MAX_LEN, "mlp_bias"),
    ("llama", dict(hidden_act="gelu"), MAX_LEN, "silu"),
    ("mistral", {}, MAX_LEN, "sliding"),  # window 16 < 64
    ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=0), MAX_LEN, "sliding"),
    ("llama", dict(rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0)), 512, "dynamic"),
    ("llama", {}, 0, "max_len"),
])
def test_unsupported_features_are_refused(key, extra, max_len, match):
    model = tiny(key, **extra)
    with pytest.raises(RidgelineError, match=match):
        LeanCausalLM.from_hf(model, max_len)


def test_window_longer_than_max_len_is_fine():
    model = tiny("mistral")  # sliding_window 16: never slides within 16 positions
    ids = prompt(6)
    assert greedy(LeanCausalLM.from_hf(model, 16), ids, 10) == hf_greedy(model, ids, 10)


def test_bundled_model_greedy_matches_generate():
    loader = pytest.importorskip("ridgeline.loader")
    if not hasattr(loader, "load_model"):
        pytest.skip("ridgeline.loader has no load_model yet")
    try:
        model, tokenizer = loader.load_model("smollm2-135m", dtype="fp32")
    except RidgelineError as exc:
        pytest.skip(f"bundled model unavailable: {exc}")
    ids = tokenizer("The three most useful things to know about the ocean are", return_tensors="pt").input_ids
    lean = LeanCausalLM.from_hf(model, 128)
    assert greedy(lean, ids, 16) == hf_greedy(model, ids, 16)
