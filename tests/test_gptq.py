"""GPTQ: error against RTN (synthetic and real layers), exact reductions and bookkeeping, bad input."""

import itertools

import pytest
import torch
from conftest import _MODEL_CACHE, needs_bundled

from ridgeline.errors import RidgelineError
from ridgeline.quant import intq
from ridgeline.quant.gptq import (
    HessianAccumulator,
    gptq_quantize,
    layer_error,
)


def _synthetic(seed: int = 0, tokens: int = 2048, d_in: int = 512, d_out: int = 256, rank: int = 128,
               noise: float = 0.5, outliers: int = 4, factor: float = 20.0):
    """(W, X): a 512→256 layer whose inputs are correlated (rank-128 signal + noise) with a few ×20 channels."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(tokens, rank, generator=g)
    X = z @ (torch.randn(rank, d_in, generator=g) / rank**0.5) + noise * torch.randn(tokens, d_in, generator=g)
    X[:, torch.randperm(d_in, generator=g)[:outliers]] *= factor
    W = 0.02 * torch.randn(d_out, d_in, generator=g)
    return W, X


def _hessian(X: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator(X.shape[-1])
    acc.add(X)
    return acc.hessian()


@pytest.fixture(scope="module")
def synthetic():
    W, X = _synthetic()
    return W, X, _hessian(X)


def _ratio(W, X, res, bits, group, sym):
    return layer_error(W, res.weight, X) / layer_error(W, intq.rtn(W, bits, group, sym).dequantize(), X)


def _check_result(W, H, res, bits, group, sym, act_order, static_groups, damp=0.01):
    """Invariants every result must satisfy, whatever the options."""
    q = res.quant
    rows, cols = W.shape
    n_groups = 1 if group == 0 else -(-cols // group)  # a group that does not divide leaves a short last one
    assert q.codes.shape == (rows, cols) and q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 2**bits - 1
    assert q.scale.shape == q.zero.shape == (rows, n_groups)
    assert (q.bits, q.group, q.sym) == (bits, group, sym)
    assert (q.g_idx is not None) == (act_order and group > 0 and not static_groups)
    assert torch.equal(res.weight, q.dequantize())  # the returned weight is exactly what the storage decodes to
    assert torch.equal(q.scale, q.scale.half().float())  # fp16-representable, as intq stores them
    # GPTQ's identity: W − Q = E·U with U the upper Cholesky factor of H_damped⁻¹, so
    # tr((W − Q) H_damped (W − Q)ᵀ) = ‖E‖² = 2·loss. A wrong error feedback or lazy update breaks it.
    Hd = H.double() + damp * H.diagonal().double().mean() * torch.eye(cols, dtype=torch.float64)
    delta = W.double() - res.weight.double()
    assert float(torch.einsum("ij,jk,ik->", delta, Hd, delta)) == pytest.approx(2 * res.loss, rel=1e-3)


# --- 1. error against RTN on a synthetic correlated layer -------------------------------------------------

@pytest.mark.parametrize("bits,group", [(4, 0), (4, 128), (3, 128)])
def test_gptq_error_is_well_below_rtn_and_act_order_helps_on_outliers(synthetic, bits, group):
    W, X, H = synthetic
    plain = gptq_quantize(W, H, bits=bits, group=group)
    ordered = gptq_quantize(W, H, bits=bits, group=group, act_order=True)
    r_plain, r_ordered = _ratio(W, X, plain, bits, group, False), _ratio(W, X, ordered, bits, group, False)
    assert r_plain < 0.5  # notes' anchor for this kind of layer: 0.23-0.28
    assert r_ordered <= r_plain


@pytest.mark.parametrize("group,act_order,static_groups,sym",
                         list(itertools.product([0, 32, 128, 100], [False, True], [False, True], [False, True])))
def test_every_option_combination_beats_rtn(synthetic, group, act_order, static_groups, sym):
    W, X, H = synthetic
    res = gptq_quantize(W, H, bits=4, group=group, sym=sym, act_order=act_order, static_groups=static_groups)
    assert _ratio(W, X, res, 4, group, sym) < 0.5
    _check_result(W, H, res, 4, group, sym, act_order, static_groups)
    assert res.dead_columns == 0 and (res.perm is not None) == act_order


def test_block_size_only_changes_float_order(synthetic):
    """Lazy batching is exact algebra: block sizes 1 (all updates deferred), 37 and 512 give the 128 result."""
    W, _, H = synthetic
    ref = gptq_quantize(W, H, bits=4).weight
    for bs in (1, 37, 512):
        assert (gptq_quantize(W, H, bits=4, block_size=bs).weight == ref).float().mean() > 0.999


# --- 2. exact reductions and bookkeeping -------------------------------------------------------------------

@pytest.mark.parametrize("group", [0, 128, 100])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("diag", ["identity", "random"])
def test_diagonal_hessian_reduces_to_rtn_exactly(group, sym, diag):
    """Uncorrelated inputs: U is diagonal, so no error reaches another column and GPTQ is RTN, code for code."""
    W, _ = _synthetic(seed=1)
    H = torch.eye(512) if diag == "identity" else torch.diag(torch.rand(512, generator=torch.Generator().manual_seed(2)) + 0.1)
    ref = intq.rtn(W, 4, group, sym)
    for act_order in ([False, True] if group == 0 else [False]):  # per-channel params don't depend on the order
        res = gptq_quantize(W, H, bits=4, group=group, sym=sym, act_order=act_order)
        assert torch.equal(res.quant.codes, ref.codes)
        assert torch.equal(res.quant.scale, ref.scale) and torch.equal(res.quant.zero, ref.zero)
        assert torch.equal(res.weight, ref.dequantize())


def test_dead_inputs_get_zero_weight():
    W, X = _synthetic(seed=3)
    dead = torch.tensor([0, 5, 200, 511])
    X[:, dead] = 0
    for act_order in (False, True):
        res = gptq_quantize(W, _hessian(X), bits=4, group=128, act_order=act_order)
        assert res.dead_columns == 4
        assert torch.equal(res.weight[:, dead], torch.zeros(256, 4))
        live = torch.ones(512, dtype=torch.bool)
        live[dead] = False
        assert res.weight[:, live].abs().sum() > 0


@pytest.mark.parametrize("group", [0, 32, 100])
def test_act_order_is_a_permutation_undone_at_the_end(synthetic, group):
    """act-order on (W, H) == plain GPTQ on the permuted (W, H), with columns (and g_idx) mapped back."""
    W, _, H = synthetic
    res = gptq_quantize(W, H, bits=4, group=group, act_order=True)
    perm = torch.argsort(torch.diagonal(H), descending=True)
    assert torch.equal(res.perm, perm)
    manual = gptq_quantize(W[:, perm], H[perm][:, perm], bits=4, group=group)
    inv = torch.argsort(perm)
    assert torch.equal(res.weight, manual.weight[:, inv])
    assert torch.equal(res.quant.codes, manual.quant.codes[:, inv])
    assert torch.equal(res.quant.scale, manual.quant.scale) and torch.equal(res.quant.zero, manual.quant.zero)
    assert res.loss == manual.loss
    if group:
        assert torch.equal(res.quant.g_idx, inv // group)  # processing position // group, per original column
    else:
        assert res.quant.g_idx is None


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("group", [64, 100])
def test_static_groups_take_their_params_from_the_original_weight(synthetic, act_order, sym, group):
    W, _, H = synthetic
    res = gptq_quantize(W, H, bits=4, group=group, sym=sym, act_order=act_order, static_groups=True)
    scale, zero = intq.group_params(W, 4, group, sym)
    assert torch.equal(res.quant.scale, scale) and torch.equal(res.quant.zero, zero)
    assert res.quant.g_idx is None
    # without static groups the params follow the updated weight, so at least some differ
    dyn = gptq_quantize(W, H, bits=4, group=group, sym=sym, act_order=act_order)
    assert not torch.equal(dyn.quant.scale, scale)


def test_hessian_accumulator_is_the_mean_outer_product_in_any_batching():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(3, 100, 48, generator=g)
    whole = HessianAccumulator(48, dtype=torch.float64)
    whole.add(X)  # leading dims are flattened to 300 tokens
    parts = HessianAccumulator(48, dtype=torch.float64)
    for chunk in reversed(X.reshape(-1, 48).split(37)):
        parts.add(chunk)
    parts.add(torch.empty(0, 48))
    expected = 2 / 300 * X.reshape(-1, 48).double().T @ X.reshape(-1, 48).double()
    assert whole.n_tokens == parts.n_tokens == 300
    assert torch.allclose(whole.hessian(), expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(parts.hessian(), expected, rtol=1e-12, atol=1e-12)
    fast = HessianAccumulator(48)  # float32 batch products, float64 sum
    fast.add(X)
    assert fast.hessian().dtype == torch.float64 and torch.allclose(fast.hessian(), expected, rtol=1e-5, atol=1e-5)


def test_layer_error_is_the_squared_output_error():
    g = torch.Generator().manual_seed(5)
    W, W_hat, X = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    expected = ((X.reshape(-1, 8) @ W.T - X.reshape(-1, 8) @ W_hat.T) ** 2).sum()
    assert layer_error(W, W_hat, X) == pytest.approx(float(expected), rel=1e-5)


# --- 3. a real layer of the bundled model with real calibration text ---------------------------------------

def _windows(tokenizer, corpus, count: int, length: int = 256) -> torch.Tensor:
    """`count` windows of `length` tokens, taken round-robin from the documents (a quarter of the way in)."""
    per_doc = -(-count // len(corpus.documents)) + 1
    chunks = []
    for _, text in corpus.documents:
        start = len(text) // 4
        ids = tokenizer(text[start:start + per_doc * length * 8], add_special_tokens=False)["input_ids"]
        chunks.append([ids[i * length:(i + 1) * length] for i in range(len(ids) // length)][:per_doc])
    rows = [doc[r] for r in range(per_doc) for doc in chunks if r < len(doc)]
    return torch.tensor(rows[:count])


@pytest.fixture(scope="module")
def layer3_inputs(tmp_path_factory):
    """Inputs of layer 3's q_proj and down_proj on 16×256 calibration and 8×256 held-out tokens."""
    from ridgeline.corpus import load_corpus
    from ridgeline.loader import load_model

    with pytest.MonkeyPatch.context() as mp:  # module scope: conftest's per-test environment is not set yet
        mp.setenv("RIDGELINE_HOME", str(tmp_path_factory.mktemp("ridgeline_home")))
        mp.setenv("RIDGELINE_MODEL_CACHE", _MODEL_CACHE)
        mp.setenv("RIDGELINE_CORPUS_CACHE", str(tmp_path_factory.getbasetemp() / "corpus_cache"))  # shared
        model, tok = load_model("smollm2-135m", dtype="fp32", layers=4)  # only layers 0-3 are needed
        calib = _windows(tok, load_corpus("calib"), 16)
        held_out = _windows(tok, load_corpus("eval"), 8)
    layer = model.model.layers[3]
    modules = {"q_proj": layer.self_attn.q_proj, "down_proj": layer.mlp.down_proj}

    def capture(ids):
        seen = {name: [] for name in modules}
        hooks = [m.register_forward_hook(lambda m, args, out, name=name: seen[name].append(args[0].detach().clone()))
                 for name, m in modules.items()]
        try:
            with torch.no_grad():
                for batch in ids.split(8):
                    model.model(batch)  # the decoder only: the 49152-way lm_head is not needed
        finally:
            for h in hooks:
                h.remove()
        return {name: torch.cat(xs).reshape(-1, xs[0].shape[-1]) for name, xs in seen.items()}

    cal, ev = capture(calib), capture(held_out)
    return {name: (m.weight.detach().clone(), cal[name], ev[name]) for name, m in modules.items()}


@needs_bundled
@pytest.mark.parametrize("name", ["q_proj", "down_proj"])
def test_real_layer_gptq_beats_rtn(layer3_inputs, name):
    """W4 g128 asymmetric (q_proj's 576 inputs make 4 groups of 128 and one of 64)."""
    W, X_cal, X_eval = layer3_inputs[name]
    group = 128
    H = _hessian(X_cal)
    rtn_w = intq.rtn(W, 4, group, sym=False).dequantize()
    plain = gptq_quantize(W, H, bits=4, group=group)
    ordered = gptq_quantize(W, H, bits=4, group=group, act_order=True)
    on_cal = layer_error(W, plain.weight, X_cal) / layer_error(W, rtn_w, X_cal)
    assert on_cal < 0.5  # measured 0.31 (q_proj), 0.44 (down_proj)
    assert layer_error(W, ordered.weight, X_cal) <= layer_error(W, plain.weight, X_cal)  # 0.20, 0.37
    if name == "q_proj":
        # held-out text. Not asserted for down_proj: 4096 tokens are too few for its 1536-dim H and GPTQ
        # overfits them (held-out 1.16× RTN here, 1.57× with 2048 tokens, 0.87× with 16k): calibrate
        # on many times in_features tokens.
        assert layer_error(W, plain.weight, X_eval) / layer_error(W, rtn_w, X_eval) < 0.5  # measured 0.38


# --- 4. bad input ------------------------------------------------------------------------------------------

def test_bad_input_raises_one_line_errors(synthetic):
    W, _, H = synthetic
    cases = [
        ({"H": H[:100, :100]}, r"Hessian: expected shape \(512, 512\)"),
        ({"H": H.unsqueeze(0)}, "Hessian: expected shape"),
        ({"H": torch.where(torch.eye(512, dtype=torch.bool), float("nan"), H)}, "Hessian: expected finite"),
        ({"H": -torch.eye(512)}, "not positive definite even after damping; increase damp"),
        # unit diagonal but indefinite (eigenvalues 3 and −1): damping by 1% cannot fix it
        ({"H": torch.kron(torch.eye(256), torch.tensor([[1.0, 2.0], [2.0, 1.0]]))}, "not positive definite"),
        ({"w": torch.where(W > 0.05, float("nan"), W)}, "NaN/inf values in the weight"),
        ({"w": W[0]}, "expected a 2-D weight"),
        ({"group": -1}, "group size must be 0"),
        ({"bits": 9}, "unsupported integer width 9"),
        ({"damp": -0.1}, "damp must be"),
        ({"damp": float("nan")}, "damp must be"),
        ({"block_size": 0}, "block_size must be"),
    ]
    for change, message in cases:
        kw = {"w": W, "H": H, "bits": 4, "group": 0, "damp": 0.01, "block_size": 128} | change
        with pytest.raises(RidgelineError, match=message) as err:
            gptq_quantize(kw.pop("w"), kw.pop("H"), **kw)
        assert "\n" not in str(err.value)

    acc = HessianAccumulator(16)
    with pytest.raises(RidgelineError, match="no calibration inputs"):
        acc.hessian()
    with pytest.raises(RidgelineError, match=r"expected shape \[\.\.\., 16\]"):
        acc.add(torch.zeros(4, 15))
    with pytest.raises(RidgelineError, match="NaN/inf"):
        acc.add(torch.full((4, 16), float("inf")))
    with pytest.raises(RidgelineError, match="in_features must be"):
        HessianAccumulator(0)
    with pytest.raises(RidgelineError, match="equal shape"):
        layer_error(W, W[:, :10], torch.zeros(3, 512))
    with pytest.raises(RidgelineError, match=r"\[\.\.\., 512\]"):
        layer_error(W, W, torch.zeros(512, 3))
