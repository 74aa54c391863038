"""Architecture transforms: sliding window with a rolling buffer, MHA<->GQA conversion, uptraining.

Oracles: HF MistralForCausalLM's own sliding-window forward, a dense forward with a float additive mask we
build (i - j < W), the unconverted model, transformers' save/reload, and hand-counted bytes.
"""

import copy
import os
import signal

import pytest
import torch
from transformers import (AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)
from transformers.cache_utils import DynamicCache

from ridgeline.arch.gqa import expand_kv_heads, kv_bytes_per_token, pool_kv_heads
from ridgeline.arch.swa import RollingBufferCache, prefill_chunked, swa_kv_bytes, to_sliding_window
from ridgeline.errors import RidgelineError
from ridgeline.kv.stream import stream_nll
from ridgeline.specs.model import spec_from_config
from ridgeline.train.uptrain import UptrainConfig, lr_factor, uptrain

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=100, max_position_embeddings=256)
T = 80
TOL = dict(atol=1e-5, rtol=0)


def tiny_llama(impl: str = "eager", seed: int = 0, **extra) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(**{**TINY, **extra})
    cfg._attn_implementation = impl
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (1, T), generator=torch.Generator().manual_seed(1))


def window_mask(t: int, window: int) -> torch.Tensor:
    """Float additive [1, 1, t, t] mask: query i keeps keys j with 0 <= i - j < window."""
    d = torch.arange(t)[:, None] - torch.arange(t)[None, :]
    keep = (d >= 0) & (d < window)
    return torch.zeros(t, t).masked_fill(~keep, torch.finfo(torch.float32).min)[None, None]


def rolling_logits(model, ids: torch.Tensor, prefill: int, chunk: int) -> tuple[torch.Tensor, RollingBufferCache]:
    """Logits of every position: `prefill` tokens in chunks of `chunk`, then one token at a time."""
    cache = RollingBufferCache.for_model(model)
    out = []
    with torch.no_grad():
        for s in range(0, prefill, chunk):
            e = min(s + chunk, prefill)
            out.append(model(input_ids=ids[:, s:e], position_ids=torch.arange(s, e)[None], cache=cache).logits[0])
        for i in range(prefill, ids.shape[1]):
            out.append(model(input_ids=ids[:, i:i + 1], position_ids=torch.tensor([[i]]), cache=cache).logits[0])
    return torch.cat(out), cache


# ---------------------------------------------------------------- sliding window


def test_window_convention_is_w_keys_including_self(ids):
    """HF sliding_window=W == our float mask i - j < W (W keys incl. self), != W - 1 keys; HF's cache keeps W - 1."""
    llama, W = tiny_llama(), 8
    mistral = to_sliding_window(llama, W)
    with torch.no_grad():
        hf = mistral(ids).logits
        assert torch.allclose(hf, llama(ids, attention_mask=window_mask(T, W)).logits, **TOL)
        assert not torch.allclose(hf, llama(ids, attention_mask=window_mask(T, W - 1)).logits, atol=1e-3)
        hf_cache = DynamicCache(config=mistral.config)
        mistral(ids, cache=hf_cache)
    assert hf_cache.layers[0].keys.shape[-2] == W - 1
    _, ours = rolling_logits(mistral, ids, prefill=T, chunk=W)
    assert ours.layers[0].keys.shape[-2] == W


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("window", [8, 13, 32])
def test_rolling_buffer_matches_hf_and_dense_reference(ids, window, impl):
    llama = tiny_llama(impl)
    mistral = to_sliding_window(llama, window)
    assert isinstance(mistral, MistralForCausalLM) and mistral.config.sliding_window == window
    with torch.no_grad():
        hf = mistral(ids).logits[0]
        dense = llama(ids, attention_mask=window_mask(T, window)).logits[0]
    assert torch.allclose(hf, dense, **TOL)
    for chunk in (5, window):  # 5 divides none of the windows
        got, _ = rolling_logits(mistral, ids, prefill=37, chunk=chunk)
        assert torch.allclose(got, hf, **TOL)
        assert torch.allclose(got, dense, **TOL)


def test_window_at_least_context_is_full_attention(ids):
    llama = tiny_llama(tie_word_embeddings=True)
    with torch.no_grad():
        full = llama(ids).logits
        assert torch.equal(to_sliding_window(llama, None)(ids).logits, full)
        wide = to_sliding_window(llama, T + 20)
        assert torch.allclose(wide(ids).logits, full, **TOL)
    got, _ = rolling_logits(wide, ids, prefill=30, chunk=7)
    assert torch.allclose(got, full[0], **TOL)


def test_conversion_keeps_tied_embeddings_and_original():
    llama = tiny_llama(tie_word_embeddings=True)
    mistral = to_sliding_window(llama, 8)
    assert mistral.lm_head.weight.data_ptr() == mistral.model.embed_tokens.weight.data_ptr()
    assert mistral.lm_head.weight.data_ptr() != llama.lm_head.weight.data_ptr()  # copied, not shared
    assert torch.equal(mistral.lm_head.weight, llama.lm_head.weight)


def test_storage_bounded_by_window_and_accounted(ids):
    W = 13
    mistral = to_sliding_window(tiny_llama(), W)
    cache = RollingBufferCache.for_model(mistral)
    L, Hkv, d = 3, TINY["num_key_value_heads"], TINY["hidden_size"] // TINY["num_attention_heads"]
    ptrs = None
    with torch.no_grad():
        prefill_chunked(mistral, ids[:, :20], cache, chunk=6)
        for t in range(20, T):
            assert cache.held_bytes == swa_kv_bytes(t, W, L, Hkv, d, 4)
            layer = cache.layers[0]
            assert layer.keys.shape == (1, Hkv, W, d) and layer.values.shape == (1, Hkv, W, d)
            now = [(lay.keys.data_ptr(), lay.values.data_ptr()) for lay in cache.layers]
            assert ptrs is None or now == ptrs  # the same storage, overwritten in place
            ptrs = now
            mistral(input_ids=ids[:, t:t + 1], position_ids=torch.tensor([[t]]), cache=cache)
    assert cache.get_seq_length() == T
    assert swa_kv_bytes(5, W, L, Hkv, d, 2) == 2 * L * Hkv * d * 5 * 2
    assert swa_kv_bytes(10_000, None, L, Hkv, d, 2) == 2 * L * Hkv * d * 10_000 * 2
    fresh = RollingBufferCache.for_model(mistral)
    with torch.no_grad():
        prefill_chunked(mistral, ids[:, :5], fresh)
    assert fresh.held_bytes == swa_kv_bytes(5, W, L, Hkv, d, 4)  # grows until W, no preallocation


def test_prefill_chunked_and_stream_nll(ids):
    W = 8
    mistral = to_sliding_window(tiny_llama(), W)
    with torch.no_grad():
        full = mistral(ids).logits
    cache = RollingBufferCache.for_model(mistral)
    last = prefill_chunked(mistral, ids, cache, chunk=64)  # split into chunks of W
    assert torch.allclose(last, full[:, -1], **TOL)
    # stream_nll feeds chunks longer than W straight into the cache: still exact (chunks attend before writing)
    nll, n = stream_nll(mistral, ids, RollingBufferCache.for_model(mistral), chunk=24)
    ref = torch.nn.functional.cross_entropy(full[0, :-1], ids[0, 1:], reduction="sum").item()
    assert n == T - 1 and nll == pytest.approx(ref, rel=1e-5)


def test_generate_with_rolling_buffer(ids):
    mistral = to_sliding_window(tiny_llama("sdpa"), 8)
    kw = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False, return_dict_in_generate=True, output_logits=True)
    ref = mistral.generate(ids[:, :12], **kw)
    got = mistral.generate(ids[:, :12], cache=RollingBufferCache.for_model(mistral), **kw)
    assert torch.equal(got.sequences, ref.sequences)
    assert torch.allclose(torch.stack(got.logits), torch.stack(ref.logits), **TOL)


def test_qwen2_and_mistral_keep_their_class(ids):
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(**TINY)).eval()
    swa = to_sliding_window(qwen, 8)
    assert isinstance(swa, Qwen2ForCausalLM) and set(swa.config.layer_types) == {"sliding_attention"}
    with torch.no_grad():
        assert torch.allclose(swa(ids).logits[0], qwen(ids, attention_mask=window_mask(T, 8)).logits[0], **TOL)
    got, _ = rolling_logits(swa, ids, prefill=20, chunk=5)
    assert torch.allclose(got, swa(ids).logits[0].detach(), **TOL)
    again = to_sliding_window(swa, 13)
    assert isinstance(again, Qwen2ForCausalLM) and again.config.sliding_window == 13
    assert to_sliding_window(to_sliding_window(tiny_llama(), 8), 16).config.sliding_window == 16


def test_sliding_window_bad_input():
    llama = tiny_llama()
    for bad in (0, -3, 2.5, True):
        with pytest.raises(RidgelineError, match="window"):
            to_sliding_window(llama, bad)
        with pytest.raises(RidgelineError, match="window"):
            RollingBufferCache(bad, 2)
    with pytest.raises(RidgelineError, match="num_layers"):
        RollingBufferCache(8, 0)
    with pytest.raises(RidgelineError, match="sliding_window"):
        RollingBufferCache.for_model(llama)
    with pytest.raises(RidgelineError, match="biases"):
        to_sliding_window(tiny_llama(attention_bias=True), 8)
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1,
                                            intermediate_size=64, vocab_size=50))
    with pytest.raises(RidgelineError, match="gpt_neox"):
        to_sliding_window(neox, 8)
    with pytest.raises(RidgelineError, match="cropped"):
        RollingBufferCache(8, 2).crop(-1)


# ---------------------------------------------------------------- GQA


def test_expand_to_mha_is_exact(ids):
    llama = tiny_llama()
    with torch.no_grad():
        ref = llama(ids).logits
        mha = expand_kv_heads(copy.deepcopy(llama))
        assert torch.equal(mha(ids).logits, ref)
    attn = mha.model.layers[0].self_attn
    assert mha.config.num_key_value_heads == 4 and attn.num_key_value_groups == 1
    assert attn.k_proj.weight.shape == (4 * 16, 64) and attn.v_proj.weight.shape == (4 * 16, 64)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_expand_then_pool_back_is_identity(ids, impl):
    llama = tiny_llama(impl, attention_bias=True)
    back = pool_kv_heads(expand_kv_heads(copy.deepcopy(llama)), 2)
    for a, b in zip(llama.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    assert back.model.layers[1].self_attn.num_key_value_groups == 2
    with torch.no_grad():
        assert torch.equal(back(ids).logits, llama(ids).logits)
        mha = tiny_llama(impl, num_key_value_heads=4)
        ref = mha(ids).logits
        assert torch.equal(pool_kv_heads(mha, 4)(ids).logits, ref)  # G = H on MHA: identity


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_pooled_weights_follow_repeat_kv_grouping(groups):
    """6 query heads, 2 KV heads: query head h reads KV head h // 3; group g averages its query heads' KV heads."""
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(**{**TINY, "hidden_size": 48, "num_attention_heads": 6}))  # biased k/v
    old = qwen.model.layers[0].self_attn
    wk, bk = old.k_proj.weight.detach().view(2, 8, 48), old.k_proj.bias.detach().view(2, 8)
    pool_kv_heads(qwen, groups)
    new = qwen.model.layers[0].self_attn
    per = 6 // groups
    want_w = torch.stack([torch.stack([wk[h // 3] for h in range(g * per, (g + 1) * per)]).mean(0) for g in range(groups)])
    want_b = torch.stack([torch.stack([bk[h // 3] for h in range(g * per, (g + 1) * per)]).mean(0) for g in range(groups)])
    assert torch.allclose(new.k_proj.weight.view(groups, 8, 48), want_w, atol=1e-7)
    assert torch.allclose(new.k_proj.bias.view(groups, 8), want_b, atol=1e-7)
    assert new.v_proj.weight.shape == (groups * 8, 48) and new.num_key_value_groups == per
    assert qwen.config.num_key_value_heads == groups
    with torch.no_grad():
        assert qwen(torch.arange(10)[None]).logits.isfinite().all()


def test_pooled_model_saves_and_reloads(tmp_path, ids):
    llama = pool_kv_heads(tiny_llama("sdpa", tie_word_embeddings=True), 1)
    llama.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert back.config.num_key_value_heads == 1
    assert back.model.layers[0].self_attn.k_proj.weight.shape == (16, 64)
    assert back.model.layers[0].self_attn.num_key_value_groups == 4
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, llama(ids).logits, **TOL)


def test_gqa_bad_input():
    llama = tiny_llama()
    for bad in (3, 0, 8, 2.0):
        with pytest.raises(RidgelineError, match=r"divide the 4 query heads \(one of \[1, 2, 4\]\)"):
            pool_kv_heads(llama, bad)
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1,
                                            intermediate_size=64, vocab_size=50))
    with pytest.raises(RidgelineError, match="llama-style"):
        pool_kv_heads(neox, 2)
    with pytest.raises(RidgelineError, match="llama-style"):
        expand_kv_heads(neox)


def test_kv_bytes_per_token():
    cfg = LlamaConfig(**TINY)
    assert kv_bytes_per_token(cfg, 2) == 2 * 3 * 2 * 16 * 2  # K and V, layers, KV heads, head_dim, bf16
    spec = spec_from_config(cfg.to_dict())
    assert kv_bytes_per_token(cfg, 2) == sum(spec.kv_elements_per_token(layer) for layer in spec.layers) * 2
    llama = pool_kv_heads(tiny_llama(), 1)
    assert kv_bytes_per_token(llama.config, 4) == 2 * 3 * 1 * 16 * 4


# ---------------------------------------------------------------- uptraining


def _stream() -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (40,), generator=torch.Generator().manual_seed(2)).repeat(8)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_uptraining_lowers_loss(optimizer):
    model = pool_kv_heads(tiny_llama(), 1)
    cfg = UptrainConfig(steps=12, seq_len=32, batch_size=4, lr=3e-3, optimizer=optimizer, warmup=2)
    seen = []
    res = uptrain(model, _stream(), cfg, progress=lambda step, steps, loss: seen.append((step, steps)))
    assert res.steps_done == 12 and not res.interrupted and res.tokens_seen == 12 * 4 * 32
    assert seen[-1] == (12, 12)
    assert sum(res.losses[-3:]) / 3 < res.losses[0] - 0.5
    assert not model.training and all(p.requires_grad and p.grad is None for p in model.parameters())


def test_uptraining_kv_only_touches_kv_projections():
    model = pool_kv_heads(tiny_llama(), 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    uptrain(model, _stream(), UptrainConfig(steps=2, seq_len=16, batch_size=2, lr=1e-3, train="kv", optimizer="muon"))
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == ("k_proj" in n or "v_proj" in n), n


def test_uptraining_interrupt_returns_completed_steps():
    model = pool_kv_heads(tiny_llama(), 1)
    cfg = UptrainConfig(steps=10, seq_len=16, batch_size=2, lr=1e-3)

    def stop_after_two(step, steps, loss):
        if step == 2:
            raise KeyboardInterrupt

    res = uptrain(model, _stream(), cfg, progress=stop_after_two)
    assert res.interrupted and res.steps_done == 2 and res.tokens_seen == 2 * 2 * 16
    handler = signal.getsignal(signal.SIGINT)

    def ctrl_c_at_three(step, steps, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # deferred to the end of the step in progress

    res = uptrain(model, _stream(), cfg, progress=ctrl_c_at_three)
    assert res.interrupted and res.steps_done == 3
    assert signal.getsignal(signal.SIGINT) is handler
    assert all(p.requires_grad for p in model.parameters())


def test_lr_schedule():
    cfg = UptrainConfig(steps=11, warmup=2, lr=1.0, min_lr_ratio=0.1)
    assert [round(lr_factor(s, cfg), 6) for s in (0, 1, 2)] == [round(1 / 3, 6), round(2 / 3, 6), 1.0]
    assert lr_factor(10, cfg) == pytest.approx(0.1)
    assert lr_factor(5, UptrainConfig(steps=11, warmup=2, schedule="constant")) == 1.0
    assert lr_factor(0, UptrainConfig(steps=1, warmup=10)) == 1.0


@pytest.mark.parametrize("bad", [dict(optimizer="sgd"), dict(steps=0), dict(steps=2.5), dict(lr=0), dict(train="mlp"),
                                 dict(seq_len=0), dict(warmup=-1), dict(schedule="step"), dict(weight_decay=-1)])
def test_uptrain_config_errors(bad):
    with pytest.raises(RidgelineError, match=next(iter(bad))):
        UptrainConfig(**bad)


def test_uptrain_stream_errors():
    model = tiny_llama()
    with pytest.raises(RidgelineError, match="1-D integer tensor"):
        uptrain(model, torch.zeros(2, 50, dtype=torch.long), UptrainConfig(steps=1, seq_len=8))
    with pytest.raises(RidgelineError, match="at least seq_len"):
        uptrain(model, torch.zeros(8, dtype=torch.long), UptrainConfig(steps=1, seq_len=8))
    with pytest.raises(RidgelineError, match=r"\[0, 100\)"):
        uptrain(model, torch.full((20,), 100), UptrainConfig(steps=1, seq_len=8))


def test_cache_filled_under_inference_mode_decodes_after(ids):
    mistral = to_sliding_window(tiny_llama(), 8)
    cache = RollingBufferCache.for_model(mistral)
    with torch.inference_mode():
        mistral(input_ids=ids[:, :30], cache=cache)
    with torch.no_grad():
        got = mistral(input_ids=ids[:, 30:31], position_ids=torch.tensor([[30]]), cache=cache).logits[0, -1]
        assert torch.allclose(got, mistral(ids[:, :31]).logits[0, -1], **TOL)
