"""The native decode model against the lean torch path and the emulated quantized modules.

fp32: logits equal lean's to float32 rounding, greedy tokens identical. bf16 and quantized formats run
different (but checked) arithmetic — bf16 GEMV summation order, int8 activation blocks — so tokens may
differ only at near-ties: wherever the native argmax differs from the reference's, the reference's own
gap between the two tokens must be within the logit difference the two paths show at that step.
Quantized models are compared teacher-forced with the transformers forward of the same quantized
modules (emulated: dequantized weights, the same fake-quantized activations where a format has them).
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import ridgeline.kernels as K  # noqa: E402
from conftest import family_config, needs_bundled  # noqa: E402
from ridgeline.errors import RidgelineError  # noqa: E402
from ridgeline.kernels import NativeCausalLM  # noqa: E402
from ridgeline.measure.lean import LeanCausalLM  # noqa: E402
from ridgeline.measure.lean import greedy as lean_greedy  # noqa: E402

pytestmark = pytest.mark.skipif(not K.available(), reason=f"native kernels unavailable: {K.info().reason}")

LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=32)
VARIANTS = {
    "llama": ("llama", {}),
    "qwen2": ("qwen2", {}),
    "llama3_tied": ("llama", dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True)),
    "llama_mqa": ("llama_mqa", {}),
    "mistral_no_window": ("mistral", dict(sliding_window=None)),
}
MAX_LEN = 64
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village",
           "The three laws of thermodynamics state"]


def tiny(key: str, dtype=torch.float32, **extra):
    """A tiny random model of conftest family `key`, norms and biases randomised too."""
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


def prompt(n=7, seed=1):
    torch.manual_seed(seed)
    return torch.randint(3, 320, (1, n))


def native_greedy(model, ids, n):
    return K.greedy(model, ids, n)


def check_near_ties(got: torch.Tensor, ref: torch.Tensor, scale: float):
    """Rows of logits [T, vocab]: argmaxes agree, or differ where the reference's gap is within the paths' gap."""
    got, ref = got.float(), ref.float()
    diff = (got - ref).abs().max(-1).values
    assert float(diff.max()) <= scale, f"logits differ by {float(diff.max()):.4g} > {scale:.4g}"
    a, b = ref.argmax(-1), got.argmax(-1)
    for t in torch.nonzero(a != b).flatten().tolist():
        gap = float(ref[t, a[t]] - ref[t, b[t]])
        assert gap <= 2 * float(diff[t]), f"step {t}: tokens differ with a reference gap of {gap:.4g}"


def teacher_forced(model: NativeCausalLM, ids: torch.Tensor, start: int) -> torch.Tensor:
    """Native logits for positions start-1 .. len-2 of `ids`: prefill of ids[:start], then one decode per token."""
    model.reset()
    rows = [model.prefill(ids[:, :start])[0]]
    rows += [model.decode(int(t))[0] for t in ids[0, start:-1]]
    return torch.stack(rows)


# ------------------------------------------------------------------ tiny random models


@pytest.mark.parametrize("name", list(VARIANTS))
def test_fp32_logits_and_greedy_match_lean(name):
    key, extra = VARIANTS[name]
    model = tiny(key, **extra)
    lean, native = LeanCausalLM.from_hf(model, MAX_LEN), NativeCausalLM.from_hf(model, MAX_LEN)
    ids = prompt(20)  # two prefill chunks (16 + 4)
    with torch.inference_mode():
        a, b = lean.prefill(ids), native.prefill(ids)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        for _ in range(5):
            token = a.argmax(-1, keepdim=True)
            a, b = lean.decode(token), native.decode(token)
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    assert native.length == 25 and a.dtype == b.dtype
    assert lean_greedy(lean, ids, 30) == native_greedy(native, ids, 30)


def test_bf16_model_rounds_like_lean():
    model = tiny("llama", torch.bfloat16)
    lean, native = LeanCausalLM.from_hf(model, MAX_LEN), NativeCausalLM.from_hf(model, MAX_LEN)
    ids = prompt(10)
    tokens = lean_greedy(lean, ids, 20)
    seq = torch.cat([ids, torch.tensor([tokens])], dim=1)
    lean.reset()
    ref = [lean.prefill(seq[:, :10])[0]] + [lean.decode(seq[:, i:i + 1])[0] for i in range(10, seq.shape[1] - 1)]
    got = teacher_forced(native, seq, 10)
    assert got.dtype == torch.bfloat16
    check_near_ties(got, torch.stack(ref), scale=0.02)


def test_tree_visibility_positions_and_compaction():
    model = tiny("llama")
    native, seq = NativeCausalLM.from_hf(model, MAX_LEN), NativeCausalLM.from_hf(model, MAX_LEN)
    ids = prompt(6)
    a, b, c, d = 11, 22, 33, 44
    native.prefill(ids)
    p = ids.shape[1]
    vis = torch.zeros(3, p + 3, dtype=torch.bool)
    vis[:, :p] = True
    vis[0, p] = vis[1, p] = vis[2, p] = True  # a is everyone's parent
    vis[1, p + 1] = True  # b sees itself
    vis[2, p + 2] = True  # c sees itself, not b
    tree = native.forward([a, b, c], positions=[p, p + 1, p + 1], visibility=vis)
    for branch, row in (([a, b], 1), ([a, c], 2)):
        seq.reset()
        seq.prefill(ids)
        out = [seq.decode(t) for t in branch]
        torch.testing.assert_close(tree[row], out[-1][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(tree[0], out[0][0], atol=1e-5, rtol=0)
    native.compact(list(range(p)) + [p, p + 2])  # keep a and c
    assert native.length == p + 2
    torch.testing.assert_close(native.decode(d), seq.decode(d), atol=1e-5, rtol=0)


def test_causal_forward_equals_prefill_and_truncate_rolls_back():
    model = tiny("qwen2")
    native = NativeCausalLM.from_hf(model, MAX_LEN)
    ids = prompt(9)
    last = native.prefill(ids)
    native.reset()
    rows = native.forward(ids[0])
    torch.testing.assert_close(rows[-1:], last, atol=1e-5, rtol=0)
    native.truncate(4)
    assert native.length == 4
    torch.testing.assert_close(native.forward(ids[0, 4:]), rows[4:], atol=1e-5, rtol=0)


QUANT_CONFIGS = {
    "int8": lambda q: q.RTNConfig(bits=8),
    "int4_g32": lambda q: q.RTNConfig(bits=4, group=32),
    "int4_g32_emulated": lambda q: q.RTNConfig(bits=4, group=32, kernel=False),
    "int4_head": lambda q: q.RTNConfig(bits=4, group=32, include_lm_head=True),
    "q8_0": lambda q: q.GGUFConfig("q8_0"),
    "q4_0": lambda q: q.GGUFConfig("q4_0"),
    "q4_1": lambda q: q.GGUFConfig("q4_1"),
    "q5_1": lambda q: q.GGUFConfig("q5_1"),
    "q4_k_m": lambda q: q.GGUFConfig("q4_k_m"),  # on this shape: q5_0 with q8_0 attn_v (mixed q/k/v formats)
    "mxint8": lambda q: q.BFPConfig(weight_format="mxint8", act_format="mxint8"),
    "mxfp4": lambda q: q.BFPConfig(weight_format="mxfp4", act_format=None),
    "bfp32m4": lambda q: q.BFPConfig(weight_format="bfp32m4", act_format=None),
    "bfp32m8": lambda q: q.BFPConfig(weight_format="bfp32m8", act_format="mxint8"),
}


@pytest.mark.parametrize("name", list(QUANT_CONFIGS))
def test_quantized_formats_against_the_emulated_modules(name):
    import ridgeline.quant as quant

    model = tiny("llama")
    quant.quantize_(model, QUANT_CONFIGS[name](quant))
    native = NativeCausalLM.from_hf(model, MAX_LEN)
    assert "f32" not in native.formats or sum(native.formats.values()) == 22  # 21 layer weights + head
    ids = prompt(24, seed=2)
    with torch.no_grad():
        ref = model(ids).logits[0, 11:-1]
    got = teacher_forced(native, ids, 12)
    scale = 0.1 * float(ref.std())  # int8 activation blocks: a few % of the logit spread on this model
    check_near_ties(got, ref, scale)
    if name == "mxint8":  # the same activation quantization as the emulation: float32 rounding only
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_unsupported_models_and_modules_raise_one_line():
    with pytest.raises(RidgelineError, match="model types"):
        NativeCausalLM.from_hf(tiny("gemma"), MAX_LEN)
    with pytest.raises(RidgelineError, match="sliding-window"):
        NativeCausalLM.from_hf(tiny("mistral"), MAX_LEN)
    import ridgeline.quant as quant

    model = tiny("llama")
    quant.quantize_(model, quant.LLMInt8Config())
    with pytest.raises(RidgelineError, match="outlier"):
        NativeCausalLM.from_hf(model, MAX_LEN)
    native = NativeCausalLM.from_hf(tiny("llama"), 8)
    with pytest.raises(RidgelineError, match="KV cache full"):
        native.prefill(prompt(9))
    with pytest.raises(RidgelineError, match="visibility"):
        native.forward([1, 2], visibility=torch.ones(2, 3, dtype=torch.bool))


# ------------------------------------------------------------------ the bundled model


@pytest.fixture(scope="module")
def smollm2():
    from ridgeline.loader import load_model

    return load_model("smollm2-135m", "fp32")


def _greedy_with_logits(native, ids, n):
    """Native greedy decoding: (prompt + n tokens [1, P+n], the logits that chose each token [n, vocab])."""
    native.reset()
    logits, rows, tokens = native.prefill(ids), [], []
    for i in range(n):
        rows.append(logits[0])
        tokens.append(int(logits.argmax(-1)))
        if i + 1 < n:
            logits = native.decode(tokens[-1])
    return torch.cat([ids, torch.tensor([tokens])], dim=1), torch.stack(rows)


@needs_bundled
def test_bundled_fp32_greedy_identical_for_four_prompts(smollm2):
    """Native greedy tokens are the argmax of the reference's logits at every one of 4 x 64 steps."""
    model, tok = smollm2
    native = NativeCausalLM.from_hf(model, 256)
    for text in PROMPTS:
        ids = tok(text, return_tensors="pt").input_ids
        seq, got = _greedy_with_logits(native, ids, 64)
        with torch.no_grad():
            ref = model(seq).logits[0, ids.shape[1] - 1:-1]
        assert torch.equal(ref.argmax(-1), seq[0, ids.shape[1]:]), "native greedy differs from the fp32 reference"
        torch.testing.assert_close(got, ref, atol=2e-3, rtol=0)


@needs_bundled
@pytest.mark.parametrize("fmt", ["bf16", "q8_0", "q4_0", "int8"])
def test_bundled_formats_diverge_only_at_near_ties(fmt, smollm2):
    import copy

    import ridgeline.quant as quant

    model, tok = smollm2
    if fmt == "bf16":
        model = copy.deepcopy(model).to(torch.bfloat16)
        native = NativeCausalLM.from_hf(model, 256)
    else:
        model = copy.deepcopy(model)
        quant.quantize_(model, quant.RTNConfig(bits=8) if fmt == "int8" else quant.GGUFConfig(fmt))
        head = None
        if fmt != "int8":  # llama.cpp's head: the tied embedding the recipe stored dequantized, re-encoded exactly
            head = model.ridgeline_quant["float_tensors"]["token_embd.weight"].split()[0]
        native = NativeCausalLM.from_hf(model, 256, head_format=head)
        if head:
            assert native.formats == ({fmt: 211} if head == fmt else {fmt: 210, head: 1})
    for text in PROMPTS[:2]:
        ids = tok(text, return_tensors="pt").input_ids
        seq, got = _greedy_with_logits(native, ids, 32)
        with torch.no_grad():
            ref = model(seq).logits[0, ids.shape[1] - 1:-1]
        # bf16: 30 layers of bf16 rounding in a different summation order. int8 activation blocks: SmolLM2's
        # activation outliers make them move logits by about as much as the 8-bit weights themselves do
        # (max ~1.5-2.7, mean ~0.2 at a logit std of ~6.7, measured for q8_0, int8 and mxint8 alike)
        check_near_ties(got, ref, scale=(0.2 if fmt == "bf16" else 0.5) * float(ref.float().std()))
