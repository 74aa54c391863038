"""Multiple-choice task definitions with lm-evaluation-harness's prompts (lm-eval 0.4.13 task YAMLs).

Each task reads a local JSON or JSONL file in its public data set's schema (or, optionally, the data
set itself through `datasets` when a hub is reachable) and turns every document into lm-eval's
(question text, choices, gold index). Choices are scored as continuations after a " " delimiter;
WinoGrande is scored the other way round (partial scoring: each option completes the sentence up to
the blank, and the fixed rest of the sentence is the continuation). MMLU puts lm-eval's per-subject
description and the first k examples of the subject's few-shot pool before the question.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from ridgeline.errors import RidgelineError

#: separates a few-shot example from the next one, as in lm-eval
FEWSHOT_DELIMITER = "\n\n"
LETTERS = "ABCDE"


@dataclass(frozen=True)
class MCDoc:
    """One document in lm-eval's terms: question text, choices, gold index (and the prompt prefix)."""

    query: str  # doc_to_text; for partial scoring the sentence part is in `choices` instead
    choices: tuple[str, ...]  # doc_to_choice, without the target delimiter
    gold: int
    where: str  # file and line, for messages and records
    suffix: str | None = None  # partial scoring: the continuation shared by every choice
    subject: str | None = None  # MMLU: few-shot examples and the description follow the subject
    prefix: str = ""  # description and few-shot examples put before the query

    def requests(self, delimiter: str = " ") -> list[tuple[str, str]]:
        """The (context, continuation) pair of every choice."""
        if self.suffix is not None:
            return [(self.prefix + c, delimiter + self.suffix) for c in self.choices]
        return [(self.prefix + self.query, delimiter + c) for c in self.choices]

    def as_example(self, delimiter: str = " ") -> str:
        """This document answered, as a few-shot example (lm-eval's question, delimiter, answer, blank line)."""
        if self.suffix is not None:
            return self.choices[self.gold] + delimiter + self.suffix + FEWSHOT_DELIMITER
        return self.query + delimiter + self.choices[self.gold] + FEWSHOT_DELIMITER


@dataclass(frozen=True)
class TaskSpec:
    """How a task reads one raw document, which metric lm-eval reports, and where the public data lives."""

    name: str
    schema: str  # the fields a document needs, for messages
    read: Callable[[_Doc], MCDoc]
    metric: str  # "acc_norm" or "acc"
    hub: tuple[str, str | None, str]  # datasets id, config, split lm-eval evaluates
    hub_fewshot_split: str | None = None
    partial: bool = False
    by_subject: bool = False  # MMLU: one lm-eval task per subject (description, shots, limit)


@dataclass(frozen=True)
class Task:
    """A loaded task: its scored documents with their prompts, ready for `evaluate_task`."""

    name: str
    source: str
    docs: tuple[MCDoc, ...]
    metric: str
    num_fewshot: int = 0
    partial: bool = False
    delimiter: str = " "
    info: dict[str, Any] = field(default_factory=dict)

    def requests(self) -> list[tuple[str, str]]:
        """Every (context, continuation) request of every document, document by document."""
        return [r for d in self.docs for r in d.requests(self.delimiter)]


class _Doc:
    """A raw document with its location: typed field access that fails with the file and line."""

    def __init__(self, raw: Any, where: str, task: str, schema: str) -> None:
        self.where, self.task, self.schema = where, task, schema
        if not isinstance(raw, dict):
            self.fail(f"expected a JSON object, got {type(raw).__name__}")
        self.raw = raw

    def fail(self, what: str) -> NoReturn:
        raise RidgelineError(f"{self.where}: {what}; a {self.task} document needs {self.schema}")

    def get(self, name: str, container: dict | None = None, label: str | None = None) -> Any:
        source = self.raw if container is None else container
        if name not in source or source[name] is None:
            self.fail(f"missing field {label or name!r}")
        return source[name]

    def text(self, name: str, container: dict | None = None, label: str | None = None) -> str:
        value = self.get(name, container, label)
        if not isinstance(value, str):
            self.fail(f"field {label or name!r} must be a string, got {type(value).__name__}")
        return value

    def texts(self, name: str, container: dict | None = None, label: str | None = None,
              n: int | None = None) -> list[str]:
        value = self.get(name, container, label)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(f"field {label or name!r} must be a list of strings")
        if n is not None and len(value) != n:
            self.fail(f"field {label or name!r} must have {n} entries, got {len(value)}")
        if len(value) < 2:
            self.fail(f"field {label or name!r} must have at least 2 choices, got {len(value)}")
        return value

    def index(self, value: Any, name: str, n: int, base: int = 0) -> int:
        """An answer given as an int or digit string, counted from `base`, checked against n choices."""
        # ASCII digits only: "²" and "٣" are digits to str.isdigit but not to int()
        digits = isinstance(value, str) and value.strip().isascii() and value.strip().isdigit()
        if isinstance(value, bool) or not (isinstance(value, int) or digits):
            self.fail(f"field {name!r} must be an integer (or digit string), got {value!r}")
        i = int(value) - base
        if not 0 <= i < n:
            self.fail(f"field {name!r} is {value!r}, outside the {n} choices (counted from {base})")
        return i

    def choices_block(self, name: str = "choices") -> tuple[list[str], list[str]]:
        """ARC / OpenBookQA / CommonsenseQA `choices`: {text: [...], label: [...]} of equal length."""
        block = self.get(name)
        if not isinstance(block, dict):
            self.fail(f"field {name!r} must be an object with 'text' and 'label' lists")
        texts = self.texts("text", block, f"{name}.text")
        labels = self.texts("label", block, f"{name}.label")
        if len(texts) != len(labels):
            self.fail(f"{name}.text has {len(texts)} entries but {name}.label has {len(labels)}")
        return texts, labels

    def label_index(self, labels: list[str], key: str, name: str = "answerKey") -> int:
        if key not in labels:
            self.fail(f"field {name!r} is {key!r}, not one of the labels {labels}")
        return labels.index(key)


def _arc(d: _Doc) -> MCDoc:
    texts, labels = d.choices_block()
    # answerKey is a letter, or a digit "1".."5" where the labels are digits too: look it up, never convert
    gold = d.label_index(labels, d.text("answerKey"))
    return MCDoc(f"Question: {d.text('question')}\nAnswer:", tuple(texts), gold, d.where)


def _clean_hellaswag(text: str) -> str:
    """WikiHow contexts carry markup: ' [title]' ends a heading, other [bracketed] tags are dropped."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(d: _Doc) -> MCDoc:
    endings = d.texts("endings")
    # str.capitalize also lowercases the rest of ctx_b: lm-eval does the same
    query = _clean_hellaswag(d.text("activity_label") + ": " + d.text("ctx_a") + " " + d.text("ctx_b").capitalize())
    gold = d.index(d.get("label"), "label", len(endings))
    return MCDoc(query, tuple(_clean_hellaswag(e) for e in endings), gold, d.where)


def _piqa(d: _Doc) -> MCDoc:
    choices = (d.text("sol1"), d.text("sol2"))
    return MCDoc(f"Question: {d.text('goal')}\nAnswer:", choices, d.index(d.get("label"), "label", 2), d.where)


def _siqa(d: _Doc) -> MCDoc:
    choices = tuple(d.text(k) for k in ("answerA", "answerB", "answerC"))
    query = f"Q: {d.text('context')} {d.text('question')}\nA:"
    return MCDoc(query, choices, d.index(d.get("label"), "label", 3, base=1), d.where)


def _winogrande(d: _Doc) -> MCDoc:
    sentence = d.text("sentence")
    if "_" not in sentence:
        d.fail("field 'sentence' has no '_' blank")
    blank = sentence.index("_")
    contexts = tuple(sentence[:blank] + d.text(k) for k in ("option1", "option2"))
    answer = d.get("answer")
    if str(answer) not in ("1", "2"):
        d.fail(f"field 'answer' must be \"1\" or \"2\", got {answer!r}")
    return MCDoc("", contexts, int(answer) - 1, d.where, suffix=sentence[blank + 1:].strip())


def _openbookqa(d: _Doc) -> MCDoc:
    texts, labels = d.choices_block()
    gold = d.label_index(labels, d.text("answerKey").lstrip())
    return MCDoc(d.text("question_stem"), tuple(texts), gold, d.where)


def _commonsense_qa(d: _Doc) -> MCDoc:
    texts, _ = d.choices_block()
    if len(texts) != 5:
        d.fail(f"field 'choices.text' must have 5 entries, got {len(texts)}")
    listed = "".join(f"\n{letter}. {t}" for letter, t in zip(LETTERS, texts))
    query = f"Question: {d.text('question').strip()}{listed}\nAnswer:"
    return MCDoc(query, tuple(LETTERS), d.label_index(list(LETTERS), d.text("answerKey")), d.where)


def _mmlu(d: _Doc) -> MCDoc:
    options = d.texts("choices", n=4)
    listed = "".join(f"\n{letter}. {t}" for letter, t in zip(LETTERS, options))
    query = f"{d.text('question').strip()}{listed}\nAnswer:"
    gold = d.index(d.get("answer"), "answer", 4)
    return MCDoc(query, tuple(LETTERS[:4]), gold, d.where, subject=d.text("subject"))


def mmlu_description(subject: str) -> str:
    """lm-eval's per-subject MMLU header (underscores of the subject name become spaces)."""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


_ARC_SCHEMA = "question, choices{text,label}, answerKey"
TASKS: dict[str, TaskSpec] = {
    "arc_easy": TaskSpec("arc_easy", _ARC_SCHEMA, _arc, "acc_norm", ("allenai/ai2_arc", "ARC-Easy", "test")),
    "arc_challenge": TaskSpec("arc_challenge", _ARC_SCHEMA, _arc, "acc_norm",
                              ("allenai/ai2_arc", "ARC-Challenge", "test")),
    "hellaswag": TaskSpec("hellaswag", "activity_label, ctx_a, ctx_b, endings, label", _hellaswag, "acc_norm",
                          ("Rowan/hellaswag", None, "validation")),
    "piqa": TaskSpec("piqa", "goal, sol1, sol2, label (0 or 1)", _piqa, "acc_norm", ("baber/piqa", None, "validation")),
    "social_iqa": TaskSpec("social_iqa", "context, question, answerA, answerB, answerC, label (\"1\"..\"3\")", _siqa,
                           "acc", ("lighteval/siqa", None, "validation")),
    "winogrande": TaskSpec("winogrande", "sentence (with a '_' blank), option1, option2, answer (\"1\" or \"2\")",
                           _winogrande, "acc", ("allenai/winogrande", "winogrande_xl", "validation"), partial=True),
    "openbookqa": TaskSpec("openbookqa", "question_stem, choices{text,label}, answerKey", _openbookqa, "acc_norm",
                           ("allenai/openbookqa", "main", "test")),
    "commonsense_qa": TaskSpec("commonsense_qa", "question, choices{label,text} (5), answerKey (A-E)", _commonsense_qa,
                               "acc", ("tau/commonsense_qa", None, "validation")),
    "mmlu": TaskSpec("mmlu", "question, subject, choices (4 strings), answer (0-3)", _mmlu, "acc",
                     ("cais/mmlu", "all", "test"), hub_fewshot_split="dev", by_subject=True),
}
#: other names users know the tasks by
ALIASES = {"siqa": "social_iqa", "arc-easy": "arc_easy", "arc-challenge": "arc_challenge", "obqa": "openbookqa",
           "csqa": "commonsense_qa"}


def task_spec(name: str) -> TaskSpec:
    """The definition of task `name` (or an alias such as siqa)."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in TASKS:
        raise RidgelineError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[key]


def read_json_documents(path: str | Path) -> list[tuple[str, Any]]:
    """(location, parsed document) for a JSONL file (one object a line) or a JSON file holding a list; read bounded
    (size, nesting depth, integer size) through `ridgeline.inputs`."""
    from ridgeline.inputs import MAX_DATA_BYTES, decode_text, json_lines, read_bytes

    path = Path(path)
    if not path.is_file():
        raise RidgelineError(f"task file {path} does not exist (or is not a file); expected a JSON or JSONL file")
    text = decode_text(read_bytes(path, "task file", MAX_DATA_BYTES), f"task file {path}")
    if not text.strip():
        raise RidgelineError(f"task file {path} is empty; expected one JSON document per line")
    if text.lstrip().startswith("["):
        return _json_array(path, text)
    return [(f"{path} line {number}", doc) for number, doc in
            json_lines(text, str(path), bad="malformed JSON")]


def _json_array(path: Path, text: str) -> list[tuple[str, Any]]:
    from ridgeline.inputs import parse_json

    items = parse_json(text, str(path))
    if not isinstance(items, list):
        raise RidgelineError(f"{path} holds a JSON {type(items).__name__}; expected a list of documents")
    if not items:
        raise RidgelineError(f"task file {path} holds an empty list; expected at least one document")
    return [(f"{path} document {i}", item) for i, item in enumerate(items, start=1)]


def _hub_documents(spec: TaskSpec, source: str, split: str) -> list[tuple[str, Any]]:
    """Rows of a `datasets` data set: 'hf' (lm-eval's own data set for the task) or 'hf:<id>[:<config>]'."""
    dataset_id, config = spec.hub[0], spec.hub[1]
    if source.startswith("hf:"):
        dataset_id, _, config_text = source[3:].partition(":")
        config = config_text or (spec.hub[1] if dataset_id == spec.hub[0] else None)
    try:
        import datasets
    except ImportError:
        raise RidgelineError(f"{source}: reading a hub data set needs the `datasets` package "
                             "(pip install datasets); or pass a local JSON/JSONL file") from None
    try:
        rows = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types (connection, missing config, offline)
        msg = " ".join(str(exc).split())[:160]
        raise RidgelineError(f"cannot load {dataset_id} ({config or 'default'}, split {split}) from the hub: {msg}; "
                             "pass a local JSON/JSONL file instead") from None
    return [(f"{source} {split} row {i}", dict(row)) for i, row in enumerate(rows, start=1)]


def _is_hub(source: str | Path | None) -> bool:
    return isinstance(source, str) and (source == "hf" or source.startswith("hf:"))


def _read_task(spec: TaskSpec, source: str | Path, split: str | None = None) -> list[MCDoc]:
    if _is_hub(source):
        raw = _hub_documents(spec, str(source), split or spec.hub[2])
    else:
        raw = read_json_documents(source)
    docs = [spec.read(_Doc(doc, where, spec.name, spec.schema)) for where, doc in raw]
    for d in docs:
        if not all(d.choices):
            # acc_norm divides by the choice's length, and an empty continuation has nothing to score
            raise RidgelineError(f"{d.where}: a choice is empty; every {spec.name} choice needs some text")
    return docs


def _groups(docs: list[MCDoc]) -> dict[str | None, list[MCDoc]]:
    out: dict[str | None, list[MCDoc]] = {}
    for d in docs:
        out.setdefault(d.subject, []).append(d)
    return out


def _with_prompts(spec: TaskSpec, docs: list[MCDoc], shots: dict[str | None, list[MCDoc]], k: int,
                  pool_name: str) -> list[MCDoc]:
    """Documents with their prefix: the MMLU description, then the first k examples of their subject."""
    out = []
    for d in docs:
        pool = shots.get(d.subject, [])
        if len(pool) < k:
            of = f" for subject {d.subject!r}" if d.subject is not None else ""
            raise RidgelineError(f"{k}-shot needs {k} examples{of}, but {pool_name} has {len(pool)}")
        header = mmlu_description(d.subject) if spec.by_subject and d.subject is not None else ""
        out.append(replace(d, prefix=header + "".join(s.as_example() for s in pool[:k])))
    return out


def _limited(docs: list[MCDoc], limit: int | None) -> list[MCDoc]:
    """The first `limit` documents of each subject (lm-eval's --limit applies per MMLU subject task)."""
    if limit is None:
        return docs
    seen: dict[str | None, int] = {}
    out = []
    for d in docs:
        seen[d.subject] = seen.get(d.subject, 0) + 1
        if seen[d.subject] <= limit:
            out.append(d)
    return out


def _held_out(docs: list[MCDoc], k: int, path: str | Path) -> tuple[list[MCDoc], dict[str | None, list[MCDoc]]]:
    """Split off the first k documents of each subject as few-shot examples; the rest are scored."""
    grouped = _groups(docs)
    for g, members in grouped.items():
        if len(members) <= k:
            of = f"subject {g!r} of " if g is not None else ""
            raise RidgelineError(f"{of}{path} has {len(members)} documents; {k}-shot without a few-shot file "
                                 f"holds out the first {k}, so it needs more")
    shots = {g: members[:k] for g, members in grouped.items()}
    held = {id(d) for members in shots.values() for d in members}
    return [d for d in docs if id(d) not in held], shots


def _fewshot(spec: TaskSpec, docs: list[MCDoc], path: str | Path, k: int, fewshot_path: str | Path | None):
    """(documents to score, few-shot pool by subject, where the pool came from)."""
    if k == 0:
        return docs, {}, None
    if fewshot_path is None and _is_hub(path) and spec.hub_fewshot_split:
        fewshot_path = path  # MMLU on the hub: its dev split, as lm-eval's fewshot_split
    if fewshot_path is not None:
        pool = _read_task(spec, fewshot_path, spec.hub_fewshot_split)
        name = f"{fewshot_path} {spec.hub_fewshot_split}" if _is_hub(fewshot_path) else str(fewshot_path)
        return docs, _groups(pool), name
    # no pool given: the first documents become the examples, so no scored question is its own shot
    scored, shots = _held_out(docs, k, path)
    return scored, shots, f"{path} (first {k} held out)"


def load_task(name: str, path: str | Path, limit: int | None = None, num_fewshot: int = 0,
              fewshot_path: str | Path | None = None) -> Task:
    """Read task `name` from `path` (JSON/JSONL in the public schema, or 'hf'/'hf:<id>' for the hub).

    Few-shot examples are the first `num_fewshot` documents (of the same subject, for MMLU) of
    `fewshot_path` (lm-eval's `first_n` sampler over MMLU's dev split); without a few-shot file they are
    the first documents of `path` itself, which are then not scored. `limit` keeps the first documents
    (per subject for MMLU, as lm-eval limits each subject task).
    """
    spec = task_spec(name)
    if num_fewshot < 0:
        raise RidgelineError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if limit is not None and limit < 1:
        raise RidgelineError(f"limit must be >= 1, got {limit}")
    docs, shots, pool_name = _fewshot(spec, _read_task(spec, path), path, num_fewshot, fewshot_path)
    docs = _with_prompts(spec, _limited(docs, limit), shots, num_fewshot, str(pool_name))
    return Task(spec.name, str(path), tuple(docs), spec.metric, num_fewshot, spec.partial,
                info={"fewshot_source": pool_name})
