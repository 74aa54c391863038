"""Parameter counts from config equal the state dict of the same architecture built by transformers."""

import pytest
import torch

from conftest import FAMILIES, family_config
from ridgeline.specs.model import spec_from_config


def _hf_model(cfg: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(cfg)
    hf_cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_cfg)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_param_count_equals_transformers(family):
    cfg = family_config(family)
    model = _hf_model(cfg)
    expected = sum(p.numel() for p in model.parameters())
    spec = spec_from_config(cfg, family)
    assert spec.param_count() == expected


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt_neox"])
def test_tied_and_untied(family):
    for tied in (True, False):
        cfg = {**family_config(family), "tie_word_embeddings": tied}
        spec = spec_from_config(cfg)
        assert spec.param_count() == sum(p.numel() for p in _hf_model(cfg).parameters())
        assert spec.tied is tied


def test_unknown_model_type_with_standard_fields_counts_like_llama():
    cfg = family_config("llama")
    spec = spec_from_config({**cfg, "model_type": "my_new_arch"})
    assert spec.param_count() == sum(p.numel() for p in _hf_model(cfg).parameters())


def test_moe_layers_follow_config():
    spec = spec_from_config(family_config("qwen2_moe"))
    assert [l.moe is not None for l in spec.layers] == [True, False, True]
    spec = spec_from_config(family_config("deepseek_v3"))
    assert [l.moe is not None for l in spec.layers] == [False, True, True]
    assert spec.layers[1].moe.shared_intermediate == 32


def test_qwen3_head_dim_is_read_not_derived():
    spec = spec_from_config(family_config("qwen3"))
    assert spec.layers[0].attention.head_dim == 32  # hidden/heads would be 16


def test_catalogue_counts_match_published():
    from ridgeline.specs.catalogue import catalogue_spec, model_index

    checked = 0
    for entry in model_index():
        if entry.get("published_params"):
            spec = catalogue_spec(entry["id"])
            published = entry["published_params"]
            if entry.get("published_params_counts_tied_lm_head"):  # Qwen3 checkpoints store the tied head twice
                published -= spec.vocab * spec.hidden
            assert spec.param_count() == published, entry["id"]
            checked += 1
    assert checked >= 5
