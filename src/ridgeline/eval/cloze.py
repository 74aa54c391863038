"""LAMBADA-style cloze on held-out text: predict the last word of a passage from the words before it.

Passages end at a sentence end, and the target is that sentence's last word (a real word of at least
`min_letters` letters, trailing punctuation stripped). The context is at most `context_words` words
before it, starting at a sentence start when one is in reach. Scoring follows lm-eval's lambada task:
the request is (context, " " + word), an item is correct when every token of " " + word is the greedy
argmax (`is_greedy`), and the word's perplexity is exp(-mean log-likelihood per word).
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ridgeline.errors import RidgelineError
from ridgeline.eval.scoring import (
    CausalLM,
    Progress,
    context_length,
    encode_pair,
    score_encoded,
)

_WORD = re.compile(r"\S+")
# a sentence ends with . ! or ?, possibly inside closing quotes or brackets
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*$")
_TRAILING = string.punctuation + "\u201c\u201d\u2018\u2019\u00ab\u00bb\u2014\u2013\u2026"
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class ClozeItem:
    """One passage: the context, the word that ends it, and where that word starts in the text."""

    context: str
    target: str
    offset: int

    @property
    def continuation(self) -> str:
        """What is scored after the context: the word with its leading space."""
        return " " + self.target


@dataclass(frozen=True)
class ClozeItemResult:
    """Log-likelihood of one target word, its token count, and whether greedy decoding produces it."""

    target: str
    offset: int
    ll: float
    n_tokens: int
    correct: bool

    def to_json(self) -> dict:
        """JSON form."""
        return {"target": self.target, "offset": self.offset, "ll": self.ll, "n_tokens": self.n_tokens,
                "correct": self.correct}


@dataclass(frozen=True)
class ClozeResult:
    """Cloze accuracy (greedy) and the target words' perplexity, per word and per token."""

    items: tuple[ClozeItemResult, ...]

    @property
    def n(self) -> int:
        """Number of items."""
        return len(self.items)

    @property
    def accuracy(self) -> float:
        """Share of items whose every target token is the model's argmax."""
        return sum(i.correct for i in self.items) / self.n

    @property
    def word_perplexity(self) -> float:
        """exp(-mean log-likelihood of a target word): one word per item."""
        return math.exp(-sum(i.ll for i in self.items) / self.n)

    @property
    def token_perplexity(self) -> float:
        """exp(-log-likelihood per target token): depends on the tokenizer, unlike the word figure."""
        return math.exp(-sum(i.ll for i in self.items) / sum(i.n_tokens for i in self.items))

    def to_json(self) -> dict:
        """JSON form: the summary and every item."""
        return {"n": self.n, "accuracy": self.accuracy, "word_perplexity": self.word_perplexity,
                "token_perplexity": self.token_perplexity, "n_tokens": sum(i.n_tokens for i in self.items),
                "items": [i.to_json() for i in self.items]}


def _sentence_starts(text: str, words: list[re.Match]) -> list[bool]:
    """Which words begin a sentence: the first word, words after a sentence end or a paragraph break."""
    starts = [True] * len(words)
    for i in range(1, len(words)):
        gap = text[words[i - 1].end():words[i].start()]
        starts[i] = bool(_SENTENCE_END.search(words[i - 1].group())) or bool(_PARAGRAPH_BREAK.search(gap))
    return starts


def _target(word: str, min_letters: int) -> str | None:
    """The word without trailing punctuation, if it ends a sentence and is a real word long enough."""
    if not _SENTENCE_END.search(word):
        return None
    core = word.rstrip(_TRAILING)
    # leading punctuation would sit between context and target: context + " " + word must be the text
    return core if core.isalpha() and len(core) >= min_letters else None


def cloze_candidates(text: str, context_words: int = 64, min_letters: int = 4,
                     min_context_words: int = 16) -> list[ClozeItem]:
    """Every passage of `text` usable as a cloze item, in text order."""
    words = list(_WORD.finditer(text))
    starts = _sentence_starts(text, words)
    out = []
    for i in range(min_context_words, len(words)):
        target = _target(words[i].group(), min_letters)
        if target is None:
            continue
        lo = max(0, i - context_words)
        # start at the earliest sentence start in reach, so that contexts begin with whole sentences
        first = next((j for j in range(lo, i - min_context_words + 1) if starts[j]), lo)
        out.append(ClozeItem(text[words[first].start():words[i - 1].end()], target, words[i].start()))
    return out


def build_cloze(text: str, n: int, context_words: int = 64, seed: int = 0, min_letters: int = 4,
                min_context_words: int = 16) -> list[ClozeItem]:
    """`n` cloze passages of `text`, chosen reproducibly by `seed` among all candidates, in text order."""
    if n < 1:
        raise RidgelineError(f"n must be >= 1 cloze items, got {n}")
    if context_words < min_context_words:
        raise RidgelineError(f"context_words ({context_words}) must be at least "
                             f"min_context_words ({min_context_words})")
    candidates = cloze_candidates(text, context_words, min_letters, min_context_words)
    if len(candidates) < n:
        raise RidgelineError(f"the text has only {len(candidates)} cloze passages (a sentence-final word of at least "
                             f"{min_letters} letters after {min_context_words}+ words), fewer than the {n} asked for; "
                             "use a longer text or fewer items")
    picks = sorted(random.Random(seed).sample(range(len(candidates)), n))
    return [candidates[i] for i in picks]


def evaluate_cloze(model: CausalLM, tokenizer: Any, items: Sequence[ClozeItem], batch_size: int = 8,
                   progress: Progress | None = None) -> ClozeResult:
    """Greedy accuracy and target-word perplexity of `model` on the cloze items."""
    if not items:
        raise RidgelineError("no cloze items to evaluate; build some with build_cloze")
    encoded = [encode_pair(tokenizer, i.context, i.continuation) for i in items]
    scores = score_encoded(model, encoded, context_length(model, tokenizer), batch_size, progress)
    return ClozeResult(tuple(ClozeItemResult(i.target, i.offset, ll, len(cont), greedy)
                             for i, (_, cont), (ll, greedy) in zip(items, encoded, scores)))
