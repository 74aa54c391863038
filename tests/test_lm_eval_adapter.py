"""The lm-eval adapter (`make_lm`) against lm-eval's own HFLM, and the rolling windows against lm-eval's."""

from __future__ import annotations

import pytest
from test_multiple_choice import DATA, LL_TOL, YAMLS, _lm_eval_config, hflm, run_lm_eval

from ridgeline.eval import scoring
from ridgeline.eval.multiple_choice import evaluate_task
from ridgeline.eval.tasks import load_task


@pytest.fixture(autouse=True)
def _needs_lm_eval(request):
    if "without_lm_eval" not in request.node.name:
        pytest.importorskip("lm_eval")

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
        "neighbourhood, this truth is so well fixed in the minds of the surrounding families.")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from ridgeline.loader import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def reference(tiny):
    """lm-eval's HFLM on the same model object (a short context, so rolling needs several windows)."""
    return hflm(*tiny, max_length=24)


def _instances(kind: str, args: list[tuple]) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_simple_evaluate_with_adapter_equals_evaluate_task(tiny):
    from ridgeline.eval.lm_eval_adapter import make_lm

    out = run_lm_eval(make_lm(*tiny, batch_size=3),
                      [_lm_eval_config("rl_arc_easy", {"test": str(DATA / "arc_easy.jsonl")}, YAMLS["arc_easy"])])
    theirs = out["rl_arc_easy"]
    ours = evaluate_task(*tiny, load_task("arc_easy", DATA / "arc_easy.jsonl"), batch_size=5)
    for doc, lls, greedy in zip(ours.docs, theirs["lls"], theirs["greedy"]):
        assert doc.lls == pytest.approx(lls, **LL_TOL)
        assert list(doc.is_greedy) == greedy
    assert ours.acc == theirs["result"]["acc,none"]
    assert ours.acc_norm == theirs["result"]["acc_norm,none"]


def test_loglikelihood_equals_hflm(tiny, reference):
    """Empty context (prefix token), trailing spaces moved to the continuation, left truncation at 24 tokens."""
    from ridgeline.eval.lm_eval_adapter import make_lm

    args = [("", " a truth"), ("It is a ", "truth universally"), ("Question: why?\nAnswer:", " because"),
            (TEXT, " Indeed it is.")]
    ours = make_lm(*tiny, max_length=24).loglikelihood(_instances("loglikelihood", args))
    theirs = reference.loglikelihood(_instances("loglikelihood", args))
    assert [g for _, g in ours] == [g for _, g in theirs]
    assert [ll for ll, _ in ours] == pytest.approx([ll for ll, _ in theirs], **LL_TOL)


def test_loglikelihood_rolling_equals_hflm(tiny, reference):
    from ridgeline.eval.lm_eval_adapter import make_lm

    texts = [TEXT, "Short.", TEXT[:97]]
    theirs = reference.loglikelihood_rolling(_instances("loglikelihood_rolling", [(t,) for t in texts]))
    ours = make_lm(*tiny, batch_size=2, max_length=24).loglikelihood_rolling(
        _instances("loglikelihood_rolling", [(t,) for t in texts]))
    assert ours == pytest.approx(theirs, **LL_TOL)
    assert len(scoring.encode(tiny[1], TEXT)) > 3 * 24  # several windows were needed


@pytest.mark.parametrize("n", [1, 2, 5, 6, 7, 17, 30])
@pytest.mark.parametrize("window", [1, 3, 6])
def test_rolling_windows_equal_lm_eval(n, window):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tokens = list(range(100, 100 + n))
    theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 0, window, context_len=1)]
    assert scoring.rolling_windows(tokens, 0, window) == [(list(a), list(b)) for a, b in theirs]


def test_generate_until_equals_generate(tiny, reference):
    import torch

    from ridgeline.eval.lm_eval_adapter import make_lm

    model, tok = tiny
    prompt = "It is a truth universally"
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)
    expected = tok.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
    args = [(prompt, {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False})]
    ours = make_lm(model, tok).generate_until(_instances("generate_until", args))
    assert ours == [expected.split("\n\n")[0]]
    # against HFLM (24-token context: both keep the last 24 - max_gen_toks prompt tokens); a stop string
    # cuts the text where it first appears
    short = make_lm(model, tok, max_length=24)
    free = short.generate_until(_instances("generate_until", [(prompt, {"until": [], "max_gen_toks": 12})]))[0]
    stop = free[2:4]
    args = [(prompt, {"until": [stop], "max_gen_toks": 12}), (prompt, {"until": [], "max_gen_toks": 4})]
    ours = short.generate_until(_instances("generate_until", args))
    assert ours == reference.generate_until(_instances("generate_until", args))
    assert ours[0] == free.split(stop)[0]


def test_sampling_is_refused(tiny):
    from ridgeline.errors import RidgelineError
    from ridgeline.eval.lm_eval_adapter import make_lm

    with pytest.raises(RidgelineError, match="greedily only"):
        make_lm(*tiny).generate_until(_instances("generate_until", [("x", {"do_sample": True, "temperature": 0.7})]))


def test_module_imports_and_fails_clearly_without_lm_eval(monkeypatch, tiny):
    import importlib
    import sys

    from ridgeline.errors import RidgelineError

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    monkeypatch.setitem(sys.modules, "lm_eval.api.model", None)
    adapter = importlib.reload(importlib.import_module("ridgeline.eval.lm_eval_adapter"))
    try:
        with pytest.raises(RidgelineError, match="pip install lm-eval"):
            adapter.make_lm(*tiny)
        assert adapter.generate_greedy(*tiny, "It is", max_gen_toks=2) is not None  # greedy needs no lm-eval
    finally:
        adapter._adapter_class.cache_clear()
