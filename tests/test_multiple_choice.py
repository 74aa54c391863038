"""Multiple-choice scoring against lm-evaluation-harness on the same local files, and bad-input errors.

lm-eval is the oracle: its own task YAMLs (loaded from the installed package, with only the data
source swapped for the local JSONL files) run through `simple_evaluate` with `HFLM` on the same model
object; per-choice log-likelihoods must agree to 1e-5 and acc / acc_norm exactly.
"""

from __future__ import annotations

import json
import math
import os
import socket
import types
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import needs_bundled

from ridgeline.errors import RidgelineError
from ridgeline.eval import scoring
from ridgeline.eval.cloze import ClozeItem, build_cloze, evaluate_cloze
from ridgeline.eval.multiple_choice import evaluate_task
from ridgeline.eval.tasks import TASKS, load_task

DATA = Path(__file__).parent / "data" / "tasks"
ZERO_SHOT = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "social_iqa", "winogrande", "openbookqa",
             "commonsense_qa", "mmlu")
#: lm-eval's own task YAML of each task (relative to lm_eval/tasks); MMLU has one per subject
YAMLS = {"arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
         "hellaswag": "hellaswag/hellaswag.yaml", "piqa": "piqa/piqa.yaml", "social_iqa": "siqa/siqa.yaml",
         "winogrande": "winogrande/default.yaml", "openbookqa": "openbookqa/openbookqa.yaml",
         "commonsense_qa": "commonsense_qa/default.yaml"}
MMLU_SUBJECTS = ("astronomy", "anatomy")
FEWSHOT_OTHERS = ("hellaswag", "winogrande", "commonsense_qa")
BATCH = 4
#: per-choice log-likelihoods agree to 3e-5, or to 3e-6 relative where a sum of float32 log-probs is large.
#: lm-eval batches and pads the requests differently from us, so MKL sums each logit row in another order:
#: on the 30-layer bundled model that moves a log-likelihood of about -9.4 by up to 1.1e-5 between runs
#: (seen in CI on a busy machine). A real scoring bug (a token off, a missing space) moves it by > 0.1.
LL_TOL = {"abs": 3e-5, "rel": 3e-6}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from ridgeline.loader import load_model

    return load_model(tiny_model_dir)


@contextmanager
def _no_network():
    """Offline mode for huggingface_hub and datasets (also when imported before the variables were set), and
    any connection attempt fails: proves the lm-eval oracle reads only the local files."""
    import datasets.config
    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    saved = (socket.socket.connect, huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    os.environ.update(dict.fromkeys(env, "1"))
    socket.socket.connect = refuse
    huggingface_hub.constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        socket.socket.connect, huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _lm_eval_config(name: str, data_files: dict, yaml_rel: str, **overrides) -> dict:
    """lm-eval's registered task config with only the data source (and task name) replaced."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(Path(lm_eval.__file__).parent / "tasks" / yaml_rel)
    for key in ("tag", "group", "dataset_name", "training_split", "validation_split"):
        cfg.pop(key, None)
    cfg.update(task=name, dataset_path="json", dataset_kwargs={"data_files": data_files}, test_split="test")
    # acc_norm for every task, so that ours is checked even where lm-eval does not report it by default
    cfg["metric_list"] = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]
    cfg.update(overrides)
    return cfg


def _split_by_subject(path: Path, folder: Path, stem: str) -> dict[str, str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = {}
    for subject in MMLU_SUBJECTS:
        target = folder / f"{stem}_{subject}.jsonl"
        target.write_text("".join(json.dumps(r) + "\n" for r in rows if r["subject"] == subject))
        out[subject] = str(target)
    return out


def hflm(model, tokenizer, batch_size: int = BATCH, **kwargs):
    """lm-eval's own Hugging Face wrapper around an already loaded model."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device="cpu", **kwargs)


def run_lm_eval(lm, configs: list[dict], limit: int | None = None) -> dict:
    """simple_evaluate offline on inline task configs -> {task: per-doc lls, greedy, acc, acc_norm; result}."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with _no_network():
        out = simple_evaluate(model=lm, tasks=configs, log_samples=True, bootstrap_iters=0, limit=limit,
                              task_manager=TaskManager(include_defaults=False))
    res = {}
    for cfg in configs:
        name = cfg["task"]
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        res[name] = {"lls": [[r[0] for r in s["filtered_resps"]] for s in samples],
                     "greedy": [[bool(r[1]) for r in s["filtered_resps"]] for s in samples],
                     "acc": [s["acc"] for s in samples], "acc_norm": [s["acc_norm"] for s in samples],
                     "result": out["results"][name]}
    return res


def _oracle_configs(folder: Path) -> list[dict]:
    configs = [_lm_eval_config(f"rl_{t}", {"test": str(DATA / f"{t}.jsonl")}, YAMLS[t])
               for t in ZERO_SHOT if t != "mmlu"]
    # few-shot outside MMLU: lm-eval's first_n sampler over a few-shot split (here the test file itself)
    for t in FEWSHOT_OTHERS:
        files = {"test": str(DATA / f"{t}.jsonl"), "dev": str(DATA / f"{t}.jsonl")}
        configs.append(_lm_eval_config(f"rl_{t}_2", files, YAMLS[t], fewshot_split="dev",
                                       fewshot_config={"sampler": "first_n"}, num_fewshot=2))
    tests = _split_by_subject(DATA / "mmlu.jsonl", folder, "test")
    devs = _split_by_subject(DATA / "mmlu_dev.jsonl", folder, "dev")
    for subject in MMLU_SUBJECTS:
        files = {"test": tests[subject], "dev": devs[subject]}
        yaml_rel = f"mmlu/default/mmlu_{subject}.yaml"
        configs.append(_lm_eval_config(f"rl_mmlu_{subject}_0", files, yaml_rel, num_fewshot=0))
        configs.append(_lm_eval_config(f"rl_mmlu_{subject}_5", files, yaml_rel, num_fewshot=5))
    return configs


@pytest.fixture(scope="module")
def oracle(tiny, tmp_path_factory):
    pytest.importorskip("lm_eval")
    return run_lm_eval(hflm(*tiny), _oracle_configs(tmp_path_factory.mktemp("lm_eval_data")))


def _ours(tiny, name: str, num_fewshot: int = 0, limit: int | None = None):
    fewshot = (DATA / ("mmlu_dev.jsonl" if name == "mmlu" else f"{name}.jsonl")) if num_fewshot else None
    task = load_task(name, DATA / f"{name}.jsonl", limit=limit, num_fewshot=num_fewshot, fewshot_path=fewshot)
    return evaluate_task(*tiny, task, batch_size=BATCH)


def _oracle_docs(oracle: dict, name: str, num_fewshot: int = 0) -> dict:
    """The oracle's per-document lists for our task (MMLU: subject tasks concatenated in file order)."""
    if name != "mmlu":
        return oracle[f"rl_{name}" + (f"_{num_fewshot}" if num_fewshot else "")]
    rows = [json.loads(line) for line in (DATA / "mmlu.jsonl").read_text().splitlines() if line.strip()]
    seen: dict[str, int] = {}
    merged: dict[str, list] = {"lls": [], "greedy": [], "acc": [], "acc_norm": []}
    for r in rows:
        i = seen[r["subject"]] = seen.get(r["subject"], -1) + 1
        part = oracle[f"rl_mmlu_{r['subject']}_{num_fewshot}"]
        for key, values in merged.items():
            values.append(part[key][i])
    return merged


@pytest.mark.parametrize("name,num_fewshot", [(t, 0) for t in ZERO_SHOT] + [("mmlu", 5)]
                         + [(t, 2) for t in FEWSHOT_OTHERS])
def test_matches_lm_eval(tiny, oracle, name, num_fewshot):
    ours = _ours(tiny, name, num_fewshot)
    theirs = _oracle_docs(oracle, name, num_fewshot)
    assert ours.n == len(theirs["lls"]) > 0
    for doc, lls, greedy in zip(ours.docs, theirs["lls"], theirs["greedy"]):
        assert doc.lls == pytest.approx(lls, **LL_TOL), doc.where
        assert list(doc.is_greedy) == greedy, doc.where
    assert ours.acc == sum(theirs["acc"]) / ours.n
    if name == "winogrande":
        assert ours.acc_norm is None  # lm-eval reports acc only for partial scoring
    else:
        assert ours.acc_norm == sum(theirs["acc_norm"]) / ours.n
    if name != "mmlu":
        assert ours.acc == _oracle_docs(oracle, name, num_fewshot)["result"]["acc,none"]
    assert ours.metric == ("acc_norm" if name in ("arc_easy", "arc_challenge", "hellaswag", "openbookqa", "piqa")
                           else "acc")


def test_every_task_is_covered():
    assert set(TASKS) == set(ZERO_SHOT)


def test_five_shot_truncates_from_the_left(tiny):
    """5-shot MMLU prompts exceed the tiny model's 256 tokens: the lm-eval comparison covers left truncation."""
    model, tok = tiny
    task = load_task("mmlu", DATA / "mmlu.jsonl", num_fewshot=5, fewshot_path=DATA / "mmlu_dev.jsonl")
    ctx, cont = scoring.encode_pair(tok, *task.requests()[0])
    assert len(ctx) + len(cont) > scoring.context_length(model, tok) + 1


def test_mmlu_prompt_layout():
    task = load_task("mmlu", DATA / "mmlu.jsonl", num_fewshot=2, fewshot_path=DATA / "mmlu_dev.jsonl")
    ctx, cont = task.requests()[1]
    assert cont == " B"
    assert ctx.startswith("The following are multiple choice questions (with answers) about astronomy.\n\n"
                          "Which object in the solar system has the most mass?\nA. Jupiter\nB. the Sun\nC. Earth\n"
                          "D. Saturn\nAnswer: B\n\nWhat keeps")
    assert ctx.endswith("\n\nWhat is the largest planet in our solar system?\nA. Earth\nB. Jupiter\nC. Mars\n"
                        "D. Venus\nAnswer:")
    # anatomy documents take anatomy examples
    anatomy = next(d for d in task.docs if d.subject == "anatomy")
    assert "about anatomy.\n\nWhich muscle separates" in anatomy.prefix


def test_fewshot_without_dev_file_holds_out_the_first_documents():
    held = load_task("mmlu", DATA / "mmlu.jsonl", num_fewshot=1)
    assert len(held.docs) == 6  # one example per subject is not scored
    assert "What is the largest planet" in held.docs[0].prefix
    assert held.docs[0].query.startswith("Which planet is known as the Red Planet?")


def test_held_out_shots_equal_a_separate_fewshot_file(tmp_path):
    rows = (DATA / "mmlu.jsonl").read_text().splitlines()
    held = [r for r in rows if r]
    first = {json.loads(r)["subject"]: r for r in reversed(held)}  # the first row of each subject
    _write(tmp_path, "dev.jsonl", "\n".join(r for r in held if r in first.values()))
    _write(tmp_path, "test.jsonl", "\n".join(r for r in held if r not in first.values()))
    separate = load_task("mmlu", tmp_path / "test.jsonl", num_fewshot=1, fewshot_path=tmp_path / "dev.jsonl")
    assert load_task("mmlu", DATA / "mmlu.jsonl", num_fewshot=1).requests() == separate.requests()


def test_limit_applies_per_mmlu_subject():
    task = load_task("mmlu", DATA / "mmlu.jsonl", limit=2)
    assert [d.subject for d in task.docs] == ["astronomy", "astronomy", "anatomy", "anatomy"]
    assert len(load_task("arc_easy", DATA / "arc_easy.jsonl", limit=3).docs) == 3


def test_preprocessing_rules():
    arc = load_task("arc_easy", DATA / "arc_easy.jsonl")
    digit = next(d for d in arc.docs if "solid" in d.query)
    assert digit.gold == 2 and digit.choices[digit.gold] == "ice"  # answerKey "3" among labels "1".."4"
    hs = load_task("hellaswag", DATA / "hellaswag.jsonl").docs[1]
    assert hs.query == ("Home and Garden: How to clean a cast iron skillet. Rinse the pan with hot water. "
                        "Use a stiff brush to scrub off stuck food.")
    assert hs.choices[1] == " Paint the skillet with bright colors It will look nicer."
    wg = load_task("winogrande", DATA / "winogrande.jsonl").docs[0]
    rest = " usually finished the race first."
    assert wg.requests() == [("Lena was a much faster runner than Greta, so Lena", rest),
                             ("Lena was a much faster runner than Greta, so Greta", rest)]


# ---------------------------------------------------------------- bad input

def _write(tmp_path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_missing_task_file(tmp_path):
    with pytest.raises(RidgelineError, match="nope.jsonl does not exist"):
        load_task("arc_easy", tmp_path / "nope.jsonl")


def test_malformed_line_is_named(tmp_path):
    good = (DATA / "piqa.jsonl").read_text().splitlines()
    path = _write(tmp_path, "piqa.jsonl", "\n".join(good[:2] + ['{"goal": "x", "sol1": '] + good[2:]) + "\n")
    with pytest.raises(RidgelineError, match=r"piqa.jsonl line 3: malformed JSON"):
        load_task("piqa", path)


def test_missing_field_is_named(tmp_path):
    row = json.loads((DATA / "arc_easy.jsonl").read_text().splitlines()[0])
    del row["answerKey"]
    path = _write(tmp_path, "arc.jsonl", "\n" + json.dumps(row) + "\n")
    with pytest.raises(RidgelineError, match=r"arc.jsonl line 2: missing field 'answerKey'"):
        load_task("arc_easy", path)
    row = json.loads((DATA / "arc_easy.jsonl").read_text().splitlines()[0])
    del row["choices"]["label"]
    with pytest.raises(RidgelineError, match=r"line 1: missing field 'choices.label'"):
        load_task("arc_easy", _write(tmp_path, "arc2.jsonl", json.dumps(row)))


def test_bad_values_are_named(tmp_path):
    row = {"sentence": "no blank here", "option1": "a", "option2": "b", "answer": "1"}
    with pytest.raises(RidgelineError, match="line 1: field 'sentence' has no '_' blank"):
        load_task("winogrande", _write(tmp_path, "w.jsonl", json.dumps(row)))
    row = {"goal": "g", "sol1": "a", "sol2": "b", "label": 2}
    with pytest.raises(RidgelineError, match="field 'label' is 2, outside the 2 choices"):
        load_task("piqa", _write(tmp_path, "p.jsonl", json.dumps(row)))
    row = {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"}
    with pytest.raises(RidgelineError, match="field 'answerKey' is 'C', not one of the labels"):
        load_task("arc_easy", _write(tmp_path, "a.jsonl", json.dumps(row)))


def test_unknown_task_lists_known_ones():
    with pytest.raises(RidgelineError, match="unknown task 'lambada'.*arc_easy.*mmlu"):
        load_task("lambada", DATA / "arc_easy.jsonl")
    assert load_task("siqa", DATA / "social_iqa.jsonl").name == "social_iqa"


def test_empty_file(tmp_path):
    with pytest.raises(RidgelineError, match="is empty"):
        load_task("piqa", _write(tmp_path, "empty.jsonl", "\n  \n"))


def test_json_array_file(tmp_path):
    rows = [json.loads(line) for line in (DATA / "piqa.jsonl").read_text().splitlines()]
    task = load_task("piqa", _write(tmp_path, "piqa.json", json.dumps(rows, indent=1)))
    assert len(task.docs) == len(rows)


def test_fewshot_needs_enough_examples(tmp_path):
    with pytest.raises(RidgelineError, match="6-shot needs 6 examples for subject 'astronomy'"):
        load_task("mmlu", DATA / "mmlu.jsonl", num_fewshot=6, fewshot_path=DATA / "mmlu_dev.jsonl")


# ---------------------------------------------------------------- cloze

PASSAGE = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair.\n\n"
    "There were a king with a large jaw and a queen with a plain face, on the throne of England; there were a "
    "king with a large jaw and a queen with a fair face, on the throne of France. In both countries it was "
    "clearer than crystal to the lords of the State preserves of loaves and fishes, that things in general "
    "were settled for ever. France, less favoured on the whole as to matters spiritual than her sister of the "
    "shield and trident, rolled with exceeding smoothness down hill, making paper money and spending it. "
    "Under the guidance of her Christian pastors, she entertained herself, besides, with such humane "
    "achievements as sentencing a youth to have his hands cut off, his tongue torn out with pincers, and his "
    "body burned alive, because he had not kneeled down in the rain to do honour to a dirty procession of "
    "monks which passed within his view, at a distance of some fifty or sixty yards.\n\n"
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: "
    "once or twice she had peeped into the book her sister was reading, but it had no pictures or "
    "conversations in it, 'and what is the use of a book,' thought Alice 'without pictures or conversations?'\n\n"
    "So she was considering in her own mind (as well as she could, for the hot day made her feel very sleepy "
    "and stupid), whether the pleasure of making a daisy-chain would be worth the trouble of getting up and "
    "picking the daisies, when suddenly a White Rabbit with pink eyes ran close by her. There was nothing so "
    "very remarkable in that; nor did Alice think it so very much out of the way to hear the Rabbit say to "
    "itself, 'Oh dear! Oh dear! I shall be late!' In another moment down went Alice after it, never once "
    "considering how in the world she was to get out again. The rabbit-hole went straight on like a tunnel "
    "for some way, and then dipped suddenly down, so suddenly that Alice had not a moment to think about "
    "stopping herself before she found herself falling down a very deep well."
)


def test_cloze_items_are_deterministic_last_words():
    items = build_cloze(PASSAGE, 4, context_words=30, seed=0)
    assert items == build_cloze(PASSAGE, 4, context_words=30, seed=0)
    assert len(items) == 4 and len({i.target for i in items}) == 4
    for item in items:
        assert item.target.isalpha() and len(item.target) >= 4
        # the target is the last word of a sentence in the text, right after the context
        at = PASSAGE.index(item.context) + len(item.context)
        assert PASSAGE[at:].lstrip().startswith(item.target)
        assert PASSAGE[at:].lstrip()[len(item.target)] in ".!?"
        assert len(item.context.split()) <= 30
    assert build_cloze(PASSAGE, 4, context_words=30, seed=1) != items  # the seed picks the passages


def test_cloze_accuracy_and_perplexity_by_hand(tiny):
    import torch

    model, tok = tiny
    items = build_cloze(PASSAGE, 5, context_words=25, seed=1)
    result = evaluate_cloze(model, tok, items, batch_size=2)
    lls = scoring.loglikelihood(model, tok, [(i.context, " " + i.target) for i in items])
    assert result.word_perplexity == pytest.approx(math.exp(-sum(ll for ll, _ in lls) / len(items)), rel=1e-9)
    # greedy hit by hand: every token of " target" must be the argmax of an unbatched forward pass
    hits = []
    for item in items:
        ctx, cont = scoring.encode_pair(tok, item.context, " " + item.target)
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logits = model(ids).logits[0, len(ctx) - 1:-1]
        hits.append(logits.argmax(-1).tolist() == cont)
    assert [r.correct for r in result.items] == hits
    assert result.accuracy == sum(hits) / len(hits)
    n_tokens = sum(len(scoring.encode_pair(tok, i.context, " " + i.target)[1]) for i in items)
    assert result.token_perplexity == pytest.approx(math.exp(-sum(ll for ll, _ in lls) / n_tokens), rel=1e-9)


class _AlwaysSays:
    """A stub model whose argmax is always token `k`: greedy hits are known in advance."""

    def __init__(self, k: int, vocab: int):
        self.k, self.vocab = k, vocab

    def __call__(self, input_ids, attention_mask=None):
        import torch

        logits = torch.zeros((*input_ids.shape, self.vocab))
        logits[..., self.k] = 5.0
        return types.SimpleNamespace(logits=logits)


def test_cloze_accuracy_on_a_known_case(tiny):
    _, tok = tiny
    (k,) = tok.encode(" that")  # a single token of the tiny vocabulary
    items = [ClozeItem("It is a truth universally acknowledged,", "that", 0),
             ClozeItem("a single man in possession of a good", "fortune", 0)]
    result = evaluate_cloze(_AlwaysSays(k, 320), tok, items)
    assert [r.correct for r in result.items] == [True, False]
    assert result.accuracy == 0.5
    # log-probs by hand: the argmax token has p = e^5 / (e^5 + 319), every other one 1 / (e^5 + 319)
    z = math.log(math.exp(5.0) + 319)
    assert result.items[0].ll == pytest.approx(5.0 - z, abs=1e-5)
    assert result.items[1].ll == pytest.approx(-z * result.items[1].n_tokens, abs=1e-4)


def test_cloze_bad_input():
    with pytest.raises(RidgelineError, match="only .* cloze passages"):
        build_cloze("Too short a text.", 3)
    with pytest.raises(RidgelineError, match="n must be"):
        build_cloze(PASSAGE, 0)


# ---------------------------------------------------------------- bundled model

@needs_bundled
def test_bundled_model_matches_lm_eval(tmp_path):
    pytest.importorskip("lm_eval")
    from ridgeline.loader import load_model

    model, tok = load_model("smollm2-135m", "fp32")
    names, limit = ("arc_easy", "hellaswag", "winogrande"), 3
    oracle = run_lm_eval(hflm(model, tok), [_lm_eval_config(f"rl_{t}", {"test": str(DATA / f"{t}.jsonl")}, YAMLS[t])
                                      for t in names], limit=limit)
    for name in names:
        ours = _ours((model, tok), name, limit=limit)
        theirs = oracle[f"rl_{name}"]
        assert ours.n == limit
        for doc, lls in zip(ours.docs, theirs["lls"]):
            assert doc.lls == pytest.approx(lls, **LL_TOL), doc.where
        assert ours.acc == sum(theirs["acc"]) / limit
        if ours.acc_norm is not None:
            assert ours.acc_norm == sum(theirs["acc_norm"]) / limit


def test_hub_source_without_a_hub_is_a_clear_error():
    pytest.importorskip("datasets")
    with _no_network(), pytest.raises(RidgelineError, match="allenai/ai2_arc.*local JSON/JSONL file"):
        load_task("arc_easy", "hf")


def test_scoring_turns_dropout_off_and_restores_training_mode(tiny):
    model, tok = tiny
    expected = scoring.loglikelihood(model, tok, [("It is a", " truth")])
    model.train()
    try:
        assert scoring.loglikelihood(model, tok, [("It is a", " truth")]) == expected
        assert model.training
    finally:
        model.eval()


def test_result_records_and_progress(tiny):
    calls = []
    task = load_task("piqa", DATA / "piqa.jsonl", limit=3)
    result = evaluate_task(*tiny, task, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (6, 6) and len(calls) >= 2
    record = json.loads(json.dumps(result.to_json()))
    assert record["n"] == 3 and record["metric"] == "acc_norm" and record["value"] == result.acc_norm
    assert len(record["docs"][0]["lls"]) == 2
    cloze = evaluate_cloze(*tiny, build_cloze(PASSAGE, 2, context_words=30))
    assert json.loads(json.dumps(cloze.to_json()))["n"] == 2
