"""A prompt as the target model sees it: token ids, the text, and each token's character span in that text.

Everything in `ridgeline.compress` counts in the *target model's* tokens: a rate r keeps round(n / r) of a
prompt's n tokens, and the kept ids are a subsequence of the prompt's ids (never re-tokenized), so the
prefill that follows reads exactly `kept_ids` and the achieved rate is n / len(kept_ids) by construction.
Character spans (start, end) are offsets into `text`; byte-level BPE tokens carry their leading space
(" fall" is (39, 44) in "... my fall"). A prompt given as ids is decoded to text and re-encoded to get the
spans; if the round trip changes the ids, each token is decoded on its own and the pieces concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ridgeline.errors import RidgelineError


@dataclass(frozen=True)
class Prompt:
    """Target-model token ids, the text they spell, and every token's (start, end) character span in it."""

    ids: tuple[int, ...]
    text: str
    spans: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.spans):
            raise RidgelineError(f"a prompt needs one span per token, got {len(self.ids)} ids and {len(self.spans)} spans")

    def __len__(self) -> int:
        return len(self.ids)

    def piece(self, i: int) -> str:
        """The text of token `i` (its span)."""
        s, e = self.spans[i]
        return self.text[s:e]

    def gap_before(self, i: int) -> str:
        """Text between token i-1's end and token i's start (empty for contiguous spans)."""
        return self.text[self.spans[i - 1][1]:self.spans[i][0]] if i > 0 else ""

    def slice(self, start: int, end: int) -> Prompt:
        """Tokens [start, end) with their text, spans shifted to the new text."""
        if not 0 <= start < end <= len(self.ids):
            raise RidgelineError(f"prompt slice [{start}, {end}) is outside its {len(self.ids)} tokens")
        lo, hi = self.spans[start][0], self.spans[end - 1][1]
        return Prompt(self.ids[start:end], self.text[lo:hi], tuple((s - lo, e - lo) for s, e in self.spans[start:end]))


def encode_prompt(tokenizer: Any, prompt: str | Sequence[int] | Prompt) -> Prompt:
    """A Prompt from text (tokenized without special tokens), from token ids (decoded for spans), or as is."""
    if isinstance(prompt, Prompt):
        return prompt
    if isinstance(prompt, str):
        if not prompt.strip():
            raise RidgelineError("the prompt is empty; pass some text (or token ids) to compress")
        ids, spans = _encode(tokenizer, prompt)
        if not ids:
            raise RidgelineError("the prompt tokenizes to no tokens; pass some text to compress")
        return Prompt(tuple(ids), prompt, tuple(spans))
    ids = [int(i) for i in prompt]
    if not ids:
        raise RidgelineError("the prompt is empty (no token ids); pass at least one token to compress")
    text = tokenizer.decode(ids)
    again, spans = _encode(tokenizer, text)
    if again == ids:
        return Prompt(tuple(ids), text, tuple(spans))
    # the round trip re-merged tokens: decode one by one (a byte split across tokens shows as U+FFFD)
    pieces = [tokenizer.decode([i]) for i in ids]
    out, pos = [], 0
    for p in pieces:
        out.append((pos, pos + len(p)))
        pos += len(p)
    return Prompt(tuple(ids), "".join(pieces), tuple(out))


def _encode(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids without special tokens and their character spans (fast tokenizers give offsets; else by decoding)."""
    kwargs = {"add_special_tokens": False, "verbose": False}
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, return_offsets_mapping=True, **kwargs)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    ids = list(tokenizer(text, **kwargs)["input_ids"])
    spans, pos = [], 0
    for i in ids:  # slow tokenizers: find each decoded piece from where the last one ended
        piece = tokenizer.decode([i]).strip() or tokenizer.decode([i])
        at = text.find(piece, pos)
        at = pos if at < 0 else at
        spans.append((at, min(len(text), at + len(piece))))
        pos = spans[-1][1]
    return ids, spans
