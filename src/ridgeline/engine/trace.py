"""Request traces for serving benchmarks: a JSON-lines file, or synthetic Poisson arrivals.

One request per line, a JSON object with
  "arrival"      seconds after the start (>= 0; default 0),
  "prompt"       text, or "prompt_ids" token ids, or "prompt_len" (that many tokens of the bundled prose),
  "max_tokens"   tokens to generate (>= 1),
and optionally "temperature", "top_p", "top_k", "seed", "n", "ignore_eos" (default true: lengths as given).

Limits (a trace is replayed in real time, and every request is held in memory): arrivals within a day
(`MAX_ARRIVAL_S`), at most `MAX_TOKENS` prompt or generated tokens per request, at most `MAX_SAMPLES` parallel
samples, token ids below 2**31 (the model's vocabulary is checked when it is known), seeds in [0, 2**63),
temperature finite in [0, `MAX_TEMPERATURE`], at most `MAX_REQUESTS` requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ridgeline.engine.engine import SamplingParams
from ridgeline.errors import RidgelineError

_SAMPLING = {"temperature": float, "top_p": float, "top_k": int, "seed": int, "n": int, "ignore_eos": bool}
_KEYS = {"arrival", "prompt", "prompt_ids", "prompt_len", "max_tokens", "id"} | set(_SAMPLING)
MAX_ARRIVAL_S = 86_400.0
MAX_TOKENS = 1 << 20
MAX_SAMPLES = 256
MAX_TOKEN_ID = (1 << 31) - 1
MAX_TEMPERATURE = 100.0
MAX_REQUESTS = 1 << 20
#: (lowest, highest) of each numeric sampling field
_RANGES = {"temperature": (0.0, MAX_TEMPERATURE), "top_p": (0.0, 1.0), "top_k": (0, MAX_TOKEN_ID),
           "seed": (0, 2**63 - 1), "n": (1, MAX_SAMPLES)}


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: when it arrives, its prompt (text, ids or a length) and sampling."""

    arrival: float
    max_tokens: int
    prompt: str | None = None
    prompt_ids: tuple[int, ...] | None = None
    prompt_len: int | None = None
    sampling: tuple[tuple[str, Any], ...] = ()
    request_id: str | None = None

    def params(self) -> SamplingParams:
        """The request's sampling parameters (lengths exact unless ignore_eos is false)."""
        kw = {"ignore_eos": True, **dict(self.sampling)}
        return SamplingParams(max_tokens=self.max_tokens, **kw)

    def to_json(self) -> dict:
        """The trace line of this request."""
        d: dict[str, Any] = {"arrival": self.arrival, "max_tokens": self.max_tokens}
        for k in ("prompt", "prompt_len", "request_id"):
            if getattr(self, k) is not None:
                d["id" if k == "request_id" else k] = getattr(self, k)
        if self.prompt_ids is not None:
            d["prompt_ids"] = list(self.prompt_ids)
        d.update(dict(self.sampling))
        return d


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{what} must be an integer >= {lo} and <= {hi}, got {v!r}")
    return v


def parse_request(obj: Any) -> TraceRequest:
    """One trace line's JSON value -> TraceRequest (ValueError naming the bad field)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - _KEYS
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(_KEYS))}")
    given = [k for k in ("prompt", "prompt_ids", "prompt_len") if k in obj]
    if len(given) != 1:
        raise ValueError("give exactly one of prompt, prompt_ids, prompt_len")
    arrival = obj.get("arrival", 0.0)
    if isinstance(arrival, bool) or not isinstance(arrival, (int, float)) or not 0 <= arrival <= MAX_ARRIVAL_S:
        raise ValueError(f"arrival must be a number of seconds from 0 to {MAX_ARRIVAL_S:.0f} (a day), got {arrival!r}")
    if "max_tokens" not in obj:
        raise ValueError("max_tokens is missing")
    kw: dict[str, Any] = {"arrival": float(arrival), "max_tokens": _int(obj["max_tokens"], "max_tokens", 1, MAX_TOKENS)}
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"]:
            raise ValueError("prompt must be a non-empty string")
        kw["prompt"] = obj["prompt"]
    elif "prompt_ids" in obj:
        ids = obj["prompt_ids"]
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_TOKENS:
            raise ValueError(f"prompt_ids must be a list of 1 to {MAX_TOKENS} token ids")
        kw["prompt_ids"] = tuple(_int(t, "prompt_ids entries", 0, MAX_TOKEN_ID) for t in ids)
    else:
        kw["prompt_len"] = _int(obj["prompt_len"], "prompt_len", 1, MAX_TOKENS)
    sampling = []
    for k, typ in _SAMPLING.items():
        if k in obj:
            v = obj[k]
            if (typ is bool) != isinstance(v, bool) or not isinstance(v, (int, float) if typ is float else typ):
                raise ValueError(f"{k} must be {typ.__name__}, got {v!r}")
            lo, hi = _RANGES.get(k, (None, None))
            if lo is not None and not lo <= v <= hi:  # NaN fails this too
                raise ValueError(f"{k} must be a finite {typ.__name__} from {lo} to {hi}, got {v!r}")
            sampling.append((k, typ(v)))
    if "id" in obj:
        kw["request_id"] = str(obj["id"])
    req = TraceRequest(sampling=tuple(sampling), **kw)
    try:
        req.params()
    except RidgelineError as exc:
        raise ValueError(str(exc)) from None
    return req


def load_trace(path: str | Path) -> list[TraceRequest]:
    """Read a JSON-lines trace (bounded: size, nesting, numbers); a malformed line raises RidgelineError naming the
    file and line."""
    from ridgeline.inputs import read_json_lines

    p = Path(path)
    out = []
    for i, obj in read_json_lines(p, "trace"):
        try:
            out.append(parse_request(obj))
        except ValueError as exc:
            raise RidgelineError(f"{p} line {i}: {exc}") from None
        if len(out) > MAX_REQUESTS:
            raise RidgelineError(f"trace {p} has more than {MAX_REQUESTS} requests")
    if not out:
        raise RidgelineError(f"trace {p} has no requests; expected one JSON object per line")
    return out


def check_trace(trace: Sequence[TraceRequest], vocab: int | None, max_position: int | None) -> None:
    """Refuse, before a model loads, token ids outside the vocabulary and requests longer than the model's
    positions (prompt_len and prompt_ids requests; text prompts are checked once tokenized)."""
    for i, r in enumerate(trace):
        what = f"request {r.request_id or i + 1}"
        if vocab is not None and r.prompt_ids is not None and max(r.prompt_ids) >= vocab:
            raise RidgelineError(f"{what}: prompt_ids holds token {max(r.prompt_ids)}, outside the model's "
                                 f"vocabulary of {vocab} tokens (ids 0 to {vocab - 1})")
        n = len(r.prompt_ids) if r.prompt_ids is not None else r.prompt_len
        if max_position is not None and n is not None and n + r.max_tokens > max_position:
            raise RidgelineError(f"{what}: prompt {n} + max_tokens {r.max_tokens} = {n + r.max_tokens} tokens "
                                 f"exceed the model's {max_position} positions")


def synthetic_trace(n: int, rate: float, prompt_len: tuple[int, int] = (32, 512),
                    output_len: tuple[int, int] = (16, 128), seed: int = 0) -> list[TraceRequest]:
    """`n` requests with Poisson arrivals at `rate` per second (inf: all at 0) and log-uniform mixed lengths."""
    if not 1 <= n <= MAX_REQUESTS:
        raise RidgelineError(f"a synthetic trace needs 1 to {MAX_REQUESTS} requests, got {n}")
    if not rate > 0:
        raise RidgelineError(f"the arrival rate must be > 0 requests per second, got {rate}")
    if not 0 <= seed < 2**63:
        raise RidgelineError(f"the seed must be in [0, 2**63), got {seed}")
    if math.isfinite(rate) and n / rate > MAX_ARRIVAL_S:
        raise RidgelineError(f"{n} requests at {rate:g} per second arrive over about {n / rate:.0f} s, more than "
                             f"the {MAX_ARRIVAL_S:.0f} s (a day) a trace may span; raise the rate")
    for name, (lo, hi) in (("prompt length", prompt_len), ("output length", output_len)):
        if not 1 <= lo <= hi <= MAX_TOKENS:
            raise RidgelineError(f"{name} range needs 1 <= min <= max <= {MAX_TOKENS}, got {lo}..{hi}")
    g = torch.Generator().manual_seed(seed)

    def lengths(lo: int, hi: int) -> list[int]:
        # log-uniform: many short requests and a tail of long ones, as in chat traces
        u = torch.rand(n, generator=g, dtype=torch.float64)
        return [min(hi, int(math.exp(math.log(lo) + x * (math.log(hi + 1) - math.log(lo))))) for x in u.tolist()]

    gaps = torch.empty(n, dtype=torch.float64).exponential_(1.0, generator=g) / rate if math.isfinite(rate) \
        else torch.zeros(n, dtype=torch.float64)
    arrivals = (gaps.cumsum(0) - gaps[0]).tolist()  # the first request arrives at 0
    return [TraceRequest(round(a, 6), o, prompt_len=p, request_id=f"r{i}")
            for i, (a, p, o) in enumerate(zip(arrivals, lengths(*prompt_len), lengths(*output_len)))]


def prompt_tokens(req: TraceRequest, encode: Callable[[str], list[int]], corpus: Sequence[int],
                  offset: int = 0) -> list[int]:
    """The prompt ids of a request; `prompt_len` prompts are cut from `corpus` starting at `offset`."""
    if req.prompt_ids is not None:
        return list(req.prompt_ids)
    if req.prompt is not None:
        ids = encode(req.prompt)
        if not ids:
            raise RidgelineError(f"request {req.request_id}: the prompt encodes to no tokens")
        return ids
    start = offset % len(corpus)
    return [corpus[(start + i) % len(corpus)] for i in range(req.prompt_len)]
