"""Knowledge-distillation losses on (sparse) teacher logits, padding masked.

The teacher is given as its top-k logits per position, `TopK(indices [..., k], logits [..., k])` (raw logits,
temperature 1), cached once (DistillKit-style) so the teacher never runs during training; k = vocab size with
`indices = arange(V)` is the full distribution. At temperature T the teacher distribution is
p̂_T = softmax(z_T[topk] / T) renormalised over its top-k (the tail outside the top-k is dropped, as DistillKit
does); the student's log-probabilities log q = log_softmax(z_S / T) are over its whole vocabulary.

- forward KL (`kind='forward'`): Σ_{i∈topk} p̂_i (log p̂_i − log q_i), i.e. KL(p̂ ‖ q) with p̂ extended by zeros:
  a proper KL ≥ 0, exact when k = V;
- reverse KL (`kind='reverse'`): KL(q̂ ‖ p̂) with the student also renormalised over the teacher's top-k
  (outside it p̂ is 0, where a reverse KL would be infinite); exact when k = V.

Per token the KD term is T²·KL (Hinton et al.: keeps gradient magnitudes comparable across T). The loss is
L = α·mean_tokens(T²·KL) + (1 − α)·mean_tokens(CE(labels, z_S)) over the tokens whose mask is true
(DistillKit's convention: summed over tokens, divided by the number of tokens). CE is at temperature 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ridgeline.errors import RidgelineError

KINDS = ("forward", "reverse")


@dataclass(frozen=True)
class TopK:
    """The teacher's k largest logits per position and their vocabulary ids (same leading shape)."""

    indices: torch.Tensor  # int64 [..., k]
    logits: torch.Tensor  # float [..., k], raw (temperature 1)

    @staticmethod
    def full(logits: torch.Tensor) -> "TopK":
        """Every logit as 'top-k' (k = V): the exact teacher distribution."""
        V = logits.shape[-1]
        return TopK(torch.arange(V, device=logits.device).expand(logits.shape).contiguous(), logits)

    @staticmethod
    def of(logits: torch.Tensor, k: int) -> "TopK":
        """The k largest of `logits` [..., V]."""
        values, indices = torch.topk(logits, min(k, logits.shape[-1]), dim=-1)
        return TopK(indices, values)


@dataclass(frozen=True)
class KDLossConfig:
    """The KD objective: which KL, its temperature, and α (weight of KD; 1 − α goes to CE on the labels)."""

    kind: str = "forward"
    temperature: float = 1.0
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RidgelineError(f"KD loss kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise RidgelineError(f"KD temperature must be > 0, got {self.temperature!r}")
        if not (isinstance(self.alpha, (int, float)) and 0 <= self.alpha <= 1):
            raise RidgelineError(f"KD alpha must be in [0, 1], got {self.alpha!r}")


def token_kl(student_logits: torch.Tensor, teacher: TopK, temperature: float = 1.0,
             kind: str = "forward") -> torch.Tensor:
    """KL per position [N] between the teacher's top-k distribution and the student's at `temperature`.

    student_logits [N, V]; teacher.indices / logits [N, k]. Computed in float32.
    """
    if kind not in KINDS:
        raise RidgelineError(f"KD loss kind must be one of {', '.join(KINDS)}, got {kind!r}")
    z = student_logits.float() / temperature
    t = teacher.logits.float() / temperature
    log_p = t.log_softmax(-1)  # teacher, renormalised over its top-k
    if kind == "forward":
        log_q = z.log_softmax(-1).gather(-1, teacher.indices)
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    log_r = z.gather(-1, teacher.indices).log_softmax(-1)  # student, renormalised over the teacher's top-k
    return (log_r.exp() * (log_r - log_p)).sum(-1)


def kd_loss(student_logits: torch.Tensor, teacher: TopK, labels: torch.Tensor, mask: torch.Tensor,
            config: KDLossConfig = KDLossConfig()) -> tuple[torch.Tensor, dict[str, float]]:
    """α·mean(T²·KL) + (1 − α)·mean(CE) over masked-in positions; returns (loss, {'kl', 'ce', 'tokens'}).

    student_logits [..., V]; teacher [..., k]; labels and mask [...] (mask true = a real target).
    """
    V = student_logits.shape[-1]
    if teacher.indices.shape != teacher.logits.shape or teacher.indices.shape[:-1] != student_logits.shape[:-1]:
        raise RidgelineError(f"teacher top-k {tuple(teacher.indices.shape)} does not match the student logits "
                             f"{tuple(student_logits.shape)} (expected the same leading shape)")
    if labels.shape != student_logits.shape[:-1] or mask.shape != labels.shape:
        raise RidgelineError(f"labels {tuple(labels.shape)} and mask {tuple(mask.shape)} must be "
                             f"{tuple(student_logits.shape[:-1])}")
    keep = mask.reshape(-1).bool()
    n = int(keep.sum())
    if n == 0:
        raise RidgelineError("the batch has no unmasked target tokens")
    rows = student_logits.reshape(-1, V)[keep]
    T = config.temperature
    parts: dict[str, float] = {"tokens": float(n)}
    loss = rows.new_zeros((), dtype=torch.float32)
    if config.alpha > 0:
        k = teacher.indices.shape[-1]
        top = TopK(teacher.indices.reshape(-1, k)[keep].long(), teacher.logits.reshape(-1, k)[keep])
        kl = token_kl(rows, top, T, config.kind).mean()
        parts["kl"] = float(kl.detach())
        loss = loss + config.alpha * T * T * kl
    if config.alpha < 1:
        ce = F.cross_entropy(rows.float(), labels.reshape(-1)[keep].long())
        parts["ce"] = float(ce.detach())
        loss = loss + (1 - config.alpha) * ce
    return loss, parts


def bucket_kl(student_logits: torch.Tensor, teacher_indices: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) per position [N] at T = 1 from the teacher's exact top-k log-probs plus one tail bucket.

    The teacher's log-probs are normalised over the full vocabulary (cached with its full log-sum-exp), so its
    tail mass 1 − Σ_topk p is known; the student's tail is 1 − Σ_topk q over the same ids. Merging the tail into
    one outcome can only lower a KL (log-sum inequality): this is a lower bound of the full-vocabulary KL, equal
    to it when k = V, and tight when the teacher's tail is small.
    """
    log_q = student_logits.float().log_softmax(-1).gather(-1, teacher_indices.long())
    log_p = teacher_logprobs.float()
    p = log_p.exp()
    head = (p * (log_p - log_q)).sum(-1)
    tail_p = (1 - p.sum(-1)).clamp_min(0)
    tail_q = (1 - log_q.exp().sum(-1)).clamp_min(1e-12)
    tail = torch.where(tail_p > 0, tail_p * (tail_p.clamp_min(1e-30).log() - tail_q.log()), torch.zeros_like(tail_p))
    return (head + tail).clamp_min(0)  # a KL is >= 0: anything below is float32 rounding (a model against itself)
