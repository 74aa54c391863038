"""Distillation data: token sequences with the teacher's top-k logits cached once (DistillKit-style).

Sources (`DataConfig`):
- 'calib': random windows of `seq_len + 1` tokens from the corpus's calibration split (seeded);
- 'synthetic': continuations the teacher writes itself. Prompts are `prompt_tokens`-token windows of the
  calibration split; the teacher samples `seq_len + 1 − prompt_tokens` new tokens for each through the
  batched paged-KV engine (`ridgeline.engine.Engine`) with the recorded sampling settings (temperature,
  top-k, top-p, one seed per prompt). A continuation that stops early (EOS) is padded; its padding is masked.

Every sequence then goes through the teacher once: at each position its `topk` largest logits (raw, at
temperature 1) and their ids are kept, with the full log-sum-exp. Training never runs the teacher again.

Layout: `ids` [N, S + 1] (inputs ids[:, :-1], labels ids[:, 1:]), `mask` [N, S] (true where the label is a real
token), `top_ids` int32 [N, S, k], `top_logits` float32 [N, S, k], `lse` float32 [N, S], `source` [N] (0 calib,
1 synthetic). Held-out evaluation windows (`heldout_targets`) have the same layout from the corpus's eval split,
with the teacher's exact top-k log-probabilities.

Files: one safetensors file per set plus a JSON sidecar with the settings that made it; both written
atomically. A cached set is reused only when its settings (teacher, tokenizer, sizes, sampling) match.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ridgeline.errors import RidgelineError
from ridgeline.io import atomic_path, write_json

Progress = Callable[[str, int, int], None]  # (what, done, total)
CALIB, SYNTHETIC = 0, 1


@dataclass(frozen=True)
class SamplingConfig:
    """How the teacher writes synthetic continuations."""

    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    """What the KD data set holds: calibration windows, synthetic continuations, and the teacher's top-k."""

    calib: int = 64  # calibration-split windows
    synthetic: int = 0  # teacher continuations
    seq_len: int = 128  # positions trained per sequence (each sequence holds seq_len + 1 tokens)
    prompt_tokens: int = 32  # synthetic: prompt length (the rest of the sequence is generated)
    topk: int = 64  # teacher logits kept per position
    seed: int = 0
    sampling: SamplingConfig = SamplingConfig()

    def __post_init__(self) -> None:
        for name in ("calib", "synthetic"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise RidgelineError(f"data: {name} must be an integer >= 0 sequences, got {v!r}")
        if self.calib + self.synthetic == 0:
            raise RidgelineError("data: no sequences (calib and synthetic are both 0)")
        if not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise RidgelineError(f"data: seq_len must be an integer >= 2, got {self.seq_len!r}")
        if self.synthetic and not 1 <= self.prompt_tokens < self.seq_len:
            raise RidgelineError(f"data: prompt_tokens must be in [1, seq_len - 1 = {self.seq_len - 1}], "
                                 f"got {self.prompt_tokens}")
        if not isinstance(self.topk, int) or self.topk < 1:
            raise RidgelineError(f"data: topk must be an integer >= 1, got {self.topk!r}")

    def to_json(self) -> dict:
        """JSON form."""
        return asdict(self)


@dataclass
class KDData:
    """Sequences with the teacher's cached top-k logits (see the module docstring for the layout)."""

    ids: torch.Tensor
    mask: torch.Tensor
    top_ids: torch.Tensor
    top_logits: torch.Tensor
    lse: torch.Tensor
    source: torch.Tensor
    info: dict

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def tokens(self) -> int:
        """Target tokens (mask true)."""
        return int(self.mask.sum())

    def top_logprobs(self) -> torch.Tensor:
        """The teacher's exact log-probabilities of its top-k ids (temperature 1)."""
        return self.top_logits - self.lse.unsqueeze(-1)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors by name, as saved."""
        return {"ids": self.ids, "mask": self.mask, "top_ids": self.top_ids, "top_logits": self.top_logits,
                "lse": self.lse, "source": self.source}


def tokenize_split(tokenizer: Any, split: str) -> torch.Tensor:
    """The corpus split ('calib' or 'eval') as one 1-D stream of token ids (no special tokens)."""
    from ridgeline.corpus import load_corpus

    return torch.tensor(tokenizer(load_corpus(split).text, add_special_tokens=False, verbose=False)["input_ids"],
                        dtype=torch.long)


def random_windows(stream: torch.Tensor, n: int, length: int, seed: int) -> torch.Tensor:
    """[n, length] windows of `stream` at seeded random offsets."""
    if stream.numel() < length + 1:
        raise RidgelineError(f"the text has {stream.numel()} tokens; windows of {length} need more")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - length, (n,), generator=gen)
    return torch.stack([stream[s:s + length] for s in starts.tolist()]) if n else stream.new_zeros(0, length)


def spread_windows(stream: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """[n, length] windows at evenly spaced offsets over the whole stream (every part of the text represented)."""
    if n < 1 or stream.numel() < n * length:
        raise RidgelineError(f"the held-out text has {stream.numel()} tokens; {n} windows of {length} need more")
    step = (stream.numel() - length) // (n - 1) if n > 1 else 0
    return torch.stack([stream[i * step:i * step + length] for i in range(n)])


def between_windows(stream: torch.Tensor, n_spread: int, length: int, n: int) -> torch.Tensor:
    """[n, length] windows starting halfway between consecutive `spread_windows(stream, n_spread, length)`, evenly
    chosen: disjoint from those when their spacing is at least 2·length (a validation set beside a test set)."""
    if n_spread < 2 or not 1 <= n < n_spread:
        raise RidgelineError(f"between_windows needs 1 <= n < n_spread and n_spread >= 2, got n={n}, n_spread={n_spread}")
    step = (stream.numel() - length) // (n_spread - 1)
    if step < 2 * length:
        raise RidgelineError(f"the text has {stream.numel()} tokens: too few for {n_spread} + {n} disjoint windows of {length}")
    mids = [i * step + step // 2 for i in range(n_spread - 1)]
    picks = [mids[round(j * (len(mids) - 1) / max(1, n - 1))] for j in range(n)] if n > 1 else [mids[len(mids) // 2]]
    return torch.stack([stream[s:s + length] for s in picks])


def generate_synthetic(teacher: Any, prompts: torch.Tensor, new_tokens: int, sampling: SamplingConfig,
                       pad_id: int, progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Teacher continuations of `prompts` [n, P] through the paged engine -> (ids [n, P + new], valid [n, P + new], info)."""
    from ridgeline.engine import Engine, EngineConfig, SamplingParams

    n, P = prompts.shape
    total = P + new_tokens
    block = 16
    blocks = n * (-(-total // block)) + 8  # every sequence at full length at once, and a margin
    engine = Engine(teacher, EngineConfig(num_blocks=blocks, block_size=block, max_batched_tokens=512,
                                          max_num_seqs=max(1, n)))
    params = [SamplingParams(max_tokens=new_tokens, temperature=sampling.temperature, top_k=sampling.top_k,
                             top_p=sampling.top_p, seed=sampling.seed * 100003 + i) for i in range(n)]
    rids = [engine.add_request(prompts[i].tolist(), params[i], request_id=f"s{i}") for i in range(n)]
    done, want = 0, n * new_tokens
    for out in engine.stream():
        done += len(out.token_ids)
        if progress is not None and done % 64 == 0:
            progress("synthetic data", done, want)
    ids = torch.full((n, total), pad_id, dtype=torch.long)
    valid = torch.zeros(n, total, dtype=torch.bool)
    reasons = []
    for i, rid in enumerate(rids):
        c = engine.completion(rid)
        seq = list(c.prompt_ids) + list(c.token_ids)
        ids[i, :len(seq)] = torch.tensor(seq)
        valid[i, :len(seq)] = True
        reasons.append(c.finish_reasons[0])
    steps = engine.stats
    info = {"sampling": asdict(sampling), "prompts": n, "prompt_tokens": P, "new_tokens": new_tokens,
            "generated_tokens": int(valid.sum()) - n * P, "stopped_early": sum(r == "stop" for r in reasons),
            "engine": {"steps": len(steps), "seconds": sum(s.seconds for s in steps),
                       "preemptions": engine.preemptions, "num_blocks": blocks, "block_size": block}}
    return ids, valid, info


def teacher_topk(teacher: Any, ids: torch.Tensor, k: int, batch_size: int = 4,
                 progress: Progress | None = None, what: str = "teacher logits") -> tuple[torch.Tensor, ...]:
    """The teacher's top-k (ids int32, logits) and full log-sum-exp at every input position of `ids` [N, S]."""
    N, S = ids.shape
    top_ids = torch.empty(N, S, k, dtype=torch.int32)
    top_logits = torch.empty(N, S, k, dtype=torch.float32)
    lse = torch.empty(N, S, dtype=torch.float32)
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.inference_mode():
            for start in range(0, N, batch_size):
                logits = teacher(input_ids=ids[start:start + batch_size].to(device), use_cache=False).logits.float()
                values, index = torch.topk(logits, k, dim=-1)
                top_ids[start:start + batch_size] = index.to(torch.int32).cpu()
                top_logits[start:start + batch_size] = values.cpu()
                lse[start:start + batch_size] = logits.logsumexp(-1).cpu()
                if progress is not None:
                    progress(what, min(start + batch_size, N), N)
    finally:
        teacher.train(was_training)
    return top_ids, top_logits, lse


def build_kd_data(teacher: Any, tokenizer: Any, config: DataConfig, vocab: int | None = None,
                  progress: Progress | None = None, calib_ids: torch.Tensor | None = None) -> KDData:
    """Calibration windows and synthetic continuations with the teacher's cached top-k (`vocab`: logits kept).

    `calib_ids`: the calibration token stream (default: the corpus's calibration split, tokenized)."""
    stream = tokenize_split(tokenizer, "calib") if calib_ids is None else calib_ids
    L = config.seq_len + 1
    parts, valid, source = [], [], []
    info: dict[str, Any] = {"config": config.to_json(), "calib_split_tokens": int(stream.numel())}
    if config.calib:
        calib = random_windows(stream, config.calib, L, config.seed)
        parts.append(calib)
        valid.append(torch.ones_like(calib, dtype=torch.bool))
        source += [CALIB] * config.calib
    if config.synthetic:
        # prompts from other offsets than the calibration windows (another seed)
        prompts = random_windows(stream, config.synthetic, config.prompt_tokens, config.seed + 7919)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ids, ok, info["synthetic"] = generate_synthetic(teacher, prompts, L - config.prompt_tokens, config.sampling,
                                                        int(pad or 0), progress)
        parts.append(ids)
        valid.append(ok)
        source += [SYNTHETIC] * config.synthetic
    ids = torch.cat(parts)
    ok = torch.cat(valid)
    top_ids, top_logits, lse = teacher_topk(_vocab_limited(teacher, vocab), ids[:, :-1], config.topk,
                                            progress=progress)
    return KDData(ids, ok[:, 1:] & ok[:, :-1], top_ids, top_logits, lse, torch.tensor(source, dtype=torch.int8), info)


def heldout_targets(teacher: Any, tokenizer: Any, windows: int, length: int, topk: int,
                    vocab: int | None = None, progress: Progress | None = None,
                    eval_ids: torch.Tensor | None = None, between: int | None = None) -> KDData:
    """Evenly spread held-out windows with the teacher's top-k and log-sum-exp (for ppl and KL at every stage).

    `eval_ids`: the held-out token stream (default: the corpus's eval split, tokenized); `between`: place the
    windows between those of a `between`-window set instead (validation windows disjoint from the test windows)."""
    stream = tokenize_split(tokenizer, "eval") if eval_ids is None else eval_ids
    ids = (spread_windows(stream, windows, length + 1) if between is None
           else between_windows(stream, between, length + 1, windows))
    top_ids, top_logits, lse = teacher_topk(_vocab_limited(teacher, vocab), ids[:, :-1], topk, progress=progress,
                                            what="teacher held-out logits")
    info = {"windows": windows, "length": length, "topk": topk, "eval_split_tokens": int(stream.numel()),
            "placement": "evenly spaced over the held-out split" if between is None else
            f"halfway between the {between} evaluation windows of the held-out split"}
    return KDData(ids, torch.ones(windows, length, dtype=torch.bool), top_ids, top_logits, lse,
                  torch.full((windows,), CALIB, dtype=torch.int8), info)


class _VocabLimited(torch.nn.Module):
    """The teacher with its logits cut to the first `vocab` ids (the shared vocabulary when padding differs)."""

    def __init__(self, model: Any, vocab: int) -> None:
        super().__init__()
        self.model, self.vocab = model, vocab

    def forward(self, **kwargs: Any) -> Any:
        out = self.model(**kwargs)
        out.logits = out.logits[..., :self.vocab]
        return out


def _vocab_limited(teacher: Any, vocab: int | None) -> Any:
    size = teacher.get_output_embeddings().weight.shape[0]
    return teacher if vocab is None or vocab >= size else _VocabLimited(teacher, vocab)


def save_kd_data(data: KDData, path: str | Path, fingerprint: dict) -> Path:
    """Write the tensors (safetensors) and a JSON sidecar (info + fingerprint), each atomically."""
    from safetensors.torch import save

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(save({k: v.contiguous() for k, v in data.tensors().items()}))  # keeps the temp file's mode
    write_json(path.with_suffix(".json"), {"fingerprint": fingerprint, "info": data.info})
    return path


def read_kd_data(path: str | Path) -> KDData:
    """A saved set, whatever made it (search trials read the files the pipeline wrote)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise RidgelineError(f"no KD data at {path}")
    side = path.with_suffix(".json")
    info = json.loads(side.read_text()).get("info", {}) if side.is_file() else {}
    t = load_file(str(path))
    return KDData(t["ids"], t["mask"].bool(), t["top_ids"], t["top_logits"], t["lse"], t["source"], info)


def load_kd_data(path: str | Path, fingerprint: dict) -> KDData | None:
    """The cached set at `path` if its fingerprint matches, else None."""
    path, side = Path(path), Path(path).with_suffix(".json")
    if not path.is_file() or not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("fingerprint") != json.loads(json.dumps(fingerprint)):
        return None
    return read_kd_data(path)


def batch_order(n: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """The sequence indices of every step: epochs of seeded permutations, cut into batches (a pure function)."""
    per_epoch = max(1, n // batch_size)  # drop the ragged end of an epoch: every batch is full
    order = []
    for epoch in range(math.ceil(steps / per_epoch)):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch)).tolist()
        order += [perm[i * batch_size:(i + 1) * batch_size] for i in range(per_epoch)]
    return order[:steps]
