"""An offline multiple-choice task built from held-out text: which of four lines follows the passage?

Built deterministically (same documents and seed, same task) from whole documents, by default the corpus's
held-out split (Shakespeare plays no calibration or training text comes from). A *text line* is a stripped line
of at least `min_words` words and `min_chars` characters that is neither a stage direction ('[Enter ...]') nor a
speaker heading (a line whose letters are all upper case, such as 'MACBETH.'). An item:

- gold: a text line whose previous non-blank line is a text line too (the passage continues a speech);
- context: the document's text before the gold line, back to `context_lines` non-blank lines (speaker
  headings included, line breaks kept, trailing whitespace removed);
- distractors: `choices - 1` distinct text lines drawn from *other* documents, each within ±`length_tolerance`
  of the gold line's length in characters (so neither the summed log-likelihood nor acc_norm can pick the
  gold by its length), never equal to the gold text;
- the gold's position among the choices is drawn too.

Items are drawn with `random.Random(seed)` from all candidates of all documents. Every choice is scored as
the continuation "\\n" + line after the context by the lm-eval-identical scorer (`multiple_choice.evaluate_task`):
acc is the argmax of the summed log-likelihood, acc_norm of the log-likelihood per character (the primary
metric, as lm-eval reports for HellaSwag, the closest public task).
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Sequence
from typing import Any

from ridgeline.errors import RidgelineError
from ridgeline.eval.multiple_choice import TaskResult, evaluate_task
from ridgeline.eval.tasks import MCDoc, Task

NAME = "next_line"
_LETTERS = re.compile(r"[A-Za-z]")


def is_text_line(line: str, min_words: int = 4, min_chars: int = 20) -> bool:
    """A line of verse or prose: long enough, not a stage direction, not an all-capitals speaker heading."""
    s = line.strip()
    if len(s) < min_chars or len(s.split()) < min_words or s.startswith("["):
        return False
    letters = "".join(_LETTERS.findall(s))
    return not letters.isupper()


def _document_lines(text: str) -> list[tuple[int, str]]:
    """(start offset, line) of every line of `text`."""
    out, at = [], 0
    for line in text.split("\n"):
        out.append((at, line))
        at += len(line) + 1
    return out


def _candidates(title: str, text: str, context_lines: int, min_words: int, min_chars: int) -> list[tuple[str, str]]:
    """(context, gold line) of every usable gold line of one document, in text order."""
    lines = _document_lines(text)
    nonblank = [i for i, (_, line) in enumerate(lines) if line.strip()]
    out = []
    for pos in range(context_lines, len(nonblank)):
        j, prev = nonblank[pos], nonblank[pos - 1]
        if not (is_text_line(lines[j][1], min_words, min_chars) and is_text_line(lines[prev][1], min_words, min_chars)):
            continue
        start = lines[nonblank[pos - context_lines]][0]
        context = text[start:lines[j][0]].rstrip()
        out.append((context, lines[j][1].strip()))
    return out


def build_next_line_task(documents: Sequence[tuple[str, str]] | None = None, n: int = 100, choices: int = 4,
                         context_lines: int = 4, seed: int = 0, length_tolerance: float = 0.25,
                         min_words: int = 4, min_chars: int = 20) -> Task:
    """`n` items of 'which line follows' from `documents` [(title, text)] (default: the corpus's held-out split)."""
    source = "given documents"
    if documents is None:
        from ridgeline.corpus import load_corpus

        corpus = load_corpus("eval")
        documents, source = corpus.documents, f"{corpus.name} (held-out split)"
    documents = list(documents)
    if len(documents) < 2:
        raise RidgelineError("the next-line task draws distractors from other documents: it needs at least 2")
    if n < 1 or choices < 2 or context_lines < 1 or not 0 < length_tolerance < 1:
        raise RidgelineError(f"next-line task: need n >= 1, choices >= 2, context_lines >= 1 and 0 < length_tolerance "
                             f"< 1; got {n}, {choices}, {context_lines}, {length_tolerance}")
    pools = [sorted({(len(s), s) for _, line in _document_lines(text) if is_text_line(line, min_words, min_chars)
                     for s in [line.strip()]}) for _, text in documents]
    candidates = [(d, c, g) for d, (title, text) in enumerate(documents)
                  for c, g in _candidates(title, text, context_lines, min_words, min_chars)]
    rng = random.Random(seed)
    order = rng.sample(range(len(candidates)), len(candidates))
    docs: list[MCDoc] = []
    for k in order:
        if len(docs) == n:
            break
        d, context, gold = candidates[k]
        lo, hi = len(gold) * (1 - length_tolerance), len(gold) * (1 + length_tolerance)
        pool = [s for other, p in enumerate(pools) if other != d
                for s in _length_window(p, lo, hi) if s != gold]
        if len(pool) < choices - 1:
            continue
        distractors = rng.sample(pool, choices - 1)
        at = rng.randrange(choices)
        options = distractors[:at] + [gold] + distractors[at:]
        docs.append(MCDoc(context, tuple(options), at, f"{documents[d][0]} item {len(docs) + 1}"))
    if len(docs) < n:
        raise RidgelineError(f"the documents yield only {len(docs)} next-line items, fewer than the {n} asked for")
    info = {"documents": [t for t, _ in documents], "choices": choices, "context_lines": context_lines, "seed": seed,
            "length_tolerance": length_tolerance, "candidates": len(candidates), "min_words": min_words,
            "min_chars": min_chars}
    return Task(NAME, source, tuple(docs), "acc_norm", delimiter="\n", info=info)


def _length_window(pool: list[tuple[int, str]], lo: float, hi: float) -> list[str]:
    """Lines of a length-sorted pool with lo <= length <= hi."""
    a = bisect.bisect_left(pool, (int(-(-lo // 1)), ""))
    b = bisect.bisect_right(pool, (int(hi), chr(0x10FFFF)))
    return [s for _, s in pool[a:b]]


def evaluate_next_line(model: Any, tokenizer: Any, task: Task, batch_size: int = 8) -> TaskResult:
    """Score the task with the lm-eval-identical multiple-choice scorer."""
    return evaluate_task(model, tokenizer, task, batch_size=batch_size)
