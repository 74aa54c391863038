"""Quantized KV caches: KIVI (asymmetric 2/4-bit), Harmonia (BFP, 8-bit sink/recent tiers), key smoothing."""

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, LlamaConfig, LlamaForCausalLM

from conftest import BUNDLED_GGUF, family_config, needs_bundled
from ridgeline.errors import RidgelineError
from ridgeline.kv.harmonia import (HarmoniaCache, HarmoniaConfig, bfp_decode, bfp_demote, bfp_encode,
                                   fold_key_scales, harmonia_bits_per_element, harmonia_bytes, smooth_keys)
from ridgeline.kv.base import pack_bits, unpack_bits
from ridgeline.kv.kivi import KIVICache, KIVIConfig, asym_dequantize, asym_quantize, kivi_bytes
from ridgeline.kv.stream import stream_nll
from ridgeline.quant import mx

VOCAB = 100


def tiny_config(**kw) -> LlamaConfig:
    """A tiny GQA Llama: 4 query heads, 2 KV heads, head_dim 32 (so groups of 32 fit), RoPE on."""
    base = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": VOCAB, "max_position_embeddings": 1024,
            "eos_token_id": None, "pad_token_id": 0}
    return LlamaConfig(**{**base, **kw})


def tiny_model(seed: int = 0, **kw) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(**kw)).eval()


def random_ids(n: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def chunked_logits(model, ids: torch.Tensor, cache, chunk: int = 16) -> torch.Tensor:
    """Teacher-forced logits, fed through `cache` chunk by chunk (what stream_nll scores)."""
    with torch.inference_mode():
        return torch.cat([model(input_ids=ids[:, s:s + chunk], cache=cache, use_cache=True).logits
                          for s in range(0, ids.shape[1], chunk)], dim=1)


def logit_errors(model, ids: torch.Tensor, caches: dict) -> dict:
    """Mean squared logit error of each cache against a full-precision DynamicCache, over the logit variance."""
    ref = chunked_logits(model, ids, DynamicCache())
    return {name: float((chunked_logits(model, ids, c) - ref).pow(2).mean() / ref.var())
            for name, c in caches.items()}


def one_line_error(fn, *args, match: str, **kw) -> None:
    with pytest.raises(RidgelineError, match=match) as exc:
        fn(*args, **kw)
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------------------
# packing


def test_pack_bits_hand_cases():
    assert pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]  # code i at bits 2i..2i+1
    assert pack_bits(torch.tensor([0x3, 0xA]), 4).tolist() == [0xA3]
    # 5-bit codes 12, 1, 21 then zeros: stream bits 2, 3, 5 | 10, 12, 14 -> bytes 44, 84
    assert pack_bits(torch.tensor([12, 1, 21] + [0] * 5), 5).tolist() == [44, 84, 0, 0, 0]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8, 9, 12, 16])
def test_pack_round_trip_matches_numpy_bit_stream(bits):
    codes = torch.randint(0, 2 ** bits, (2, 3, 32), generator=torch.Generator().manual_seed(bits))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 3, 32 * bits // 8)
    stream = ((codes[..., None] >> torch.arange(bits)) & 1).reshape(2, 3, -1).to(torch.uint8).numpy()
    assert (packed.numpy() == np.packbits(stream, axis=-1, bitorder="little")).all()
    assert torch.equal(unpack_bits(packed, bits, 32), codes.int())


# ---------------------------------------------------------------------------------------------------------
# KIVI quantization


def test_kivi_keys_per_channel_hand_case():
    # channel c over 32 tokens: c + 0.5 * (t mod 16); 4 bits -> min c, max c + 7.5, scale 0.5, codes t mod 16
    t = torch.arange(32, dtype=torch.float32)
    x = torch.stack([c + 0.5 * (t % 16) for c in range(3)], dim=-1)[None, None]  # [1, 1, 32 tokens, 3 channels]
    codes, scale, zero = asym_quantize(x, bits=4, group=32, axis=-2)
    assert scale.shape == zero.shape == (1, 1, 1, 3) and scale.dtype == zero.dtype == torch.float16
    assert scale.flatten().tolist() == [0.5] * 3 and zero.flatten().tolist() == [0.0, 1.0, 2.0]
    assert codes.dtype == torch.uint8 and torch.equal(codes[0, 0, :, 0].long(), (t % 16).long())
    assert torch.equal(asym_dequantize(codes, scale, zero, 32, axis=-2), x)


def test_kivi_values_per_token_hand_case():
    # one token, 64 channels = 2 groups; 2 bits: group 0 is {-1, -.75, -.5, -.25} (scale .25), group 1 constant 3
    g0 = -1.0 + 0.25 * (torch.arange(32) % 4)
    x = torch.cat([g0, torch.full((32,), 3.0)])[None, None, None]  # [1, 1, 1, 64]
    codes, scale, zero = asym_quantize(x, bits=2, group=32, axis=-1)
    assert scale.shape == (1, 1, 1, 2)
    assert scale.flatten().tolist() == [0.25, 0.0] and zero.flatten().tolist() == [-1.0, 3.0]
    assert codes.flatten().tolist() == (torch.arange(32) % 4).tolist() + [0] * 32
    assert torch.equal(asym_dequantize(codes, scale, zero, 32, axis=-1), x)


def test_kivi_round_trip_error_is_half_a_step():
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 3
    for bits in (2, 4, 8):
        for axis in (-2, -1):
            codes, scale, zero = asym_quantize(x, bits, 32, axis)
            err = (asym_dequantize(codes, scale, zero, 32, axis) - x).abs()
            step = scale.float().repeat_interleave(32, dim=axis)
            assert bool((err <= step / 2 + 1e-3 * step + 2e-3).all())  # + fp16 rounding of scale and zero
            assert int(codes.max()) <= 2 ** bits - 1


@pytest.mark.parametrize("bad, match", [
    ({"bits": 3}, "bits must be one of 2, 4, 8"),
    ({"bits": True}, "bits must be one of"),
    ({"group": 0}, "group must be a positive integer"),
    ({"residual": 48}, "residual must be a multiple of group 32"),
    ({"residual": -32}, "residual must be a positive integer"),
])
def test_kivi_config_rejects_bad_input(bad, match):
    one_line_error(KIVIConfig, match=match, **bad)


def test_caches_check_the_model_at_construction():
    odd = tiny_config(hidden_size=64)  # head_dim 16: groups of 32 do not fit
    one_line_error(KIVICache, odd, match="group 32 must divide the model's head_dim 16")
    one_line_error(HarmoniaCache, odd, match="group 32 must divide the model's head_dim 16")
    assert KIVICache(odd, KIVIConfig(group=16, residual=32)).dims.head_dim == 16
    cfg = family_config("mistral")  # sliding window 16
    mistral = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    one_line_error(KIVICache, mistral, match="full-attention layers only")
    one_line_error(KIVICache, object(), match="transformers causal LM or its config")
    one_line_error(KIVICache, tiny_config(), {"bits": 2}, match="expects a KIVIConfig")


# ---------------------------------------------------------------------------------------------------------
# KIVI cache bookkeeping and bytes

BOOK = tiny_config(hidden_size=256, head_dim=64, num_attention_heads=4, num_key_value_heads=2)  # D 64, 2 layers
SCHEDULE = (1, 1, 1, 5, 1, 33, 1, 2, 130, 1)  # decode chunk sizes, cycled: some complete several KIVI chunks


def feed(cache, prefill: int, total: int, dtype: torch.dtype, check, schedule=SCHEDULE) -> torch.Tensor:
    """Feed random K/V [B=2, 2 heads, T, 64] into every layer: a prefill, then `schedule`; `check` after each."""
    gen = torch.Generator().manual_seed(prefill)
    seen, step = 0, 0
    all_k = torch.empty(2, 2, 0, 64, dtype=dtype)
    while seen < total:
        n = prefill if seen == 0 else min(schedule[step % len(schedule)], total - seen)
        step += seen > 0
        k = torch.randn(2, 2, n, 64, generator=gen).to(dtype)
        v = torch.randn(2, 2, n, 64, generator=gen).to(dtype)
        before = cache.layers[0].tensors()
        for layer in range(BOOK.num_hidden_layers):
            keys, values = cache.update(k, v, layer)
        all_k = torch.cat([all_k, k], dim=2)
        seen += n
        assert cache.get_seq_length() == seen and keys.shape == values.shape == (2, 2, seen, 64)
        check(seen, keys, values, before, all_k)
    return all_k


@pytest.mark.parametrize("prefill", [1, 31, 100, 128, 256])  # multiples of G and R, or not
def test_kivi_window_bookkeeping_and_bytes(prefill):
    cfg = KIVIConfig(bits=2, group=32, residual=128)
    cache = KIVICache(BOOK, cfg)

    def check(t, keys, values, before, all_k):
        layer = cache.layers[0]
        q_before = before["key_codes"].shape[2] if before else 0
        assert layer.key_fp.shape[2] == t % 128 and layer.key_codes.shape[2] == t - t % 128
        assert layer.key_scale.shape == (2, 2, (t - t % 128) // 32, 64)  # one per 32 tokens per channel
        assert layer.value_fp.shape[2] == min(t, 128) and layer.value_codes.shape[2] == max(t - 128, 0)
        assert layer.value_scale.shape == (2, 2, max(t - 128, 0), 2)  # one per 32 channels per token
        assert layer.key_codes.dtype == torch.uint8 and layer.key_codes.shape[-1] == 64 * 2 // 8
        assert torch.equal(keys[:, :, q_before:], all_k[:, :, q_before:])  # not yet quantized: exact
        assert cache.memory_bytes() == kivi_bytes(t, 2, 64, 2, cfg, fp_bytes=4, batch=2)

    feed(cache, prefill, 330, torch.float32, check)


def test_kivi_bytes_in_fp16_and_4_bits():
    cfg = KIVIConfig(bits=4, group=32, residual=64)
    cache = KIVICache(BOOK, cfg)
    def check(t, *_):
        assert cache.memory_bytes() == kivi_bytes(t, 2, 64, 2, cfg, batch=2)  # fp_bytes 2: fp16 residuals

    feed(cache, 70, 300, torch.float16, check)
    layer = cache.layers[0]
    assert layer.key_fp.dtype == torch.float16 and layer.key_codes.shape[-1] == 32


def kivi_ratio(length: int, cfg: KIVIConfig) -> float:
    """KIVI bytes over an fp16 cache's, 8 KV heads of head_dim 128."""
    return kivi_bytes(length, 8, 128, 1, cfg) / (2 * length * 8 * 128 * 2)


@pytest.mark.parametrize("bits, q", [(2, 0.1875), (4, 0.3125)])
def test_kivi_bytes_approach_the_paper_ratios(bits, q):
    cfg = KIVIConfig(bits=bits)
    assert cfg.bits_per_element / 16 == q
    for length in (1024, 4096, 32768):  # a whole number of R chunks: no key tail, R value tokens in fp16
        assert kivi_ratio(length, cfg) == pytest.approx(q + (1 - q) * 128 / (2 * length), rel=1e-12)
    for length in range(129, 6000, 97):  # < 2R fp16 tokens of 2L: below the reference's q + (1 - q) R / L
        assert q < kivi_ratio(length, cfg) < q + (1 - q) * 128 / length
    assert kivi_ratio(1 << 20, cfg) == pytest.approx(q, abs=1e-4)


# ---------------------------------------------------------------------------------------------------------
# KIVI inside a model


def test_kivi_generate_equals_greedy_while_nothing_is_quantized():
    model = tiny_model()
    ids = random_ids(12, batch=2)
    kw = {"max_new_tokens": 20, "do_sample": False, "attention_mask": torch.ones_like(ids)}
    ref = model.generate(ids, **kw)
    cache = KIVICache(model, KIVIConfig(bits=4, residual=128))  # R >= 32 tokens: everything stays fp
    assert torch.equal(model.generate(ids, cache=cache, **kw), ref)
    assert cache.layers[0].key_codes.shape[2] == cache.layers[0].value_codes.shape[2] == 0


def test_kivi_generate_with_a_small_window_quantizes():
    model = tiny_model()
    ids = random_ids(40, batch=2)
    cache = KIVICache(model, KIVIConfig(bits=2, residual=32))
    out = model.generate(ids, cache=cache, max_new_tokens=30, do_sample=False,
                         attention_mask=torch.ones_like(ids))
    assert out.shape == (2, 70) and cache.get_seq_length() == 69  # the last token is never fed back
    layer = cache.layers[0]
    assert layer.key_codes.shape[2] == 64 and layer.value_codes.shape[2] == 37
    assert cache.memory_bytes() == kivi_bytes(69, 2, 32, 2, cache.config, fp_bytes=4, batch=2)
    assert cache.memory_bytes() < 2 * 2 * 2 * 2 * 69 * 32 * 4  # far below the fp32 DynamicCache


def test_kivi_beam_search_and_reset():
    model = tiny_model()
    ids = random_ids(10)
    kw = {"max_new_tokens": 8, "do_sample": False, "num_beams": 3, "attention_mask": torch.ones_like(ids)}
    cache = KIVICache(model, KIVIConfig(bits=4, residual=128))
    assert torch.equal(model.generate(ids, cache=cache, **kw), model.generate(ids, **kw))
    assert cache.memory_bytes() > 0
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.memory_bytes() == 0
    out = model.generate(ids, cache=cache, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 14) and cache.get_seq_length() == 13


def test_kivi_stream_nll_and_quality_order():
    model = tiny_model(seed=0, initializer_range=0.1)
    ids = random_ids(256)
    ref, n = stream_nll(model, ids, DynamicCache(), chunk=16)
    for bits, tol in ((8, 2e-3), (4, 0.02)):
        nll, _ = stream_nll(model, ids, KIVICache(model, KIVIConfig(bits, 32, 32)), chunk=16)
        assert abs(nll - ref) / n < tol
    err = logit_errors(model, ids, {b: KIVICache(model, KIVIConfig(b, 32, 32)) for b in (2, 4, 8)})
    assert err[8] < err[4] / 20 and err[4] < err[2] / 4


# ---------------------------------------------------------------------------------------------------------
# BFP codec


def test_bfp_hand_case():
    x = torch.zeros(32)
    x[:3] = torch.tensor([3.0, 0.3, -1.25])  # max 3.0 -> E = 1; 4-bit step 2**(1-3) = 0.25, 8-bit 2**-6
    p4 = bfp_encode(x, 32, 4)
    assert p4.shape == (1, 21) and p4.dtype == torch.uint8
    # exponent 1 + 127; codes 12, 1 (0.3 -> 1.2 -> 1), 21 (sign bit 16 | 5) as 5-bit stream (cf. pack test)
    assert p4[0].tolist() == [128, 44, 84] + [0] * 18
    assert bfp_decode(p4, 32, 4)[:3].tolist() == [3.0, 0.25, -1.25]
    p8 = bfp_encode(x, 32, 8)
    assert p8.shape == (1, 37) and p8[0, 0] == 128
    assert bfp_decode(p8, 32, 8)[:3].tolist() == [3.0, 19 / 64, -1.25]  # 0.3 * 64 = 19.2 -> 19
    assert unpack_bits(p8[:, 1:], 9, 32)[0, :3].tolist() == [192, 19, 256 | 80]


def test_bfp_saturation_and_zero_group():
    x = torch.zeros(64)
    x[0] = 3.9  # E = 1: 3.9 / 0.25 = 15.6 -> 16 saturates to 15 -> 3.75
    p = bfp_encode(x, 32, 4)
    assert bfp_decode(p, 32, 4)[0] == 3.75
    assert p[1, 0] == 0 and bool((bfp_decode(p, 32, 4)[32:] == 0).all())  # all-zero group: E = -127, code 0


@pytest.mark.parametrize("m", [3, 4, 8])
def test_bfp_bytes_equal_mx_encode(m):
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(m)) * 10
    packed = bfp_encode(x, 32, m)
    assert bytes(packed.flatten().tolist()) == mx.encode(x.reshape(-1, 64), f"bfp32m{m}")
    assert torch.equal(bfp_decode(packed, 32, m), mx.fake_quantize(x, f"bfp32m{m}"))


def test_bfp_demotion_is_code_rounding():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    p8 = bfp_encode(x, 32, 8)
    p4 = bfp_demote(p8, 32, 8, 4)
    assert torch.equal(p4[..., 0], p8[..., 0])  # shared exponent unchanged
    assert torch.equal(bfp_decode(p4, 32, 4), mx.fake_quantize(mx.fake_quantize(x, "bfp32m8"), "bfp32m4"))
    c8 = unpack_bits(p8[..., 1:], 9, 32)
    c4 = unpack_bits(p4[..., 1:], 5, 32)
    assert torch.equal(c4 & 15, torch.round((c8 & 255) / 16).clamp(max=15).int())  # magnitude >> 4, half-even
    assert torch.equal(c4 >> 4, (c8 >> 8) * ((c4 & 15) > 0))  # sign kept, except a magnitude rounded to 0 is +0


# ---------------------------------------------------------------------------------------------------------
# Harmonia cache


@pytest.mark.parametrize("bad, match", [
    ({"n_sink": -1}, "n_sink must be a non-negative integer"),
    ({"n_recent": -4}, "n_recent must be a non-negative integer"),
    ({"hi_mantissa": 4, "lo_mantissa": 8}, "must not exceed hi_mantissa"),
    ({"lo_mantissa": 0}, "lo_mantissa must be an integer from 1 to 15"),
    ({"group": 12}, "not a whole number of bytes"),
    ({"group": 0}, "group must be a positive integer"),
])
def test_harmonia_config_rejects_bad_input(bad, match):
    one_line_error(HarmoniaConfig, match=match, **bad)


@pytest.mark.parametrize("prefill", [1, 4, 30, 45, 100])
def test_harmonia_tiers_bookkeeping_and_bytes(prefill):
    cfg = HarmoniaConfig(n_sink=4, n_recent=40)
    cache = HarmoniaCache(BOOK, cfg)

    def check(t, keys, values, before, all_k):
        layer = cache.layers[0]
        sink, recent = min(t, 4), min(max(t - 4, 0), 40)
        assert layer.key_sink.shape[2] == layer.value_sink.shape[2] == sink
        assert layer.key_recent.shape[2] == recent and layer.key_mid.shape[2] == t - sink - recent
        assert layer.key_mid.shape[3:] == (2, 21) and layer.key_recent.shape[3:] == (2, 37)
        assert cache.memory_bytes() == harmonia_bytes(t, 2, 64, 2, cfg, batch=2)

    all_k = feed(cache, prefill, 120, torch.float32, check, schedule=(1,))  # single-token decode steps
    keys, _ = cache.update(torch.zeros(2, 2, 0, 64), torch.zeros(2, 2, 0, 64), 0)  # read back what is stored
    hi, lo = mx.fake_quantize(all_k, "bfp32m8"), mx.fake_quantize(all_k, "bfp32m4")
    expected = mx.fake_quantize(hi, "bfp32m4")  # middle tokens that passed through the recent window
    expected[:, :, :4], expected[:, :, -40:] = hi[:, :, :4], hi[:, :, -40:]
    direct = slice(4, max(prefill - 40, 4))  # prefill tokens already past the window: encoded at 4 bits
    expected[:, :, direct] = lo[:, :, direct]
    assert torch.equal(keys, expected)


def test_uniform_bfp_cache_is_plain_bfp4():
    cfg = HarmoniaConfig.uniform(4)
    cache = HarmoniaCache(BOOK, cfg)
    k = torch.randn(2, 2, 50, 64)
    keys, values = cache.update(k, -k, 0)
    assert torch.equal(keys, mx.fake_quantize(k, "bfp32m4")) and torch.equal(values, -keys)
    assert cache.layers[0].key_mid.shape[2] == 50 and cache.layers[0].memory_bytes() == 2 * 2 * 2 * 50 * 2 * 21


def test_harmonia_bits_and_compression():
    assert harmonia_bits_per_element(1000, HarmoniaConfig.uniform(4)) == 5.25
    assert harmonia_bits_per_element(1000, HarmoniaConfig.uniform(8)) == 9.25
    cfg = HarmoniaConfig()  # 32 sinks + 128 recent at 9.25 bits
    assert harmonia_bits_per_element(160, cfg) == 9.25
    assert harmonia_bits_per_element(1160, cfg) == pytest.approx((160 * 9.25 + 1000 * 5.25) / 1160)
    assert 16 / harmonia_bits_per_element(1 << 16, cfg) == pytest.approx(16 / 5.25, rel=0.01)  # ~3.05x
    assert 16 / 5.25 == pytest.approx(3.05, abs=0.005)
    fp16 = 2 * 30 * 3 * 64 * 2  # SmolLM2-135M: 30 layers, 3 KV heads, head_dim 64; bytes per token
    assert harmonia_bytes(4096, 3, 64, 30, cfg) * 16 / (4096 * fp16) == pytest.approx(
        harmonia_bits_per_element(4096, cfg))


def test_harmonia_in_a_model():
    model = tiny_model(seed=0, initializer_range=0.1)
    ids = random_ids(40, batch=2)
    cache = HarmoniaCache(model, HarmoniaConfig(n_sink=4, n_recent=16))
    out = model.generate(ids, cache=cache, max_new_tokens=10, do_sample=False,
                         attention_mask=torch.ones_like(ids))
    assert out.shape == (2, 50) and cache.get_seq_length() == 49
    assert cache.memory_bytes() == harmonia_bytes(49, 2, 32, 2, cache.config, batch=2)
    assert cache.bits_per_element() == pytest.approx((20 * 9.25 + 29 * 5.25) / 49)
    ids = random_ids(256)
    ref, n = stream_nll(model, ids, DynamicCache(), chunk=16)
    harmonia = HarmoniaConfig(n_sink=32, n_recent=64)
    nll, _ = stream_nll(model, ids, HarmoniaCache(model, harmonia), chunk=16)
    assert abs(nll - ref) / n < 0.02
    configs = {"bfp8": HarmoniaConfig.uniform(8), "harmonia": harmonia, "bfp4": HarmoniaConfig.uniform(4)}
    err = logit_errors(model, ids, {name: HarmoniaCache(model, c) for name, c in configs.items()})
    assert err["bfp8"] < err["harmonia"] / 10 and err["harmonia"] < 0.7 * err["bfp4"]


# ---------------------------------------------------------------------------------------------------------
# key smoothing


def outlier_model() -> LlamaForCausalLM:
    """Tiny GQA Llama with q/k biases and injected K outlier channels (one channel of a RoPE pair only)."""
    model = tiny_model(seed=1, initializer_range=0.1, attention_bias=True)
    with torch.no_grad():
        for layer in model.model.layers:
            k = layer.self_attn.k_proj
            for row, factor in ((5, 20.0), (32 + 20, 15.0)):  # kv head 0 channel 5, kv head 1 channel 20
                k.weight[row] *= factor
                k.bias[row] *= factor
    return model


def cached_keys(model, ids: torch.Tensor) -> list[torch.Tensor]:
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=ids, cache=cache, use_cache=True)
    return [layer.keys for layer in cache.layers]  # post-RoPE, what a KV cache stores


def outlier_ratio(keys: torch.Tensor) -> float:
    """Largest per-channel max |K| over the median channel's, worst head."""
    amax = keys.abs().amax(dim=2)  # [B, heads, D]
    return float((amax.amax(-1) / amax.median(-1).values).max())


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_smooth_keys_fold_is_exact_with_rope_and_gqa(dtype, tol):
    model = outlier_model().to(dtype)
    ids, calib = random_ids(64, seed=3), random_ids(128, batch=2, seed=4)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    ratio_before = max(outlier_ratio(k) for k in cached_keys(model, ids))
    factors = smooth_keys(model, calib)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert float((after - before).abs().max() / before.abs().max()) < tol  # max error over the largest logit
    assert len(factors) == 2 and factors[0].shape == (2, 32)
    for s in factors:
        assert torch.equal(s[:, :16], s[:, 16:])  # one factor per RoPE pair (i, i + 16)
    ratio_after = max(outlier_ratio(k) for k in cached_keys(model, ids))
    assert ratio_before > 8 and ratio_after < ratio_before / 3


def test_smoothing_helps_bfp4_keys():
    model, ids = outlier_model(), random_ids(128, seed=5)
    plain = logit_errors(model, ids, {"bfp4": HarmoniaCache(model, HarmoniaConfig.uniform(4))})["bfp4"]
    smooth_keys(model, random_ids(128, batch=2, seed=4))  # exact fold: the fp reference is unchanged
    smoothed = logit_errors(model, ids, {"bfp4": HarmoniaCache(model, HarmoniaConfig.uniform(4))})["bfp4"]
    assert smoothed < plain / 2


def test_unpaired_factors_break_rope_and_are_refused():
    model = tiny_model(seed=2, initializer_range=0.1)
    ids = random_ids(32)
    s = torch.ones(2, 32)
    s[:, 3] = 4.0  # channel 3 without its RoPE partner 19
    one_line_error(fold_key_scales, model, [s, s], match="equal on each RoPE pair")
    one_line_error(fold_key_scales, model, [s], match="one factor tensor per attention layer")
    with torch.no_grad():
        before = model(input_ids=ids).logits
        for layer in model.model.layers:  # the fold done by hand, ignoring the pairing
            attn = layer.self_attn
            attn.q_proj.weight.mul_(s.repeat_interleave(2, dim=0).reshape(-1, 1))
            attn.k_proj.weight.div_(s.reshape(-1, 1))
        after = model(input_ids=ids).logits
    assert float((after - before).abs().max() / before.abs().max()) > 1e-3


def test_smooth_keys_rejects_bad_input():
    model = tiny_model()
    one_line_error(smooth_keys, model, torch.arange(10), match=r"shape \[batch, tokens\]")
    one_line_error(smooth_keys, model, random_ids(8), alpha=1.5, match="alpha must be in")
    cfg = family_config("qwen3")
    q3 = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    one_line_error(smooth_keys, q3, random_ids(8), match="q/k norms")


# ---------------------------------------------------------------------------------------------------------
# bundled model


@needs_bundled
def test_bundled_smollm2_stream_nll():
    """The caches plug into the real model (head_dim 64, 3 KV heads, 30 layers) and stay close to fp."""
    from ridgeline.loader import load_model
    from ridgeline.measure.bench import prompt_ids

    assert BUNDLED_GGUF is not None
    model, tok = load_model("smollm2-135m", dtype="fp32")
    ids = torch.tensor([prompt_ids(lambda s: tok(s)["input_ids"], 128)])
    ref, n = stream_nll(model, ids, DynamicCache(), chunk=64)
    kivi, harmonia = KIVIConfig(4, 32, 32), HarmoniaConfig(n_sink=32, n_recent=32)
    for cache, nbytes in ((KIVICache(model, kivi), kivi_bytes(127, 3, 64, 30, kivi, fp_bytes=4)),
                          (HarmoniaCache(model, harmonia), harmonia_bytes(127, 3, 64, 30, harmonia))):
        nll, _ = stream_nll(model, ids, cache, chunk=64)
        assert abs(nll - ref) / n < 0.05  # nats per token
        assert cache.memory_bytes() == nbytes
