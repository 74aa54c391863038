"""Distillation: KD losses by hand, LoRA merging, the Muon/AdamW split, resuming, pruning counts, the next-line task,
and the pipeline end to end (interrupted and resumed) on tiny random models.

The pipeline tests read a small stand-in corpus (three documents of prose lines cut from the package's prompt
passage) instead of downloading the Shakespeare corpus: `ridgeline.corpus.load_corpus` is replaced for them.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ridgeline.errors import RidgelineError
from ridgeline.train import (DataConfig, DistillConfig, EvalSettings, KDLossConfig, KDTrainConfig, LoRAConfig,
                             SpeedSettings, StudentSpec, TopK, add_lora, bucket_kl, check_tokenizers, kd_loss,
                             merge_lora, parse_data, parse_quantize, run_distill, split_parameters, token_kl,
                             train_kd)

V = 7


def tiny_llama(layers: int = 4, vocab: int = 48, tie: bool = True, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg).eval()


def _kl_by_hand(s: list[float], t: list[float], T: float) -> float:
    """Σ p (log p − log q) with p = softmax(t/T), q = softmax(s/T), in float64 loops."""
    zp = [math.exp(x / T) for x in t]
    zq = [math.exp(x / T) for x in s]
    p = [x / sum(zp) for x in zp]
    q = [x / sum(zq) for x in zq]
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def test_forward_kl_is_the_hand_computation_with_t2_scaling_and_masking():
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, V), torch.randn(2, 3, V)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    labels = torch.randint(0, V, (2, 3))
    T = 2.0
    loss, parts = kd_loss(s, TopK.full(t), labels, mask, KDLossConfig("forward", T, 1.0))
    rows = [(b, i) for b in range(2) for i in range(3) if mask[b, i]]
    hand = T * T * sum(_kl_by_hand(s[b, i].tolist(), t[b, i].tolist(), T) for b, i in rows) / len(rows)
    assert loss.item() == pytest.approx(hand, abs=1e-6)
    assert parts["tokens"] == 4
    # the oracle of the reference notes: F.kl_div, batchmean over the unmasked rows, times T²
    keep = mask.reshape(-1)
    oracle = F.kl_div((s.reshape(-1, V)[keep] / T).log_softmax(-1), (t.reshape(-1, V)[keep] / T).log_softmax(-1),
                      log_target=True, reduction="batchmean") * T * T
    assert loss.item() == pytest.approx(oracle.item(), abs=1e-6)
    # a masked position's logits do not matter
    s2 = s.clone()
    s2[0, 2] += 100 * torch.randn(V)
    assert kd_loss(s2, TopK.full(t), labels, mask, KDLossConfig("forward", T, 1.0))[0].item() == loss.item()


def test_alpha_mixes_ce_on_labels_and_reverse_kl_is_exact_at_full_k():
    torch.manual_seed(2)
    s, t = torch.randn(1, 4, V), torch.randn(1, 4, V)
    mask = torch.tensor([[True, True, True, False]])
    labels = torch.tensor([[1, 5, 0, 3]])
    T, a = 1.5, 0.3
    loss, _ = kd_loss(s, TopK.full(t), labels, mask, KDLossConfig("forward", T, a))
    kl = sum(_kl_by_hand(s[0, i].tolist(), t[0, i].tolist(), T) for i in range(3)) / 3
    ce = sum(-math.log(math.exp(s[0, i, labels[0, i]].item()) / sum(math.exp(x) for x in s[0, i].tolist()))
             for i in range(3)) / 3
    assert loss.item() == pytest.approx(a * T * T * kl + (1 - a) * ce, abs=1e-5)
    rev = token_kl(s[0], TopK.full(t[0]), T, "reverse")
    for i in range(4):  # reverse KL(q ‖ p) is the forward formula with the roles swapped
        assert rev[i].item() == pytest.approx(_kl_by_hand(t[0, i].tolist(), s[0, i].tolist(), T), abs=1e-6)


def test_sparse_teacher_is_renormalised_over_its_topk():
    s = torch.tensor([[0.3, -1.0, 2.0, 0.5, 0.0]])
    t = torch.tensor([[1.0, 3.0, 0.0, 2.0, -1.0]])
    top = TopK.of(t, 2)  # ids 1 and 3
    assert top.indices.tolist() == [[1, 3]]
    kl = token_kl(s, top, 1.0).item()
    p = [math.exp(3.0) / (math.exp(3.0) + math.exp(2.0)), math.exp(2.0) / (math.exp(3.0) + math.exp(2.0))]
    lq = [x - math.log(sum(math.exp(v) for v in s[0].tolist())) for x in (-1.0, 0.5)]
    assert kl == pytest.approx(sum(pi * (math.log(pi) - l) for pi, l in zip(p, lq)), abs=1e-6)


def test_bucket_kl_is_exact_at_full_k_and_a_lower_bound_below():
    torch.manual_seed(3)
    s, t = torch.randn(5, 40), torch.randn(5, 40) * 2
    exact = torch.tensor([_kl_by_hand(s[i].tolist(), t[i].tolist(), 1.0) for i in range(5)])
    lp = t.log_softmax(-1)
    full = bucket_kl(s, torch.arange(40).expand(5, 40), lp)
    assert torch.allclose(full, exact.float(), atol=1e-5)
    vals, idx = lp.topk(8, -1)
    part = bucket_kl(s, idx, vals)
    assert (part <= exact.float() + 1e-6).all() and (part > 0).all()


def test_merged_lora_gives_the_adapter_logits():
    model = tiny_llama()
    ids = torch.randint(0, 48, (2, 10))
    base = model(ids).logits.detach().clone()
    lora = add_lora(model, LoRAConfig(rank=4, dropout=0.1), seed=0)
    lora.eval()
    assert torch.equal(lora(ids).logits, base)  # B starts at zero: the base model exactly
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    adapted = lora(ids).logits.detach()
    assert (adapted - base).abs().max() > 1e-2
    merged = merge_lora(lora)
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert torch.allclose(merged(ids).logits, adapted, atol=1e-5)


def test_muon_gets_hidden_matrices_and_adamw_the_rest():
    model = tiny_llama(layers=2, tie=True)
    named = list(model.named_parameters())
    muon, adamw = split_parameters(model, named)
    assert sorted(n for n, _ in muon) == sorted(f"model.layers.{i}.{m}.weight" for i in range(2) for m in
                                                ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                 "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
    assert "model.embed_tokens.weight" in dict(adamw)  # the tied embedding / LM head: 2-D but not hidden
    assert all(p.dim() == 1 for n, p in adamw if n != "model.embed_tokens.weight")  # norms
    assert len(muon) + len(adamw) == len({id(p) for _, p in named})
    lora = add_lora(tiny_llama(layers=2), LoRAConfig(rank=4))
    trainable = [(n, p) for n, p in lora.named_parameters() if p.requires_grad]
    m_all, a_all = split_parameters(lora, trainable, "all")
    assert len(m_all) == len(trainable) and not a_all
    m_b, a_b = split_parameters(lora, trainable, "b")
    assert all(".lora_B." in n for n, _ in m_b) and all(".lora_A." in n for n, _ in a_b) and len(m_b) == len(a_b) == 14
    from ridgeline.train import make_optimizers

    opts = make_optimizers(lora, trainable, "muon", 1e-3)
    assert [type(o).__name__ for o in opts] == ["Muon"]
    assert opts[0].param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"


def _kd_data(n: int = 6, S: int = 12, vocab: int = 48, k: int = 8):
    from ridgeline.train import KDData

    torch.manual_seed(5)
    teacher = tiny_llama(layers=4, vocab=vocab, seed=9)
    ids = torch.randint(0, vocab, (n, S + 1))
    with torch.no_grad():
        logits = teacher(ids[:, :-1]).logits
    top = TopK.of(logits, k)
    mask = torch.ones(n, S, dtype=torch.bool)
    mask[0, -3:] = False  # padding
    return KDData(ids, mask, top.indices.to(torch.int32), top.logits, logits.logsumexp(-1), torch.zeros(n, dtype=torch.int8), {})


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path, optimizer):
    data = _kd_data()
    cfg = KDTrainConfig(optimizer=optimizer, lr=5e-3, steps=6, batch_size=2, warmup=1, seed=3,
                        lora=LoRAConfig(rank=4, dropout=0.1), checkpoint_every=0)
    ref, ref_res = train_kd(tiny_llama(layers=2), data, cfg)

    def stop_at_3(what, done, total):
        if done == 3:
            raise KeyboardInterrupt

    state = tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        train_kd(tiny_llama(layers=2), data, cfg, state, stop_at_3)
    assert sorted(p.name for p in state.iterdir()) == [".ridgeline", "optimizer.safetensors", "state.json",
                                                       "trainable.safetensors"]
    assert json.loads((state / "state.json").read_text())["step"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    resumed, res = train_kd(tiny_llama(layers=2), data, cfg, state)
    assert res.resumed_from == 3 and res.losses == ref_res.losses
    for (n, a), (_, b) in zip(ref.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), n
    from ridgeline.train import heldout_quality

    assert heldout_quality(ref, data)["kl"] < heldout_quality(tiny_llama(layers=2), data)["kl"]  # it learned


def test_pruned_student_counts_equal_state_dict_and_model_spec():
    from ridgeline.arch import choose_layers, layer_similarity, prune_depth, prune_width
    from ridgeline.specs import spec_from_config

    model = tiny_llama(layers=6, tie=False)
    ids = torch.randint(0, 48, (3, 16))
    sim = layer_similarity(model, ids)
    with torch.no_grad():  # the diagonal is cos(h_i, h_i+1) with the hidden states transformers returns
        hs = model(ids, output_hidden_states=True).hidden_states
    for i in range(5):  # (the last entry of hidden_states is after the final norm)
        assert sim[i, i].item() == pytest.approx(F.cosine_similarity(hs[i], hs[i + 1], dim=-1).mean().item(), abs=1e-5)
    expected, _ = choose_layers(sim, 2, "cosine")
    plan = prune_depth(model, ids, 2)
    assert list(plan.dropped) == expected
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    width = prune_width(model, ids, 0.5)
    assert width.intermediate_after == 24 and model.config.intermediate_size == 24
    counted = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert counted == sum(t.numel() for t in model.state_dict().values())
    assert counted == spec_from_config(model.config.to_dict()).param_count()
    model(ids)  # still runs
    span, cos = choose_layers(sim, 3, "span")
    assert span == list(range(span[0], span[0] + 3)) and cos == pytest.approx(sim[span[0], span[-1]].item())


DOC_LINES = None


def _documents() -> list[tuple[str, str]]:
    """Three documents of prose lines (8 words a line) from the package's prompt passage."""
    from ridgeline.corpus import prompt_text

    words = prompt_text().split()
    lines = [" ".join(words[i:i + 8]) for i in range(0, len(words) - 8, 8)]
    third = len(lines) // 3
    return [(f"doc{d}", "SPEAKER.\n" + "\n".join(lines[d * third:(d + 1) * third])) for d in range(3)]


def test_next_line_task_is_deterministic_and_scored_by_the_lm_eval_scorer(tiny_model_dir):
    from ridgeline.eval import build_next_line_task, evaluate_next_line
    from ridgeline.eval.scoring import loglikelihood
    from ridgeline.loader import load_model

    docs = _documents()
    task = build_next_line_task(docs, n=6, seed=4)
    assert task == build_next_line_task(docs, n=6, seed=4)
    assert task != build_next_line_task(docs, n=6, seed=5)
    texts = dict(docs)
    for d in task.docs:
        title = d.where.split(" item ")[0]
        gold = d.choices[d.gold]
        assert d.query + "\n" + gold in texts[title]  # the gold line follows the passage in its document
        for i, c in enumerate(d.choices):
            if i != d.gold:
                assert c not in texts[title] and abs(len(c) - len(gold)) <= 0.25 * len(gold)
    model, tok = load_model(tiny_model_dir)
    res = evaluate_next_line(model, tok, task, batch_size=3)
    lls = loglikelihood(model, tok, task.requests(), batch_size=5)
    flat = [ll for doc in res.docs for ll in doc.lls]
    assert flat == pytest.approx([ll for ll, _ in lls], abs=1e-5)
    assert res.acc == sum(max(range(len(d.lls)), key=lambda i: (d.lls[i], -i)) == d.gold for d in res.docs) / 6
    # one request by hand: the continuation's log-prob after the context
    d = task.docs[0]
    ctx = tok(d.query, add_special_tokens=False).input_ids
    whole = tok(d.query + "\n" + d.choices[0], add_special_tokens=False).input_ids
    with torch.no_grad():
        lp = model(torch.tensor([whole[:-1]])).logits[0].log_softmax(-1)
    hand = sum(lp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))
    assert res.docs[0].lls[0] == pytest.approx(hand, abs=1e-4)


def test_tokenizers_that_differ_are_refused_and_padding_is_noted(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert check_tokenizers(tok, tok, 320, 320) == (None, [])
    shared, notes = check_tokenizers(tok, tok, 320, 384)
    assert shared == 320 and "padding" in notes[0]
    other = copy.deepcopy(tok)
    other.add_tokens(["<extra_token>"])
    with pytest.raises(RidgelineError, match="tokenizers differ"):
        check_tokenizers(tok, other, 320, 320)


def test_option_parsing():
    assert StudentSpec.parse("prune:10") == StudentSpec(drop=10)
    assert StudentSpec.parse("prune:4:span,width:0.75") == StudentSpec(drop=4, criterion="span", width=0.75)
    assert StudentSpec.parse("/some/model").model == "/some/model"
    assert parse_data("calib,synthetic:32") == DataConfig(calib=64, synthetic=32)
    assert parse_data("synthetic:8").calib == 0
    assert [q.name for q in parse_quantize("gptq-w4g128,gptq-w3g128,rtn-w4g128")] == ["gptq-w4g128", "gptq-w3g128",
                                                                                      "rtn-w4g128"]
    for bad, fn in (("prune:x", StudentSpec.parse), ("calib,synthetic", parse_data), ("gptq-4bit", parse_quantize)):
        with pytest.raises(RidgelineError):
            fn(bad)


@pytest.fixture
def small_corpus(monkeypatch):
    import ridgeline.corpus as corpus

    docs = _documents()
    monkeypatch.setattr(corpus, "load_corpus", lambda split="eval", source=None: corpus.Corpus(
        f"test:{split}", tuple(docs[:2]) if split == "eval" else tuple(docs[2:] * 3)))


def _config(teacher: str, **kw) -> DistillConfig:
    return DistillConfig(
        teacher=teacher, student=kw.pop("student", StudentSpec(drop=1)),
        data=DataConfig(calib=6, synthetic=2, seq_len=16, prompt_tokens=6, topk=8),
        train=KDTrainConfig(lr=5e-3, steps=4, batch_size=2, warmup=1, lora=LoRAConfig(rank=4), checkpoint_every=0),
        seeds=1, quantize=parse_quantize("rtn-w8"), gptq_samples=2, gptq_seq_len=16, prune_sequences=2,
        prune_seq_len=16, eval=EvalSettings(heldout_windows=3, heldout_len=16, heldout_topk=8, cloze_items=3,
                                            mc_items=3, batch_size=4),
        speed=SpeedSettings(enabled=False), **kw)


def test_pipeline_interrupted_and_resumed_equals_uninterrupted(tmp_path, tiny_model_dir, small_corpus):
    cfg = _config(str(tiny_model_dir))
    ref = run_distill(cfg, tmp_path / "ref")
    names = [r["stage"] for r in ref.rows]
    assert names == ["teacher", "teacher+rtn-w8", "student", "student+rtn-w8", "kd-adamw-s0", "kd-adamw-s0+rtn-w8",
                     "kd-muon-s0", "kd-muon-s0+rtn-w8"]
    assert ref.rows[2]["layers"] == 2 and ref.warnings == []
    assert ref.records[4]["build"]["result"]["steps"] == 4
    for f in ("json", "csv", "html"):
        assert Path(ref.files[f]).is_file()
    assert "kd-muon-s0" in Path(ref.files["html"]).read_text()

    def interrupt(what, done, total):
        if what.startswith("kd-muon-s0: muon step") and done == 2:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_distill(cfg, run, progress=interrupt)
    stages = sorted(p.name for p in (run / "stages").iterdir())
    assert stages == ["kd-adamw-s0", "kd-adamw-s0+rtn-w8", "student", "student+rtn-w8", "teacher", "teacher+rtn-w8"]
    assert all((run / "stages" / s / "stage.json").is_file() for s in stages)  # complete, or not there at all
    assert not [p for p in (run / "stages").iterdir() if p.name.startswith(".")]
    assert (run / "train_state" / "kd-muon-s0" / "state.json").is_file()
    res = run_distill(cfg, run)
    assert not (run / "train_state" / "kd-muon-s0").exists()
    for a, b in zip(ref.rows, res.rows):
        assert (a["stage"], a["ppl"], a["kl"], a["mc_acc_norm"]) == (b["stage"], b["ppl"], b["kl"], b["mc_acc_norm"])
    with pytest.raises(RidgelineError, match="different config"):
        run_distill(replace(cfg, seeds=2), run)


def test_cli_runs_warns_about_a_student_no_smaller_and_runs_the_seed_tasks(tmp_path, tiny_model_dir, small_corpus,
                                                                          monkeypatch):
    from typer.testing import CliRunner

    from ridgeline.cli import app

    tasks = Path(__file__).parent / "data" / "tasks"
    args = ["distill", str(tiny_model_dir), "--student", str(tiny_model_dir), "--optimizer", "adamw", "--seeds", "1",
            "--steps", "1", "--batch-size", "2", "--data", "calib:4", "--seq-len", "16", "--topk", "8",
            "--quantize", "none", "--no-speed", "--heldout-windows", "3", "--heldout-len", "16", "--mc-items", "3",
            "--cloze-items", "3", "--task-dir", str(tasks), "--out", str(tmp_path / "run")]
    from ridgeline.cli import console

    monkeypatch.setattr(console, "_width", 240)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    assert "warning:" in res.stderr and "no smaller than the teacher" in res.stderr
    assert "kd-adamw-s0" in res.stdout and "arc_easy" in res.stdout
    record = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert [r["stage"] for r in record["rows"]] == ["teacher", "student", "kd-adamw-s0"]
    assert record["rows"][0]["task_arc_easy"] == record["rows"][1]["task_arc_easy"]  # the same model
    assert {k for k in record["rows"][2] if k.startswith("task_")} >= {"task_arc_easy", "task_piqa", "task_mmlu"}


@pytest.mark.parametrize("option, value, needle", [("--student", "prune:x", "--student"),
                                                    ("--quantize", "gptq-4bit", "--quantize"),
                                                    ("--data", "synthetic", "--data"),
                                                    ("--optimizer", "sgd", "optimizers")])
def test_cli_bad_options_are_one_line_errors(tmp_path, option, value, needle):
    from typer.testing import CliRunner

    from ridgeline.cli import app

    res = CliRunner().invoke(app, ["distill", "x", option, value, "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, (res.output, res.exception)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    assert not (tmp_path / "run").exists()


def test_search_is_resumable_and_trials_are_pure(tmp_path, tiny_model_dir):
    pytest.importorskip("optuna")
    import optuna
    from transformers import AutoTokenizer

    from ridgeline.train import SearchSpace, evaluate_trial, run_search
    from ridgeline.train.kd_data import save_kd_data
    from ridgeline.train.search import trial_config

    tiny_llama(layers=2, vocab=320).save_pretrained(tmp_path / "student")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "student")
    data = _kd_data(vocab=320)
    save_kd_data(data, tmp_path / "train.safetensors", {})
    save_kd_data(data, tmp_path / "valid.safetensors", {})
    files = {k: str(tmp_path / v) for k, v in (("student", "student"), ("data", "train.safetensors"),
                                              ("valid", "valid.safetensors"))}
    train = KDTrainConfig(steps=2, batch_size=2, warmup=0, lora=LoRAConfig(rank=4))
    params = {"lr": 3e-3, "temperature": 2.0, "alpha": 0.5, "rank": 8}
    cfg = trial_config(train, params, files["student"], files["data"], files["valid"])
    json.dumps(cfg)  # plain JSON: it can travel to another machine
    first = evaluate_trial(cfg, 1)
    assert evaluate_trial(cfg, 1)["objective"] == first["objective"]  # a pure function of (config, seed)
    space = SearchSpace(ranks=(4, 8))
    one = run_search(train, files, 1, tmp_path / "search", "s", space=space)
    assert len(one.trials) == 1
    # a trial an interrupted process drew and never told is evaluated again on resume, with its parameters
    storage = f"sqlite:///{tmp_path / 'search' / 'study.db'}"
    left = optuna.load_study(study_name="s", storage=storage).ask(
        {"lr": optuna.distributions.FloatDistribution(1e-4, 5e-3, log=True),
         "temperature": optuna.distributions.FloatDistribution(1.0, 4.0),
         "alpha": optuna.distributions.FloatDistribution(0.0, 1.0),
         "rank": optuna.distributions.CategoricalDistribution([4, 8])})
    three = run_search(train, files, 3, tmp_path / "search", "s", space=space)
    assert len(three.trials) == 3 and three.trials[0] == one.trials[0]
    assert three.trials[1]["number"] == left.number and three.trials[1]["params"] == left.params
    assert three.best_value == min(t["value"] for t in three.trials)
    assert {t.state.name for t in optuna.load_study(study_name="s", storage=storage).trials} == {"COMPLETE"}


def test_teacher_logits_are_cut_to_the_shared_vocabulary(tiny_model_dir):
    from ridgeline.loader import load_model
    from ridgeline.train import build_kd_data

    teacher, tok = load_model(tiny_model_dir)
    stream = torch.tensor(tok("The quick brown fox jumps over the lazy dog. " * 20, add_special_tokens=False).input_ids)
    cfg = DataConfig(calib=3, seq_len=12, topk=5)
    full = build_kd_data(teacher, tok, cfg, calib_ids=stream)
    cut = build_kd_data(teacher, tok, cfg, vocab=300, calib_ids=stream)  # a student whose head has 300 rows
    assert torch.equal(full.ids, cut.ids) and int(cut.top_ids.max()) < 300
    with torch.no_grad():
        logits = teacher(full.ids[:, :-1]).logits[..., :300]
    assert torch.allclose(cut.top_logits, logits.topk(5, -1).values) and torch.allclose(cut.lse, logits.logsumexp(-1))
