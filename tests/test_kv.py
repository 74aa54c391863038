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


# ---------------------------------------------------------------------------------------------
# --window and --kv-heads: the same bytes as transformers' own caches of the converted model


def _hf_params(cfg: dict) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(cfg)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("tokens", [5, 15, 16, 17, 40])
def test_window_override_matches_a_sliding_window_model(tokens):
    llama, mistral = family_config("llama"), family_config("mistral")  # mistral: the same with window 16
    spec = spec_from_config(llama).with_window(16)
    assert layer_kv_bytes(spec, FP32, tokens) == _cache_bytes(mistral, tokens)
    w, ref = (build_workload(s, Scenario(tokens, 8), FP32) for s in (spec, spec_from_config(mistral)))
    for a, b in zip(w.phases, ref.phases):
        assert a.flops == b.flops and a.bytes_by_kind() == b.bytes_by_kind()


def test_window_bounds_kv_and_attention_by_hand():
    spec = spec_from_config(family_config("llama"))  # 3 layers, 2 KV heads of 16 dims
    # window 8: the cache holds 7 tokens; fp32 K and V of a token: 2 × 2 × 16 × 4 = 256 bytes per layer
    assert layer_kv_bytes(spec.with_window(8), FP32, 20) == 3 * 7 * 256
    full, windowed = (build_workload(s, Scenario(20, 1), FP32) for s in (spec, spec.with_window(8)))
    qk = lambda w: next(o for o in w.decode.ops if o.name == "qk")
    # the decode step's query sees 8 keys instead of 21: 4 heads × 16 dims × 2 FLOPs per key
    assert qk(full).flops.tolist() == [2 * 4 * 16 * 21] and qk(windowed).flops.tolist() == [2 * 4 * 16 * 8]
    assert qk(windowed).bytes["kv_read"].tolist() == [8 * 128]  # K of 7 cached + 1 new token
    one = spec.with_window(1)  # each query attends only itself: nothing stays cached
    assert one.kv_tokens_held(one.layers[0], 20) == 0 and layer_kv_bytes(one, FP32, 20) == 0


@pytest.mark.parametrize("tokens", [1, 9])
def test_kv_heads_override_matches_a_gqa_model(tokens):
    mha, gqa = family_config("llama_mha"), family_config("llama")  # 4 query heads; 4 vs 2 KV heads
    spec = spec_from_config(mha).with_kv_heads(2)
    assert layer_kv_bytes(spec, FP32, tokens) == _cache_bytes(gqa, tokens)
    assert spec.param_count() == _hf_params(gqa) == spec_from_config(gqa).param_count()
    assert spec.with_kv_heads(4).param_count() == _hf_params(mha)


def test_kv_heads_shrink_kv_and_kv_projections_by_hand():
    spec = spec_from_config(family_config("llama_mha"))  # hidden 64, 4 heads of 16, 3 layers
    for g in (4, 2, 1):
        w = build_workload(spec.with_kv_heads(g), Scenario(10, 2), Precision("bf16", "bf16", "bf16"))
        assert w.kv_bytes_per_token == 3 * 2 * g * 16 * 2  # 2·L·G·d_h·bytes
        assert w.kv_bytes == 12 * w.kv_bytes_per_token
        for name in ("k_proj", "v_proj"):
            op = next(o for o in w.decode.ops if o.name == name)
            assert op.count == 3 and op.bytes["weights"].tolist() == [g * 16 * 64 * 2]  # [G·d_h, hidden] bf16
        # attention FLOPs are the query heads' and do not change
        assert next(o for o in w.decode.ops if o.name == "qk").flops.tolist() == [2 * 4 * 16 * 11, 2 * 4 * 16 * 12]


def test_kv_heads_keep_stored_tensor_types():
    from ridgeline.specs.model import with_stored_formats

    types = {f"blk.{i}.{r}.weight": "q8_0" for i in range(3) for r in ("attn_k", "attn_v")}
    spec = with_stored_formats(spec_from_config(family_config("llama_mha")), types, "fp32")
    ref = with_stored_formats(spec_from_config(family_config("llama")), types, "fp32")
    assert spec.with_kv_heads(2).gguf_tensors == ref.gguf_tensors
    k = next(t for t in spec.with_kv_heads(1).gguf_tensors if t.name == "blk.0.attn_k.weight")
    assert k.shape == (16, 64) and k.ggml_type == "q8_0" and k.nbytes == 16 * 2 * 34


@pytest.mark.parametrize("call,needle", [
    (lambda s: s.with_kv_heads(3), "divide the 4 query heads"), (lambda s: s.with_kv_heads(0), "1, 2, 4"),
    (lambda s: s.with_window(0), ">= 1"), (lambda s: spec_from_config(family_config("deepseek_v3")).with_kv_heads(1), "latent"),
])
def test_bad_overrides_are_clear_errors(call, needle):
    from ridgeline.errors import RidgelineError

    with pytest.raises(RidgelineError, match=needle):
        call(spec_from_config(family_config("llama")))


def test_kivi_needs_its_group_to_divide_the_head_dim():
    from ridgeline.errors import RidgelineError

    spec = spec_from_config(family_config("llama"))  # head_dim 16: KIVI groups each token's values by 32
    with pytest.raises(RidgelineError, match="group size 32"):
        build_workload(spec, Scenario(8, 4), Precision(kv="kivi2"))
    w = build_workload(spec, Scenario(8, 4), Precision(kv="kivi2_g16_r32"))
    assert w.kv_bytes == 3 * 2 * 2 * 12 * 16 * 2  # 12 tokens, all in the fp16 residual


# ---------------------------------------------------------------------------------------------
# the command line

SMOL, CPU = "smollm2-135m", "epyc-zen4-2vcpu"


def _cli(*args):
    from typer.testing import CliRunner

    from ridgeline.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _json(*args) -> dict:
    import json

    res = _cli(*args, "--json")
    assert res.exit_code == 0, (res.stderr, res.exception)
    return json.loads(res.stdout)


def test_analyze_kivi_by_hand(tmp_path):
    import json

    cfg = tmp_path / "one_head.json"  # one layer, one KV head of 32 dims
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1,
                               "num_attention_heads": 1, "num_key_value_heads": 1, "intermediate_size": 64,
                               "vocab_size": 64}))
    rec = _json("analyze", "-m", cfg, "-d", CPU, "-s", "300:0", "--kv", "kivi2")
    # keys 256 quantized + 44 fp16, values 172 + 128; a row: 12 bytes (KIVI-2, G 32) or 64 (fp16)
    assert rec["memory"]["kv_bytes"] == (256 + 172) * 12 + (44 + 128) * 64
    assert rec["precision"]["kv"] == "kivi2"
    assert rec["precision"]["kv_format"] | {"description": ""} == {
        "name": "kivi2_g32_r128", "bulk": "int2_g32_asym", "hi": "fp16", "sink": 0, "recent": 128,
        "key_chunk": 128, "description": ""}
    rec2 = _json("analyze", "-m", cfg, "-d", CPU, "-s", "300:0", "--kv", "kivi2", "--batch", "3")
    assert rec2["memory"]["kv_bytes"] == 3 * rec["memory"]["kv_bytes"]


def test_analyze_window_and_kv_heads():
    base = _json("analyze", "-m", SMOL, "-d", CPU)
    assert base["model"]["kv_heads"] == [3] and base["model"]["windows"] == [None]
    rec = _json("analyze", "-m", SMOL, "-d", CPU, "--window", "64", "--kv-heads", "1", "--kv", "harmonia")
    assert rec["model"]["kv_heads"] == [1] and rec["model"]["windows"] == [64]
    # 30 layers × 1 KV head: k and v projections of 64 × 576 instead of 192 × 576
    assert rec["model"]["params"] == base["model"]["params"] - 30 * 2 * 2 * 64 * 576
    # 63 tokens held per layer, all at 8-bit mantissa: 64 numbers × 9.25 bits for K and for V
    assert rec["memory"]["kv_bytes"] == 30 * 63 * 2 * 64 * 9.25 / 8
    assert rec["model"]["kv_bytes_per_token"] == 30 * 2 * 64 * 5.25 / 8
    assert rec["phases"]["decode"]["flops"] < base["phases"]["decode"]["flops"]  # 64 keys, not up to 256
    out = _cli("analyze", "-m", SMOL, "-d", CPU, "--window", "64", "--kv-heads", "1", "--kv", "kivi4").stdout
    for word in ("KV kivi4", "9 query / 1 KV heads", "window 64", "kivi4_g32_r128"):
        assert word in out, word


@pytest.mark.parametrize("args,needles", [
    (("--window", "0"), ("--window", ">= 1", "got 0")),
    (("--kv-heads", "4"), ("--kv-heads", "9 query heads", "1, 3, 9", "got 4")),
    (("--kv", "kivi2_g32_r100"), ("kivi2_g32_r100", "multiple of G")),
    (("--kv", "kivi9"), ("kivi9", "2..8 bits")),
])
def test_analyze_bad_values_are_one_line_errors(args, needles):
    res = _cli("analyze", "-m", SMOL, "-d", CPU, *args)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith("error:")
    for n in needles:
        assert n in res.stderr, (n, res.stderr)


def test_sweep_takes_kv_formats():
    rows = _json("sweep", "-m", SMOL, "-d", CPU, "--kv", "kivi2", "--prompt", "1024", "--generate", "8")["rows"]
    plain = _json("sweep", "-m", SMOL, "-d", CPU, "--kv", "bf16", "--prompt", "1024", "--generate", "8")["rows"]
    assert rows[0]["kv"] == "kivi2" and rows[0]["error"] is None
    assert rows[0]["memory_bytes"] < plain[0]["memory_bytes"]
    res = _cli("sweep", "-m", SMOL, "-d", CPU, "--kv", "kivi")
    assert res.exit_code == 2 and "'kivi'" in res.stderr


def test_help_names_the_new_options():
    out = _cli("analyze", "--help").stdout
    for word in ("--window", "--kv-heads", "kivi2", "harmonia"):
        assert word in out, word
