"""Progress on stderr: a rich bar on a terminal, plain timestamped lines (with a heartbeat) when piped.

Library code reports through a (what, done, total) callback; `progress` yields that callback.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Callable, Iterator

from ridgeline.cli.common import err_console

#: seconds between plain progress lines when stderr is not a terminal (also the heartbeat of a long step)
PLAIN_PROGRESS_EVERY = 10.0
HEARTBEAT_EVERY = 25.0


@contextlib.contextmanager
def progress(description: str) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar on stderr; yields the (what, done, total) callback library code reports to.

    Piped or captured stderr gets plain lines instead of a live bar (a bar would leave blank lines around a
    one-line error): one when the step changes (at most one a second), one every `PLAIN_PROGRESS_EVERY` seconds
    otherwise, and a heartbeat line when a step runs longer than `HEARTBEAT_EVERY` seconds without reporting."""
    if not err_console.is_terminal:
        with PlainProgress(description) as report:
            yield report
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def report(what: str, done: int, total: int) -> None:
            bar.update(task, description=f"{description}: {what}", completed=done, total=total)

        yield report


class PlainProgress:
    """Progress as '[  12 s] description: what done/total' lines on stderr, with a heartbeat thread."""

    def __init__(self, description: str) -> None:
        self.description, self.lock, self.stop = description, threading.Lock(), threading.Event()
        self.start = self.last_t = 0.0
        self.state: tuple[str, int, int] | None = None
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> Callable[[str, int, int], None]:
        self.start = time.perf_counter()
        self.last_t = -PLAIN_PROGRESS_EVERY
        self.thread.start()
        return self.report

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def report(self, what: str, done: int, total: int) -> None:
        """Print a line if the step changed or enough time has passed."""
        with self.lock:
            now = time.perf_counter() - self.start
            first, changed = self.state is None, self.state is not None and self.state[0] != what
            self.state = (what, done, total)
            # a new step gets a line unless one was printed within the last second (many short steps: one
            # line a second); otherwise a line every PLAIN_PROGRESS_EVERY seconds
            if first or (changed and now - self.last_t >= 1.0) or now - self.last_t >= PLAIN_PROGRESS_EVERY:
                self._line(now, "")

    def _beat(self) -> None:
        while not self.stop.wait(1.0):
            with self.lock:
                now = time.perf_counter() - self.start
                if self.state is not None and now - self.last_t >= HEARTBEAT_EVERY:
                    self._line(now, " (still running)")

    def _line(self, now: float, suffix: str) -> None:
        what, done, total = self.state
        sys.stderr.write(f"[{now:5.0f} s] {self.description}: {what}{f' {done}/{total}' if total else ''}{suffix}\n")
        sys.stderr.flush()
        self.last_t = now
