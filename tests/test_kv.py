"""KV bytes per token equal the real cache tensors that transformers holds after a forward pass."""

import pytest
import torch

from conftest import family_config
from ridgeline.roofline.workload import Options, build_workload, layer_kv_bytes
from ridgeline.specs.model import spec_from_config
from ridgeline.specs.scenario import Precision, Scenario

FP32 = Precision("fp32", "fp32", "fp32")


def _cache_bytes(cfg: dict, tokens: int) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(cfg)
    hf_cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_cfg).eval()
    with torch.no_grad():
        out = model(torch.randint(0, hf_cfg.vocab_size, (1, tokens)), use_cache=True)
    cache = out.past_key_values
    return sum(l.keys.numel() * l.keys.element_size() + l.values.numel() * l.values.element_size()
               for l in cache.layers)


@pytest.mark.parametrize("family", ["llama", "llama_mha", "llama_mqa", "qwen3", "gemma", "gpt_neox"])
@pytest.mark.parametrize("tokens", [1, 7, 20])
def test_kv_bytes_match_cache(family, tokens):
    cfg = family_config(family)
    spec = spec_from_config(cfg)
    assert layer_kv_bytes(spec, FP32, tokens) == _cache_bytes(cfg, tokens)


@pytest.mark.parametrize("tokens", [5, 15, 16, 17, 40])  # below, at and beyond the window of 16
def test_sliding_window_kv_bytes(tokens):
    cfg = family_config("mistral")
    spec = spec_from_config(cfg)
    assert layer_kv_bytes(spec, FP32, tokens) == _cache_bytes(cfg, tokens)


@pytest.mark.parametrize("tokens", [4, 12])
def test_mixed_sliding_and_full_layers(tokens):
    cfg = family_config("gemma3_text")  # window 8 on two layers, one full layer
    spec = spec_from_config(cfg)
    assert layer_kv_bytes(spec, FP32, tokens) == _cache_bytes(cfg, tokens)


@pytest.mark.parametrize("family", ["deepseek_v2", "deepseek_v3"])
def test_mla_cache_matches_transformers(family):
    # transformers 5.x caches MLA's latent (compressed KV as "keys", rope dims as "values"), as deployed
    # runtimes do: it matches ridgeline's default. (Older transformers held the decompressed per-head K/V.)
    cfg = family_config(family)
    spec = spec_from_config(cfg)
    assert layer_kv_bytes(spec, FP32, 9) == _cache_bytes(cfg, 9)
    assert layer_kv_bytes(spec, FP32, 9, Options(mla_cache="decompressed")) > layer_kv_bytes(spec, FP32, 9)


def test_mla_latent_by_hand():
    # kv_lora_rank 16 + rope dims 4 = 20 elements per token per layer, 3 layers, bf16 (2 bytes)
    spec = spec_from_config(family_config("deepseek_v3"))
    assert layer_kv_bytes(spec, Precision(kv="bf16"), 1) == 20 * 3 * 2
    # decompressed: 4 heads × (8 + 4 + 12) = 96 elements per layer
    assert layer_kv_bytes(spec, Precision(kv="bf16"), 1, Options(mla_cache="decompressed")) == 96 * 3 * 2



def test_kv_format_block_must_divide_head_dim():
    from ridgeline.errors import RidgelineError

    spec = spec_from_config(family_config("llama"))  # head_dim 16
    with pytest.raises(RidgelineError, match="block size 32"):
        build_workload(spec, Scenario(8, 4), Precision(kv="q8_0"))
    spec = spec_from_config(family_config("qwen3"))  # head_dim 32: 34 bytes per 32 elements
    w = build_workload(spec, Scenario(8, 4), Precision(kv="q8_0"))
    assert w.kv_bytes_per_token == 3 * 2 * 2 * 34
    assert w.kv_bytes == 3 * 2 * 2 * 34 * 12
