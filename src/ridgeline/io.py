"""Files: where ridgeline keeps user state, and writing results without losing anything.

Rules every write follows:
- **Nothing half-written.** A result is written to a temporary sibling, flushed to disk (`fsync`, so a full disk
  fails here and not later), then renamed into place; any failure or interruption removes the temporary.
  Temporaries are named `.<target>.ridgeline-<pid>-<random>.tmp...`, so one a killed run (SIGKILL, power loss)
  left behind is recognised and removed by the next write into that folder once its writer is gone.
- **Only what ridgeline wrote is replaced.** An output file must be a regular file (never a FIFO, a device node,
  a socket or a symbolic link: those are refused, not replaced). An output folder must be new, empty, or one
  ridgeline wrote: its `.ridgeline` marker lists the files ridgeline put there, and a folder holding anything
  else is refused, so files a user put anywhere are never deleted.
- **Checked before work starts.** Commands call `check_output` on every output path before loading a model.
- **Normal permissions.** Results get the permissions of any new file under the user's umask.

Long loops that checkpoint (training, compression) stop between steps on Ctrl-C through `deferred_sigint`, so a
checkpoint is never cut in half.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from ridgeline.errors import RidgelineError

#: the marker an output folder ridgeline wrote holds (JSON: what wrote it and the files it put there)
MARKER = ".ridgeline"
_TEMP = re.compile(r"^\..+\.ridgeline-(\d+)-.*\.tmp")


def user_dir() -> Path:
    """Where ridgeline keeps user state (measured devices, caches): $RIDGELINE_HOME or ~/.cache/ridgeline."""
    return Path(os.environ.get("RIDGELINE_HOME") or Path.home() / ".cache" / "ridgeline")


# ---------------------------------------------------------------------------------------------
# output paths


def _written_by_ridgeline(folder: Path) -> set[str] | None:
    """The entries ridgeline's marker lists in `folder` (None: no readable marker)."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return set(files) | {MARKER}


def foreign_entries(folder: Path) -> list[str]:
    """Entries of an existing folder that ridgeline did not write (all of them when it has no marker)."""
    names = sorted(p.name for p in folder.iterdir())
    ours = _written_by_ridgeline(folder)
    return [n for n in names if ours is None or n not in ours]


def check_output(path: str | os.PathLike, kind: str = "file", option: str = "--out") -> Path:
    """Refuse an output path ridgeline must not write, before any work starts; return it as a Path.

    `kind` "file": a new path or an existing regular file (replaced); "folder": a new path, an empty folder, or a
    folder ridgeline wrote (replaced). Symbolic links, FIFOs, devices, sockets and `.` are refused, and so is a
    path whose folder cannot be written.
    """
    raw = str(path)
    p = Path(path).expanduser()
    if not raw.strip() or p.name in ("", ".", ".."):
        raise RidgelineError(f"{option} {raw!r} names no {kind}; give a {kind} name such as "
                             f"{'results.json' if kind == 'file' else 'out_folder'}")
    if p.is_symlink():
        raise RidgelineError(f"{option} {p} is a symbolic link; ridgeline writes only regular files and folders it "
                             "created (remove the link or choose another path)")
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RidgelineError(f"{option} {p}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK) or not _can_create_in(ancestor):
        raise RidgelineError(f"cannot write {p}: {ancestor} does not take new files (no permission, read-only, or a "
                             "virtual file system such as /proc)")
    if not p.exists():
        return p
    mode = os.stat(p).st_mode
    if kind == "file":
        if stat.S_ISDIR(mode):
            raise RidgelineError(f"cannot write {p}: it is a folder; pass a file path such as {p / 'results.json'}")
        if not stat.S_ISREG(mode):
            raise RidgelineError(f"{option} {p} is not a regular file (a FIFO, device or socket); ridgeline replaces "
                                 "only regular files")
        return p
    if not stat.S_ISDIR(mode):
        raise RidgelineError(f"{option} {p} exists and is not a folder; pass a new folder name")
    foreign = foreign_entries(p)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RidgelineError(f"{option} {p} is a folder ridgeline did not write (it holds {shown}); ridgeline never "
                             "deletes files it did not write: choose a new or empty folder, or move them")
    return p


def _can_create_in(folder: Path) -> bool:
    """Whether a file can really be created in `folder`: root passes access() even on /proc or a read-only mount,
    so an empty probe file is made and removed at once."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".probe.ridgeline-{os.getpid()}-", suffix=".tmp", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def check_outputs(paths: dict[str, tuple[str | os.PathLike | None, str]]) -> None:
    """`check_output` for every option given: {option: (path or None, kind)}; kind "stem" checks STEM.png/.svg."""
    for option, (path, kind) in paths.items():
        if path is None:
            continue
        if kind == "stem":
            for suffix in (".png", ".svg"):
                check_output(Path(str(path) + suffix), "file", option)
        else:
            check_output(path, kind, option)


# ---------------------------------------------------------------------------------------------
# temporaries


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove temporaries ridgeline writers left in `folder` when they were killed (their PID is gone)."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if not m or _alive(int(m.group(1))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def _prefix(path: Path) -> str:
    return f".{path.name}.ridgeline-{os.getpid()}-"


def _fsync(path: Path) -> None:
    """Flush a file (or every file under a folder) to disk: a full disk fails here, not after the rename."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system can sync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; flush and rename it onto `path` only if the block succeeds."""
    path = check_output(path, "file", "output")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results should be as readable as any new file
    try:
        yield Path(tmp)
        _fsync(Path(tmp))
        check_output(path, "file", "output")  # still not a FIFO or a link someone put there meanwhile
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, kind: str = "output", owned: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; if the block succeeds it is marked as ridgeline's (`.ridgeline`
    lists its files), flushed and put in place of `path`. An existing `path` must be empty or a folder ridgeline
    wrote (see `check_output`) unless the caller `owned` the path (a cache entry named by a content hash); it is
    removed only after the new one is complete. On failure `path` is untouched."""
    path = Path(path) if owned else check_output(path, "folder", "output")
    if not path.parent.is_dir():
        raise RidgelineError(f"cannot write {path}: folder {path.parent} does not exist")
    clean_stale(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; results should be as readable as any new folder
    try:
        yield tmp
        _normal_permissions(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / MARKER).write_text(json.dumps({"written_by": f"ridgeline {_version()}", "kind": kind,
                                              "files": files}, indent=1) + "\n")
        _fsync(tmp)
        _replace_folder(tmp, path, owned)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _normal_permissions(folder: Path) -> None:
    """Files and folders written inside `folder` get the permissions of any new file under the umask (some writers
    create their files 0600)."""
    mask = _umask()
    for p in folder.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _replace_folder(tmp: Path, path: Path, owned: bool = False) -> None:
    """Put `tmp` at `path`; an old folder there (checked again: empty or ridgeline's) is moved aside, then removed."""
    old = None
    if path.exists() or path.is_symlink():
        if path.is_symlink() or not path.is_dir():
            raise RidgelineError(f"cannot write {path}: it is not a folder")
        if not owned:
            check_output(path, "folder", "output")
        old = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".old.tmp", dir=path.parent))
        os.rmdir(old)
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError:
        if old is not None:
            os.rename(old, path)  # put the previous output back
        raise
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _version() -> str:
    from ridgeline import __version__

    return __version__


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) for the block; if another process holds it, refuse
    at once naming that process (`what` says what the lock guards)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise RidgelineError(f"another ridgeline process (pid {holder}) is {what}; wait for it to finish") \
                from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# writing


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write text (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Atomically write JSON (indented, stable key order as given)."""
    return write_text(path, json.dumps(data, indent=2, default=_default) + "\n")


def _default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def deferred_sigint() -> Iterator[Callable[[], bool]]:
    """Turn the first Ctrl-C into a flag checked between steps (main thread only); restore the handler after."""
    hit = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hit.is_set
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        hit.set()
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C behaves as usual

    signal.signal(signal.SIGINT, handler)
    try:
        yield hit.is_set
    finally:
        signal.signal(signal.SIGINT, previous)
