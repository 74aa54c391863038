"""Continuous-batching engine over a paged KV cache (iteration-level scheduling as in Orca and vLLM).

Every `step()` builds one batch under a token budget: first the running sequences (one decode token each,
or the next chunk of a prompt), then waiting requests in arrival order while their prompt blocks fit.
One forward pass runs the whole batch; finished sequences leave at once and free their blocks. When the
pool runs out, the most recently arrived running sequence is preempted by recomputation: its blocks are
freed and it re-enters the waiting queue with its prompt and the tokens generated so far.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from ridgeline.engine.blocks import AllocStatus, BlockManager
from ridgeline.engine.paged import PagedKVCache, PrefillSegment, StepLayout, attention_impl, register
from ridgeline.errors import RidgelineError
from ridgeline.specs import attention_dims


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes: length, temperature/top-k/top-p, seed, stop tokens, parallel samples."""

    max_tokens: int = 16
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    n: int = 1  # parallel samples sharing the prompt's blocks (fork, copy-on-write)

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.n < 1:
            raise RidgelineError(f"max_tokens and n must be >= 1, got {self.max_tokens} and {self.n}")
        # `not x >= 0` also refuses NaN, which every comparison fails
        if not (math.isfinite(self.temperature) and self.temperature >= 0) or not 0 < self.top_p <= 1 \
                or self.top_k < 0:
            raise RidgelineError(f"sampling needs a finite temperature >= 0, 0 < top_p <= 1 and top_k >= 0; got "
                                 f"{self.temperature}, {self.top_p}, {self.top_k}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise RidgelineError(f"seed must be an integer in [0, 2**63), got {self.seed}")


@dataclass(frozen=True)
class EngineConfig:
    """Pool size and scheduling limits of an engine."""

    num_blocks: int = 512
    block_size: int = 16
    max_batched_tokens: int = 512  # token budget per step: prefill chunks + decode tokens
    max_num_seqs: int = 64
    prefix_caching: bool = False
    watermark: float = 0.01

    def __post_init__(self) -> None:
        if self.max_batched_tokens < 1 or self.max_num_seqs < 1:
            raise RidgelineError(f"max_batched_tokens and max_num_seqs must be >= 1, got "
                                 f"{self.max_batched_tokens} and {self.max_num_seqs}")
        for name, value, hi in (("num_blocks", self.num_blocks, 1 << 22), ("block_size", self.block_size, 1024),
                                ("max_batched_tokens", self.max_batched_tokens, 1 << 20),
                                ("max_num_seqs", self.max_num_seqs, 1 << 16)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                raise RidgelineError(f"{name} must be an integer from 1 to {hi}, got {value!r}")
        if not 0 <= self.watermark < 1:
            raise RidgelineError(f"watermark must be a fraction in [0, 1), got {self.watermark!r}")


@dataclass(frozen=True)
class SchedulerOutput:
    """What one step runs: (sequence, new tokens) in batch order, the copy-on-write block copies to do first,
    and how many sequences were preempted to make room (vLLM's SchedulerOutput, reduced to what a CPU needs)."""

    scheduled: list[tuple["SeqState", int]]
    block_copies: list[tuple[int, int]]
    preempted: int


@dataclass
class SeqState:
    """One sequence: its tokens (prompt + generated), how many have KV in the cache, and its timeline."""

    seq_id: int
    request_id: str
    index: int  # sample index within its request
    params: SamplingParams
    tokens: list[int]
    prompt_len: int
    arrival: float
    generator: torch.Generator | None
    computed: int = 0
    finish_reason: str | None = None
    token_times: list[float] = field(default_factory=list)

    @property
    def output(self) -> list[int]:
        """Generated token ids."""
        return self.tokens[self.prompt_len:]


@dataclass(frozen=True)
class RequestOutput:
    """Tokens one sequence produced in one step (streaming); `finish_reason` is set on its last one."""

    request_id: str
    index: int
    token_ids: tuple[int, ...]
    finish_reason: str | None


@dataclass(frozen=True)
class Completion:
    """A finished request: prompt, the generated tokens of each sample and why each stopped."""

    request_id: str
    prompt_ids: tuple[int, ...]
    outputs: tuple[tuple[int, ...], ...]
    finish_reasons: tuple[str, ...]

    @property
    def token_ids(self) -> tuple[int, ...]:
        """Generated tokens of the first sample."""
        return self.outputs[0]


@dataclass(frozen=True)
class StepStats:
    """What one step ran and how long it took: the engine's measured points on the roofline."""

    seconds: float
    prefill_tokens: int
    decode_seqs: int
    decode_context: int  # summed context (keys attended) of the decode sequences
    prefill_context: int  # summed cached context of the prefill chunks
    running: int
    waiting: int
    blocks_used: int  # after the step (finished sequences' blocks freed): what the next step starts from
    slots_used: int  # distinct slots holding KV of running sequences
    preempted: int
    blocks_held: int = 0  # while the step ran, before finished sequences freed theirs: the KV memory in use


class Engine:
    """Continuous batching of a transformers causal LM over a paged KV cache."""

    def __init__(self, model: Any, config: EngineConfig = EngineConfig()) -> None:
        cfg = model.config
        if getattr(cfg, "is_encoder_decoder", False):
            raise RidgelineError("the engine serves decoder-only causal LMs")
        self.model, self.config = model, config
        dims = attention_dims(cfg)
        dtype = next(model.parameters()).dtype
        self.cache = PagedKVCache(dims.n_layers, dims.n_kv_heads, dims.head_dim, config.num_blocks,
                                  config.block_size, dtype)
        self.blocks = BlockManager(config.num_blocks, config.block_size, config.watermark, config.prefix_caching)
        self.window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        types = set(getattr(cfg, "layer_types", None) or [])
        if self.window and len(types) > 1:  # one window for every layer is all the paged attention masks
            raise RidgelineError(f"the engine serves models whose attention layers share one window; this one mixes "
                                 f"{', '.join(sorted(types))} layers")
        self.max_len = getattr(cfg, "max_position_embeddings", None)
        self.vocab = model.get_input_embeddings().num_embeddings
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = getattr(cfg, "eos_token_id", None)
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        self.waiting: deque[SeqState] = deque()
        self.running: list[SeqState] = []
        self.finished: dict[str, list[SeqState]] = {}
        self.pending: dict[str, int] = {}  # request id -> samples not yet finished
        self.prompts: dict[str, tuple[int, ...]] = {}
        self.stats: list[StepStats] = []
        self.preemptions = 0
        self._ids = itertools.count()  # sequence ids
        self._rids = itertools.count()  # request ids
        register()

    # -- requests --------------------------------------------------------------------------------

    def check_request(self, prompt: Sequence[int], params: SamplingParams, what: str = "request") -> None:
        """Raise RidgelineError if this request could never run: too long for the model or for the KV pool."""
        if not prompt:
            raise RidgelineError(f"{what}: a request needs at least one prompt token")
        if min(prompt) < 0 or max(prompt) >= self.vocab:
            bad = min(prompt) if min(prompt) < 0 else max(prompt)
            raise RidgelineError(f"{what}: token id {bad} is outside the model's vocabulary of {self.vocab} tokens "
                                 f"(ids 0 to {self.vocab - 1})")
        total = len(prompt) + params.max_tokens
        if self.max_len is not None and total > self.max_len:
            raise RidgelineError(f"{what}: prompt {len(prompt)} + max_tokens {params.max_tokens} = {total} "
                                 f"tokens exceed the model's {self.max_len} positions")
        # a lone sequence must be able to finish, or preemption by recomputation would loop forever
        if self.blocks.can_allocate(total) is AllocStatus.NEVER:
            cap = (self.config.num_blocks - self.blocks.watermark_blocks) * self.config.block_size
            raise RidgelineError(f"{what}: prompt {len(prompt)} + max_tokens {params.max_tokens} = {total} "
                                 f"tokens can never fit the KV pool of {cap} token slots "
                                 f"({self.config.num_blocks} blocks of {self.config.block_size}); "
                                 f"raise num_blocks or shorten the request")

    def add_request(self, prompt_ids: Sequence[int], params: SamplingParams = SamplingParams(),
                    request_id: str | None = None, arrival: float | None = None) -> str:
        """Queue a request; raises RidgelineError if it can never fit the pool or the model."""
        prompt = [int(t) for t in prompt_ids]
        rid = str(request_id) if request_id is not None else f"req-{next(self._rids)}"
        if rid in self.pending:
            raise RidgelineError(f"request id {rid!r} is already in use")
        self.check_request(prompt, params, f"request {rid}")
        gen = None
        if params.temperature > 0:
            gen = torch.Generator().manual_seed(params.seed if params.seed is not None else
                                                int(torch.randint(0, 2**62, (1,)).item()))
        seq = SeqState(next(self._ids), rid, 0, params, prompt, len(prompt),
                        time.perf_counter() if arrival is None else arrival, gen)
        self.waiting.append(seq)
        self.pending[rid] = params.n
        self.prompts[rid] = tuple(prompt)
        return rid

    def has_work(self) -> bool:
        """Whether any request is waiting or running."""
        return bool(self.waiting or self.running)

    # -- scheduling ------------------------------------------------------------------------------

    def _preempt(self, seq: SeqState) -> None:
        self.blocks.free(seq.seq_id)
        self.running.remove(seq)
        seq.computed = 0
        self.waiting.appendleft(seq)  # recomputed first: it arrived before everything still waiting
        self.preemptions += 1

    def _schedule(self) -> SchedulerOutput:
        """Pick (sequence, new tokens) pairs under the budget, with the block copies and preemptions they cost."""
        budget, plan, copies, preempted = self.config.max_batched_tokens, [], [], 0
        for seq in list(self.running):
            if budget == 0:
                break
            if seq not in self.running:
                continue  # preempted below for an earlier sequence
            n = min(len(seq.tokens) - seq.computed, budget)
            while not self.blocks.can_append(seq.seq_id, seq.computed + n):
                victim = self.running[-1]
                self._preempt(victim)
                preempted += 1
                if victim is seq:
                    break
            if seq not in self.running:
                continue
            copies += self.blocks.append_slots(seq.seq_id, seq.computed + n)
            plan.append((seq, n))
            budget -= n
        while self.waiting and budget > 0 and not preempted and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if self.blocks.can_allocate(len(seq.tokens)) is not AllocStatus.OK:
                break
            self.waiting.popleft()
            # admitted when the whole prompt fits, but blocks are taken only for this step's chunk: the rest
            # of a long prompt is allocated chunk by chunk, so reserved-but-empty slots are never held
            seq.computed = self.blocks.allocate(seq.seq_id, seq.tokens, slots=0)
            n = min(len(seq.tokens) - seq.computed, budget)
            copies += self.blocks.append_slots(seq.seq_id, seq.computed + n)
            self.running.append(seq)
            plan.append((seq, n))
            budget -= n
        return SchedulerOutput(plan, copies, preempted)

    def _layout(self, plan: list[tuple[SeqState, int]]) -> tuple[list[int], list[int], StepLayout]:
        ids, pos, write, prefills, dec_rows, dec_slots = [], [], [], [], [], []
        for seq, n in plan:
            start, c = len(ids), seq.computed
            ids += seq.tokens[c:c + n]
            pos += range(c, c + n)
            write += self.blocks.slot_ids(seq.seq_id, c, c + n)
            lo = max(0, c + n - self.window) if self.window and n == 1 else 0
            if n == 1:  # decode (or a one-token chunk): one query against keys lo .. c
                dec_rows.append(start)
                dec_slots.append(self.blocks.slot_ids(seq.seq_id, lo, c + 1))
            else:
                prefills.append(PrefillSegment(start, start + n, c,
                                               torch.tensor(self.blocks.slot_ids(seq.seq_id, 0, c + n))))
        Lmax = max((len(s) for s in dec_slots), default=0)
        mask = torch.zeros(len(dec_slots), 1, 1, Lmax)
        for i, s in enumerate(dec_slots):
            mask[i, 0, 0, len(s):] = torch.finfo(torch.float32).min
            s += [0] * (Lmax - len(s))  # padding reads slot 0; the mask hides it
        layout = StepLayout(torch.tensor(write), prefills, torch.tensor(dec_rows, dtype=torch.long),
                            torch.tensor(dec_slots, dtype=torch.long).reshape(len(dec_slots), Lmax), mask,
                            self.window)
        return ids, pos, layout

    # -- one step --------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Schedule, run one forward pass over the batch, sample, retire finished sequences; stream new tokens."""
        t0 = time.perf_counter()
        sched = self._schedule()
        plan = sched.scheduled
        if not plan:
            if self.waiting and not self.running:  # cannot happen after add_request's NEVER check
                raise RidgelineError("the engine cannot schedule any waiting request; the pool is too small")
            return []
        self.cache.copy_blocks(sched.block_copies)
        ids, pos, layout = self._layout(plan)
        # logits only where a sequence has all its tokens computed: the next token is sampled there
        rows, samplers = [], []
        start = 0
        for seq, n in plan:
            start += n
            if seq.computed + n == len(seq.tokens):
                rows.append(start - 1)
                samplers.append(seq)
        with torch.inference_mode(), attention_impl(self.model):
            logits = self.model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([pos]),
                                logits_to_keep=torch.tensor(rows, dtype=torch.long), use_cache=False,
                                paged_cache=self.cache, paged_layout=layout).logits[0]
        if not bool(torch.isfinite(logits).all()):
            self._nonfinite(samplers, logits)
        for seq, n in plan:
            seq.computed += n
            self.blocks.commit(seq.seq_id, seq.tokens, seq.computed)
        held = self.blocks.num_used
        outputs = self._sample(samplers, logits.float())
        self._record(plan, layout, time.perf_counter() - t0, sched.preempted, held)
        return outputs

    def _nonfinite(self, seqs: list[SeqState], logits: torch.Tensor) -> None:
        """Stop serving on NaN/Inf logits, naming the request, the position and the first module whose output is not
        finite (its tokens rerun through the plain forward with hooks)."""
        from ridgeline.weights import nonfinite_message

        row = int((~torch.isfinite(logits)).any(-1).nonzero()[0])
        seq = seqs[row]
        ids = torch.tensor([seq.tokens])
        raise RidgelineError(nonfinite_message(self.model, ids, f"request {seq.request_id} (sample {seq.index})"))

    def _sample(self, seqs: list[SeqState], logits: torch.Tensor) -> list[RequestOutput]:
        outputs, now = [], time.perf_counter()
        for seq, row in zip(seqs, logits):
            family = [seq]
            if seq.params.n > 1 and seq.index == 0 and len(seq.tokens) == seq.prompt_len:
                family += self._fork(seq)  # parallel samples share the prompt's blocks from here on
            for s in family:
                tok = _pick(row, s.params, s.generator)
                s.tokens.append(tok)
                s.token_times.append(now)
                reason = self._stop_reason(s, tok)
                if reason:
                    self._finish(s, reason)
                outputs.append(RequestOutput(s.request_id, s.index, (tok,), reason))
        return outputs

    def _fork(self, parent: SeqState) -> list[SeqState]:
        children = []
        for i in range(1, parent.params.n):
            gen = None
            if parent.generator is not None:
                gen = torch.Generator().manual_seed(parent.generator.initial_seed() + i)
            child = SeqState(next(self._ids), parent.request_id, i, parent.params, list(parent.tokens),
                              parent.prompt_len, parent.arrival, gen, parent.computed)
            self.blocks.fork(parent.seq_id, child.seq_id)
            self.running.append(child)
            children.append(child)
        return children

    def _stop_reason(self, seq: SeqState, tok: int) -> str | None:
        if tok in seq.params.stop_token_ids or (tok in self.eos and not seq.params.ignore_eos):
            return "stop"
        return "length" if len(seq.output) >= seq.params.max_tokens else None

    def _finish(self, seq: SeqState, reason: str) -> None:
        seq.finish_reason = reason
        self.blocks.free(seq.seq_id)
        self.running.remove(seq)
        self.finished.setdefault(seq.request_id, []).append(seq)
        self.pending[seq.request_id] -= 1

    def _record(self, plan, layout: StepLayout, seconds: float, preempted: int, held: int = 0) -> None:
        B = self.config.block_size
        fill: dict[int, int] = {}
        for seq in self.running:
            for j, b in enumerate(self.blocks.table(seq.seq_id)):
                fill[b] = max(fill.get(b, 0), min(B, max(0, seq.computed - j * B)))
        dec = [(s, n) for s, n in plan if n == 1]
        self.stats.append(StepStats(
            seconds=seconds, prefill_tokens=sum(n for _, n in plan if n > 1), decode_seqs=len(dec),
            decode_context=sum(s.computed for s, _ in dec),
            prefill_context=sum(s.computed - n for s, n in plan if n > 1),
            running=len(self.running), waiting=len(self.waiting), blocks_used=self.blocks.num_used,
            slots_used=sum(fill.values()), preempted=preempted, blocks_held=held))

    # -- whole runs ------------------------------------------------------------------------------

    def completion(self, request_id: str) -> Completion:
        """The finished request `request_id` (all its samples)."""
        if self.pending.get(request_id, 1) != 0:
            raise RidgelineError(f"request {request_id!r} is not finished")
        seqs = sorted(self.finished[request_id], key=lambda s: s.index)
        return Completion(request_id, self.prompts[request_id], tuple(tuple(s.output) for s in seqs),
                          tuple(s.finish_reason or "" for s in seqs))

    def stream(self) -> Iterator[RequestOutput]:
        """Step until every queued request has finished, yielding each new token as it is sampled."""
        while self.has_work():
            yield from self.step()

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams]
                 = SamplingParams()) -> list[Completion]:
        """Run a list of prompts (token ids) to completion; one Completion per prompt, in order."""
        plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(plist) != len(prompts):
            raise RidgelineError(f"{len(prompts)} prompts but {len(plist)} sampling parameter sets")
        rids = [self.add_request(p, sp) for p, sp in zip(prompts, plist)]
        for _ in self.stream():
            pass
        return [self.completion(r) for r in rids]


def _pick(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
    """Greedy argmax, or a sample after temperature, top-k and top-p (nucleus) filtering."""
    if p.temperature == 0:
        return int(logits.argmax())
    x = logits / p.temperature
    if p.top_k:
        kth = torch.topk(x, min(p.top_k, x.numel())).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if p.top_p < 1:
        probs, order = torch.sort(torch.softmax(x, -1), descending=True)
        # drop tokens once the mass before them already reaches top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs >= p.top_p
        x = x.index_fill(0, order[drop], float("-inf"))
    return int(torch.multinomial(torch.softmax(x, -1), 1, generator=gen))
