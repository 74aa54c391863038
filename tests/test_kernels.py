"""Native kernels: every format against its float64 reference, the variants against each other, fallbacks.

References (ridgeline.kernels.reference) multiply the dequantized weight — decoded by ridgeline.quant's
exact codecs, or from the integer codes — by the activation the kernel uses (the native int8 blocks,
replicated bit for bit in torch), summed in float64; the tolerance is the kernel's own float32 rounding
bound, (2·blocks + 4)·2⁻²⁴·Σ|w·x| (float weights: (K + 4)·2⁻²⁴·Σ|w·x|), doubled. A wrong layout, nibble
order, offset or scale gives errors of the size of the result itself, orders of magnitude above it.
"""

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import ridgeline.kernels as K  # noqa: E402
from conftest import needs_bundled  # noqa: E402
from ridgeline.errors import RidgelineError  # noqa: E402
from ridgeline.kernels.reference import quantize_activation_ref, reference  # noqa: E402
from ridgeline.quant.codec import decode, encode  # noqa: E402
from ridgeline.quant.intq import rtn  # noqa: E402

pytestmark = pytest.mark.skipif(not K.available(), reason=f"native kernels unavailable: {K.info().reason}")

BLOCK32 = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "mxfp4", "mxint8", "bfp32m4", "bfp32m8"]
KQUANTS = ["q4_k", "q5_k", "q6_k"]
SRC = os.path.join(os.path.dirname(__file__), "..", "src")


def _weights(n, k, seed=0, outliers=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    if outliers:  # a few large columns, as real layers have
        w[:, :: max(1, k // 7)] *= 6.0
    return w


def _check(y, ref, tol):
    err = (y.double() - ref).abs()
    worst = float((err - tol).max())
    assert worst <= 0, f"error {float(err.max()):.3g} exceeds the rounding bound (max bound {float(tol.max()):.3g})"


def _packed(w, fmt):
    if fmt in ("f32", "bf16"):
        return K.PackedLinear.from_float(w, fmt), (w if fmt == "f32" else w.bfloat16().float())
    data = encode(w, fmt)
    return K.PackedLinear.from_blocks(data, fmt, tuple(w.shape)), decode(data, fmt, tuple(w.shape))


def test_info_names_the_path():
    info = K.info()
    assert info.path in ("avx512", "avx2", "portable", "avx512emu")
    assert info.reason.startswith(info.path.split("emu")[0])
    assert K.get_num_threads() == torch.get_num_threads()


@pytest.mark.parametrize("mode", ["block", "row", "mxint8"])
def test_activation_quantization_matches_the_torch_replica(mode):
    x = torch.randn(5, 576) * torch.linspace(0.01, 30, 576)
    x[1, 32:64] = 0.0  # an all-zero block
    q, d, s = K.quantize_activation(x, mode)
    qr, dr = quantize_activation_ref(x, mode)
    assert torch.equal(q, qr) and torch.equal(d, dr)
    assert torch.equal(s, qr.view(5, -1, 32).int().sum(-1))
    if mode == "mxint8":  # exactly the mxint8 fake quantization of ridgeline.quant.mx
        from ridgeline.quant.mx import fake_quantize

        deq = (q.double().view(5, -1, 32) * d.double().unsqueeze(-1)).view(5, 576)
        assert torch.equal(deq.float(), fake_quantize(x, "mxint8", axis=-1))


@pytest.mark.parametrize("fmt", ["f32", "bf16"] + BLOCK32 + KQUANTS)
def test_formats_match_float64_reference(fmt):
    n, k = 80, 512  # 5 row groups; 2 K-quant superblocks
    w = _weights(n, k)
    packed, wd = _packed(w, fmt)
    assert packed.fmt == fmt and (packed.out_features, packed.in_features) == (n, k)
    for m in (1, 3, 16):
        x = torch.randn(m, k)
        ref, tol = reference(wd, x, fmt)
        _check(packed(x), ref, tol)


@pytest.mark.parametrize("fmt", ["bf16", "q8_0", "q4_0", "q5_0"])
def test_ragged_shapes_and_every_row_count(fmt):
    shapes = [(576, 576), (1536, 576), (576, 1536)] + ([(49152, 576)] if fmt in ("bf16", "q4_0") else [])
    for n, k in shapes:
        w = _weights(n, k, seed=n + k)
        packed, wd = _packed(w, fmt)
        rows = range(1, 17) if n == 576 and k == 576 else (1, 7, 16)
        x = torch.randn(max(rows), k)
        for m in rows:
            ref, tol = reference(wd, x[:m], fmt)
            _check(packed(x[:m]), ref, tol)


def test_more_than_sixteen_rows_and_bias():
    w = _weights(48, 96)
    b = torch.randn(48)
    packed = K.PackedLinear.from_blocks(encode(w, "q8_0"), "q8_0", (48, 96), bias=b)
    x = torch.randn(2, 20, 96)
    y = packed(x)
    assert y.shape == (2, 20, 48)
    ref, tol = reference(decode(encode(w, "q8_0"), "q8_0", (48, 96)), x.reshape(40, 96), "q8_0")
    _check(y.reshape(40, 48) - b, ref, tol + 1e-6)


@pytest.mark.parametrize("bits,group,sym", [(8, 0, True), (8, 128, False), (4, 32, False), (4, 64, True),
                                            (4, 128, False)])
def test_integer_codes_with_ragged_groups(bits, group, sym):
    w = _weights(96, 576, seed=bits + group)  # 576 = 4.5 groups of 128: a short last group
    q = rtn(w, bits, group, sym)
    packed = K.PackedLinear.from_int(q.codes, q.scale, q.zero, bits, group)
    x = torch.randn(4, 576)
    ref, tol = reference(q.dequantize(), x, "int")
    _check(packed(x), ref, tol)


def test_act_order_permutation():
    """GPTQ act-order: group j holds input columns perm[j*g:(j+1)*g]; codes stay in input column order."""
    w = _weights(64, 256, seed=3)
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    q = rtn(w[:, perm], 4, 64, False)  # groups over the permuted columns
    codes = q.codes[:, perm.argsort()]  # back to input column order, as GPTQ stores them
    packed = K.PackedLinear.from_int(codes, q.scale, q.zero, 4, 64, perm=perm)
    wd = q.dequantize()[:, perm.argsort()]  # the weight in input column order
    x = torch.randn(3, 256)
    ref, tol = reference(wd, x, "int", perm=perm)
    _check(packed(x), ref, tol)


@needs_bundled
@pytest.mark.parametrize("fmt", ["bf16", "q8_0", "q5_0", "q4_k", "q6_k", "mxfp4", "bfp32m4"])
def test_real_weights_of_the_bundled_model(fmt, smollm2_layer):
    for name in ("self_attn.q_proj", "mlp.down_proj"):
        w = smollm2_layer[name]
        if fmt in KQUANTS and w.shape[1] % 256:
            continue
        packed, wd = _packed(w, fmt)
        x = torch.randn(3, w.shape[1]) * 2.0
        ref, tol = reference(wd, x, fmt)
        _check(packed(x), ref, tol)


@pytest.fixture(scope="module")
def smollm2_layer():
    from ridgeline.loader import load_model

    model, _ = load_model("smollm2-135m", "fp32")
    layer = model.model.layers[3]
    return {n: m.weight.detach().clone() for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}


def test_thread_count_does_not_change_results():
    w = _weights(576, 576)
    packed, _ = _packed(w, "q4_1")
    x = torch.randn(3, 576)
    before = K.get_num_threads()
    try:
        K.set_num_threads(1)
        one = packed(x)
        K.set_num_threads(3)
        three = packed(x)
    finally:
        K.set_num_threads(before)
    assert torch.equal(one, three)  # rows are split, never a sum


def test_pool_overhead_is_measured():
    cost = K.pool_overhead(200, 200)
    assert cost["run_s"] > 0 and cost["handover_s"] >= 0 and cost["threads"] == K.get_num_threads()


def test_bad_input_raises_one_line_errors():
    with pytest.raises(RidgelineError, match="no native kernel"):
        K.native_format("iq2_xxs")
    with pytest.raises(RidgelineError, match="bytes"):
        K.PackedLinear.from_blocks(b"\0" * 10, "q8_0", (16, 32))
    with pytest.raises(RidgelineError, match="activations"):
        K.PackedLinear.from_float(torch.randn(16, 32))(torch.randn(2, 33))
    with pytest.raises(RidgelineError, match="blocks of 32"):
        K.PackedLinear.from_int(torch.zeros(16, 48, dtype=torch.uint8), torch.ones(16, 1), torch.zeros(16, 1), 4, 0)
    with pytest.raises(RidgelineError, match="4- or 8-bit"):
        K.PackedLinear.from_int(torch.zeros(16, 32, dtype=torch.uint8), torch.ones(16, 1), torch.zeros(16, 1), 3, 0)


# ------------------------------------------------------------------ variants in a fresh process

_TINY = r"""
def tiny_logits(dtype):
    import transformers
    from ridgeline.kernels import NativeCausalLM
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval().to(getattr(torch, dtype))
    native = NativeCausalLM.from_hf(model, 64)
    rows = [native.prefill(torch.tensor([[1, 5, 9, 3, 7] * 4]))[0].float()]
    rows += [native.decode(t)[0].float() for t in (4, 8, 2)]
    return torch.stack(rows).tolist()
"""
_CHILD = r"""
import json, sys, torch
import ridgeline.kernels as K
from ridgeline.quant.codec import encode
""" + _TINY + r"""
out = {"path": K.info().path, "reason": K.info().reason, "available": K.available()}
if K.available():
    torch.manual_seed(0)
    x = torch.randn(3, 512)
    for fmt in %r:
        w = torch.randn(48, 512) * 0.05
        p = K.PackedLinear.from_float(w, fmt) if fmt in ("f32", "bf16") else K.PackedLinear.from_blocks(encode(w, fmt), fmt, (48, 512))
        out[fmt] = p(x).tolist()
    out["model"] = {dt: tiny_logits(dt) for dt in ("float32", "bfloat16")}
else:
    try:
        K.PackedLinear.from_float(torch.randn(16, 32))
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    # the pure-torch decode path still works
    import transformers
    from ridgeline.measure.lean import LeanCausalLM, greedy
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(0)
    out["lean_tokens"] = greedy(LeanCausalLM.from_hf(transformers.LlamaForCausalLM(cfg).eval(), 32),
                                torch.tensor([[1, 2, 3]]), 5)
print(json.dumps(out))
"""
_FORMATS = ["f32", "bf16"] + BLOCK32 + KQUANTS


def _child(variant):
    env = dict(os.environ, RIDGELINE_KERNELS=variant, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", _CHILD % (_FORMATS,)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _compare_with_this_process(child):
    scope: dict = {"torch": torch}
    exec(_TINY, scope)  # the same tiny models (attention, rope, norms, exp, bf16 rounding) in this process
    for dtype, atol in (("float32", 1e-5), ("bfloat16", 0.05)):
        torch.testing.assert_close(torch.tensor(child["model"][dtype]), torch.tensor(scope["tiny_logits"](dtype)),
                                   atol=atol, rtol=0)
    torch.manual_seed(0)
    x = torch.randn(3, 512)
    for fmt in _FORMATS:
        w = torch.randn(48, 512) * 0.05
        packed, wd = _packed(w, fmt)
        ref, tol = reference(wd, x, fmt)
        _check(torch.tensor(child[fmt]), ref, tol)  # the other variant is within the same bound
        _check(packed(x), ref, tol)


def test_forced_portable_path_gives_the_same_outputs():
    child = _child("portable")
    assert child["path"] == "portable" and "RIDGELINE_KERNELS=portable" in child["reason"]
    _compare_with_this_process(child)


def test_avx512_code_under_simde_emulation():
    """The AVX-512 kernels run through SIMDe when that test build exists (RIDGELINE_BUILD_AVX512_EMU=1)."""
    child = _child("avx512emu")
    if child["path"] != "avx512emu":
        pytest.skip(f"avx512emu build absent: {child['reason']}")
    _compare_with_this_process(child)


def test_off_disables_native_code_and_the_torch_path_still_works():
    child = _child("off")
    assert child["path"] == "off" and not child["available"]
    assert child["reason"] == "off: RIDGELINE_KERNELS=off"
    assert child["error"] == "RidgelineError: native kernels unavailable: off: RIDGELINE_KERNELS=off"
    assert len(child["lean_tokens"]) == 5


def test_install_without_a_compiler_warns_and_records_the_reason(tmp_path):
    """setup.py never fails: a missing compiler gives one warning and a recorded reason that info() reports."""
    import shutil

    root = os.path.join(os.path.dirname(__file__), "..")
    shutil.copy(os.path.join(root, "setup.py"), tmp_path)
    shutil.copytree(os.path.join(SRC, "ridgeline"), tmp_path / "src" / "ridgeline",
                    ignore=shutil.ignore_patterns("*.so", "*.build-error.txt", "__pycache__"))
    env = dict(os.environ, CC="/nonexistent/cc", CXX="/nonexistent/c++")
    res = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.count("WARNING: ridgeline native kernels not built") == 1
    probe = "import ridgeline.kernels as K; print(K.info().reason)"
    out = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, PYTHONPATH=str(tmp_path / "src")),
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().startswith("off: extension not built: CompileError"), out.stdout + out.stderr
