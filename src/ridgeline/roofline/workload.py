"""The Workload IR: every operator of prefill and decode with its FLOPs and bytes by tensor kind.

Conventions (tested on hand-countable configs): 1 MAC = 2 FLOPs everywhere; causal attention counts
each query against its own prefix; KV traffic uses the KV heads; the embedding is a lookup (bytes of
the rows touched, no FLOPs); a tied embedding is streamed once, as the lm_head. Decode is integrated
exactly over its steps: step j processes one token per sequence with P + j tokens already cached.
Per-step quantities are numpy arrays over steps (length 1 when they do not depend on the context).

KV traffic follows the KV format (`get_kv_format`), exact for formats that mix precisions over positions
(KIVI, Harmonia): a step reads the keys and values of every token it attends, as stored (held + new
tokens); it writes each new token once in the format of its position, plus the older tokens re-quantized
as they leave the high-precision part (a completed chunk of KIVI keys, a token ageing out of a recent
window). Writes follow the token stream (absolute positions); memory and reads the tokens a layer holds.

Prompt compression (`Scenario.compress` = r): the model prefills round(P / r) tokens and decodes on that
cache. A `Compressor` adds its own cost to the prefill phase as operators named `compressor:<op>` (group
`compressor ...`): a model over the full P prompt tokens, either whole with its LM head at every position
(self-information, Selective Context / LLMLingua scoring) or cut to its first K layers plus a keep/drop head
of 2h x head_hidden x 1 (a learned scorer, ridgeline.compress), or an opaque number of FLOPs per prompt token.

Speculative decoding (`Scenario.speculation`, see `ridgeline.specs.scenario`): the decode phase has
ceil(N / accepted) steps, each a forward over `tokens` new tokens (the tree or chain verified at once) with the
lm_head on every one of them; step j starts from P + floor(accepted * j) cached tokens. The verified tokens are
counted as a causal chunk (a tree token attends only its ancestors: the chunk's within-step keys are an upper
bound, a small term). Medusa heads add K ResBlocks and K rows through their projection per step
(`draft_heads`, `draft_lm_head`: the shared lm_head — or its draft-vocabulary rows — is streamed a second time,
as the heads run after the acceptance). The phase's `tokens` are the N generated tokens, not steps × tokens verified.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace

import numpy as np

from ridgeline.errors import RidgelineError
from ridgeline.specs import (KVFormat, Layer, ModelSpec, NumberFormat, Precision, RecipeContext, Scenario, get_format,
                             get_kv_format, is_recipe, tensor_type)

KINDS = ("weights", "activations", "kv_read", "kv_write")


@dataclass(frozen=True)
class GemmShape:
    """The matrix products behind a gemm or attention operator, per instance and step.

    `batch` independent products (m × k)·(k × n); m, k, n are numbers or per-step arrays (attention over a growing
    cache). Operand A (m × k) is activations: tokens, or the queries (attention probabilities) of the `group` query
    heads that share one KV head, rows ordered position-major (m = group · new tokens). Operand B (k × n) is `b`:
    "weights", "keys" or "values". Attention products are the full rectangles of all new queries against the keys a
    step reads; the operator's FLOPs count only the pairs the causal mask (and `window`) keeps. Only the accelerator
    simulator reads shapes; the roofline prices FLOPs and bytes.
    """

    m: float | np.ndarray
    k: float | np.ndarray
    n: float | np.ndarray
    batch: float = 1
    b: str = "weights"
    group: int = 1
    window: int | None = None


@dataclass(frozen=True)
class Options:
    """Accounting switches; defaults describe a fused-attention runtime that keeps only the last logits."""

    attention: str = "fused"  # "fused": scores never leave registers; "unfused": scores written and read
    # "unfused": every op reads its inputs and writes its outputs (upper bound); "block": per layer
    # a·s·(4h + 2f), each block's input and output plus the MLP intermediate (roofline.md's golden
    # convention); "fused": none (lower bound)
    activation_traffic: str = "unfused"
    causal: bool = True  # False: every query attends all keys (LLM-Viewer/GenZ upper bound)
    logits: str = "last"  # "last": lm_head on the last position only (llama.cpp); "all": every position
    mla_cache: str = "latent"  # "latent": (d_c + d_r) per token; "decompressed": per-head K and V as HF holds
    mla_decode: str = "absorbed"  # "absorbed": weight-absorbed attention over the latent; "naive": materialised
    softmax_ops: int = 5
    norm_ops: int = 7
    glu_ops: int = 4  # SiLU(gate)·up per element
    gelu_ops: int = 8
    rope_ops: int = 3  # per rotated element: two multiplies and an add
    residual_ops: int = 1

    def __post_init__(self) -> None:
        choices = {"attention": ("fused", "unfused"), "activation_traffic": ("fused", "block", "unfused"),
                   "logits": ("last", "all"), "mla_cache": ("latent", "decompressed"),
                   "mla_decode": ("absorbed", "naive")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise RidgelineError(f"option {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.mla_cache == "decompressed" and self.mla_decode == "absorbed":
            object.__setattr__(self, "mla_decode", "naive")  # absorption needs the latent cache


@dataclass
class Operator:
    """One operator of a phase, per instance and per step; `count` instances (layers) share it."""

    name: str
    kind: str  # "gemm" | "attention" | "elementwise" | "lookup"
    group: str  # "model" or the layer group's label
    count: int
    flops: np.ndarray
    bytes: dict[str, np.ndarray]
    _memo: dict = field(default_factory=dict, repr=False, compare=False)
    shape: GemmShape | None = field(default=None, compare=False)  # gemm and attention products (accel only)

    def total_flops(self, steps: int) -> float:
        """FLOPs over all instances and steps."""
        key = ("flops", steps)
        if key not in self._memo:
            self._memo[key] = self.count * _sum(self.flops, steps)
        return self._memo[key]

    def total_bytes(self, steps: int) -> dict[str, float]:
        """Bytes by kind over all instances and steps."""
        key = ("bytes", steps)
        if key not in self._memo:
            self._memo[key] = {k: self.count * _sum(v, steps) for k, v in self.bytes.items()}
        return self._memo[key]

    def step_bytes(self) -> np.ndarray:
        """All bytes of one instance per step."""
        if "step_bytes" not in self._memo:
            self._memo["step_bytes"] = sum(self.bytes.values())
        return self._memo["step_bytes"]


@dataclass
class Phase:
    """Prefill or decode: `steps` forward passes, each over `tokens_per_step` new tokens (batch included)."""

    name: str
    steps: int
    tokens_per_step: int
    contexts: np.ndarray  # tokens already cached, per step
    ops: list[Operator]
    tokens: int | None = None  # tokens the phase yields, when not steps × tokens_per_step (speculative decode)

    @property
    def flops(self) -> float:
        """Total FLOPs of the phase."""
        return sum(op.total_flops(self.steps) for op in self.ops)

    def bytes_by_kind(self) -> dict[str, float]:
        """Total bytes of the phase split into weights, activations, KV reads and KV writes."""
        out = dict.fromkeys(KINDS, 0.0)
        for op in self.ops:
            for k, v in op.total_bytes(self.steps).items():
                out[k] += v
        return out

    def step_flops(self) -> np.ndarray:
        """FLOPs of each step (all operators)."""
        return sum(op.count * np.broadcast_to(op.flops, (self.steps,)) for op in self.ops)

    def step_bytes(self) -> np.ndarray:
        """Bytes of each step (all operators)."""
        return sum(op.count * np.broadcast_to(op.step_bytes(), (self.steps,)) for op in self.ops)


@dataclass(frozen=True)
class Compressor:
    """What compressing the prompt costs before the prefill: a model run over the full prompt, or FLOPs per token.

    `model` with `layers` None: the whole model and its LM head at every position (self-information);
    with `layers` K: its first K layers, final norm and a keep/drop head (2h -> head_hidden -> 1), no LM head.
    `flops_per_token` alone: an opaque compute cost per prompt token, no bytes.
    """

    name: str
    model: ModelSpec | None = None
    layers: int | None = None
    head_hidden: int = 256
    flops_per_token: float | None = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.flops_per_token is None):
            raise RidgelineError("a compressor is a model (optionally cut to K layers) or FLOPs per token, not both")
        if self.flops_per_token is not None and not (self.flops_per_token >= 0 and np.isfinite(self.flops_per_token)):
            raise RidgelineError(f"compressor FLOPs per token must be a finite number >= 0, got {self.flops_per_token}")
        if self.layers is not None and self.layers < 1:
            raise RidgelineError(f"compressor layers must be >= 1, got {self.layers}")


@dataclass
class Workload:
    """What one scenario asks of the hardware, independent of any device."""

    model: ModelSpec
    scenario: Scenario
    precision: Precision
    options: Options
    prefill: Phase
    decode: Phase
    weights_bytes: float
    kv_bytes: float  # KV cache at the final context, whole batch
    activation_bytes: float  # peak transient activations (prefill estimate)
    kv_bytes_per_token: float  # one sequence, all layers, one more token in the bulk format (no window clipping)
    tensor_formats: dict[str, str] = field(default_factory=dict)
    compressor: Compressor | None = None  # its operators are in the prefill phase (group "compressor ...")

    @property
    def phases(self) -> tuple[Phase, Phase]:
        """Prefill and decode."""
        return self.prefill, self.decode


def _sum(x: np.ndarray, steps: int) -> float:
    return float(x.sum()) if x.size > 1 else float(x.reshape(-1)[0]) * steps


# ---------------------------------------------------------------------------------------------
# weight formats per tensor


def tensor_formats(model: ModelSpec, precision: Precision) -> dict[str, tuple[NumberFormat, int]]:
    """For every weight tensor: its format and exact bytes under `precision.weights`."""
    tensors = model.tensors()
    out: dict[str, tuple[NumberFormat, int]] = {}
    if precision.weights == "stored":
        if model.gguf_tensors is None:
            raise RidgelineError("weights 'stored' needs a GGUF model (its tensor table holds the types)")
        for t in tensors:
            out[t.name] = (_ggml_or_float(t.ggml_type or "f32"), int(t.nbytes or 0))
        return out
    if is_recipe(precision.weights) and get_format_family(precision.weights) != "float":
        att0 = model.layers[0].attention
        ctx = RecipeContext(n_layers=model.n_layers,
                            n_experts=max((l.moe.n_experts for l in model.layers if l.moe), default=0),
                            n_gqa=max(att0.n_heads // max(att0.n_kv_heads, 1), 1),
                            has_output=not model.tied)
        for t in tensors:
            fmt = _ggml_or_float(tensor_type(precision.weights, t.name, t.shape, ctx))
            out[t.name] = (fmt, fmt.tensor_bytes(t.shape, t.name))
        return out
    weight_fmt = get_format(precision.weights)
    dense = weight_fmt if weight_fmt.family == "float" else get_format(precision.acts)
    if dense.family != "float":
        dense = get_format("bf16")
    for t in tensors:
        fmt = weight_fmt if len(t.shape) >= 2 else dense  # 1-D tensors (norms, biases) stay unquantized
        out[t.name] = (fmt, fmt.tensor_bytes(t.shape, t.name))
    return out


def get_format_family(name: str) -> str:
    """'float' for plain float names (f16, bf16, ...): those mean a torch-style dense model, not a GGUF recipe."""
    try:
        return get_format(name).family
    except RidgelineError:
        return "recipe"


def _ggml_or_float(name: str) -> NumberFormat:
    return get_format({"f32": "fp32", "f16": "fp16"}.get(name, name))


# ---------------------------------------------------------------------------------------------
# building the workload


def build_workload(model: ModelSpec, scenario: Scenario, precision: Precision | None = None,
                   options: Options | None = None, compressor: Compressor | None = None) -> Workload:
    """Count every operator of the scenario's prefill and decode phases (and of a prompt compressor)."""
    precision = precision or Precision()
    options = options or Options()
    fmts = tensor_formats(model, precision)
    a = get_format(precision.acts).bits / 8.0
    kv_fmt = get_kv_format(precision.kv)
    tbytes: dict[int | None, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for t in model.tensors():
        tbytes[t.layer][t.role] += fmts[t.name][1]
    b, P, N = scenario.batch, scenario.prefill_tokens, scenario.generate
    ctx = _Ctx(model, options, kv_fmt, a, b)
    for layer in {l.attention for l in model.layers}:
        for d in _kv_row_lengths(layer):
            kv_fmt.check_row(d, f"KV cache ({precision.kv})")

    groups = _group_layers(model, tbytes)
    spec = scenario.speculation
    if spec is None:
        decode = (1, P + np.arange(max(N, 0)))
    else:
        decode = (spec.tokens, P + np.floor(spec.accepted * np.arange(spec.steps(N)) + 1e-9).astype(np.int64))
    phases = []
    for name, s, contexts in (("prefill", P, np.array([0])), ("decode", *decode)):
        steps = len(contexts)
        speculative = name == "decode" and spec is not None
        ops: list[Operator] = []
        if steps:
            ops += ctx.model_ops(s, tbytes[None], fmts, name, every_logit=speculative)
            if speculative and spec.heads:
                ops += ctx.draft_head_ops(spec, tbytes[None])
            for label, idx, layer in groups:
                ops += ctx.layer_ops(layer, s, contexts, tbytes[idx[0]], label, len(idx), name)
        phases.append(Phase(name, steps, b * s, contexts, ops, b * N if speculative else None))
    activation = _activation_peak(model, scenario, options, a)
    if compressor is not None:
        if scenario.compress == 1:
            raise RidgelineError("a compressor needs a compression rate > 1 in the scenario")
        extra, peak = compressor_ops(compressor, scenario, precision, options)
        phases[0].ops += extra
        activation = max(activation, peak)
    kv_tok = sum(ctx.kv_elem_bytes(l) for l in model.layers)
    kv_total = b * _held_kv_bytes(model, kv_fmt, P + N, options)
    weights_total = float(sum(v[1] for v in fmts.values()))
    return Workload(model, scenario, precision, options, phases[0], phases[1], weights_total, float(kv_total),
                    activation, float(kv_tok), {k: v[0].name for k, v in fmts.items()}, compressor)


def compressor_ops(comp: Compressor, scenario: Scenario, precision: Precision,
                   options: Options) -> tuple[list[Operator], float]:
    """The compressor's operators over the full prompt (to join the prefill phase) and its activation peak."""
    b, P = scenario.batch, scenario.prompt
    if comp.model is None:
        flops = np.atleast_1d(float(comp.flops_per_token) * b * P)
        zero = np.zeros(1)
        return [Operator("compressor:flops", "gemm", "compressor", 1, flops,
                         {"weights": zero, "activations": zero, "kv_read": zero, "kv_write": zero})], 0.0
    spec = comp.model if comp.layers is None else comp.model.with_layers(comp.layers)
    prec = precision
    if prec.weights == "stored" and spec.gguf_tensors is None:  # a stored-format target, a float compressor
        prec = Precision(weights=prec.acts if get_format(prec.acts).family == "float" else "bf16", acts=prec.acts,
                         kv=prec.kv, compute=prec.compute)
    opts = replace(options, logits="all" if comp.layers is None else "last")
    inner = build_workload(spec, Scenario(P, 0, b), prec, opts)
    ops = [op for op in inner.prefill.ops if comp.layers is None or op.name != "lm_head"]
    # the shapes go along: the accelerator simulator lowers shaped products onto its array, shapeless ones onto the
    # vector unit (the compressor's layers are the same GEMMs and attention as the target's)
    out = [Operator(f"compressor:{op.name}", op.kind, f"compressor {op.group}", op.count, op.flops, op.bytes,
                    shape=op.shape) for op in ops]
    if comp.layers is not None:  # the keep/drop head: [h_t, h_t+1] -> head_hidden -> 1, fp32 weights
        h, k = spec.hidden, comp.head_hidden
        macs = 2 * h * k + k if k else 2 * h
        a = get_format(prec.acts).bits / 8.0
        out.append(Operator("compressor:scorer_head", "gemm", "compressor", 1, np.atleast_1d(2.0 * b * P * macs),
                            {"weights": np.atleast_1d(4.0 * macs), "activations": np.atleast_1d(b * P * (2 * h + 1) * a),
                             "kv_read": np.zeros(1), "kv_write": np.zeros(1)}))
    return out, inner.activation_bytes


def _kv_row_lengths(att) -> tuple[int, ...]:
    if att.mla:
        return (att.mla.kv_lora_rank, att.mla.qk_rope_head_dim)
    return (att.head_dim,)


def _group_layers(model: ModelSpec, tbytes) -> list[tuple[str, list[int], Layer]]:
    """Layers with the same structure and the same per-tensor bytes are counted once, times their number."""
    sig: dict[tuple, list[int]] = defaultdict(list)
    for i, layer in enumerate(model.layers):
        sig[(layer, tuple(sorted(tbytes[i].items())))].append(i)
    out = []
    for (layer, _), idx in sig.items():
        out.append((_ranges(idx), idx, layer))
    return out


def _ranges(idx: list[int]) -> str:
    """'layers 0-2,5' for [0, 1, 2, 5]."""
    runs: list[list[int]] = []
    for i in idx:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return "layers " + ",".join(f"{r[0]}" if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def _activation_peak(model: ModelSpec, sc: Scenario, opt: Options, a: float) -> float:
    """Largest live activation set in prefill: residual + the widest intermediate + logits (an estimate)."""
    P = sc.prefill_tokens
    T = sc.batch * P
    widest, scores = 0, 0.0
    for l in model.layers:
        att = l.attention
        qkv = (att.n_heads + 2 * att.n_kv_heads) * att.head_dim
        ffn = 3 * (l.ffn.intermediate if l.ffn else l.moe.top_k * l.moe.expert_intermediate)
        widest = max(widest, qkv, ffn)
        if opt.attention == "unfused":  # one layer's score matrix is live at a time
            scores = max(scores, sc.batch * att.n_heads * P * min(P, att.window or P) * a)
    logits_rows = sc.batch * (P if opt.logits == "all" else 1)
    return a * T * (2 * model.hidden + widest) + scores + 4.0 * logits_rows * model.vocab


class _Ctx:
    """Builds operators; holds what every operator needs (model, options, formats, batch)."""

    def __init__(self, model: ModelSpec, opt: Options, kv_fmt: KVFormat, a: float, b: int) -> None:
        self.m, self.opt, self.kv, self.a, self.b = model, opt, kv_fmt, a, b
        self.traffic = opt.activation_traffic

    def kv_elem_bytes(self, layer: Layer) -> float:
        """KV-cache bytes one more token adds to `layer` in the format's bulk (its long-context cost)."""
        return self.kv.bulk.elements_bytes(self.m.kv_elements_per_token(layer, self.opt.mla_cache))

    def kv_read(self, layer: Layer, n) -> tuple:
        """Bytes of keys and of values a step reads when each sequence attends `n` tokens (whole batch)."""
        k, v = self.m.kv_elements_split(layer, self.opt.mla_cache)
        return self.b * self.kv.cache_bytes(n, k, True), self.b * self.kv.cache_bytes(n, v, False)

    def kv_write(self, layer: Layer, s: int, c) -> tuple:
        """Bytes of keys and of values a step writes when `s` tokens per sequence follow `c` (whole batch)."""
        k, v = self.m.kv_elements_split(layer, self.opt.mla_cache)
        return self.b * self.kv.write_bytes(c, s, k, True), self.b * self.kv.write_bytes(c, s, v, False)

    def op(self, name: str, kind: str, group: str, count: int, flops, weights=0.0, acts=0.0,
           kv_read=0.0, kv_write=0.0, block_acts=0.0, shape: GemmShape | None = None) -> Operator:
        """An operator; scalar or per-step array costs; `block_acts` are its bytes in "block" traffic mode."""
        arr = lambda x: np.atleast_1d(np.asarray(x, dtype=np.float64))
        acts = {"unfused": acts, "block": block_acts, "fused": 0.0}[self.traffic]
        return Operator(name, kind, group, count, arr(flops),
                        {"weights": arr(weights), "activations": arr(acts),
                         "kv_read": arr(kv_read), "kv_write": arr(kv_write)}, shape=shape)

    # -- model-level operators -------------------------------------------------------------------

    def model_ops(self, s: int, tb: dict[str, float], fmts, phase: str, every_logit: bool = False) -> list[Operator]:
        m, a, b = self.m, self.a, self.b
        T, h, V = b * s, m.hidden, m.vocab
        embd_bytes_per_row = tb["token_embd"] / V
        s_out = b * (1 if self.opt.logits == "last" and not every_logit else s)
        head = tb["token_embd"] if m.tied else tb["output"]
        return [
            # a lookup: only the rows of the tokens in this step are read
            self.op("embedding", "lookup", "model", 1, 0.0, weights=T * embd_bytes_per_row, acts=T * h * a),
            self.op("final_norm", "elementwise", "model", 1, self.opt.norm_ops * T * h,
                    weights=tb["output_norm"], acts=2 * T * h * a),
            self.op("lm_head", "gemm", "model", 1, 2.0 * s_out * h * V, weights=head,
                    acts=s_out * (h + V) * a, shape=GemmShape(s_out, h, V)),
        ]

    def draft_head_ops(self, spec, tb: dict[str, float]) -> list[Operator]:
        """Medusa heads per speculative step: K ResBlocks (d x d and a bias each) on one hidden state, then K rows
        through the shared lm_head (streamed again) or through K untied projections (in the activation format)."""
        m, a, K = self.m, self.a, spec.heads
        h, V = m.hidden, m.vocab
        rows = min(spec.draft_vocab or V, V)  # a restricted draft vocabulary streams only its rows
        head = K * rows * h * a if spec.untied else (tb["token_embd"] if m.tied else tb["output"]) * rows / V
        return [self._gemm("draft_heads", "model", 1, K, h, h, K * (h * h + h) * a, bias=True),
                self._gemm("draft_lm_head", "model", 1, K, h, rows, head)]

    # -- one layer ---------------------------------------------------------------------------------

    def layer_ops(self, layer: Layer, s: int, c: np.ndarray, tb: dict[str, float], group: str,
                  count: int, phase: str) -> list[Operator]:
        opt, a, b, h = self.opt, self.a, self.b, self.m.hidden
        T = b * s
        att = layer.attention
        keys = b * _keys_attended(s, c, att.window, opt.causal)  # query-key pairs per head
        kv_tokens = _kv_tokens_read(s, c, att.window)  # cached + new tokens each sequence reads
        norm = lambda name, role, width=h, block=0.0: self.op(
            name, "elementwise", group, count, opt.norm_ops * T * width, weights=tb[role], acts=2 * T * width * a,
            block_acts=block)
        ops = [norm("attn_norm", "attn_norm", block=T * h * a)]  # block input
        if att.mla:
            ops += self._mla_ops(layer, s, c, keys, kv_tokens, tb, group, count, phase)
        else:
            ops += self._attention_ops(layer, s, c, keys, kv_tokens, tb, group, count)
        ops.append(self.op("attn_residual", "elementwise", group, count, opt.residual_ops * T * h, acts=3 * T * h * a))
        if layer.n_norms >= 4:
            ops.insert(-1, norm("attn_post_norm", "attn_post_norm"))
        ops.append(norm("ffn_norm", "ffn_norm", block=T * h * a))
        ops += self._ffn_ops(layer, T, tb, group, count) if layer.ffn else self._moe_ops(layer, T, tb, group, count)
        if layer.n_norms >= 4:
            ops.append(norm("ffn_post_norm", "ffn_post_norm"))
        ops.append(self.op("ffn_residual", "elementwise", group, count, opt.residual_ops * T * h, acts=3 * T * h * a))
        return ops

    def _gemm(self, name: str, group: str, count: int, tokens: float, k: int, n: int, weights: float,
              bias: bool = False, block_out: bool = False, batch: float = 1, **kv) -> Operator:
        """tokens × k by k × n; `block_out` marks the GEMM that writes a block's output (block traffic mode);
        `batch` > 1 splits the tokens over that many weight matrices (heads, experts): shape only, FLOPs unchanged."""
        flops = 2.0 * tokens * k * n + (tokens * n if bias else 0)
        return self.op(name, "gemm", group, count, flops, weights=weights, acts=tokens * (k + n) * self.a,
                       block_acts=tokens * n * self.a if block_out else 0.0,
                       shape=GemmShape(np.asarray(tokens) / batch, k, n, batch), **kv)

    def _attention_core(self, group: str, count: int, nq: int, dqk: int, dv: int, keys, kv_k, kv_v, T: float,
                        kv_heads: int, kv_tokens, window: int | None):
        """QKᵀ, softmax and A·V over `keys` query-key pairs per head; KV bytes read by the first and last.
        `kv_heads` distinct K/V heads are shared by nq / kv_heads query heads each over `kv_tokens` tokens."""
        opt, a, b = self.opt, self.a, self.b
        scores = nq * keys * a if opt.attention == "unfused" else 0.0
        g = max(nq // kv_heads, 1)
        rows = g * T / b  # query rows per KV head and sequence
        qk = GemmShape(rows, dqk, kv_tokens, b * kv_heads, "keys", g, window)
        av = GemmShape(rows, kv_tokens, dv, b * kv_heads, "values", g, window)
        return [
            self.op("qk", "attention", group, count, 2.0 * nq * dqk * keys, acts=T * nq * dqk * a + scores, kv_read=kv_k,
                    shape=qk),
            self.op("softmax", "attention", group, count, opt.softmax_ops * nq * keys, acts=2 * scores),
            self.op("av", "attention", group, count, 2.0 * nq * dv * keys, acts=T * nq * dv * a + scores, kv_read=kv_v,
                    shape=av),
        ]

    def _attention_ops(self, layer: Layer, s: int, c, keys, kv_tokens, tb, group: str, count: int) -> list[Operator]:
        att, opt, a, b, h = layer.attention, self.opt, self.a, self.b, self.m.hidden
        T = b * s
        nq, nkv, d = att.n_heads, att.n_kv_heads, att.head_dim
        k_write, v_write = self.kv_write(layer, s, c)
        ops = []
        if att.fused_qkv:
            ops.append(self._gemm("qkv_proj", group, count, T, h, (nq + 2 * nkv) * d, tb["attn_qkv"], att.qkv_bias,
                                  kv_write=k_write + v_write))
        else:
            ops += [self._gemm("q_proj", group, count, T, h, nq * d, tb["attn_q"], att.qkv_bias),
                    self._gemm("k_proj", group, count, T, h, nkv * d, tb["attn_k"], att.qkv_bias, kv_write=k_write),
                    self._gemm("v_proj", group, count, T, h, nkv * d, tb["attn_v"], att.qkv_bias, kv_write=v_write)]
        if att.qk_norm:
            w = tb["attn_q_norm"] + tb["attn_k_norm"]
            ops.append(self.op("qk_norm", "elementwise", group, count, opt.norm_ops * T * (nq + nkv) * d,
                               weights=w, acts=2 * T * (nq + nkv) * d * a))
        if att.rotary_dim:
            rot = T * (nq + nkv) * att.rotary_dim
            ops.append(self.op("rope", "elementwise", group, count, opt.rope_ops * rot, acts=2 * rot * a))
        ops += self._attention_core(group, count, nq, d, d, keys, *self.kv_read(layer, kv_tokens), T,
                                    nkv, kv_tokens, att.window)
        ops.append(self._gemm("o_proj", group, count, T, nq * d, h, tb["attn_output"], att.o_bias, block_out=True))
        return ops

    def _mla_ops(self, layer: Layer, s: int, c, keys, kv_tokens, tb, group: str, count: int, phase: str):
        att, opt, a, b, h = layer.attention, self.opt, self.a, self.b, self.m.hidden
        m, nq, T = att.mla, att.n_heads, b * s
        dc, dr, dn, dv = m.kv_lora_rank, m.qk_rope_head_dim, m.qk_nope_head_dim, m.v_head_dim
        ops = []
        if m.q_lora_rank:
            ops += [self._gemm("q_a_proj", group, count, T, h, m.q_lora_rank, tb["attn_q_a"]),
                    self.op("q_a_norm", "elementwise", group, count, opt.norm_ops * T * m.q_lora_rank,
                            weights=tb["attn_q_a_norm"], acts=2 * T * m.q_lora_rank * a),
                    self._gemm("q_b_proj", group, count, T, m.q_lora_rank, nq * (dn + dr), tb["attn_q_b"])]
        else:
            ops.append(self._gemm("q_proj", group, count, T, h, nq * (dn + dr), tb["attn_q"]))
        latent = opt.mla_cache == "latent"
        written = sum(self.kv_write(layer, s, c))  # the latent, or the decompressed per-head K and V
        read = sum(self.kv_read(layer, kv_tokens))
        ops += [self._gemm("kv_a_proj", group, count, T, h, dc + dr, tb["attn_kv_a_mqa"],
                           kv_write=written if latent else 0.0),
                self.op("kv_a_norm", "elementwise", group, count, opt.norm_ops * T * dc,
                        weights=tb["attn_kv_a_norm"], acts=2 * T * dc * a)]
        rot = T * (nq + 1) * dr
        ops.append(self.op("rope", "elementwise", group, count, opt.rope_ops * rot, acts=2 * rot * a))
        absorbed = latent and phase == "decode" and opt.mla_decode == "absorbed"
        if absorbed:
            # q·W_UK per token, attention over the latent (d_c + d_r keys, d_c values), then ·W_UV per token
            # kv_b holds W_UK (d_n rows per head) and W_UV (d_v rows per head): each is streamed once
            w_uk = tb["attn_kv_b"] * dn / (dn + dv)
            ops.append(self._gemm("q_absorb", group, count, T * nq, dn, dc, w_uk, batch=nq))
            ops += self._attention_core(group, count, nq, dc + dr, dc, keys, read, 0.0, T, 1, kv_tokens, att.window)
            ops.append(self._gemm("o_absorb", group, count, T * nq, dc, dv, tb["attn_kv_b"] - w_uk, batch=nq))
        else:
            # materialised: kv_b decompresses the tokens attended (latent cache) or only the new ones
            tokens = b * kv_tokens if latent else T
            ops.append(self._gemm("kv_b_proj", group, count, tokens, dc, nq * (dn + dv), tb["attn_kv_b"],
                                  kv_write=0.0 if latent else written))
            ops += self._attention_core(group, count, nq, dn + dr, dv, keys, read, 0.0, T, nq, kv_tokens, att.window)
        ops.append(self._gemm("o_proj", group, count, T, nq * dv, h, tb["attn_output"], block_out=True))
        return ops

    def _ffn_ops(self, layer: Layer, T: int, tb, group: str, count: int) -> list[Operator]:
        f, h, a, opt = layer.ffn.intermediate, self.m.hidden, self.a, self.opt
        ffn = layer.ffn
        if ffn.glu and ffn.fused_gate_up:
            ops = [self._gemm("gate_up_proj", group, count, T, h, 2 * f, tb["ffn_up"], ffn.bias)]
        elif ffn.glu:
            ops = [self._gemm("gate_proj", group, count, T, h, f, tb["ffn_gate"], ffn.bias),
                   self._gemm("up_proj", group, count, T, h, f, tb["ffn_up"], ffn.bias)]
        else:
            ops = [self._gemm("up_proj", group, count, T, h, f, tb["ffn_up"], ffn.bias)]
        if ffn.glu:
            ops.append(self.op("act_mul", "elementwise", group, count, opt.glu_ops * T * f, acts=3 * T * f * a,
                               block_acts=2 * T * f * a))
        else:
            ops.append(self.op("gelu", "elementwise", group, count, opt.gelu_ops * T * f, acts=2 * T * f * a,
                               block_acts=2 * T * f * a))
        ops.append(self._gemm("down_proj", group, count, T, f, h, tb["ffn_down"], ffn.bias, block_out=True))
        return ops

    def _moe_ops(self, layer: Layer, T: int, tb, group: str, count: int) -> list[Operator]:
        e, h, a, opt = layer.moe, self.m.hidden, self.a, self.opt
        f, E, k = e.expert_intermediate, e.n_experts, e.top_k
        # distinct experts whose weights a step streams: expected value under uniform routing
        touched = E * (1.0 - (1.0 - k / E) ** T)
        per_expert = lambda role: tb[role] / E * touched
        pairs = T * k  # token-expert pairs
        ne = max(round(touched), 1)  # expert GEMMs: the pairs spread evenly over the experts touched (shape only)
        ops = [self._gemm("router", group, count, T, h, E, tb["ffn_gate_inp"]),
               self.op("router_softmax", "elementwise", group, count, opt.softmax_ops * T * E, acts=2 * T * E * a),
               self._gemm("experts_gate", group, count, pairs, h, f, per_expert("ffn_gate_exps"), batch=ne),
               self._gemm("experts_up", group, count, pairs, h, f, per_expert("ffn_up_exps"), batch=ne),
               self.op("experts_act_mul", "elementwise", group, count, opt.glu_ops * pairs * f, acts=3 * pairs * f * a,
                       block_acts=2 * pairs * f * a),
               self._gemm("experts_down", group, count, pairs, f, h, per_expert("ffn_down_exps"), block_out=True,
                          batch=ne),
               self.op("experts_combine", "elementwise", group, count, 2.0 * pairs * h, acts=(pairs + T) * h * a)]
        if e.shared_intermediate:
            sf = e.shared_intermediate
            ops += [self._gemm("shared_gate", group, count, T, h, sf, tb["ffn_gate_shexp"]),
                    self._gemm("shared_up", group, count, T, h, sf, tb["ffn_up_shexp"]),
                    self.op("shared_act_mul", "elementwise", group, count, opt.glu_ops * T * sf, acts=3 * T * sf * a),
                    self._gemm("shared_down", group, count, T, sf, h, tb["ffn_down_shexp"])]
            if e.shared_gate:
                ops.append(self._gemm("shared_expert_gate", group, count, T, h, 1, tb["ffn_gate_inp_shexp"]))
        return ops


def _keys_attended(s: int, c: np.ndarray, window: int | None, causal: bool) -> np.ndarray:
    """Query-key pairs per head and sequence when s new tokens follow c cached ones."""
    c = np.asarray(c, dtype=np.float64)
    if not causal:
        return s * (np.minimum(c + s, window) if window else c + s)
    if not window:
        return s * c + s * (s + 1) / 2.0
    # query at absolute position i (1-based) sees min(i, W) keys; sum over i = c+1 .. c+s
    n1 = np.clip(window - c, 0, s)  # queries whose prefix fits in the window
    return n1 * c + n1 * (n1 + 1) / 2.0 + (s - n1) * window


def _kv_tokens_read(s: int, c: np.ndarray, window: int | None) -> np.ndarray:
    """Distinct cached + new tokens whose K and V a step reads (once per layer, fused attention)."""
    c = np.asarray(c, dtype=np.float64)
    return np.minimum(c + s, window - 1 + s) if window else c + s


def layer_kv_bytes(model: ModelSpec, precision: Precision, context: int, options: Options | None = None) -> float:
    """KV-cache bytes one sequence holds after `context` tokens (windows clipped as HF keeps them)."""
    return _held_kv_bytes(model, get_kv_format(precision.kv), context, options or Options())


def _held_kv_bytes(model: ModelSpec, kv: KVFormat, context: int, opt: Options) -> float:
    return sum(kv.layer_bytes(model.kv_tokens_held(l, context), *model.kv_elements_split(l, opt.mla_cache))
               for l in model.layers)
