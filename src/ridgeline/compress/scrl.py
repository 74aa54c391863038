"""SCRL (Ghalandari et al., ACL 2022): the learned scorer fine-tuned as a policy by self-critical policy gradient.

Per training window (calibration context + its true continuation) and step:
- the policy's keep probabilities p_t = sigmoid(logit_t) over the context tokens; forced tokens (protected
  classes and the controller's question tail, as at inference) are always kept and not part of the action;
- k sampled masks m ~ Bernoulli(p) on the free tokens, and the greedy mask: exactly what inference keeps
  (`select` at the target rate over word units), the self-critical baseline;
- reward of a mask = w_retention * (-ΔNLL of the true continuation given the kept tokens, nats/token)
  + w_fluency * (-(NLL per kept token of the compressed text itself - that of the original context))
  + w_ratio * (-((kept share - 1/rate) / ratio_sigma)^2): retention of the original's information, fluency
  under the target model (a causal-LM stand-in for SCRL's masked-LM fluency), and the compression ratio;
- loss = -mean over windows and samples of (R(sample) - R(greedy)) * log pi(sample) (aggregate 'mean'), or
  only the best sample per window (aggregate 'max', SCRL's reference): samples better than what inference
  would keep become more likely, worse ones less.

Rewards come from one batched forward of the target model (no gradient) over every mask's [prefix] + kept
context + continuation; the full context's NLLs are computed once per window and kept with the windows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ridgeline.compress.budget import resolve_budget, select
from ridgeline.compress.data import word_units
from ridgeline.compress.lm import prefix_id
from ridgeline.compress.loop import Progress, load_optimizer, optimizer_tensors, run_steps, step_generator
from ridgeline.compress.scorer import LearnedScorer, load_scorer, load_tensors, read_scorer_manifest, save_scorer
from ridgeline.compress.train import TrainResult, json_config, same_run
from ridgeline.errors import RidgelineError

AGGREGATES = ("mean", "max")


@dataclass(frozen=True)
class SCRLConfig:
    """The policy-gradient run: steps, windows per step, samples per window, target rate, reward weights."""

    steps: int = 100
    batch_size: int = 2
    samples: int = 4
    rate: float = 2.0
    question_share: float = 0.5
    lr: float = 1e-4
    trainable: str = "top"
    w_retention: float = 1.0
    w_fluency: float = 0.1
    w_ratio: float = 1.0
    ratio_sigma: float = 0.05
    aggregate: str = "mean"
    checkpoint_every: int = 10
    eval_every: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "samples", "checkpoint_every", "eval_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RidgelineError(f"SCRL {name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.rate, (int, float)) and self.rate > 1):
            raise RidgelineError(f"SCRL rate must be > 1, got {self.rate!r}")
        if self.aggregate not in AGGREGATES:
            raise RidgelineError(f"SCRL aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")
        if not 0 <= self.question_share < 1 or not self.ratio_sigma > 0 or not math.isfinite(self.lr) or self.lr <= 0:
            raise RidgelineError("SCRL needs question_share in [0, 1), ratio_sigma > 0 and a finite lr > 0")


def policy_gradient_loss(logp: torch.Tensor, rewards: torch.Tensor, baseline: torch.Tensor,
                         aggregate: str = "mean") -> torch.Tensor:
    """Self-critical policy-gradient loss: -(R(sample) - R(greedy)) * log pi(sample), mean over [B, k] samples
    ('mean') or over each row's best sample ('max'). Minimising it raises the log-probability of samples that
    beat the greedy baseline."""
    if aggregate not in AGGREGATES:
        raise RidgelineError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    advantage = (rewards - baseline[:, None]).detach()
    if aggregate == "max":
        best = rewards.argmax(dim=1, keepdim=True)
        return -(advantage.gather(1, best) * logp.gather(1, best)).mean()
    return -(advantage * logp).mean()


def sample_masks(logits: torch.Tensor, forced: torch.Tensor, k: int, gen: torch.Generator) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """k Bernoulli keep masks per row of logits [B, n] (forced tokens always kept) and their log-probabilities
    [B, k] under the policy (summed over the free tokens)."""
    p = torch.sigmoid(logits.detach())[:, None].expand(-1, k, -1)
    masks = torch.bernoulli(p, generator=gen).bool() | forced[:, None]
    logp_keep, logp_drop = F.logsigmoid(logits)[:, None], F.logsigmoid(-logits)[:, None]
    per_token = torch.where(masks, logp_keep, logp_drop) * (~forced)[:, None]
    return masks, per_token.sum(-1)


def forced_tokens(protected: torch.Tensor, n: int, rate: float, share: float) -> torch.Tensor:
    """Protected tokens plus the controller's question tail (the last share x budget tokens), [B, n]."""
    keep, _ = resolve_budget(n, rate=rate)
    forced = protected.clone()
    tail = int(share * keep)
    if tail:
        forced[:, n - tail:] = True
    return forced


@torch.no_grad()
def mask_nlls(lm: Any, prefix: int, ids: torch.Tensor, cont: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """[M, 2]: per mask, the mean NLL of the kept context tokens and of the continuation after them."""
    seqs = [torch.cat([torch.tensor([prefix]), ids[m], cont]) for m in masks]
    width = max(len(s) for s in seqs)
    x = torch.zeros((len(seqs), width), dtype=torch.long)
    att = torch.zeros_like(x)
    for i, s in enumerate(seqs):
        x[i, :len(s)], att[i, :len(s)] = s, 1
    was = lm.training
    lm.eval()
    try:
        hidden = lm.get_decoder()(input_ids=x, attention_mask=att, use_cache=False).last_hidden_state
        head = lm.get_output_embeddings()
        out = torch.zeros(len(seqs), 2, dtype=torch.float64)
        for i, s in enumerate(seqs):
            nll = F.cross_entropy(head(hidden[i, :len(s) - 1]).float(), s[1:], reduction="none").double()
            kept = len(s) - 1 - cont.numel()
            out[i, 0] = nll[:kept].mean() if kept else 0.0
            out[i, 1] = nll[kept:].mean()
    finally:
        lm.train(was)
    return out


def rewards(nlls: torch.Tensor, full: torch.Tensor, kept_share: torch.Tensor, cfg: SCRLConfig) -> torch.Tensor:
    """Reward per mask from its [ctx NLL, continuation NLL], the full context's, and the share of tokens kept."""
    retention = -(nlls[:, 1] - full[:, 1])
    fluency = -(nlls[:, 0] - full[:, 0])
    ratio = -((kept_share.double() - 1.0 / cfg.rate) / cfg.ratio_sigma) ** 2
    return cfg.w_retention * retention + cfg.w_fluency * fluency + cfg.w_ratio * ratio


def _full_nlls(lm: Any, prefix: int, data: dict, rows: list[int]) -> torch.Tensor:
    """The full context's [ctx NLL, continuation NLL] for windows `rows`, computed once and kept in `data`."""
    for r in rows:
        if math.isnan(float(data["full_cont_nll"][r])):
            ids = data["ids"][r]
            v = mask_nlls(lm, prefix, ids, data["cont"][r], torch.ones(1, ids.numel(), dtype=torch.bool))[0]
            data["full_ctx_nll"][r], data["full_cont_nll"][r] = v[0], v[1]
    return torch.stack([data["full_ctx_nll"][rows], data["full_cont_nll"][rows]], dim=1)


def greedy_masks(logits: torch.Tensor, forced: torch.Tensor, word_starts: torch.Tensor, rate: float) -> torch.Tensor:
    """What inference keeps: exactly round(n / rate) tokens per row, forced first, then the best words."""
    n = logits.shape[1]
    keep, _ = resolve_budget(n, rate=rate)
    out = [select(lg.double().numpy(), keep, f.numpy(), word_units(ws))
           for lg, f, ws in zip(logits.detach(), forced, word_starts)]
    return torch.tensor(np.stack(out), dtype=torch.bool)


def scrl_step(policy: LearnedScorer, lm: Any, opt: torch.optim.Optimizer, data: dict, cfg: SCRLConfig, prefix: int,
              rows: list[int], gen: torch.Generator) -> dict:
    """One policy-gradient step on windows `rows`; the curve row."""
    ids = data["ids"][rows]
    n = ids.shape[1]
    full = _full_nlls(lm, prefix, data, rows)
    forced = forced_tokens(data["protected"][rows], n, cfg.rate, cfg.question_share)
    policy.train()
    logits = policy(torch.cat([torch.full((len(rows), 1), prefix), ids], dim=1))
    masks, logp = sample_masks(logits, forced, cfg.samples, gen)
    greedy = greedy_masks(logits, forced, data["word_starts"][rows], cfg.rate)
    every = torch.cat([masks, greedy[:, None]], dim=1)  # [B, k+1, n]
    nlls = torch.stack([mask_nlls(lm, prefix, ids[b], data["cont"][rows[b]], every[b]) for b in range(len(rows))])
    kept = every.float().mean(-1)
    r = torch.stack([rewards(nlls[b], full[b].expand(cfg.samples + 1, 2), kept[b], cfg) for b in range(len(rows))])
    loss = policy_gradient_loss(logp, r[:, :-1].float(), r[:, -1].float(), cfg.aggregate)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": float(loss.detach()), "reward_samples": float(r[:, :-1].mean()),
            "reward_greedy": float(r[:, -1].mean()), "reward_best": float(r[:, :-1].max(1).values.mean()),
            "delta_nll_greedy": float((nlls[:, -1, 1] - full[:, 1]).mean()),
            "kept_share_samples": float(kept[:, :-1].mean())}


@torch.no_grad()
def heldout_delta(policy: LearnedScorer, lm: Any, data: dict, cfg: SCRLConfig, prefix: int, rows: list[int]) -> float:
    """Mean ΔNLL (nats/token) of the continuation with the greedy (inference) mask on held-out windows."""
    ids = data["ids"][rows]
    full = _full_nlls(lm, prefix, data, rows)
    policy.eval()
    logits = policy(torch.cat([torch.full((len(rows), 1), prefix), ids], dim=1))
    forced = forced_tokens(data["protected"][rows], ids.shape[1], cfg.rate, cfg.question_share)
    greedy = greedy_masks(logits, forced, data["word_starts"][rows], cfg.rate)
    nlls = torch.stack([mask_nlls(lm, prefix, ids[b], data["cont"][r], greedy[b:b + 1])[0]
                        for b, r in enumerate(rows)])
    return float((nlls[:, 1] - full[:, 1]).mean())


def train_scrl(model: Any, tokenizer: Any, init: str | Path, out: str | Path, config: SCRLConfig = SCRLConfig(),
               resume: bool = False, progress: Progress | None = None) -> TrainResult:
    """Fine-tune the scorer saved in `init` (by train_scorer) with SCRL on its calibration windows; save to `out`."""
    t0 = time.perf_counter()
    out = Path(out)
    if resume and (out / "scorer.json").is_file():
        record = read_scorer_manifest(out).get("record") or {}
        if record.get("stage") != "scrl" or not same_run(record.get("config"), json_config(config)):
            raise RidgelineError(f"{out} holds a run with another configuration or stage; resume it with the same "
                                 "options (only the step count may change), or write to a new folder")
        record["config"] = json_config(config)
        source = out
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise RidgelineError(f"{out} already exists; pass --resume to continue that run or choose a new folder")
        learned = read_scorer_manifest(init).get("record") or {}
        if learned.get("stage") != "learned":
            raise RidgelineError(f"{init} is not a trained learned scorer (run `ridgeline compress train` first)")
        record = {"stage": "scrl", "config": json_config(config), "step": 0, "curve": [], "init": str(init),
                  "holdout": learned["config"]["holdout"]}
        source = Path(init)
    policy = load_scorer(source, model)
    policy.method = "scrl"
    data = load_tensors(source, "windows.safetensors")
    opt = torch.optim.AdamW(policy.trainable(config.trainable), lr=config.lr, weight_decay=0.0)
    saved = load_tensors(out, "optimizer.safetensors") if source == out else None
    if saved is not None:
        load_optimizer(opt, saved, record["optimizer_groups"])
    prefix = prefix_id(tokenizer)
    n_windows = data["ids"].shape[0]
    holdout = list(range(n_windows - record["holdout"], n_windows))
    train_n = n_windows - record["holdout"]

    def save(_: int) -> None:
        tensors, groups = optimizer_tensors(opt)
        record["optimizer_groups"] = groups
        save_scorer(policy, out, record, {"optimizer.safetensors": tensors, "windows.safetensors": data})

    def step(i: int) -> dict:
        gen = step_generator(config.seed, i)
        rows = torch.randint(0, train_n, (config.batch_size,), generator=gen).tolist()
        row = {"step": i + 1, **scrl_step(policy, model, opt, data, config, prefix, rows, gen)}
        if holdout and ((i + 1) % config.eval_every == 0 or i + 1 == config.steps or i == 0):
            row["heldout_delta_nll"] = heldout_delta(policy, model, data, config, prefix, holdout)
        record["curve"].append(row)
        record["step"] = i + 1
        return row

    done, interrupted = run_steps(step, record["step"], config.steps, save, config.checkpoint_every,
                                  "SCRL policy gradient", progress)
    return TrainResult(out, "scrl", done, config.steps, interrupted, time.perf_counter() - t0, record["curve"])
