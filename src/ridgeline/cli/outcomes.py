"""How every command ends: one `error:` line and exit 2 for bad input and environment failures, 130 for Ctrl-C, 143
for SIGTERM (raised as an exception in the main thread, so clean-up runs exactly as for Ctrl-C), and library
notes printed once each."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape

from ridgeline.errors import RidgelineError

err_console = Console(stderr=True)


def note(text: str, kind: str = "note") -> None:
    """A yellow `note:` (or `warning:`, `modelling error:`) line on stderr."""
    err_console.print(f"[yellow]{kind}:[/yellow] {escape(text)}", highlight=False, soft_wrap=True)


def command(fn: Callable) -> Callable:
    """Run a command with one-line outcomes: RidgelineError (bad input) and OS errors (a full disk, no permission)
    become one `error:` line and exit code 2; Ctrl-C exits 130 and SIGTERM 143, after the same clean-up (temporary
    files removed, nothing half-written); library notes are printed once each as `note:` lines."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ridgeline.errors import Terminated, listening

        seen: set[str] = set()

        def show(text: str) -> None:
            if text not in seen:
                seen.add(text)
                note(text)

        try:
            with listening(show), _sigterm_raises():
                return fn(*args, **kwargs)
        except RidgelineError as exc:
            fail(str(exc))
        except OSError as exc:  # an environment failure not caught where it happened: still one line
            where = f" {exc.filename}" if exc.filename else ""
            fail(f"operating system error{where}: {exc.strerror or exc}")
        except MemoryError:
            fail("out of memory; use a smaller model, scenario or batch (or --memory-limit to refuse such runs early)")
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            err_console.print("terminated" if terminated else "interrupted")
            raise typer.Exit(143 if terminated else 130) from None

    return wrapper


def fail(message: str) -> None:
    """Print one `error:` line (text, not rich markup: paths may hold '[...]') and exit 2."""
    message = " ".join(message.split())
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the main thread while the block runs, so `finally` blocks clean up."""
    import signal
    import threading

    from ridgeline.errors import Terminated

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during clean-up ends the process
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
