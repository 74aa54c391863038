"""Medusa-1 heads on a frozen base model: the modules, their accuracy, and saving / loading them for one base.

Conventions. The base's lm_head predicts token t+1 from the post-norm hidden state h_t (the input of lm_head).
Head k (k = 1..K; index k-1 in code) predicts token t+1+k from the same h_t:
    logits_k = W_k · ResBlock_k(h_t),   ResBlock(x) = x + SiLU(A x + b),
with A and b zero-initialised, so a fresh head is the identity followed by the projection. W_k is the base's own
lm_head weight, shared by every head (default: K untied 576 x 49,152 heads would outweigh SmolLM2-135M), or a
per-head copy that trains with the head (`tied=False`). A fresh head therefore predicts exactly what the base
predicts for t+1: its logits are lm_head(h_t). Every head (and every ResBlock in it) is a separate module.

Draft vocabulary (frequency-ranked drafting, as in FR-Spec): a head only has to rank candidates, so its
projection can be restricted to the tokens the base actually produces — the most frequent tokens of the
calibration text and of the training targets (`draft_vocab`, default 8192 ids; `restrict`). Each step then streams
a [V', d] slice of the projection instead of the whole [V, d] lm_head (SmolLM2: 49,152 rows, 113 MB in fp32), and
training computes its cross-entropy over the same V' classes (a target outside them is masked), 6x cheaper. A
base token outside the slice is never drafted (the coverage is recorded). Verification always uses the base's
full vocabulary, so greedy decoding stays lossless.

Rank accuracy a[k][r]: the fraction of positions where head k's rank-r candidate (r = 0: its argmax) is the
base's greedy token at t+1+k (the base's argmax at position t+k); top-n accuracy is the sum over r < n. The tree
search (`ridgeline.engine.tree`) reads it.

On disk (a folder): `heads.safetensors` (the ResBlocks, plus the projections when untied; never the shared
lm_head) and `medusa.json`, the manifest: heads, layers, tied, the base it was trained for (name, model type,
hidden size, vocabulary, layers and `weights_sha256`, a content hash of the base's weights), training settings,
losses and rank accuracies. Loading checks the base (hidden size, vocabulary, hash) and refuses another one. The
hash is sha256 over every parameter (name, shape, values rounded to bf16), so the same weights loaded in fp32 or
bf16 hash alike; any other change of the weights (fine-tuning, quantization) changes it. The draft vocabulary is
the `draft_vocab` tensor of the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ridgeline.errors import RidgelineError
from ridgeline.io import atomic_folder

MANIFEST = "medusa.json"
WEIGHTS = "heads.safetensors"
VOCAB_KEY = "draft_vocab"  # the draft vocabulary's token ids in WEIGHTS (not a parameter)
KIND = "ridgeline.medusa"
#: bounds on the head structure (more would never pay at batch 1 on a CPU)
MAX_HEADS, MAX_LAYERS = 16, 8


class ResBlock(nn.Module):
    """x + SiLU(A x + b), A and b zero-initialised: a fresh block is the identity."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + SiLU(A x + b)."""
        return x + F.silu(self.linear(x))


def check_structure(heads: Any, layers: Any) -> None:
    """RidgelineError unless 1 <= heads <= MAX_HEADS and 1 <= layers <= MAX_LAYERS (integers)."""
    for name, v, hi in (("heads", heads, MAX_HEADS), ("layers per head", layers, MAX_LAYERS)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise RidgelineError(f"Medusa {name} must be an integer from 1 to {hi}, got {v!r}")


class MedusaHeads(nn.Module):
    """K Medusa-1 heads: per head, `layers` ResBlocks then the vocabulary projection (shared lm_head or its own)."""

    def __init__(self, hidden: int, vocab: int, num_heads: int, layers: int = 1, tied: bool = True) -> None:
        super().__init__()
        check_structure(num_heads, layers)
        self.hidden_size, self.vocab_size, self.num_layers, self.tied = hidden, vocab, layers, tied
        # separate modules for every head and block (never `[block] * n`, which would share one)
        self.blocks = nn.ModuleList(nn.Sequential(*(ResBlock(hidden) for _ in range(layers)))
                                    for _ in range(num_heads))
        self.projs = None if tied else nn.ModuleList(nn.Linear(hidden, vocab, bias=False) for _ in range(num_heads))
        self.lm_head: torch.Tensor | None = None  # the base's projection [vocab, hidden]; not a parameter of the heads
        self.draft_vocab: torch.Tensor | None = None  # token ids heads draft from (None: the whole vocabulary)
        self._draft_w: list[torch.Tensor] = []  # the projection rows of draft_vocab (one tensor, or one per head)
        self._packed: Any = None  # the tied draft projection on a native kernel (`pack_projection`), or None
        self.packed_format: str | None = None  # its format

    @property
    def num_heads(self) -> int:
        """K."""
        return len(self.blocks)

    def attach(self, lm_head: torch.Tensor, init_untied: bool = False) -> MedusaHeads:
        """Use the base's lm_head weight [vocab, hidden] as the shared projection (and, for fresh untied heads
        with `init_untied`, as every head's initial projection)."""
        if tuple(lm_head.shape) != (self.vocab_size, self.hidden_size):
            raise RidgelineError(f"the base's lm_head is {tuple(lm_head.shape)}; these heads need "
                                 f"({self.vocab_size}, {self.hidden_size})")
        self.lm_head = lm_head.detach()  # a plain tensor: never a parameter (or state) of the heads
        if init_untied and self.projs is not None:
            with torch.no_grad():
                for proj in self.projs:
                    proj.weight.copy_(lm_head)
        return self

    def restrict(self, vocab: torch.Tensor | None) -> MedusaHeads:
        """Draft only from these token ids (None: the whole vocabulary); copies their projection rows once."""
        self._packed = self.packed_format = None  # packed from the old rows: pack again after restricting
        if vocab is None:
            self.draft_vocab, self._draft_w = None, []
            return self
        vocab = torch.as_tensor(vocab, dtype=torch.long).reshape(-1)
        if vocab.numel() == 0 or int(vocab.min()) < 0 or int(vocab.max()) >= self.vocab_size:
            raise RidgelineError(f"a draft vocabulary needs token ids in [0, {self.vocab_size})")
        self.draft_vocab = vocab
        with torch.no_grad():
            if self.projs is None:
                if self.lm_head is None:
                    raise RidgelineError("attach the base's lm_head before restricting tied heads")
                self._draft_w = [self.lm_head[vocab].contiguous()]
            else:
                self._draft_w = [p.weight.detach()[vocab].contiguous() for p in self.projs]
        return self

    def pack_projection(self, fmt: str = "bf16") -> MedusaHeads:
        """Draft through a native packed copy of the tied projection (the draft vocabulary's rows, or lm_head) in
        `fmt`: a step then streams those rows at the native kernel's rate instead of torch's. Drafting only ranks
        candidates and verification uses the base's own logits, so greedy decoding stays lossless. RidgelineError
        where the native kernels are unavailable or the heads are untied."""
        from ridgeline.kernels import PackedLinear  # function level: the kernels load their library on import

        if self.projs is not None:
            raise RidgelineError("only tied heads share one projection to pack")
        w = self._draft_w[0] if self.draft_vocab is not None else self.lm_head
        if w is None:
            raise RidgelineError("attach the base's lm_head before packing the projection")
        self._packed, self.packed_format = PackedLinear.from_float(w, fmt), fmt
        return self

    def draft_logits(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """Head k's (0-based) logits over its draft vocabulary (the whole vocabulary without one) [..., V'].
        Training untied heads gathers the rows from the projection (gradients reach them); otherwise the copies
        `restrict` made are used (call it again after training untied heads)."""
        if self._packed is not None and not self.training:
            return self._packed(z)
        if self.draft_vocab is None:
            return self.project(z, k)
        if self.projs is not None and self.training:
            return F.linear(z, self.projs[k].weight[self.draft_vocab])
        w = self._draft_w[k if self.projs is not None else 0]
        return F.linear(z.to(w.dtype), w)

    def candidates(self, z: torch.Tensor, k: int, n: int) -> torch.Tensor:
        """Head k's (0-based) n most likely token ids from its block output z [..., hidden] (within the draft
        vocabulary when one is set)."""
        top = self.draft_logits(z, k).topk(n, dim=-1).indices
        return top if self.draft_vocab is None else self.draft_vocab[top]

    def draft_index(self, labels: torch.Tensor) -> torch.Tensor:
        """Token ids -> their index in the draft vocabulary (IGNORE = -100 outside it, and for negative labels)."""
        if self.draft_vocab is None:
            return labels
        table = torch.full((self.vocab_size,), -100, dtype=torch.long)
        table[self.draft_vocab] = torch.arange(self.draft_vocab.numel())
        return torch.where(labels >= 0, table[labels.clamp(min=0)], torch.full_like(labels, -100))

    def project(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """Head k's (0-based) vocabulary logits of its block output z [..., hidden]."""
        if self.projs is not None:
            return self.projs[k](z)
        if self.lm_head is None:
            raise RidgelineError("tied Medusa heads need the base's lm_head: call attach(model.lm_head.weight)")
        return F.linear(z, self.lm_head)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of every head [..., K, vocab] from post-norm hidden states h [..., hidden]."""
        return torch.stack([self.project(block(h), k) for k, block in enumerate(self.blocks)], dim=-2)

    @torch.inference_mode()
    def topk(self, hidden: torch.Tensor, k: int, depth: int | None = None) -> torch.Tensor:
        """[depth, k] token ids: the top-k candidates of heads 1..depth (default all) from one hidden state [hidden]."""
        depth = self.num_heads if depth is None else depth
        h = hidden.reshape(1, -1).to(self.blocks[0][0].linear.weight.dtype)
        z = torch.cat([self.blocks[j](h) for j in range(depth)])  # [depth, hidden]
        if self.projs is None:  # one [depth, hidden] x [hidden, vocab] product for every head
            return self.candidates(z, 0, k)
        return torch.stack([self.candidates(z[j], j, k) for j in range(depth)])


@torch.inference_mode()
def rank_accuracy(heads: MedusaHeads, hidden: torch.Tensor, labels: torch.Tensor, ranks: int = 10,
                  batch: int = 256) -> torch.Tensor:
    """a[k][r] [K, ranks]: how often head k's rank-r candidate (within its draft vocabulary, if restricted) equals
    its label, over positions with one.

    `hidden` [N, hidden] post-norm states; `labels` [N, K] the base's greedy token at t+1+k, -100 where unknown.
    """
    K = heads.num_heads
    if labels.shape != (hidden.shape[0], K):
        raise RidgelineError(f"labels must be [{hidden.shape[0]}, {K}], got {tuple(labels.shape)}")
    hits = torch.zeros(K, ranks, dtype=torch.float64)
    counts = torch.zeros(K, dtype=torch.float64)
    for s in range(0, hidden.shape[0], batch):
        h, y = hidden[s:s + batch], labels[s:s + batch]
        for k, block in enumerate(heads.blocks):
            valid = y[:, k] >= 0
            if not bool(valid.any()):
                continue
            top = heads.candidates(block(h[valid].to(block[0].linear.weight.dtype)), k, ranks)
            hits[k] += (top == y[valid, k:k + 1]).sum(0).double()
            counts[k] += float(valid.sum())
    return hits / counts.clamp(min=1)[:, None]


def frequent_tokens(labels: torch.Tensor, vocab_size: int, n: int, extra: torch.Tensor | None = None) -> torch.Tensor:
    """The (at most) n most frequent token ids among `labels` and `extra` (more tokens to count, e.g. a corpus
    stream; negative ids ignored), ascending; ties by id."""
    counts = torch.bincount(labels[labels >= 0].reshape(-1), minlength=vocab_size)
    if extra is not None:
        counts += torch.bincount(extra[extra >= 0].reshape(-1), minlength=vocab_size)
    order = torch.sort(counts, descending=True, stable=True).indices
    keep = order[:min(n, int((counts > 0).sum()))]
    return torch.sort(keep).values


def coverage(vocab: torch.Tensor | None, labels: torch.Tensor) -> float:
    """Fraction of the (non-negative) labels inside `vocab` (1 without one)."""
    valid = labels[labels >= 0]
    if vocab is None or valid.numel() == 0:
        return 1.0
    return float(torch.isin(valid, vocab).float().mean())


def weights_hash(model: nn.Module) -> str:
    """sha256 over every parameter of `model` (name, shape, values rounded to bf16): see the module docstring."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        t = p.detach()
        if t.is_floating_point():
            t = t.to(torch.bfloat16).view(torch.int16)
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def base_info(model: nn.Module) -> dict[str, Any]:
    """What heads record of their base: name, model type, hidden size, vocabulary, layers, weights hash."""
    weight = model.lm_head.weight
    source = getattr(model, "ridgeline_source", None)
    name = getattr(source, "name", None) or getattr(model.config, "_name_or_path", "") or type(model).__name__
    return {"name": name, "model_type": getattr(model.config, "model_type", None),
            "hidden_size": int(weight.shape[1]), "vocab_size": int(weight.shape[0]),
            "layers": int(getattr(model.config, "num_hidden_layers", 0)), "weights_sha256": weights_hash(model)}


def save_heads(heads: MedusaHeads, out: str | os.PathLike, base: dict[str, Any],
               extra: dict[str, Any] | None = None) -> Path:
    """Write heads.safetensors and medusa.json to `out` atomically; return the folder."""
    from safetensors.torch import save_file

    out = Path(out)
    state = {k: v.detach().contiguous() for k, v in heads.state_dict().items()}
    if heads.draft_vocab is not None:
        state[VOCAB_KEY] = heads.draft_vocab.contiguous()
    manifest = {"kind": KIND, "version": 1, "heads": heads.num_heads, "layers": heads.num_layers, "tied": heads.tied,
                "hidden_size": heads.hidden_size, "vocab_size": heads.vocab_size,
                "dtype": str(next(iter(state.values())).dtype).removeprefix("torch."),
                "draft_vocab": None if heads.draft_vocab is None else int(heads.draft_vocab.numel()),
                "offsets": "head k (1..K) predicts token t+1+k from the post-norm hidden state at t",
                "base": base, **(extra or {})}
    with atomic_folder(out) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "producer": "ridgeline"})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def read_heads_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a heads folder (one-line errors for anything else)."""
    folder = Path(path).expanduser()
    file = folder / MANIFEST
    if not file.is_file():
        raise RidgelineError(f"{folder} is not a Medusa heads folder (no {MANIFEST}); train one with "
                             "`ridgeline medusa train MODEL --heads K --out DIR`")
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RidgelineError(f"cannot read {file}: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise RidgelineError(f"{file} is not a ridgeline Medusa manifest (kind {KIND!r})")
    missing = [k for k in ("heads", "layers", "tied", "hidden_size", "vocab_size", "base") if k not in data]
    if missing:
        raise RidgelineError(f"{file} lacks {', '.join(missing)}")
    return data


def check_base(manifest: dict[str, Any], model: nn.Module, where: str = "these heads") -> None:
    """Refuse heads trained for another base: hidden size, vocabulary, then the weights hash."""
    weight = model.lm_head.weight
    base = manifest["base"]
    trained_for = base.get("name") or "another model"
    if int(manifest["hidden_size"]) != weight.shape[1]:
        raise RidgelineError(f"{where} were trained for {trained_for} with hidden size {manifest['hidden_size']}; "
                             f"this model's is {weight.shape[1]}")
    if int(manifest["vocab_size"]) != weight.shape[0]:
        raise RidgelineError(f"{where} were trained for {trained_for} with a vocabulary of {manifest['vocab_size']}; "
                             f"this model's has {weight.shape[0]}")
    want, have = base.get("weights_sha256"), weights_hash(model)
    if want != have:
        raise RidgelineError(f"{where} were trained for {trained_for} (weights sha256 {str(want)[:12]}...); this "
                             f"model's weights differ (sha256 {have[:12]}...): train heads for it")


def load_heads(path: str | os.PathLike, model: nn.Module, check: bool = True) -> tuple[MedusaHeads, dict[str, Any]]:
    """Heads from a folder for `model` (checked to be their base unless `check` is False), in the model's dtype,
    attached to its lm_head; with the manifest."""
    from safetensors.torch import load_file

    folder = Path(path).expanduser()
    manifest = read_heads_manifest(folder)
    if check:
        check_base(manifest, model, f"the heads in {folder}")
    heads = MedusaHeads(int(manifest["hidden_size"]), int(manifest["vocab_size"]), int(manifest["heads"]),
                        int(manifest["layers"]), bool(manifest["tied"]))
    try:
        state = load_file(str(folder / WEIGHTS))
    except Exception as exc:  # noqa: BLE001 -- safetensors raises its own error types too
        raise RidgelineError(f"cannot read {folder / WEIGHTS}: {exc}") from None
    vocab = state.pop(VOCAB_KEY, None)
    missing, unexpected = heads.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RidgelineError(f"{folder / WEIGHTS} does not match {MANIFEST}: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}")
    dtype = model.lm_head.weight.dtype
    heads = heads.to(dtype).eval().requires_grad_(False)
    return heads.attach(model.lm_head.weight).restrict(vocab), manifest
