"""Evaluate a Workload on a simulated accelerator: every operator of prefill and decode, per step.

Lowering: gemm operators (linear layers, lm_head, decode GEMVs) are tiled GEMMs (`tiling`); each attention
block's QKᵀ, softmax and PV run fused (`attention`); elementwise operators run on the vector unit at
`lanes` ops per cycle, fused with their neighbours (their activations stay on chip: no DRAM traffic); the
embedding lookup reads its rows from DRAM. Operators run one after another (no overlap across operators).

Formats: weights and KV come from the workload's precision (its bytes, scales included, are exact);
activations from the design (`formats.linear_acts` for linear layers and their outputs, `attention_acts` for
Q and P). A PE mode must take each operand pair, else a clear error. Every BFP operand produced on chip passes
the FP16→BFP converter once: a linear layer's input, the K and V written to a BFP cache, attention's Q and P;
an operator takes at least conversions / converter throughput cycles.

Energy = MACs × pJ/MAC + buffer bytes × pJ/B + DRAM bytes × pJ/B + vector ops × pJ/op + conversions ×
pJ/element + leakage × time. DRAM bytes are split like the roofline's: weights, activations, KV read, KV write.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ridgeline.accel import pricing
from ridgeline.accel.attention import AttentionSpec, Tier, evaluate_attention
from ridgeline.accel.design import Design
from ridgeline.accel.operands import Operand, operand_of
from ridgeline.accel.tiling import Operands, best_gemm
from ridgeline.errors import RidgelineError
from ridgeline.roofline import KINDS, Operator, Phase, Workload
from ridgeline.specs import get_format, get_kv_format

ENERGY_PARTS = ("mac", "sram", "dram", "vector", "converter", "leakage")

#: weight tensor role of each gemm operator (GGUF roles, as ModelSpec.tensors names them)
_ROLES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "qkv_proj": "attn_qkv",
          "o_proj": "attn_output", "gate_proj": "ffn_gate", "up_proj": "ffn_up", "gate_up_proj": "ffn_up",
          "down_proj": "ffn_down", "router": "ffn_gate_inp", "experts_gate": "ffn_gate_exps",
          "experts_up": "ffn_up_exps", "experts_down": "ffn_down_exps", "shared_gate": "ffn_gate_shexp",
          "shared_up": "ffn_up_shexp", "shared_down": "ffn_down_shexp", "shared_expert_gate": "ffn_gate_inp_shexp",
          "q_a_proj": "attn_q_a", "q_b_proj": "attn_q_b", "kv_a_proj": "attn_kv_a_mqa", "kv_b_proj": "attn_kv_b",
          "q_absorb": "attn_kv_b", "o_absorb": "attn_kv_b"}

_COMPRESSOR = "compressor:"


def _base_name(op: Operator) -> str:
    """The operator's name without the prompt compressor's prefix."""
    return op.name.removeprefix(_COMPRESSOR)


@dataclass(frozen=True)
class AccelOp:
    """One operator on the accelerator: totals over its instances (layers) and the phase's steps."""

    phase: str
    name: str
    kind: str
    group: str
    count: int
    flops: float  # the workload's FLOPs
    macs: float  # MACs the array computed (tiles straddling the causal diagonal included)
    cycles: float
    time_s: float
    dram: dict[str, float]
    sram_bytes: float
    energy_pj: dict[str, float]
    unit: str  # "array", "vector", "dram"
    mapping: str  # dataflow, tile, loop order
    mode: str  # PE mode(s)
    bound: str  # what sets the time: "compute", "memory", "vector", "converter"
    conversions: float = 0.0

    @property
    def energy(self) -> float:
        """All energy, pJ."""
        return sum(self.energy_pj.values())

    @property
    def dram_bytes(self) -> float:
        """All DRAM bytes."""
        return sum(self.dram.values())


@dataclass(frozen=True)
class AccelPhase:
    """A phase on the accelerator."""

    name: str
    steps: int
    tokens: int
    ops: tuple[AccelOp, ...]
    step_times_s: np.ndarray

    @property
    def time_s(self) -> float:
        """Time of the phase."""
        return float(sum(o.time_s for o in self.ops))

    @property
    def energy_pj(self) -> dict[str, float]:
        """Energy of the phase by part, pJ."""
        return {p: sum(o.energy_pj.get(p, 0.0) for o in self.ops) for p in ENERGY_PARTS}

    @property
    def energy(self) -> float:
        """All energy of the phase, pJ."""
        return sum(self.energy_pj.values())

    @property
    def dram(self) -> dict[str, float]:
        """DRAM bytes by kind."""
        return {k: sum(o.dram.get(k, 0.0) for o in self.ops) for k in KINDS}

    @property
    def macs(self) -> float:
        """MACs the array computed."""
        return sum(o.macs for o in self.ops)

    @property
    def tokens_per_s(self) -> float:
        """Tokens per second over the phase."""
        return self.tokens / self.time_s if self.time_s else 0.0


@dataclass(frozen=True)
class AccelResult:
    """A workload evaluated on a design."""

    design: Design
    workload: Workload
    objective: str
    area_um2: dict[str, float]
    prefill: AccelPhase
    decode: AccelPhase
    notes: tuple[str, ...] = field(default=())

    @property
    def area_mm2(self) -> float:
        """Total area, mm²."""
        return sum(self.area_um2.values()) / 1e6

    @property
    def total_s(self) -> float:
        """Prefill plus decode."""
        return self.prefill.time_s + self.decode.time_s

    @property
    def energy_pj(self) -> float:
        """All energy, pJ."""
        return self.prefill.energy + self.decode.energy

    @property
    def phases(self) -> tuple[AccelPhase, AccelPhase]:
        """Prefill and decode."""
        return self.prefill, self.decode


# ---------------------------------------------------------------------------------------------


class _Sim:
    """Everything the operator evaluations share: design, its prices, the workload's formats."""

    def __init__(self, w: Workload, d: Design, objective: str, step_stride: int) -> None:
        if objective not in ("latency", "energy"):
            raise RidgelineError(f"objective must be 'latency' or 'energy', got {objective!r}")
        self.w, self.d, self.objective, self.stride = w, d, objective, max(int(step_stride), 1)
        self.ap = pricing.array_params(d)
        self.lin = operand_of(d.formats.linear_acts)
        self.att = operand_of(d.formats.attention_acts)
        self.lin_bytes = get_format(d.formats.linear_acts).bits / 8
        self.att_bytes = get_format(d.formats.attention_acts).bits / 8
        self.acc_bytes = d.accumulator_bits / 8
        self.kv = get_kv_format(w.precision.kv)
        self.leak_w = d.leakage_w
        self.vec_pj, self.conv_pj = pricing.vector_pj(d), pricing.converter_pj(d)
        needs_conv = [n for n, o in (("linear_acts", self.lin), ("attention_acts", self.att)) if o.family == "bfp"]
        if needs_conv and d.converter is None:
            raise RidgelineError(f"design {d.name!r} runs BFP activations ({', '.join(needs_conv)}) but has no "
                                 "[converter] (FP16→BFP) to produce them")
        self.conv_rate = d.converter.elements_per_cycle if d.converter else 1.0
        self.roles = self._weight_operands()

    def _weight_operands(self) -> dict[str, Operand]:
        """The widest operand type among the tensors of each role (recipes mix formats per tensor)."""
        out: dict[str, Operand] = {}
        for t in self.w.model.tensors():
            name = self.w.tensor_formats.get(t.name)
            if name is None or len(t.shape) < 2:
                continue
            try:
                op = operand_of({"f32": "fp32", "f16": "fp16"}.get(name, name))
            except RidgelineError as exc:
                raise RidgelineError(f"weights of {t.name}: {exc}") from None
            if t.role not in out or op.width > out[t.role].width:
                out[t.role] = op
        return out

    def weight_operand(self, op: Operator) -> Operand:
        name = _base_name(op)  # a compressor's layers have the roles (and formats) of the target's
        role = _ROLES.get(name)
        if name == "lm_head":
            role = "token_embd" if self.w.model.tied else "output"
        if role not in self.roles:
            raise RidgelineError(f"no weight format known for operator {op.name!r}")
        return self.roles[role]

    def energy(self, mac=0.0, sram=0.0, dram=0.0, vector=0.0, converter=0.0, time_s=0.0) -> dict[str, float]:
        return {"mac": mac, "sram": sram, "dram": dram, "vector": vector, "converter": converter,
                "leakage": self.leak_w * time_s * 1e12}


def _dram(weights=0.0, activations=0.0, kv_read=0.0, kv_write=0.0) -> dict[str, float]:
    return {"weights": weights, "activations": activations, "kv_read": kv_read, "kv_write": kv_write}


def _scalar(x) -> float:
    return float(np.asarray(x).reshape(-1)[0])


def _linear(sim: _Sim, phase: Phase, op: Operator) -> tuple[AccelOp, np.ndarray]:
    sh, d = op.shape, sim.d
    steps = max(phase.steps, 1)
    m, k, n = (int(np.ceil(_scalar(v))) for v in (sh.m, sh.k, sh.n))
    b_op = sim.weight_operand(op)
    mode = pricing.find_mode(d, sim.lin, b_op, f"{op.name}: activations {d.formats.linear_acts} × weights")
    b_bytes = _scalar(op.bytes["weights"]) / (sh.batch * k * n)
    operands = Operands(sim.lin_bytes, b_bytes, sim.lin_bytes, sim.acc_bytes, mode.macs, pricing.mac_pj(d, mode))
    g = best_gemm(m, k, n, operands, sim.ap, sim.objective)
    # conversions: the BFP input of the product, and K/V written into a BFP cache
    conv = sh.batch * m * k if sim.lin.family == "bfp" else 0.0
    kv_w = _scalar(op.bytes["kv_write"])
    if kv_w and sim.kv.bulk.family == "bfp":
        conv += kv_w / (sim.kv.bulk.bits / 8)
    per = sh.batch * op.count  # products per step
    cyc_step = max(g.cycles, conv / per / sim.conv_rate if per else 0.0) * per
    bound = ("converter" if cyc_step > g.cycles * per else
             "memory" if sum(g.dram) / sim.ap.dram_bpc > g.compute_cycles else "compute")
    total = steps * per
    a_r, b_r, c_r, c_w = (v * total for v in g.dram)
    kv_share = min(kv_w * op.count * steps, c_w)  # the output written to the KV cache (k/v projections)
    time_s = cyc_step * steps / d.clock_hz
    e_mac, e_sram, e_dram = (v * total for v in g.energy)
    acc = AccelOp(phase.name, op.name, op.kind, op.group, op.count, op.total_flops(phase.steps), g.macs * total,
                  cyc_step * steps, time_s, _dram(b_r, a_r + c_r + c_w - kv_share, 0.0, kv_share),
                  sum(g.sram) * total,
                  sim.energy(e_mac, e_sram, e_dram, 0.0, conv * op.count * steps * sim.conv_pj, time_s),
                  "array", f"{g.dataflow} {g.tile[0]}×{g.tile[1]}×{g.tile[2]} {g.order}", mode.label, bound,
                  conv * op.count * steps)
    return acc, np.full(steps, cyc_step / d.clock_hz)


def _vector(sim: _Sim, phase: Phase, op: Operator) -> tuple[AccelOp, np.ndarray]:
    steps = max(phase.steps, 1)
    flops = op.total_flops(phase.steps)
    cyc = flops / sim.d.vector_lanes
    time_s = cyc / sim.d.clock_hz
    w = op.total_bytes(phase.steps)["weights"] if op.kind == "lookup" else 0.0
    e_dram = w * sim.ap.dram_pj
    t_dram = w / sim.d.dram_Bps
    time_s = max(time_s, t_dram)
    acc = AccelOp(phase.name, op.name, op.kind, op.group, op.count, flops, 0.0, time_s * sim.d.clock_hz, time_s,
                  _dram(weights=w), 0.0, sim.energy(vector=flops * sim.vec_pj, dram=e_dram, time_s=time_s),
                  "dram" if op.kind == "lookup" else "vector", "fused" if op.kind != "lookup" else "row reads", "-",
                  "memory" if op.kind == "lookup" else "vector")
    return acc, np.full(steps, time_s / steps)


def _attention(sim: _Sim, phase: Phase, qk: Operator, sm: Operator | None, av: Operator):
    d, w = sim.d, sim.w
    s = phase.tokens_per_step // w.scenario.batch
    c = np.asarray(phase.contexts, dtype=np.float64)
    n = np.broadcast_to(np.asarray(qk.shape.n, dtype=np.float64), c.shape)
    idx = np.arange(0, len(c), sim.stride)
    weight = np.diff(np.append(idx, len(c)))  # each sampled step stands for `stride` steps
    tiers = []
    for fmt in (sim.kv.hi or sim.kv.bulk, sim.kv.bulk):
        b, operand = fmt.bits / 8, operand_of(fmt)
        mq = pricing.find_mode(d, sim.att, operand, f"QKᵀ: queries {d.formats.attention_acts} × keys {fmt.name}")
        mp = pricing.find_mode(d, sim.att, operand, f"PV: probabilities {d.formats.attention_acts} × values {fmt.name}")
        tiers.append((Tier(b, b, mq.macs, mp.macs, pricing.mac_pj(d, mq), pricing.mac_pj(d, mp)), mq, mp))
    held = n[idx]  # tokens a step reads: those it holds once its own are stored
    k_hi = np.where(n[idx] > 0, sim.kv.hi_tokens(held, True) / np.maximum(held, 1), 0.0)
    v_hi = np.where(n[idx] > 0, sim.kv.hi_tokens(held, False) / np.maximum(held, 1), 0.0)
    spec = AttentionSpec(
        m=int(round(_scalar(qk.shape.m))), group=qk.shape.group, s=s, d=int(qk.shape.k), dv=int(av.shape.n),
        batch=qk.shape.batch, window=qk.shape.window, causal=w.options.causal, q_bytes=sim.att_bytes,
        p_bytes=sim.att_bytes, out_bytes=sim.lin_bytes, acc_bytes=sim.acc_bytes, hi=tiers[0][0], lo=tiers[1][0],
        softmax_ops=w.options.softmax_ops, vector_lanes=d.vector_lanes, vector_pj=sim.vec_pj,
        convert=sim.att.family == "bfp", convert_per_cycle=sim.conv_rate, convert_pj=sim.conv_pj)
    a = evaluate_attention(spec, sim.ap, c[idx], n[idx], k_hi, v_hi, sim.objective)
    per = qk.shape.batch * qk.count
    scale = per * float(np.sum(weight * a.step_cycles)) / max(a.cycles, 1e-30) if a.cycles else per
    step_s = np.repeat(a.step_cycles * per / d.clock_hz, weight)
    total_s = float(step_s.sum())
    e = {k: v * scale for k, v in a.energy.items()}
    work = a.qk_cycles + a.pv_cycles + a.vector_cycles or 1.0
    share = {"qk": a.qk_cycles / work, "softmax": a.vector_cycles / work, "av": a.pv_cycles / work}
    mapping = f"{a.dataflows[0]}/{a.dataflows[1]} q{a.tile[0]}×k{a.tile[1]}"
    modes = "/".join(dict.fromkeys(f"{t[1].label}" for t in tiers))
    parts = {"memory": sum(a.dram.values()) / sim.ap.dram_bpc, "compute": a.qk_cycles + a.pv_cycles,
             "vector": a.vector_cycles}
    bound = max(parts, key=parts.get)
    ops = []
    for op, part in ((qk, "qk"), (sm, "softmax"), (av, "av")):
        if op is None:
            continue
        t = total_s * share[part]
        if part == "qk":
            en = sim.energy(mac=e["qk"], dram=e["dram_q"] + e["dram_k"], sram=e["sram"] * 0.5, time_s=t)
            dr, macs = _dram(activations=a.dram["q"] * scale, kv_read=a.dram["k"] * scale), a.macs_qk * scale
        elif part == "av":
            en = sim.energy(mac=e["pv"], dram=e["dram_v"] + e["dram_o"], sram=e["sram"] * 0.5, time_s=t)
            dr, macs = _dram(activations=a.dram["o"] * scale, kv_read=a.dram["v"] * scale), a.macs_pv * scale
        else:
            en = sim.energy(vector=e["vector"], converter=e["converter"], time_s=t)
            dr, macs = _dram(), 0.0
        ops.append(AccelOp(phase.name, op.name, op.kind, op.group, op.count, op.total_flops(phase.steps), macs,
                           t * d.clock_hz, t, dr, sum(a.sram) * scale * (0.5 if part != "softmax" else 0.0), en,
                           "array" if part != "softmax" else "vector", f"fused {mapping}",
                           modes if part != "softmax" else "-", bound,
                           a.conversions * scale if part == "softmax" else 0.0))
    return ops, step_s


def _phase(sim: _Sim, phase: Phase) -> AccelPhase:
    steps = max(phase.steps, 1)
    step_times = np.zeros(steps)
    out: list[AccelOp] = []
    ops = list(phase.ops) if phase.steps else []
    i = 0
    while i < len(ops):
        op = ops[i]
        if op.kind == "attention" and _base_name(op) == "qk" and op.shape is not None:
            rest = ops[i + 1:i + 3]
            sm = next((o for o in rest if _base_name(o) == "softmax" and o.group == op.group), None)
            av = next((o for o in rest if _base_name(o) == "av" and o.group == op.group), None)
            if av is None:
                raise RidgelineError(f"attention in {op.group}: QKᵀ without its PV operator")
            # a prompt compressor reads the whole prompt while the target prefills only what it keeps
            view = replace(phase, tokens_per_step=sim.w.scenario.batch * sim.w.scenario.prompt) \
                if op.name.startswith(_COMPRESSOR) else phase
            res, st = _attention(sim, view, op, sm, av)
            i += 2 + (sm is not None)
        else:
            r, st = (_linear if op.shape is not None else _vector)(sim, phase, op)
            res = [r]
            i += 1
        out += res
        step_times = step_times + st
    tokens = phase.steps * phase.tokens_per_step
    return AccelPhase(phase.name, phase.steps, tokens, tuple(out), step_times if phase.steps else np.zeros(0))


def simulate(workload: Workload, design: Design, objective: str = "latency", step_stride: int = 1) -> AccelResult:
    """Evaluate every operator of the workload on the design; `step_stride` > 1 prices decode attention at
    every stride-th step (each standing for its stride), for fast sweeps."""
    sim = _Sim(workload, design, objective, step_stride)
    return AccelResult(design, workload, objective, pricing.area_um2(design), _phase(sim, workload.prefill),
                       _phase(sim, workload.decode))
