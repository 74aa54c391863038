"""Units a compressor keeps or drops together (token, word, phrase, line) and tokens it must keep (protected).

Units are consecutive token ranges of a `Prompt`, found from the text:
- token: every token alone (LLMLingua's granularity);
- word: a new word starts at a token that begins with whitespace, follows a newline, or follows a gap ending in
  whitespace; punctuation glued to a word belongs to it ("fall," is one word), a lone space token belongs to
  the word after it, and a newline token is a word of its own;
- phrase: a new phrase starts after a token holding clause punctuation (, ; : . ! ? and dashes) or a newline
  (Selective Context uses noun phrases from spaCy; without a parser, clauses are the offline stand-in);
- line: a new line starts after a token holding a newline; the newline belongs to the line it ends.

Protected classes (always kept; LLMLingua-2's `force_tokens`):
- "newline": tokens holding a newline;
- "punct": tokens made only of punctuation (Unicode category P*, ignoring whitespace);
- "speaker": tokens overlapping a speaker name as plays print it: an all-caps line head of words of 2+
  letters ending in a full stop ("DUKE.", "FIRST MERCHANT.") — the held-out corpus is Shakespeare;
- "re:PATTERN": tokens overlapping a match of a regular expression (multiline mode).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np

from ridgeline.compress.prompt import Prompt
from ridgeline.errors import RidgelineError

UNITS = ("token", "word", "phrase", "line")
PROTECT_CLASSES = ("newline", "punct", "speaker")
SPEAKER = re.compile(r"^[ \t]*[A-Z][A-Z'\-]+(?:[ \t]+[A-Z][A-Z'\-]+)*\.", re.MULTILINE)
_CLAUSE = set(",;:.!?\u2014\u2013") | {"--"}


def unit_starts(prompt: Prompt, unit: str) -> np.ndarray:
    """Boolean [n]: True where a new unit of kind `unit` begins (always True at token 0)."""
    if unit not in UNITS:
        raise RidgelineError(f"unit {unit!r} is not one of {', '.join(UNITS)}")
    n = len(prompt)
    starts = np.ones(n, dtype=bool)
    if unit == "token":
        return starts
    pieces = [prompt.piece(i) for i in range(n)]
    for i in range(1, n):
        prev, cur, gap = pieces[i - 1], pieces[i], prompt.gap_before(i)
        if unit == "word":
            # a lone space token starts the word it precedes; a newline token is a word of its own
            starts[i] = cur[:1].isspace() or "\n" in prev or bool(gap and gap[-1].isspace())
        elif unit == "phrase":
            starts[i] = "\n" in prev or "\n" in gap or _ends_clause(prev)
        else:
            starts[i] = "\n" in prev or "\n" in gap
    return starts


def unit_ranges(prompt: Prompt, unit: str) -> list[tuple[int, int]]:
    """The units as [start, end) token ranges covering the prompt in order."""
    starts = np.flatnonzero(unit_starts(prompt, unit)).tolist()
    return list(zip(starts, starts[1:] + [len(prompt)]))


def _ends_clause(piece: str) -> bool:
    core = piece.rstrip()
    return bool(core) and (core[-1] in _CLAUSE or core.endswith("--"))


def _is_punct(piece: str) -> bool:
    core = "".join(piece.split())
    return bool(core) and all(unicodedata.category(c).startswith("P") for c in core)


def check_protect(protect: Sequence[str]) -> tuple[str, ...]:
    """Validate protected classes: newline, punct, speaker or re:PATTERN."""
    out = []
    for p in protect:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as exc:
                raise RidgelineError(f"protected pattern {p[3:]!r} is not a regular expression ({exc})") from None
        elif p not in PROTECT_CLASSES:
            raise RidgelineError(f"protected class {p!r} is not one of {', '.join(PROTECT_CLASSES)} or re:PATTERN")
        out.append(p)
    return tuple(out)


def protected_mask(prompt: Prompt, protect: Sequence[str]) -> np.ndarray:
    """Boolean [n]: tokens of the protected classes."""
    protect = check_protect(protect)
    n = len(prompt)
    mask = np.zeros(n, dtype=bool)
    if not protect:
        return mask
    pieces = [prompt.piece(i) for i in range(n)]
    if "newline" in protect:
        mask |= np.array(["\n" in p for p in pieces], dtype=bool)
    if "punct" in protect:
        mask |= np.array([_is_punct(p) for p in pieces], dtype=bool)
    patterns = [SPEAKER] if "speaker" in protect else []
    patterns += [re.compile(p[3:], re.MULTILINE) for p in protect if p.startswith("re:")]
    for pattern in patterns:
        for m in pattern.finditer(prompt.text):
            mask |= _overlapping(prompt, m.start(), m.end())
    return mask


def _overlapping(prompt: Prompt, start: int, end: int) -> np.ndarray:
    """Tokens whose span overlaps characters [start, end) (ignoring a leading-space-only overlap)."""
    spans = np.asarray(prompt.spans, dtype=np.int64).reshape(-1, 2)
    return (spans[:, 0] < end) & (spans[:, 1] > start) & (spans[:, 1] > spans[:, 0])
