"""Rolling-window perplexity: the window plan, the HF and lm-eval oracles, batching, bad input."""

import math

import pytest
import torch
from conftest import needs_bundled

from ridgeline.errors import RidgelineError
from ridgeline.eval.perplexity import PerplexityConfig, perplexity, window_plan
from ridgeline.corpus import prompt_text


@pytest.fixture(autouse=True)
def _corpus_cache(tmp_path_factory, monkeypatch):
    # one corpus download per test session, shared with test_corpus.py (RIDGELINE_HOME is per test)
    monkeypatch.setenv("RIDGELINE_CORPUS_CACHE", str(tmp_path_factory.getbasetemp() / "corpus_cache"))


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """(model, tokenizer): conftest's tiny random llama (limit 256 positions) with its 320-token BPE (EOS only)."""
    from ridgeline.loader import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="session")
def text():
    return prompt_text()


def _ids(tokenizer, text):
    return [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("n", [*range(30), 64, 101])
def test_window_plan_scores_every_token_once(n):
    for context in range(1, 14):
        for stride in range(1, context + 1):
            plan = window_plan(n, context, stride)
            scored = [t for _, end, k in plan for t in range(end - k, end)]
            assert scored == list(range(1, n)), (n, context, stride)
            for i, (begin, end, k) in enumerate(plan):
                assert end - 1 - begin == min(context, n - 1)  # model input: always full, never over context
                assert begin + 1 <= end - k  # every scored token has context inside its window
                if 0 < i < len(plan) - 1:
                    assert k == stride and begin == i * stride
            if len(plan) > 1:
                assert plan[0][2] == context  # the first window scores all it predicts


def test_window_plan_disjoint_and_bad_stride():
    assert window_plan(9, 4, 4) == [(0, 5, 4), (4, 9, 4)]  # inputs [0,4) and [4,8) do not overlap
    assert window_plan(10, 4, 4) == [(0, 5, 4), (4, 9, 4), (5, 10, 1)]  # the last is right-aligned
    for stride in (0, 5):
        with pytest.raises(RidgelineError, match="stride"):
            window_plan(10, 4, stride)


@pytest.mark.parametrize("stride", [1, 3, 7, 8])
def test_window_plan_is_lm_eval_rolling_windows(stride):
    lm_utils = pytest.importorskip("lm_eval.utils")
    for n in (2, 5, 8, 9, 10, 33):
        ids = list(range(100, 100 + n))
        ours = [(ids[b:e - 1], ids[e - k:e]) for b, e, k in window_plan(n, 8, stride)]
        assert ours == list(lm_utils.get_rolling_token_windows(ids[1:], ids[0], 8, 8 - stride + 1))


def test_short_text_matches_hf_loss(tiny):
    model, tok = tiny
    sentence = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
    for add_bos in (True, False):
        ids = _ids(tok, sentence)[0 if add_bos else 1:]
        with torch.no_grad():
            oracle = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item() * (len(ids) - 1)
        r = perplexity(model, tok, sentence, PerplexityConfig(context=128, stride=128, add_bos=add_bos))
        assert r.tokens == len(ids) - 1 and r.settings["windows"] == 1
        assert r.nll == pytest.approx(oracle, abs=1e-5, rel=1e-6)
        assert r.settings["first_token_scored"] is add_bos and r.settings["prefix"] == ("eos" if add_bos else None)


def test_disjoint_windows_match_lm_eval(tiny, text):
    """stride == context: lm-eval's rolling windows (context_len=1, made disjoint), token for token and in NLL."""
    lm_utils = pytest.importorskip("lm_eval.utils")
    model, tok = tiny
    text = text[:1500]
    ids = _ids(tok, text)
    windows = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(ids[1:], ids[0], 64, 1)]
    plan = window_plan(len(ids), 64, 64)
    assert len(plan) == len(windows) > 3
    ll = 0.0
    for (begin, end, k), (ctx, cont) in zip(plan, windows):
        assert ctx + cont == ids[begin:end] and cont == ids[end - k:end]
        with torch.no_grad():  # score the window as lm-eval's HFLM does: logits of (ctx + cont)[:-1]
            logp = model(torch.tensor([(ctx + cont)[:-1]])).logits[0, -len(cont):].float().log_softmax(-1)
        ll += logp.gather(-1, torch.tensor(cont)[:, None]).sum().item()
    r = perplexity(model, tok, text, PerplexityConfig(context=64, stride=64, batch_size=3))
    assert r.nll == pytest.approx(-ll, rel=1e-5)
    assert r.tokens == len(ids) - 1


def test_batched_equals_one_window_at_a_time(tiny, text):
    model, tok = tiny
    one = perplexity(model, tok, text, PerplexityConfig(context=96, stride=40, batch_size=1))
    seen = []
    many = perplexity(model, tok, text, PerplexityConfig(context=96, stride=40, batch_size=4),
                      progress=lambda done, total: seen.append((done, total)))
    assert many.nll == pytest.approx(one.nll, rel=1e-5, abs=1e-5)
    assert many.tokens == one.tokens and many.settings["windows"] == one.settings["windows"] > 8
    n = one.settings["windows"]
    # the task's size first, then one report per batch
    assert seen[0] == (0, n) and seen[-1] == (n, n) and len(seen) == 1 + math.ceil(n / 4)


def test_metrics_and_max_tokens(tiny, text):
    model, tok = tiny
    r = perplexity(model, tok, text, PerplexityConfig(context=64, stride=32, max_tokens=150))
    assert r.tokens == 150 and r.settings["text_tokens"] == 150 and r.settings["max_tokens"] == 150
    # words and bytes are those of the capped text: the prefix of `text` the 150 tokens cover
    covered = tok.decode(tok(text, add_special_tokens=False)["input_ids"][:150])
    assert r.bytes == len(covered.encode()) < len(text.encode()) and r.words == len(covered.split())
    j = r.to_json()
    assert j["token_perplexity"] == pytest.approx(math.exp(r.nll / r.tokens))
    assert j["word_perplexity"] == pytest.approx(math.exp(r.nll / r.words))
    assert j["bits_per_byte"] == pytest.approx(r.nll / (r.bytes * math.log(2)))
    assert j["byte_perplexity"] == pytest.approx(2 ** j["bits_per_byte"])
    assert j["settings"]["windows"] == len(window_plan(151, 64, 32))
    # a cap beyond the text scores the whole text
    assert perplexity(model, tok, text[:300], PerplexityConfig(context=64, stride=64, max_tokens=10**6)).bytes == 300


def test_bad_input(tiny):
    model, tok = tiny
    with pytest.raises(RidgelineError, match="stride"):
        PerplexityConfig(context=64, stride=0)
    with pytest.raises(RidgelineError, match="stride"):
        PerplexityConfig(context=64, stride=65)
    with pytest.raises(RidgelineError, match="batch size"):
        PerplexityConfig(batch_size=0)
    with pytest.raises(RidgelineError, match="context 512 is longer than the model's limit 256"):
        perplexity(model, tok, "some text", PerplexityConfig(context=512, stride=256))
    for empty in ("", " \n\t"):
        with pytest.raises(RidgelineError, match="empty"):
            perplexity(model, tok, empty, PerplexityConfig(context=64, stride=64))


@needs_bundled
def test_smaller_stride_lowers_perplexity_on_the_bundled_model():
    """More context per scored token predicts better: stride 64 beats disjoint windows of 256."""
    from ridgeline.corpus import load_corpus
    from ridgeline.loader import load_model

    model, tok = load_model("smollm2-135m", "fp32")
    text = load_corpus("eval").text
    disjoint = perplexity(model, tok, text, PerplexityConfig(context=256, stride=256, batch_size=4, max_tokens=1024))
    strided = perplexity(model, tok, text, PerplexityConfig(context=256, stride=64, batch_size=4, max_tokens=1024))
    assert disjoint.tokens == strided.tokens == 1024 and disjoint.bytes == strided.bytes
    assert strided.token_perplexity < disjoint.token_perplexity
    assert 2 < strided.token_perplexity < 200  # a real model on real English, not noise
