"""KV formats, windows and GQA selectable in eval, bench, serve-bench and the gqa command."""

import json

import pytest
import torch
from typer.testing import CliRunner

from ridgeline.cli import app
from ridgeline.errors import RidgelineError
from ridgeline.eval.perplexity import PerplexityConfig, perplexity
from ridgeline.arch import Variant
from ridgeline.eval import EvalConfig
from ridgeline.kv import KIVICache, make_kv_cache, runnable_kv


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny32(tiny_model_dir):
    """A tiny llama with head_dim 32 (KIVI and Harmonia groups of 32 fit) and the tiny tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_factory_builds_each_runnable_cache(tiny32):
    model, _ = tiny32
    k = make_kv_cache("kivi2_g32_r64", model)
    assert isinstance(k, KIVICache) and (k.config.bits, k.config.group, k.config.residual) == (2, 32, 64)
    h = make_kv_cache("harmonia_s32_r64", model)
    assert (h.config.n_sink, h.config.n_recent, h.config.hi_mantissa, h.config.lo_mantissa) == (32, 64, 8, 4)
    u = make_kv_cache("bfp32m4", model)
    assert (u.config.n_sink, u.config.n_recent, u.config.lo_mantissa) == (0, 0, 4)
    assert make_kv_cache("fp32", model) is None and make_kv_cache(None, model) is None
    with pytest.raises(RidgelineError, match="priced by analyze but has no cache"):
        runnable_kv("q8_0")


def test_streamed_perplexity_through_a_float_cache_equals_the_plain_windows(tiny32):
    from ridgeline.corpus import prompt_text

    model, tok = tiny32
    text = prompt_text()
    plain = perplexity(model, tok, text, PerplexityConfig(context=128, stride=64, max_tokens=400))
    streamed = perplexity(model, tok, text, PerplexityConfig(context=128, stride=64, max_tokens=400, kv="fp32",
                                                             chunk=24))
    assert streamed.tokens == plain.tokens
    assert streamed.nll == pytest.approx(plain.nll, rel=1e-5)
    # a compressed cache changes what later chunks see
    kivi = perplexity(model, tok, text, PerplexityConfig(context=128, stride=64, max_tokens=400,
                                                         kv="kivi2_g32_r32", chunk=24))
    assert kivi.nll != pytest.approx(plain.nll, rel=1e-6)
    assert kivi.settings["kv"] == "kivi2_g32_r32" and kivi.settings["chunk"] == 24


def test_eval_config_refuses_what_does_not_compose():
    with pytest.raises(RidgelineError, match="applies to ppl"):
        EvalConfig("m", ("ppl", "cloze"), variant=Variant(kv="kivi2"))
    with pytest.raises(RidgelineError, match="holds the model's dtype"):
        EvalConfig("m", variant=Variant(kv="bf16"), dtype="fp32")
    with pytest.raises(RidgelineError, match="full-attention layers only"):
        EvalConfig("m", variant=Variant(kv="kivi4", window=64))
    with pytest.raises(RidgelineError, match="--window must be >= 1"):
        EvalConfig("m", variant=Variant(window=0))
    assert EvalConfig("m", variant=Variant(kv="kivi2", kv_heads=1)).label == "m fp32 · KV kivi2 (emulated) · 1 KV heads"
    assert Variant("fp32", 128, None).labels == ["KV fp32", "window 128"]


def test_eval_cli_window_curve_and_heads(tiny_model_dir, tmp_path):
    out = tmp_path / "q.json"
    r = _run("eval", tiny_model_dir, "--tasks", "ppl", "--max-tokens", 300, "--context", 128, "--stride", 64,
             "--window", "none,8", "--kv-heads", "2,1", "--out", out)
    assert r.exit_code == 0, r.output
    recs = {x["variant"]: x["tasks"]["ppl"]["token_perplexity"] for x in json.loads(out.read_text())["records"]}
    name = str(tiny_model_dir)
    full, w8 = recs[f"{name} fp32 · 2 KV heads"], recs[f"{name} fp32 · window 8 · 2 KV heads"]
    assert w8 != pytest.approx(full)  # a window of 8 keys over 128-token windows changes the scores
    assert recs[f"{name} fp32 · 1 KV heads"] != pytest.approx(full)
    r = _run("eval", tiny_model_dir, "--kv", "kivi2", "--context", 128, "--stride", 64)  # head_dim 16: no groups of 32
    assert r.exit_code == 2 and "group" in r.output


def test_bench_cli_runs_windows_and_pooled_heads(tiny_model_dir, tmp_path):
    out = tmp_path / "b.json"
    r = _run("bench", "--model", tiny_model_dir, "-s", "40:8", "-r", 1, "--warmup", 0, "--window", 16,
             "--kv-heads", 1, "--device", "raspberry-pi-5", "--reference", "none", "--out", out)
    assert r.exit_code == 0, r.output
    rec = json.loads(out.read_text())["results"][0]
    assert rec["params"]["window"] == 16 and rec["params"]["kv_heads"] == 1
    assert rec["impl"] == "transformers eager · RollingBufferCache"
    assert rec["model"]["config"]["num_key_value_heads"] == 1 if "config" in rec["model"] else True
    assert "window 16 · 1 KV heads" in r.output
    r = _run("bench", "--model", tiny_model_dir, "--impl", "lean", "--window", 16)
    assert r.exit_code == 2 and "lean decode path" in r.output


def test_bench_record_prices_the_transformed_cache(tiny_model_dir):
    from ridgeline.measure.bench import BenchConfig, run_bench
    from ridgeline.measure.phi import record_workload
    from ridgeline.specs.scenario import Scenario

    rec = run_bench(BenchConfig(str(tiny_model_dir), scenario=Scenario(40, 8), repeats=1, warmup=0,
                                variant=Variant(window=16, kv_heads=1)))
    wl = record_workload(rec)
    # 3 layers, 1 KV head of 16 dims, fp32 K and V, the window's 15 cached tokens at the final context of 48
    assert wl.kv_bytes == 3 * 2 * 1 * 16 * 4 * 15
    assert all(s.cache_tokens == 48 for s in rec.samples)


def test_gqa_command_reports_stages_and_saves_a_loadable_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    report = tmp_path / "gqa.json"
    r = _run("gqa", tiny_model_dir, "--kv-heads", 1, "--steps", 3, "--seq-len", 64, "--batch-size", 2,
             "--lr", "1e-3", "--context", 128, "--eval-tokens", 512, "--out", tmp_path / "g1", "--report", report)
    assert r.exit_code == 0, r.output
    rec = json.loads(report.read_text())
    stages = {s["stage"]: s for s in rec["stages"]}
    assert [s["kv_heads"] for s in rec["stages"]] == [2, 1, 1]
    # 3 layers x K and V x heads x head_dim 16 x 4 bytes
    assert stages["original"]["kv_bytes_per_token"] == 3 * 2 * 2 * 16 * 4
    assert stages["pooled"]["kv_bytes_per_token"] == 3 * 2 * 1 * 16 * 4
    assert rec["uptrain"]["steps"] == 3 and rec["uptrain"]["tokens_seen"] == 3 * 2 * 64
    assert stages["uptrained"]["ppl"] != stages["pooled"]["ppl"]
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "g1")
    assert m.config.num_key_value_heads == 1 and m.model.layers[0].self_attn.k_proj.weight.shape == (16, 64)
    r = _run("gqa", tiny_model_dir, "--kv-heads", 3)
    assert r.exit_code == 2 and "divide" in r.output


def test_serve_bench_composes_with_window_and_heads(tiny_model_dir, tmp_path):
    out = tmp_path / "s.json"
    r = _run("serve-bench", tiny_model_dir, "--synthetic", 3, "--rate", "inf", "--offline", "--prompt-len", "20:40",
             "--output-len", "4:6", "--window", 8, "--kv-heads", 1, "--block-size", 4, "--out", out)
    assert r.exit_code == 0, r.output
    rec = json.loads(out.read_text())
    assert rec["transforms"] == {"window": 8, "kv_heads": 1}
    # 3 layers x K and V x 1 head x 16 dims x 4 bytes per slot
    assert rec["summary"]["kv_pool_bytes"] == 512 * 4 * 3 * 2 * 1 * 16 * 4
