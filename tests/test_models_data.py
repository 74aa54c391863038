"""The built-in model catalogue (src/ridgeline/specs/data/models/): real Hugging Face config.json
files plus index.json.

Every config must load through transformers, and for the small natively supported models the
parameter count of a meta-device instantiation must equal the published count: that checks the
config's shapes against an independent number, without weights or network.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from importlib import resources

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, PretrainedConfig  # noqa: E402

# transformers 5.x warns that rope_scaling is deprecated when it builds a plain PretrainedConfig.
pytestmark = pytest.mark.filterwarnings("ignore:`rope_scaling` is deprecated:FutureWarning")

NOTE_KEY = "_ridgeline_note"
# Instantiating these on the meta device is cheap, but the brief keeps the default run to small
# models; set RIDGELINE_TEST_LARGE=1 to check the large ones too.
SMALL_LIMIT = 2_000_000_000
REQUIRED_IDS = {
    "smollm2-135m", "smollm2-360m", "smollm2-1.7b", "qwen2.5-0.5b", "qwen2.5-1.5b",
    "qwen3-0.6b", "qwen3-1.7b", "llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b",
    "llama-3.1-70b", "mistral-7b", "pythia-160m", "pythia-410m", "phi-3-mini",
    "gemma-3-270m", "deepseek-v2-lite", "mixtral-8x7b",
    "plm-1.8b", "fox-1-1.6b", "smallthinker-4ba0.6b",
}
TIED = {"qwen2.5-0.5b", "qwen2.5-1.5b", "llama-3.2-1b", "llama-3.2-3b", "smollm2-135m",
        "smollm2-360m", "smollm2-1.7b", "qwen3-0.6b", "qwen3-1.7b", "gemma-3-270m"}
UNTIED = {"llama-3.1-8b", "llama-3.1-70b", "mistral-7b", "mixtral-8x7b", "phi-3-mini",
          "pythia-160m", "pythia-410m", "deepseek-v2-lite"}


def _models_dir():
    return resources.files("ridgeline.specs").joinpath("data/models")


def _index() -> list[dict]:
    return json.loads(_models_dir().joinpath("index.json").read_text())["models"]


INDEX = {entry["id"]: entry for entry in _index()}


def _raw(model_id: str) -> dict:
    return json.loads(_models_dir().joinpath(f"{model_id}.json").read_text())


def _config_dict(model_id: str) -> dict:
    cfg = _raw(model_id)
    cfg.pop(NOTE_KEY, None)
    return cfg


def _is_native(cfg: dict) -> bool:
    return cfg.get("model_type") in CONFIG_MAPPING


def _load(cfg: dict) -> PretrainedConfig:
    if _is_native(cfg):
        return AutoConfig.for_model(**cfg)
    return PretrainedConfig(**cfg)


# ---------------------------------------------------------------------------------------------
# index.json


def test_index_lists_exactly_the_config_files():
    files = {entry.name[: -len(".json")] for entry in _models_dir().iterdir()
             if entry.name.endswith(".json") and entry.name != "index.json"}
    ids = [entry["id"] for entry in _index()]
    assert len(ids) == len(set(ids)), "duplicate ids in index.json"
    assert set(ids) == files
    assert REQUIRED_IDS <= set(ids)


@pytest.mark.parametrize("model_id", sorted(INDEX))
def test_index_entry_is_well_formed(model_id):
    entry = INDEX[model_id]
    assert model_id == model_id.lower()
    assert re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", model_id)
    assert re.fullmatch(r"[\w.\-]+/[\w.\-]+", entry["hf_id"])
    assert isinstance(entry["family"], str) and entry["family"]
    published = entry["published_params"]
    assert published is None or (isinstance(published, int) and published > 0)
    assert isinstance(entry["params_source"], str) and entry["params_source"]
    assert isinstance(entry["roofline_bench"], bool)
    assert entry["config_source"] in {"verbatim", "reconstructed"}
    assert isinstance(entry["trust_remote_code"], bool)
    assert isinstance(entry["published_params_counts_tied_lm_head"], bool)
    assert isinstance(entry["note"], str)
    # A reconstructed config says what was reconstructed; a verbatim one carries nothing of ours.
    has_note = NOTE_KEY in _raw(model_id)
    assert has_note == (entry["config_source"] == "reconstructed")


# ---------------------------------------------------------------------------------------------
# the configs themselves


@pytest.mark.parametrize("model_id", sorted(INDEX))
def test_config_loads_through_transformers(model_id):
    cfg = _config_dict(model_id)
    entry = INDEX[model_id]
    assert entry["trust_remote_code"] == (not _is_native(cfg))
    config = _load(cfg)
    assert config.model_type == cfg["model_type"]
    assert cfg["architectures"] and isinstance(cfg["architectures"], list)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        assert isinstance(getattr(config, key), int) and getattr(config, key) > 0, key


@pytest.mark.parametrize("model_id", sorted(TIED | UNTIED))
def test_tie_word_embeddings(model_id):
    config = _load(_config_dict(model_id))
    assert config.tie_word_embeddings is (model_id in TIED)


def test_architecture_specifics():
    assert _config_dict("mistral-7b")["sliding_window"] == 4096
    gemma = _config_dict("gemma-3-270m")
    assert gemma["model_type"] == "gemma3_text"
    assert len(gemma["layer_types"]) == gemma["num_hidden_layers"]
    ds = _config_dict("deepseek-v2-lite")
    assert ds["q_lora_rank"] is None and ds["kv_lora_rank"] == 512
    assert (ds["n_routed_experts"], ds["num_experts_per_tok"], ds["n_shared_experts"]) == (64, 6, 2)
    plm = _config_dict("plm-1.8b")
    assert plm["kv_lora_rank"] and plm["qk_rope_head_dim"] == 64
    st = _config_dict("smallthinker-4ba0.6b")
    assert (st["moe_num_primary_experts"], st["moe_num_active_primary_experts"]) == (32, 4)
    assert _config_dict("mixtral-8x7b")["num_local_experts"] == 8


# ---------------------------------------------------------------------------------------------
# parameter counts on the meta device


def _expected_count(model_id: str, cfg: dict) -> int | None:
    entry = INDEX[model_id]
    published = entry["published_params"]
    if published is None:
        return None
    if entry["published_params_counts_tied_lm_head"]:
        # The checkpoint stores lm_head.weight although it is tied; parameters() counts it once.
        published -= cfg["vocab_size"] * cfg["hidden_size"]
    return published


def _count_cases():
    for model_id in sorted(INDEX):
        entry, cfg = INDEX[model_id], _config_dict(model_id)
        marks = []
        if entry["trust_remote_code"]:
            marks.append(pytest.mark.skip(
                reason=f"model_type {cfg['model_type']!r} needs trust_remote_code; no local class"))
        else:
            size = _expected_count(model_id, cfg)
            if size is not None and size > SMALL_LIMIT and not os.environ.get("RIDGELINE_TEST_LARGE"):
                marks.append(pytest.mark.skip(
                    reason="large model: set RIDGELINE_TEST_LARGE=1 to instantiate it on meta"))
        yield pytest.param(model_id, marks=marks, id=model_id)


@pytest.mark.parametrize("model_id", list(_count_cases()))
def test_meta_parameter_count_matches_published(model_id):
    cfg = _config_dict(model_id)
    config = _load(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    counted = sum(p.numel() for p in model.parameters())
    expected = _expected_count(model_id, cfg)
    if expected is None:
        assert counted > 0  # it builds; no published number to compare with
    else:
        assert counted == expected, f"{model_id}: counted {counted}, published {expected}"
