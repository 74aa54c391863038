"""Multiple-choice accuracy with lm-evaluation-harness's metrics: acc and length-normalised acc_norm.

Every choice is one log-likelihood request (see `scoring`); the prediction is the choice with the
highest log-likelihood (the first one on ties, as numpy's argmax), and acc_norm divides each
log-likelihood by the length of the choice in characters, without the delimiter. Partial-scoring
tasks (WinoGrande) report acc only, as lm-eval does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ridgeline.errors import RidgelineError
from ridgeline.eval.scoring import CausalLM, Progress, loglikelihood
from ridgeline.eval.tasks import Task


@dataclass(frozen=True)
class DocResult:
    """One document's scores: per-choice log-likelihoods and greediness, the predictions, the gold index."""

    where: str  # the document's line (or row) in the task's source
    gold: int
    lls: tuple[float, ...]
    is_greedy: tuple[bool, ...]
    pred: int
    pred_norm: int | None  # None for partial scoring, where lm-eval reports no acc_norm

    def to_json(self) -> dict:
        """JSON form."""
        return {"where": self.where, "gold": self.gold, "lls": list(self.lls), "is_greedy": list(self.is_greedy),
                "pred": self.pred, "pred_norm": self.pred_norm}


@dataclass(frozen=True)
class TaskResult:
    """Accuracy of one task: acc, acc_norm, the metric lm-eval reports for it, and every document's scores."""

    task: str
    source: str
    num_fewshot: int
    metric: str  # the metric lm-eval reports as primary for this task: "acc_norm" or "acc"
    acc: float
    acc_norm: float | None
    docs: tuple[DocResult, ...]

    @property
    def n(self) -> int:
        """Number of scored documents."""
        return len(self.docs)

    @property
    def value(self) -> float:
        """The primary metric's value."""
        return self.acc_norm if self.metric == "acc_norm" and self.acc_norm is not None else self.acc

    def to_json(self) -> dict:
        """JSON form: the summary and every document."""
        return {"task": self.task, "source": self.source, "n": self.n, "num_fewshot": self.num_fewshot,
                "metric": self.metric, "value": self.value, "acc": self.acc, "acc_norm": self.acc_norm,
                "docs": [d.to_json() for d in self.docs]}


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value, the first one on ties (numpy's rule, which lm-eval relies on)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def score_doc(where: str, gold: int, choices: Sequence[str], scores: Sequence[tuple[float, bool]],
              partial: bool = False) -> DocResult:
    """Predictions of one document from its per-choice (log-likelihood, is_greedy)."""
    lls = tuple(float(s[0]) for s in scores)
    # normalise by characters of the choice text itself: the delimiter is not part of the answer
    pred_norm = None if partial else argmax([ll / len(c) for ll, c in zip(lls, choices)])
    return DocResult(where, gold, lls, tuple(bool(s[1]) for s in scores), argmax(lls), pred_norm)


def evaluate_task(model: CausalLM, tokenizer: Any, task: Task, batch_size: int = 8,
                  progress: Progress | None = None) -> TaskResult:
    """Score every choice of every document of `task` and compute acc and acc_norm as lm-eval does."""
    if not task.docs:
        raise RidgelineError(f"task {task.name} has no documents to score; load it with load_task")
    scores = loglikelihood(model, tokenizer, task.requests(), batch_size=batch_size, progress=progress)
    docs, at = [], 0
    for d in task.docs:
        mine = scores[at:at + len(d.choices)]
        at += len(d.choices)
        # the record names the document by line; the file is the task's source
        docs.append(score_doc(d.where.removeprefix(task.source + " "), d.gold, d.choices, mine, task.partial))
    acc = sum(r.pred == r.gold for r in docs) / len(docs)
    acc_norm = None if task.partial else sum(r.pred_norm == r.gold for r in docs) / len(docs)
    return TaskResult(task.name, task.source, task.num_fewshot, task.metric, acc, acc_norm, tuple(docs))
