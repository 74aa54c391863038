"""quantize_ and the quantized modules: integer codes by hand, kernels against explicit dequantization,
LLM.int8() and W8A8 against fp64 emulation, SmoothQuant's exact smoothing, save → load, lean decode,
the stored formats `analyze` reads, and the CLI."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_bundled
from transformers import LlamaConfig, LlamaForCausalLM

from ridgeline.errors import RidgelineError
from ridgeline.quant import (BFPConfig, GGUFConfig, GPTQConfig, LLMInt8Config, RTNConfig, SmoothQuantConfig,
                             load_quantized, make_config, precision_label, quantize_, save_quantized)
from ridgeline.quant.intq import rtn
from ridgeline.quant.linear import EmulatedLinear, Int4Linear, W8A8Linear, from_int_quant
from ridgeline.specs.formats import get_format


def _tiny(seed: int = 0, **extra) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=320, **extra)
    return LlamaForCausalLM(cfg).eval()


IDS = torch.randint(0, 320, (4, 48), generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------ integer codes


def test_rtn_codes_by_hand():
    w = torch.tensor([[-1.0, 0.5, 0.25, 1.0], [0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.5, 0.1]])
    q = rtn(w, 4, 0, sym=True)
    # symmetric: s = amax / 7, z = 8
    assert torch.allclose(q.scale[:, 0], torch.tensor([1 / 7, 1.0, 2 / 7]).half().float())
    assert q.zero[:, 0].tolist() == [8, 8, 8]
    assert q.codes[0].tolist() == [1, 12, 10, 15]  # round(-7)+8, round(3.5)=4 (half to even)+8, round(1.75)+8, 7+8
    assert q.codes[1].tolist() == [8, 8, 8, 8]
    a = rtn(w, 2, 0, sym=False)
    # asymmetric: range [min(w,0), max(w,0)] in 3 steps; row 0: s = 2/3, z = round(1.5) = 2
    assert a.scale[0, 0] == torch.tensor(2 / 3).half().float()
    assert a.zero[0, 0] == 2
    assert a.codes[0].tolist() == [0, 3, 2, 3]
    assert torch.equal(a.dequantize()[1], torch.zeros(4))


def test_ragged_last_group_and_bytes():
    w = torch.randn(16, 576) * 0.02
    q = rtn(w, 4, 128, sym=False)
    assert q.scale.shape == (16, 5)  # 4 groups of 128 and one of 64
    last = rtn(w[:, 512:], 4, 0, sym=False)  # the short group is quantized on its own
    assert torch.equal(q.codes[:, 512:], last.codes)
    assert torch.equal(q.scale[:, 4], last.scale[:, 0])
    m = from_int_quant(q)
    assert isinstance(m, Int4Linear)
    assert m.weight_bytes() == get_format("int4_g128_asym").tensor_bytes((16, 576)) == 16 * (288 + 5 * 4)
    assert torch.allclose(m.dequantize(), q.dequantize(), atol=0.01 * float(w.abs().max()))  # bf16 scales


@pytest.mark.parametrize("bad, match", [
    (torch.randn(4), "2-D"), (torch.randn(2, 3, 4), "2-D"), (torch.tensor([[1.0, float("nan")]]), "NaN"),
    (torch.tensor([[1.0, float("inf")]]), "NaN/inf"), (torch.ones(2, 4, dtype=torch.int32), "floating"),
])
def test_bad_weights(bad, match):
    with pytest.raises(RidgelineError, match=match):
        rtn(bad, 4, 0)


def test_bad_configs():
    with pytest.raises(RidgelineError, match="unsupported integer width 9"):
        RTNConfig(bits=9)
    with pytest.raises(RidgelineError, match="unknown quantization method"):
        make_config("awq")
    with pytest.raises(RidgelineError, match="unknown number format"):
        BFPConfig(weight_format="mxint9")
    with pytest.raises(RidgelineError, match="not an MX/BFP format"):
        BFPConfig(weight_format="int8")
    with pytest.raises(RidgelineError, match="unknown GGUF recipe"):
        GGUFConfig(recipe="q7_0")
    with pytest.raises(RidgelineError, match="8-bit method"):
        make_config("smoothquant", bits=4)
    with pytest.raises(RidgelineError, match="does not divide|not a multiple"):
        EmulatedLinear.from_weight(torch.randn(4, 48), "mxint8")


def test_nan_weights_in_a_model_are_refused():
    m = _tiny()
    with torch.no_grad():
        m.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(RidgelineError, match=r"model.layers.1.mlp.up_proj: 1 NaN/inf"):
        quantize_(m, RTNConfig(bits=4, group=32))


# -------------------------------------------------------------------------------- kernels vs dequantization


@pytest.mark.parametrize("bits, group, sym", [(8, 0, True), (4, 32, False), (4, 64, True), (4, 128, False)])
def test_kernel_modules_match_explicit_dequantization(bits, group, sym):
    w = torch.randn(96, 256) * 0.05
    q = rtn(w, bits, group, sym)
    m = from_int_quant(q, bias=torch.randn(96))
    assert m.kernel != "emulated"
    x = torch.randn(5, 256, dtype=torch.bfloat16)
    ref = F.linear(x.float(), q.dequantize(), m.bias)
    got = m(x).float()
    assert (got - ref).norm() / ref.norm() < 1e-2
    # the module's own dequantize is what the kernel multiplies by (bf16 scales)
    assert (m.dequantize() - q.dequantize()).abs().max() <= 0.01 * w.abs().max()


def test_w8a8_matches_fp64_emulation():
    torch.manual_seed(3)
    w, x = torch.randn(64, 128) * 0.05, torch.randn(7, 128)
    m = W8A8Linear.from_quant(rtn(w, 8, 0, True))
    xs = x.double().abs().amax(1, keepdim=True) / 127
    xq = torch.round(x.double() / xs)
    wq = m.weight_int8.double()
    ref = (xq @ wq.t()) * xs * m.scales.double()
    assert torch.allclose(m(x).double(), ref, rtol=1e-6, atol=1e-7)


def test_llm_int8_outlier_decomposition():
    torch.manual_seed(4)
    w, x = torch.randn(64, 128) * 0.05, torch.randn(9, 128)
    x[:, 17] *= 40  # one outlier feature, as LLM.int8() sees in large models
    x[2, 90] = 7.0  # one token above the threshold is enough to make a column an outlier
    q = rtn(w, 8, 0, True)
    m = W8A8Linear.from_quant(q, threshold=6.0)
    cols = [17, 90]
    xr = x.double().clone()
    xr[:, cols] = 0
    xs = xr.abs().amax(1, keepdim=True) / 127  # row absmax after zeroing the outlier columns
    wd = m.weight_int8.double() * m.scales.double()[:, None]
    ref = torch.round(xr / xs) @ m.weight_int8.double().t() * xs * m.scales.double() + x.double()[:, cols] @ wd[:, cols].t()
    assert torch.allclose(m(x).double(), ref, rtol=1e-6, atol=1e-6)
    # decomposition matters: plain vector-wise W8A8 on the same input is much worse
    exact = x.double() @ w.double().t()
    naive = W8A8Linear.from_quant(q)(x).double()
    assert (m(x).double() - exact).norm() < 0.5 * (naive - exact).norm()


# ---------------------------------------------------------------------------------------- methods on a model


@pytest.mark.parametrize("config, kernel", [
    (RTNConfig(bits=8), "_weight_int8pack_mm"), (RTNConfig(bits=4, group=32), "_weight_int4pack_mm_for_cpu"),
    (RTNConfig(bits=3), "emulated"), (LLMInt8Config(), "_int_mm"), (SmoothQuantConfig(), "_int_mm"),
    (BFPConfig("mxfp4", "mxint8"), "emulated"), (GPTQConfig(bits=4, group=32), "_weight_int4pack_mm_for_cpu"),
])
def test_quantize_save_load_identical_logits(tmp_path, config, kernel):
    m = _tiny()
    ref = m(IDS).logits
    manifest = quantize_(m, config, calibration=IDS)
    assert manifest["kernels"] == {kernel: 14}  # 2 layers × 7 projections, lm_head left alone
    assert manifest["emulated"] == (kernel == "emulated")
    assert ("emulated" in precision_label(m)) == (kernel == "emulated")
    fmt = next(iter(manifest["formats"]))
    per_layer = [(128, 128), (64, 128), (64, 128), (128, 128), (256, 128), (256, 128), (128, 256)]
    assert manifest["quantized_bytes"] == 2 * sum(get_format(fmt).tensor_bytes(s) for s in per_layer)
    out = m(IDS).logits.detach()
    err = float(((out - ref).norm() / ref.norm()).detach())
    assert err < {"rtn8": 0.03, "rtn4": 0.2, "rtn3": 0.5, "gptq4": 0.2, "bfp": 0.3}.get(
        config.method + str(getattr(config, "bits", "")), 0.03)
    save_quantized(m, None, tmp_path / "q")
    again = load_quantized(tmp_path / "q")
    assert torch.equal(again(IDS).logits, out)
    with pytest.raises(RidgelineError, match="already quantized"):
        quantize_(again, config, calibration=IDS)


def test_gptq_beats_rtn_on_a_model():
    ids = torch.randint(0, 320, (16, 64), generator=torch.Generator().manual_seed(2))
    ref = _tiny()(ids).logits
    errs = {}
    for name, config in (("rtn", RTNConfig(bits=3, group=32)), ("gptq", GPTQConfig(bits=3, group=32))):
        m = _tiny()
        quantize_(m, config, calibration=ids)
        errs[name] = float((m(ids).logits - ref).detach().norm())
    assert errs["gptq"] < 0.8 * errs["rtn"]


def test_smoothing_leaves_logits_unchanged_before_quantization():
    from ridgeline.quant.smoothquant import activation_maxima, smooth_

    m = _tiny()
    ref = m(IDS).logits
    maxima = activation_maxima(m, IDS)
    for alpha in (0.5, 0.85):
        s = copy.deepcopy(m)
        factors = smooth_(s, maxima, alpha)
        assert max(float(f.max() / f.min()) for f in factors.values()) > 1.5  # the factors do something
        assert torch.allclose(s(IDS).logits, ref, rtol=1e-4, atol=1e-4)


def test_smoothquant_no_worse_than_naive_w8a8_on_outlier_activations():
    from ridgeline.quant.smoothquant import activation_maxima, smooth_

    m = _tiny()
    with torch.no_grad():  # an outlier channel in the pre-attention activations of every layer
        for layer in m.model.layers:
            layer.input_layernorm.weight[[5, 77]] = 30.0
    ref = m(IDS).logits
    naive = copy.deepcopy(m)
    quantize_(naive, LLMInt8Config(threshold=1e9))  # per-token × per-channel W8A8 without smoothing
    smooth = copy.deepcopy(m)
    smooth_(smooth, activation_maxima(smooth, IDS), 0.5)
    quantize_(smooth, LLMInt8Config(threshold=1e9))
    assert (smooth(IDS).logits - ref).norm() < (naive(IDS).logits - ref).norm()


def test_lean_decode_runs_quantized_modules_fused():
    from ridgeline.measure.lean import LeanCausalLM, greedy

    for config in (RTNConfig(bits=8, include_lm_head=True), RTNConfig(bits=4, group=32), LLMInt8Config(),
                   RTNConfig(bits=3, group=64)):
        m = _tiny(seed=5)
        quantize_(m, config)
        lean = LeanCausalLM.from_hf(m, 64)
        assert type(lean.layers[0].wqkv) is type(m.model.layers[0].self_attn.q_proj)
        ids = IDS[:1, :12]
        ref = m.generate(ids, do_sample=False, max_new_tokens=8, min_new_tokens=8)[0, 12:].tolist()
        assert greedy(lean, ids, 8) == ref


def test_saved_folder_reports_stored_formats_to_analyze(tmp_path, tiny_model_dir):
    from ridgeline.loader import load_model
    from ridgeline.specs import load_spec

    model, tok = load_model(str(tiny_model_dir))
    manifest = quantize_(model, RTNConfig(bits=4, group=32))
    save_quantized(model, tok, tmp_path / "q")
    spec = load_spec(str(tmp_path / "q"))
    table = {t.name: t for t in spec.gguf_tensors}
    assert table["blk.1.ffn_down.weight"].ggml_type == "int4_g32_asym"
    assert table["token_embd.weight"].ggml_type == "fp32"
    quant = sum(t.nbytes for t in spec.gguf_tensors if t.ggml_type.startswith("int"))
    assert quant == manifest["quantized_bytes"]
    again, _ = load_model(str(tmp_path / "q"))  # the one loader reads quantized folders
    assert again.ridgeline_quant["formats"] == {"int4_g32_asym": 21}  # 3 layers × 7


def test_refuses_pickle_checkpoints(tmp_path):
    m = _tiny()
    quantize_(m, RTNConfig(bits=8))
    save_quantized(m, None, tmp_path / "q")
    (tmp_path / "q" / "model.safetensors").rename(tmp_path / "q" / "pytorch_model.bin")
    with pytest.raises(RidgelineError, match="pickle checkpoints are refused"):
        load_quantized(tmp_path / "q")


def test_cli_quantize(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from ridgeline.cli import app

    runner = CliRunner()
    out = tmp_path / "q"
    res = runner.invoke(app, ["quantize", str(tiny_model_dir), "--method", "rtn", "--bits", "4", "--group", "32",
                              "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "ridgeline_quant.json").read_text())["formats"] == {"int4_g32_asym": 21}
    res = runner.invoke(app, ["quantize", str(tiny_model_dir), "--method", "awq", "--out", str(out)])
    assert res.exit_code == 2 and "unknown quantization method 'awq'" in res.output
    res = runner.invoke(app, ["quantize", str(tiny_model_dir), "--method", "rtn", "--out", str(tmp_path / "no" / "q")])
    assert res.exit_code == 2 and "does not exist" in res.output


@needs_bundled
def test_bundled_int4_lean_matches_generate(tmp_path):
    from ridgeline.loader import load_model
    from ridgeline.measure.lean import LeanCausalLM, greedy

    model, tok = load_model("smollm2-135m", dtype="bf16")
    quantize_(model, RTNConfig(bits=4, group=128, include_lm_head=True))
    save_quantized(model, tok, tmp_path / "q4")
    again, _ = load_model(str(tmp_path / "q4"), dtype="bf16")
    ids = tok("The quick brown fox jumps over the lazy dog. Once upon a time", return_tensors="pt").input_ids
    assert torch.equal(again(ids).logits, model(ids).logits)
    ref = model.generate(ids, do_sample=False, max_new_tokens=16, min_new_tokens=16)[0, ids.shape[1]:].tolist()
    assert greedy(LeanCausalLM.from_hf(again, 64), ids, 16) == ref


def test_gguf_recipe_applies_the_exact_codecs():
    from ridgeline.quant.ggml import quantize_dequantize
    from ridgeline.quant.gguf_names import gguf_name, recipe_context
    from ridgeline.specs.recipes import tensor_type

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=8, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=320, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg).eval()
    originals = {n: mod.weight.detach().clone() for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)}
    embed = m.model.embed_tokens.weight.detach().clone()
    ctx = recipe_context(m)
    manifest = quantize_(m, GGUFConfig("q4_k_m"))
    assert manifest["emulated"]
    assert set(manifest["formats"]) == {"q4_k", "q6_k"}  # rows of 256 and 512: no fallbacks
    for fqn, spec in manifest["modules"].items():
        want = tensor_type("q4_k_m", gguf_name(fqn), tuple(originals[fqn].shape), ctx)
        assert spec["fmt"] == want
        assert torch.equal(m.get_submodule(fqn).dequantize(), quantize_dequantize(originals[fqn], want))
    # tied embeddings: token_embd is llama.cpp's output tensor too, Q6_K in Q4_K_M, and both uses read it
    assert manifest["tensor_formats"]["token_embd.weight"] == "q6_k"
    assert torch.equal(m.model.embed_tokens.weight, quantize_dequantize(embed, "q6_k"))
    assert m.lm_head.weight is m.model.embed_tokens.weight


@needs_bundled
def test_cli_export_gguf_bundled(tmp_path):
    from typer.testing import CliRunner

    from ridgeline.cli import app

    out = tmp_path / "m.gguf"
    res = CliRunner().invoke(app, ["export-gguf", "smollm2-135m", "--type", "q8_0", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)  # progress lines go to stderr
    assert record["type_counts"] == {"q8_0": 211, "f32": 61} and out.stat().st_size == record["bytes"]
    res = CliRunner().invoke(app, ["export-gguf", "smollm2-135m", "--type", "q3_k_xl", "--out", str(out)])
    assert res.exit_code == 2 and "unknown GGUF export type" in res.output


def test_eval_of_a_quantized_folder_labels_the_precision(tmp_path, tiny_model_dir):
    from ridgeline.eval.run import EvalConfig, run_eval
    from ridgeline.loader import load_model
    from ridgeline.corpus import prompt_text

    model, tok = load_model(str(tiny_model_dir))
    n_params = sum(p.numel() for p in model.parameters())
    quantize_(model, RTNConfig(bits=3, group=32))
    save_quantized(model, tok, tmp_path / "q3")
    text = tmp_path / "text.txt"
    text.write_text(prompt_text())
    record = run_eval(EvalConfig(str(tmp_path / "q3"), ("ppl",), corpus=str(text), context=64, stride=64,
                                 max_tokens=256))
    assert record["model"]["weights"] == "rtn int3_g32_asym (emulated)"
    assert record["model"]["params"] == n_params  # quantized weights are buffers, still counted
    assert record["tasks"]["ppl"]["token_perplexity"] > 1


def test_bench_rows_name_the_quantized_precision():
    from ridgeline.measure import run_label

    r = {"params": {"backend": "torch", "dtype": "bf16"}, "impl": "lean"}
    assert run_label(dict(r, weights="bf16")) == "torch bf16"
    assert run_label(dict(r, weights="rtn int8_pc (_weight_int8pack_mm)")) == \
        "torch bf16 · rtn int8_pc (_weight_int8pack_mm)"
