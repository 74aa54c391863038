"""What users see: the one exception type (a one-line message naming what was wrong and what is expected), the
exception SIGTERM becomes, and notes (one-line facts library code reports; only the CLI prints them)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator


class RidgelineError(ValueError):
    """Bad input or an impossible request; the CLI prints the message on one line and exits 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the CLI's handler. A KeyboardInterrupt, so every clean-up path that
    Ctrl-C takes runs for it too; the CLI exits 143 instead of 130. Code that turns Ctrl-C into a graceful stop
    (uptraining, serving) lets this one through."""


_listeners: list[Callable[[str], None]] = []


def note(text: str) -> None:
    """Report a one-line fact to whoever listens (the CLI prints it as `note:`); nobody listening: dropped."""
    for listener in list(_listeners):
        listener(text)


@contextlib.contextmanager
def listening(listener: Callable[[str], None]) -> Iterator[None]:
    """Hear every `note` reported inside the block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
