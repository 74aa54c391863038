"""ridgeline.compress: self-information, units, protection, rate control, the learned scorer, SCRL's loss, CLI.

Everything runs on a tiny random llama with a byte-level BPE tokenizer trained on the bundled prose passage, so
the whole file takes seconds; the quality of real methods on the bundled model is benchmarks/compress.py's job.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ridgeline.compress import (LLMLingua, Learned, LearnedScorer, Parts, Prompt, RandomDrop, SelectiveContext,
                                compress, encode_prompt, load_scorer, protected_mask, resolve_budget, save_scorer,
                                select, self_information, unit_ranges)
from ridgeline.compress import policy_gradient_loss, sample_masks
from ridgeline.errors import RidgelineError

PLAY = ("AEGEON.\nProceed, Solinus, to procure my fall,\nAnd, by the doom of death, end woes and all.\n\n"
        "DUKE.\nMerchant of Syracuse, plead no more;\nI am not partial to infringe our laws:\n"
        "The enmity and discord which of late\nSprung from the rancorous outrage of your duke\n\n"
        "FIRST MERCHANT.\nTherefore, sir, as you love me, let us go.\n")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls on a shared 2-core machine: one thread, or OpenMP waits dominate (20 ms per 64x64 linear)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    """(model, tokenizer): a 3-layer random llama (context 256) and a 300-token byte-level BPE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from ridgeline.corpus import prompt_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([prompt_text(), PLAY], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=320, max_position_embeddings=256, eos_token_id=0)
    return LlamaForCausalLM(cfg).eval(), tokenizer


def _scorer(model, seed=0):
    return LearnedScorer.from_model(model, layers=2, head_hidden=16, seed=seed)


def _random_text(rng: random.Random, words: int) -> str:
    vocab = ["the", "king", "doth", "speak", "and", "all", "merchants", "go", "home", "to", "Syracuse", "woe",
             "fall", "plead", "laws", "sir", "love", "death", "doom", "thee"]
    out = []
    for i in range(words):
        out.append(rng.choice(vocab) + ("," if rng.random() < 0.1 else ""))
        if rng.random() < 0.08:
            out.append("\n")
    return " ".join(out).replace(" \n ", "\n")


# --- self-information ---------------------------------------------------------------------------------------

def test_self_information_equals_the_models_token_log_probabilities(tiny):
    model, tok = tiny
    ids = tok(PLAY, add_special_tokens=False).input_ids[:40]
    info = self_information(model, tok, ids)
    with torch.no_grad():
        logits = model(torch.tensor([[0] + ids])).logits[0].double()  # prefix: EOS (id 0), no BOS in this tokenizer
    # by hand: -log softmax(logits at t-1)[token t] = logsumexp - logit
    expected = [float(torch.logsumexp(logits[t], 0) - logits[t, ids[t]]) for t in range(len(ids))]
    assert info.shape == (len(ids),)
    np.testing.assert_allclose(info, expected, rtol=0, atol=2e-5)
    assert (info > 0).all()


# --- units and selection ------------------------------------------------------------------------------------

def _hand_prompt() -> Prompt:
    # tokens:      0       1     2      3     4    5      6      7     8     9
    pieces = ["DUKE", ".", "\n", "Mer", "chant", ",", " plead", " no", " more", ";\n"]
    text, spans = "", []
    for p in pieces:
        spans.append((len(text), len(text) + len(p)))
        text += p
    return Prompt(tuple(range(len(pieces))), text, tuple(spans))


def test_word_phrase_line_units_by_hand():
    p = _hand_prompt()
    assert unit_ranges(p, "token") == [(i, i + 1) for i in range(10)]
    assert unit_ranges(p, "word") == [(0, 2), (2, 3), (3, 6), (6, 7), (7, 8), (8, 10)]
    assert unit_ranges(p, "phrase") == [(0, 2), (2, 3), (3, 6), (6, 10)]
    assert unit_ranges(p, "line") == [(0, 3), (3, 10)]


def test_selection_ranks_units_by_mean_score_then_fills_with_single_tokens():
    scores = np.array([1.0, 1.0, 9.0, 2.0, 2.0, 8.0, 0.5, 7.0, 3.0, 3.0])
    units = [(0, 2), (2, 3), (3, 6), (6, 7), (7, 8), (8, 10)]  # means 1, 9, 4, 0.5, 7, 3
    # budget 5: unit (2,3) [9] -> (7,8) [7] -> (3,6) [mean 4] = 5 tokens
    assert np.flatnonzero(select(scores, 5, None, units)).tolist() == [2, 3, 4, 5, 7]
    # budget 4: 9, 7, then (3,6) does not fit (3 > 2 left), (8,10) fits [mean 3] -> 4
    assert np.flatnonzero(select(scores, 4, None, units)).tolist() == [2, 7, 8, 9]
    # budget 3: 9, 7, then no remaining unit of 1 token except (6,7) [0.5]... the fill takes the best single token
    assert np.flatnonzero(select(scores, 3, None, units)).tolist() == [2, 6, 7]
    protected = np.zeros(10, dtype=bool)
    protected[[0, 6]] = True
    assert np.flatnonzero(select(scores, 3, protected, units)).tolist() == [0, 2, 6]
    # protected tokens alone over the budget: the best-scoring of them, exactly the budget
    assert np.flatnonzero(select(scores, 1, protected, units)).tolist() == [0]


def test_word_aggregation_in_selective_context_keeps_whole_words(tiny):
    model, tok = tiny
    r = compress(PLAY, SelectiveContext(unit="word"), rate=2, model=model, tokenizer=tok)
    p = encode_prompt(tok, PLAY)
    kept = set(r.kept_positions)
    partial = [(s, e) for s, e in unit_ranges(p, "word") if 0 < len(kept & set(range(s, e))) < e - s]
    assert len(partial) <= 1  # every word whole, but the one the final fill may split
    info = self_information(model, tok, p.ids)
    whole = [(s, e) for s, e in unit_ranges(p, "word") if set(range(s, e)) <= kept]
    dropped = [(s, e) for s, e in unit_ranges(p, "word") if not kept & set(range(s, e))]
    # the kept words score higher on average than the dropped ones
    assert np.mean([info[s:e].mean() for s, e in whole]) > np.mean([info[s:e].mean() for s, e in dropped])


def test_protected_classes_find_names_newlines_and_punctuation(tiny):
    _, tok = tiny
    p = encode_prompt(tok, PLAY)
    pieces = lambda m: "".join(p.piece(i) for i in np.flatnonzero(m))
    assert pieces(protected_mask(p, ["speaker"])).replace(" ", "") == "AEGEON.DUKE.FIRSTMERCHANT."
    assert set(pieces(protected_mask(p, ["newline"]))) <= {"\n", ";", ",", ".", ":"} | set("\n")
    assert protected_mask(p, ["newline"]).sum() == PLAY.count("\n") - _double_newline_tokens(p)
    assert all(not c.isalnum() for c in pieces(protected_mask(p, ["punct"])))
    with pytest.raises(RidgelineError, match="protected class"):
        protected_mask(p, ["verbs"])


def _double_newline_tokens(p: Prompt) -> int:
    return sum(p.piece(i).count("\n") - 1 for i in range(len(p)) if p.piece(i).count("\n") > 1)


@pytest.mark.parametrize("method", ["random", "selective", "lingua", "learned"])
def test_protected_tokens_survive(tiny, method):
    model, tok = tiny
    protect = ("newline", "speaker")
    cfg = {"random": RandomDrop(protect=protect), "selective": SelectiveContext(protect=protect),
           "lingua": LLMLingua(protect=protect, segment=32), "learned": Learned(_scorer(model), protect=protect)}[method]
    p = encode_prompt(tok, PLAY)
    must = set(np.flatnonzero(protected_mask(p, protect)).tolist())
    r = compress(PLAY, cfg, rate=2.5, model=model, tokenizer=tok)
    assert must <= set(r.kept_positions)
    assert r.settings["protected_dropped"] == 0
    assert "AEGEON." in r.text and "DUKE." in r.text and "FIRST MERCHANT." in r.text
    assert r.text.count("\n") == PLAY.count("\n")


# --- rate control -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["truncate", "random", "selective", "lingua", "learned"])
def test_rate_controller_meets_its_budget_on_random_texts(tiny, method):
    model, tok = tiny
    rng = random.Random(7)
    scorer = _scorer(model)
    for trial in range(6):
        text = _random_text(rng, rng.randint(20, 50))
        rate = rng.uniform(1.5, 6.0)
        cfg = {"truncate": "truncate", "random": RandomDrop(seed=trial), "selective": SelectiveContext(unit="word"),
               "lingua": LLMLingua(segment=rng.choice([16, 40])), "learned": Learned(scorer)}[method]
        n = len(tok(text, add_special_tokens=False).input_ids)
        question = rng.choice([0, 5]) if method != "truncate" else 0
        r = compress(text, cfg, rate=rate, model=model, tokenizer=tok, parts=Parts(question=question))
        assert r.original_tokens == n and r.kept_tokens == round(n / rate)
        assert abs(r.rate - rate) / rate <= 0.05, (n, rate, r.rate)
        assert list(r.kept_ids) == [encode_prompt(tok, text).ids[i] for i in r.kept_positions]
        b = max(1, n // 3)
        assert compress(text, cfg, budget=b, model=model, tokenizer=tok).kept_tokens == b


def test_budget_controller_keeps_question_and_instruction_whole(tiny):
    model, tok = tiny
    r = compress("Lords, hear this tale of woe and doom told by the merchants of Syracuse at home.",
                 "selective", rate=3, model=model, tokenizer=tok, instruction="Summarize:\n", question="\nWho speaks?")
    assert r.text.startswith("Summarize:\n") and r.text.endswith("\nWho speaks?")
    plan = r.settings["parts"]
    assert [x["keep"] for x in plan][0] == plan[0]["end"] and plan[2]["keep"] == plan[2]["end"] - plan[2]["start"]
    assert sum(x["keep"] for x in plan) == r.kept_tokens


# --- the learned scorer ---------------------------------------------------------------------------------------

def test_learned_scorer_saves_and_loads_with_identical_predictions(tiny, tmp_path):
    model, tok = tiny
    scorer = _scorer(model, seed=3)
    with torch.no_grad():
        for p in scorer.head.parameters():
            p.add_(torch.randn_like(p))
    ids = tok(PLAY, add_special_tokens=False).input_ids
    save_scorer(scorer, tmp_path / "s", {"note": "test"})
    loaded = load_scorer(tmp_path / "s", model)
    assert np.array_equal(scorer.scores(ids, 0), loaded.scores(ids, 0))
    assert loaded.record == {"note": "test"} and loaded.layers == 2
    a = compress(PLAY, Learned(scorer), rate=2, model=model, tokenizer=tok)
    b = compress(PLAY, Learned(tmp_path / "s"), rate=2, model=model, tokenizer=tok)
    assert a.kept_positions == b.kept_positions
    other = type(model)(model.config)
    with pytest.raises(RidgelineError, match="trained on another model"):
        load_scorer(tmp_path / "s", other)
    assert not list(tmp_path.glob(".s.*"))  # no temporary folder left behind


def test_scorer_copies_the_first_layers_and_leaves_the_model_alone(tiny):
    model, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scorer = _scorer(model)
    with torch.no_grad():
        for p in scorer.decoder.layers.parameters():
            p.mul_(2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert scorer.layers == 2 and len(scorer.decoder.layers) == 2
    assert not scorer.decoder.embed_tokens.weight.requires_grad


# --- SCRL's policy gradient -------------------------------------------------------------------------------------

def test_policy_gradient_loss_hand_value():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    rewards = torch.tensor([[1.0, 0.0], [2.0, 4.0]])
    baseline = torch.tensor([0.5, 3.0])
    # -(mean of (R - b) * logp) = -((0.5*-1) + (-0.5*-2) + (-1*-0.5) + (1*-3)) / 4 = 0.5
    assert float(policy_gradient_loss(logp, rewards, baseline)) == pytest.approx(0.5)
    # max: row 0 best sample 0 -> 0.5*-1; row 1 best sample 1 -> 1*-3; -(-0.5 - 3) / 2 = 1.75
    assert float(policy_gradient_loss(logp, rewards, baseline, "max")) == pytest.approx(1.75)


def test_sampled_mask_log_probabilities_by_hand():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    forced = torch.tensor([[False, False, True]])
    masks, logp = sample_masks(logits, forced, 3, torch.Generator().manual_seed(0))
    assert masks[:, :, 2].all()  # forced tokens always kept, and not part of the action
    for j in range(3):
        m = masks[0, j]
        want = (math.log(0.5) + (math.log(1 / (1 + math.exp(-2))) if m[1] else math.log(1 / (1 + math.exp(2)))))
        assert float(logp[0, j]) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_policy_gradient_moves_a_toy_policy_toward_a_toy_reward(aggregate):
    """Reward = share of tokens whose keep/drop matches a target mask; greedy = logits > 0. Self-critical PG must
    push the policy to the target (with the loss's sign flipped it moves away, and this test fails)."""
    torch.manual_seed(0)
    n = 24
    target = torch.rand(n) < 0.5
    theta = torch.zeros(1, n, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.1)
    gen = torch.Generator().manual_seed(1)
    forced = torch.zeros(1, n, dtype=torch.bool)
    reward = lambda m: (m == target).float().mean(-1)
    start = float(reward((theta.detach() > 0)[0]))
    for _ in range(80):
        masks, logp = sample_masks(theta, forced, 8, gen)
        loss = policy_gradient_loss(logp, reward(masks), reward(theta.detach() > 0), aggregate)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert start < 0.6
    # 'max' learns only from each row's best sample (noisier): it gets most of the way in the same steps
    assert float(reward((theta.detach() > 0)[0])) >= (0.95 if aggregate == "mean" else 0.8)
    p = torch.sigmoid(theta.detach()[0])
    assert float(p[target].mean()) > 0.6 and float(p[~target].mean()) < 0.4


# --- training: interruptible, resumable -------------------------------------------------------------------------

def _corpus_file(tmp_path, rng_seed=0):
    rng = random.Random(rng_seed)
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(PLAY + _random_text(rng, 80) for _ in range(12)))
    return path


def test_scorer_training_learns_labels_checkpoints_and_resumes_identically(tiny, tmp_path):
    from ridgeline.compress.train import ScorerTrainConfig, train_scorer

    model, tok = tiny
    cfg = ScorerTrainConfig(windows=6, context=32, continuation=8, holdout=2, layers=2, head_hidden=16, steps=6,
                            batch_size=2, lr=1e-2, checkpoint_every=2, corpus=str(_corpus_file(tmp_path)))
    full = train_scorer(model, tok, tmp_path / "a", cfg)
    assert full.steps_done == 6 and not full.interrupted and len(full.curve) == 6
    assert "heldout_agreement" in full.curve[-1]
    manifest = json.loads((tmp_path / "a" / "scorer.json").read_text())
    assert manifest["record"]["step"] == 6 and manifest["record"]["stage"] == "learned"

    def stop_at_3(what, done, total):
        if what == "training scorer" and done == 3:
            raise KeyboardInterrupt

    part = train_scorer(model, tok, tmp_path / "b", cfg, progress=stop_at_3)
    assert part.interrupted and part.steps_done == 3
    assert json.loads((tmp_path / "b" / "scorer.json").read_text())["record"]["step"] == 3
    with pytest.raises(RidgelineError, match="already exists"):
        train_scorer(model, tok, tmp_path / "b", cfg)
    resumed = train_scorer(model, tok, tmp_path / "b", cfg, resume=True)
    assert resumed.steps_done == 6 and [r["loss"] for r in resumed.curve] == [r["loss"] for r in full.curve]
    ids = tok(PLAY, add_special_tokens=False).input_ids
    a, b = load_scorer(tmp_path / "a", model), load_scorer(tmp_path / "b", model)
    np.testing.assert_allclose(a.scores(ids, 0), b.scores(ids, 0), rtol=0, atol=1e-6)


def test_scrl_trains_from_the_learned_scorer_and_resumes(tiny, tmp_path):
    from ridgeline.compress.scrl import SCRLConfig, train_scrl
    from ridgeline.compress.train import ScorerTrainConfig, train_scorer

    model, tok = tiny
    cfg = ScorerTrainConfig(windows=5, context=32, continuation=8, holdout=1, layers=2, head_hidden=16, steps=2,
                            batch_size=2, corpus=str(_corpus_file(tmp_path)))
    train_scorer(model, tok, tmp_path / "learned", cfg)
    rl = SCRLConfig(steps=3, batch_size=2, samples=3, checkpoint_every=1, eval_every=2)
    full = train_scrl(model, tok, tmp_path / "learned", tmp_path / "rl", rl)
    assert full.steps_done == 3 and {"reward_greedy", "reward_samples", "loss"} <= set(full.curve[0])
    assert "heldout_delta_nll" in full.curve[0]
    assert json.loads((tmp_path / "rl" / "scorer.json").read_text())["method"] == "scrl"

    def stop_at_1(what, done, total):
        if done == 1:
            raise KeyboardInterrupt

    part = train_scrl(model, tok, tmp_path / "learned", tmp_path / "rl2", rl, progress=stop_at_1)
    assert part.interrupted and part.steps_done == 1
    resumed = train_scrl(model, tok, tmp_path / "learned", tmp_path / "rl2", rl, resume=True)
    assert [r["reward_greedy"] for r in resumed.curve] == pytest.approx([r["reward_greedy"] for r in full.curve])
    r = compress(PLAY, "scrl", rate=2, model=model, tokenizer=tok) if False else \
        compress(PLAY, Learned(tmp_path / "rl"), rate=2, model=model, tokenizer=tok)
    assert r.settings["scorer"]["method"] == "scrl"


# --- bad input ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, needle", [
    ({"rate": 1}, "rate must be a number > 1"),
    ({"rate": 0.5}, "rate must be a number > 1"),
    ({"rate": float("nan")}, "rate must be a number > 1"),
    ({"budget": 10_000}, "not smaller than the prompt"),
    ({"budget": 0}, "budget must be an integer >= 1"),
    ({}, "exactly one of rate"),
    ({"rate": 2, "budget": 3}, "exactly one of rate"),
])
def test_bad_rates_and_budgets_are_one_line_errors(tiny, kwargs, needle):
    model, tok = tiny
    with pytest.raises(RidgelineError, match=needle) as exc:
        compress(PLAY, "selective", model=model, tokenizer=tok, **kwargs)
    assert "\n" not in str(exc.value)


def test_empty_and_too_long_prompts_are_one_line_errors(tiny):
    model, tok = tiny
    for empty in ("", "   \n", []):
        with pytest.raises(RidgelineError, match="empty") as exc:
            compress(empty, "truncate", rate=2, model=model, tokenizer=tok)
        assert "\n" not in str(exc.value)
    long = " ".join(["merchants"] * 300)
    with pytest.raises(RidgelineError, match="longer than the model's context of 256") as exc:
        compress(long, "truncate", rate=2, model=model, tokenizer=tok)
    assert "\n" not in str(exc.value)
    with pytest.raises(RidgelineError, match="is not one of"):
        compress(PLAY, "magic", rate=2, model=model, tokenizer=tok)
    with pytest.raises(RidgelineError, match="needs the target model"):
        compress(PLAY, "selective", rate=2, tokenizer=tok)


def test_resolve_budget_rounds_and_refuses_a_prompt_too_short():
    assert resolve_budget(100, rate=3) == (33, 3.0)
    assert resolve_budget(100, budget=40) == (40, 2.5)
    with pytest.raises(RidgelineError, match="too short to compress"):
        resolve_budget(1, rate=1.5)


# --- CLI ------------------------------------------------------------------------------------------------------

def test_cli_compresses_a_text_file_and_errors_in_one_line(tiny, tmp_path):
    from ridgeline.cli import app

    model, tok = tiny
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    text = tmp_path / "play.txt"
    text.write_text(PLAY)
    runner = CliRunner()
    res = runner.invoke(app, ["compress", str(folder), "--method", "selective", "--rate", "2", "--text", str(text),
                              "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["kept_tokens"] == round(rec["original_tokens"] / 2) and rec["method"] == "selective"
    res = runner.invoke(app, ["compress", str(folder), "--method", "lingua", "--rate", "2", "--text", str(text)])
    assert res.exit_code == 0 and "rate requested / achieved" in res.stdout
    for args, needle in ((["--rate", "1"], "rate must be a number > 1"), (["--budget", "9999"], "not smaller"),
                         (["--method", "learned", "--rate", "2"], "needs --scorer")):
        res = runner.invoke(app, ["compress", str(folder), "--text", str(text), *args])
        assert res.exit_code == 2, res.output
        assert len(res.stderr.splitlines()) == 1 and needle in res.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n")
    res = runner.invoke(app, ["compress", str(folder), "--text", str(empty), "--rate", "2"])
    assert res.exit_code == 2 and "empty" in res.stderr
    res = runner.invoke(app, ["compress", "--help"])
    assert res.exit_code == 0 and "train" in res.stdout


def test_cli_corpus_eval_and_train_errors(tiny, tmp_path):
    from ridgeline.cli import app

    model, tok = tiny
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    runner = CliRunner()
    res = runner.invoke(app, ["compress", str(folder), "--method", "selective", "--rate", "2", "--corpus-eval",
                              "--lengths", "48", "--samples", "2", "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    rows = {(r["method"], r["rate"]): r for r in rec["summary"]}
    assert set(rows) == {("full", None), ("truncate", 2.0), ("selective", 2.0)}
    assert rows[("full", None)]["delta_nll"] == 0 and rows[("selective", 2.0)]["rate_achieved_mean"] == 2.0
    assert len(rec["items"]) == 2 * 3
    res = runner.invoke(app, ["compress", str(folder), "--corpus-eval", "--budget", "10"])
    assert res.exit_code == 2 and "--rate" in res.stderr
    res = runner.invoke(app, ["compress", "train", str(folder), "--out", str(tmp_path / "s"), "--stage", "scrl"])
    assert res.exit_code == 2 and "--init" in res.stderr


# --- the roofline's view: analyze --compress ---------------------------------------------------------------------

TINY_SPEC = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 4096,
             "tie_word_embeddings": False}


@pytest.fixture()
def tiny_spec(tmp_path):
    from ridgeline.specs import load_spec

    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_SPEC))
    return load_spec(str(path))


def test_scenario_compress_prefills_fewer_tokens_and_keeps_old_json():
    from ridgeline.specs import Scenario

    sc = Scenario(2048, 64, compress=3)
    assert sc.prefill_tokens == 683 and sc.final_context == 683 + 64
    assert sc.to_json()["compress"] == 3 and sc.to_json()["prefill_tokens"] == 683
    assert Scenario(2048, 64).to_json() == {"name": "2048:64", "prompt": 2048, "generate": 64, "batch": 1}
    with pytest.raises(RidgelineError, match="compression rate"):
        Scenario(100, 1, compress=0.5)


def test_compressed_workload_equals_the_shorter_prompt_plus_the_compressor(tiny_spec):
    from ridgeline.roofline import Compressor, Options, build_workload
    from ridgeline.specs import Precision, Scenario

    prec = Precision("fp32", "fp32", "fp32")
    short = build_workload(tiny_spec, Scenario(1000, 16), prec)
    plain = build_workload(tiny_spec, Scenario(2000, 16, compress=2), prec)
    assert plain.prefill.flops == short.prefill.flops and plain.kv_bytes == short.kv_bytes
    assert plain.decode.flops == short.decode.flops
    h, V, P = 64, 256, 2000
    scorer = build_workload(tiny_spec, Scenario(P, 16, compress=2), prec,
                            compressor=Compressor("self:2", tiny_spec, 2, head_hidden=8))
    first2 = build_workload(tiny_spec.with_layers(2), Scenario(P, 0), prec)
    # the first 2 layers over all P tokens, no lm_head, plus the head: [h_t, h_t+1] -> 8 -> 1 per token
    want = first2.prefill.flops - 2 * h * V + 2 * P * (2 * h * 8 + 8)
    assert scorer.prefill.flops - short.prefill.flops == pytest.approx(want)
    whole = build_workload(tiny_spec, Scenario(P, 16, compress=2), prec, compressor=Compressor("self", tiny_spec))
    full_logits = build_workload(tiny_spec, Scenario(P, 0), prec, Options(logits="all"))
    assert whole.prefill.flops - short.prefill.flops == pytest.approx(full_logits.prefill.flops)
    opaque = build_workload(tiny_spec, Scenario(P, 16, compress=2), prec, compressor=Compressor("f", flops_per_token=1e6))
    assert opaque.prefill.flops - short.prefill.flops == pytest.approx(1e6 * P)
    assert {o.group for o in scorer.prefill.ops if o.name.startswith("compressor:")} >= {"compressor"}


def test_predict_compression_summary(tiny_spec):
    from ridgeline.roofline import compression_summary, predict

    p = predict(tiny_spec, "rtx-3090", "2000:16", acts="fp32", compress=2)
    s = compression_summary(p)
    assert s["prefill_tokens"] == 1000 and s["compressor_flops"] == 0 and s["ttft_speedup"] > 1
    assert s["kv_saved_bytes"] == pytest.approx(s["kv_bytes_uncompressed"] * 1000 / 2016)
    slow = compression_summary(predict(tiny_spec, "rtx-3090", "2000:16", acts="fp32", compress=2, compressor="self"))
    assert slow["ttft_s"] > s["ttft_s"] and slow["compressor_time_s"] > 0
    with pytest.raises(RidgelineError, match="need a compression rate"):
        predict(tiny_spec, "rtx-3090", "2000:16", compressor="self")
    with pytest.raises(RidgelineError, match="K must be between 1 and the model's 4 layers"):
        predict(tiny_spec, "rtx-3090", "2000:16", compress=2, compressor="self:9")


def test_cli_analyze_compress(tmp_path):
    from ridgeline.cli import app

    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_SPEC))
    runner = CliRunner()
    res = runner.invoke(app, ["analyze", "-m", str(path), "-d", "rtx-3090", "-s", "2048:64", "--compress", "4",
                              "--compressor", "self:1", "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["scenario"]["prefill_tokens"] == 512 and rec["compression"]["rate"] == 4
    assert 0.7 < rec["compression"]["kv_saved_fraction"] < 0.75  # (2112 - 576) / 2112
    res = runner.invoke(app, ["analyze", "-m", str(path), "-d", "rtx-3090", "-s", "2048:64", "--compress", "2"])
    assert res.exit_code == 0 and "prompt compressed x2: 2048 -> 1024 tokens prefilled" in res.stdout
    for args, needle in ((["--compress", "1"], "rate must be a number > 1"),
                         (["--compressor", "self"], "need a compression rate")):
        res = runner.invoke(app, ["analyze", "-m", str(path), "-d", "rtx-3090", *args])
        assert res.exit_code == 2 and len(res.stderr.splitlines()) == 1 and needle in res.stderr
