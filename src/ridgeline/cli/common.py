"""What every command shares: the app, consoles, one-line errors, option parsers, progress and writing files.

Each command module does parse → one library call → render; the parsing helpers here turn option text into
typed values (a bad value is a RidgelineError naming the option), `command` (outcomes.py) turns RidgelineError into one
`error:` line with exit code 2 and Ctrl-C into exit code 130, `writing` turns an OS error on an output path
into a RidgelineError; progress lives in progress.py.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ridgeline.errors import RidgelineError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ridgeline: where the limit is (analytic roofline), how close real runs get, "
                       "and what each optimization buys.")
console = Console()
if not console.is_terminal:  # piped or captured output: wide enough for the per-operator tables
    console = Console(width=160)

from ridgeline.cli.outcomes import command, err_console, fail, note  # noqa: E402,F401 (re-exported for the commands)


def say(text: str, stderr: bool = False) -> None:
    """A plain line (not rich markup) on stdout, or stderr when stdout holds JSON."""
    (err_console if stderr else console).print(escape(text), highlight=False)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OS error while writing `path` (a folder, no permission, disk full) into a RidgelineError."""
    try:
        yield
    except OSError as exc:
        raise RidgelineError(f"cannot write {path}: {exc.strerror or exc}") from None


def check_outputs(**paths: tuple[Optional[Path], str]) -> None:
    """Refuse bad output paths before any work starts: option_name=(path or None, "file" | "folder" | "stem");
    underscores in the name become dashes (`out=...` checks --out)."""
    from ridgeline.io import check_outputs as check

    check({f"--{k.replace('_', '-')}": v for k, v in paths.items()})


def memory_limit_bytes(gib: Optional[float]) -> Optional[float]:
    """--memory-limit GiB as bytes; NaN, infinite, zero or negative values are refused."""
    if gib is None:
        return None
    if not (math.isfinite(gib) and gib > 0):
        raise RidgelineError(f"--memory-limit takes a finite number of GiB > 0, got {gib}")
    return gib * 2**30


def finite(obj: Any) -> Any:
    """The record with non-finite floats (an operator moving no bytes has infinite intensity) as null:
    `Infinity`/`NaN` are not JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    """Strict JSON text of a record (non-finite floats as null)."""
    return json.dumps(finite(obj), indent=2, allow_nan=False)


def write_record(path: Optional[Path], record: Any) -> None:
    """Write a JSON record atomically, if a path is given."""
    from ridgeline.io import write_json

    if path is not None:
        with writing(path):
            write_json(path, finite(record))


def csv_list(text: str, what: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']; an empty list is an error naming the option."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise RidgelineError(f"{what}: expected a comma-separated list, got {text!r}")
    return items


def int_list(text: str, what: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]."""
    try:
        return [int(t) for t in csv_list(text, what)]
    except ValueError:
        raise RidgelineError(f"{what}: expected comma-separated integers, got {text!r}") from None


def optional_list(text: Optional[str], what: str, kind: Callable[[str], Any]) -> list[Any]:
    """'a,b,none' -> [a, b, None]; no option -> [None]."""
    if text is None:
        return [None]
    out = []
    for item in csv_list(text, what):
        try:
            out.append(None if item.lower() == "none" else kind(item))
        except ValueError:
            raise RidgelineError(f"{what}: {item!r} is not a {kind.__name__} (or 'none')") from None
    return out


def layer_list(text: Optional[str]) -> list[Optional[int]]:
    """'2,8,all' -> [2, 8, None] (None: every layer); no option -> [None]."""
    if text is None:
        return [None]
    return [None if t.lower() == "all" else int_list(t, "--layers")[0] for t in csv_list(text, "--layers")]


def token_range(text: str, what: str) -> tuple[int, int]:
    """'MIN:MAX' (or 'N') -> (MIN, MAX) token counts."""
    lo, sep, hi = text.partition(":")
    try:
        return (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise RidgelineError(f"{what} must be MIN:MAX token counts, got {text!r}") from None


def variants(kv: Optional[str], window: Optional[str], kv_heads: Optional[str]) -> list:
    """The cross product of --kv, --window and --kv-heads comma lists (each may hold 'none') as Variants."""
    from ridgeline.arch import Variant

    return [Variant(k, w, g) for k in optional_list(kv, "--kv", str) for w in optional_list(window, "--window", int)
            for g in optional_list(kv_heads, "--kv-heads", int)]


def device_files(device_file: Optional[Path]) -> tuple[Path, ...]:
    """--device-file as the tuple the catalogue functions take."""
    return (device_file,) if device_file else ()


def read_results(path: Path) -> list[dict]:
    """The records of a `ridgeline bench --out` (or the demo's bench.json) file."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise RidgelineError(f"cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RidgelineError(f"{path} is not JSON; expected the output of `ridgeline bench --out`") from None
    if not isinstance(data, dict) or data.get("kind") != "ridgeline.bench.results":
        raise RidgelineError(f"{path} is not a ridgeline bench results file (kind 'ridgeline.bench.results')")
    return [r for key in ("results", "depth_sweep", "thread_sweep") for r in data.get(key, [])]


# option declarations shared by several commands
MODEL = typer.Option(..., "--model", "-m", help="config.json, model folder, .gguf file or catalogue id (`ridgeline models`)")
DEVICE = typer.Option(..., "--device", "-d", help="catalogue id (`ridgeline devices`), 'local' after `ridgeline probe`, or a TOML/JSON device file")
WEIGHTS = typer.Option(None, "--weights", "-w", help="weight format or llama.cpp recipe (bf16, q8_0, q4_k_m, int4_g128, mxfp4, bfp32m4, ...); default: as stored for GGUF, else bf16")
ACTS = typer.Option("bf16", "--acts", help="activation format (fp32, bf16, fp16, int8, ...)")
KV = typer.Option(None, "--kv", help="KV-cache format: a number format (bf16, fp16, q8_0, mxint8, bfp32m4, ...), "
                  "kivi2, kivi4 or kivi{b}_g{G}_r{R} (KIVI: b-bit groups of G, defaults 32 and 128, last R tokens "
                  "fp16), harmonia or harmonia_s{S}_r{R} (BFP: first S and last R tokens 8-bit mantissa, the rest "
                  "4-bit; defaults 32 and 128); default: the activation format")
COMPUTE = typer.Option(None, "--compute", help="dtype whose peak FLOP/s bounds compute (default: from --acts)")
ATTENTION = typer.Option("fused", "--attention", help="fused (flash-style, scores stay on chip) or unfused (scores written and read)")
TRAFFIC = typer.Option("unfused", "--act-traffic", help="activation traffic: unfused (every op, upper bound), block (a·s·(4h+2f) per layer), fused (none)")
LOGITS = typer.Option("last", "--logits", help="lm_head on the last position only (last) or every position (all)")
MLA_CACHE = typer.Option("latent", "--mla-cache", help="MLA KV cache: latent (d_c + d_r per token) or decompressed (as transformers holds it)")
MLA_DECODE = typer.Option("absorbed", "--mla-decode", help="MLA decode FLOPs: absorbed (weight absorption) or naive (materialised)")
CAUSAL = typer.Option(True, "--causal/--non-causal", help="count each query against its own prefix (default) or all keys")
DEVICE_FILE = typer.Option(None, "--device-file", help="extra devices from a TOML/JSON file")
SCENARIO = typer.Option("SISO", "--scenario", "-s", help="SISO, LISO, SILO, LILO or P:N (prompt:generated)")
BATCH = typer.Option(1, "--batch", "-b", help="sequences decoded together")
JSON = typer.Option(False, "--json", help="print the record as JSON instead of tables")
