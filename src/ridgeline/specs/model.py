"""What a model is, for accounting: layers, attention, FFN/MoE, and every weight tensor with its shape.

A ModelSpec is read from a Hugging Face `config.json` (any of the families below, or an unknown
`model_type` with the standard fields), a model folder, a GGUF header, or a catalogue id. It knows
nothing of torch: the roofline works from shapes alone. Tensor names follow GGUF (`blk.3.attn_v.weight`)
so llama.cpp's per-tensor quantization recipes apply directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ridgeline.errors import RidgelineError

# model_type -> default of `tie_word_embeddings` when the config omits it (transformers' defaults)
_TIED_DEFAULT = {"gemma": True, "gemma2": True, "gemma3_text": True, "gemma3": True}
_QKV_BIAS_DEFAULT = {"qwen2": True, "qwen2_moe": True, "gpt_neox": True}
_QK_NORM = {"qwen3", "qwen3_moe", "gemma3_text", "gemma3"}
_FUSED_QKV = {"phi3", "gpt_neox"}
_MHA_ONLY = {"gpt_neox", "gpt2", "opt", "gptj"}  # their attention has no KV-head field
_PLAIN_MLP = {"gpt_neox", "gpt2", "opt", "gptj", "falcon", "plm"}  # up, activation, down (no gate)
_LAYERNORM = {"gpt_neox", "gpt2", "opt", "gptj", "falcon"}  # LayerNorm with bias, biased linears


@dataclass(frozen=True)
class MLA:
    """DeepSeek multi-head latent attention dimensions."""

    q_lora_rank: int | None
    kv_lora_rank: int  # d_c
    qk_nope_head_dim: int  # d_n
    qk_rope_head_dim: int  # d_r
    v_head_dim: int  # d_v


@dataclass(frozen=True)
class Attention:
    """One layer's attention: heads, head dims, biases, window; `mla` set for latent attention."""

    n_heads: int
    n_kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    fused_qkv: bool = False
    window: int | None = None  # sliding window W (keys per query, the current one included)
    rotary_dim: int = 0
    mla: MLA | None = None

    @property
    def kind(self) -> str:
        """MLA, MHA, MQA or GQA."""
        if self.mla:
            return "MLA"
        if self.n_kv_heads == self.n_heads:
            return "MHA"
        return "MQA" if self.n_kv_heads == 1 else "GQA"


@dataclass(frozen=True)
class FFN:
    """A dense feed-forward block: `glu` (gate, up, down) or a plain two-matrix `mlp`."""

    intermediate: int
    glu: bool = True
    bias: bool = False
    fused_gate_up: bool = False


@dataclass(frozen=True)
class MoE:
    """A mixture-of-experts block: E routed experts, top-k active, optional shared experts."""

    n_experts: int
    top_k: int
    expert_intermediate: int
    shared_intermediate: int = 0  # total intermediate size of the shared expert(s), 0 if none
    shared_gate: bool = False  # Qwen2-MoE's sigmoid gate on the shared expert


@dataclass(frozen=True)
class Layer:
    """One decoder block."""

    attention: Attention
    ffn: FFN | None = None
    moe: MoE | None = None
    n_norms: int = 2  # hidden-size norms in the block
    norm_bias: bool = False  # LayerNorm (weight + bias) instead of RMSNorm
    parallel: bool = False  # attention and FFN read the same input (GPT-NeoX)


@dataclass(frozen=True)
class TensorSpec:
    """A weight tensor: GGUF-style name, shape (rows..., row length), and its layer (None: model-level)."""

    name: str
    shape: tuple[int, ...]
    layer: int | None = None
    ggml_type: str | None = None  # the stored type when read from a GGUF file
    nbytes: int | None = None  # the stored size when read from a GGUF file

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def role(self) -> str:
        """The name without layer prefix and suffix, e.g. 'attn_v' or 'ffn_down_exps'."""
        base = self.name.rsplit(".", 1)[0]
        return base.split(".", 2)[2] if base.startswith("blk.") else base


@dataclass(frozen=True)
class ModelSpec:
    """A causal LM's architecture, enough to count every FLOP and byte."""

    name: str
    model_type: str
    hidden: int
    vocab: int
    layers: tuple[Layer, ...]
    tied: bool
    final_norm_bias: bool = False
    max_position: int | None = None
    source: str = ""
    gguf_tensors: tuple[TensorSpec, ...] | None = field(default=None, compare=False)

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks."""
        return len(self.layers)

    def with_layers(self, n: int) -> "ModelSpec":
        """The first `n` blocks only (depth sweeps); GGUF tensor sizes are dropped."""
        if not 1 <= n <= LIMITS["layers"]:
            raise RidgelineError(f"number of layers must be between 1 and {LIMITS['layers']} (ridgeline's limit), "
                                 f"got {n}")
        layers = tuple(self.layers[i % self.n_layers] for i in range(n))
        return replace(self, layers=layers, gguf_tensors=None, name=f"{self.name}[{n}L]")

    def with_window(self, window: int) -> "ModelSpec":
        """Every attention layer with a sliding window of `window` keys per query (the current one included)."""
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise RidgelineError(f"sliding window must be an integer >= 1 (keys per query, the current token "
                                 f"included), got {window!r}")
        layers = tuple(replace(l, attention=replace(l.attention, window=window)) for l in self.layers)
        return replace(self, layers=layers)

    def with_kv_heads(self, n_kv_heads: int) -> "ModelSpec":
        """Every attention layer with `n_kv_heads` K/V heads (GQA conversion: k/v projections become
        [n_kv_heads·d_h, hidden]); a stored tensor table keeps each tensor's type, its rows rescaled."""
        g = n_kv_heads
        for att in {l.attention for l in self.layers}:
            if att.mla:
                raise RidgelineError("KV heads cannot be changed on multi-head latent attention (MLA caches a "
                                     "shared latent, not per-head K/V)")
            if isinstance(g, bool) or not isinstance(g, int) or g < 1 or att.n_heads % g:
                divisors = [d for d in range(1, att.n_heads + 1) if att.n_heads % d == 0]
                raise RidgelineError(f"KV heads must divide the {att.n_heads} query heads (one of "
                                     f"{', '.join(map(str, divisors))}), got {g!r}")
        old = {i: l.attention for i, l in enumerate(self.layers)}
        layers = tuple(replace(l, attention=replace(l.attention, n_kv_heads=g)) for l in self.layers)
        table = self.gguf_tensors
        if table is not None:
            table = tuple(_regroup_kv(t, old[t.layer], g) if t.layer is not None else t for t in table)
        return replace(self, layers=layers, gguf_tensors=table)

    def tensors(self) -> list[TensorSpec]:
        """Every weight tensor (tied embeddings once), as GGUF names with torch-order shapes."""
        if self.gguf_tensors is not None:
            return list(self.gguf_tensors)
        h = self.hidden
        out = [TensorSpec("token_embd.weight", (self.vocab, h))]
        for i, layer in enumerate(self.layers):
            out += _layer_tensors(i, layer, h)
        out.append(TensorSpec("output_norm.weight", (h,)))
        if self.final_norm_bias:
            out.append(TensorSpec("output_norm.bias", (h,)))
        if not self.tied:
            out.append(TensorSpec("output.weight", (self.vocab, h)))
        return out

    def param_count(self) -> int:
        """Total parameters (tied embeddings counted once)."""
        return sum(t.numel for t in self.tensors())

    def embedding_params(self) -> int:
        """Parameters of the input embedding table (shared with the head when tied)."""
        return self.vocab * self.hidden

    def kv_elements_per_token(self, layer: Layer, mla_cache: str = "latent") -> int:
        """KV-cache elements one token adds in `layer` (K and V together; MLA per `mla_cache`)."""
        return sum(self.kv_elements_split(layer, mla_cache))

    def kv_elements_split(self, layer: Layer, mla_cache: str = "latent") -> tuple[int, int]:
        """KV-cache elements one token adds in `layer` as (keys, values); MLA's latent cache as transformers
        holds it: the compressed KV (d_c) as keys, the rope dims (d_r) as values."""
        att = layer.attention
        if att.mla:
            m = att.mla
            if mla_cache == "latent":
                return m.kv_lora_rank, m.qk_rope_head_dim
            if mla_cache == "decompressed":
                return att.n_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim), att.n_heads * m.v_head_dim
            raise RidgelineError(f"mla_cache must be 'latent' or 'decompressed', got {mla_cache!r}")
        return att.n_kv_heads * att.head_dim, att.n_kv_heads * att.head_dim

    def kv_tokens_held(self, layer: Layer, context: int) -> int:
        """Tokens a layer's cache holds after `context` tokens: W−1 past keys for a window W (as HF keeps)."""
        w = layer.attention.window
        return min(context, w - 1) if w else context


def _regroup_kv(t: TensorSpec, att: Attention, g: int) -> TensorSpec:
    """A stored K, V or fused QKV tensor with its rows for `g` KV heads; rows are whole, so bytes scale exactly."""
    role = t.role
    if role in ("attn_k", "attn_v"):
        old_rows, new_rows = att.n_kv_heads, g
    elif role == "attn_qkv":
        old_rows, new_rows = att.n_heads + 2 * att.n_kv_heads, att.n_heads + 2 * g
    else:
        return t
    shape = (t.shape[0] // old_rows * new_rows, *t.shape[1:])
    nbytes = t.nbytes // old_rows * new_rows if t.nbytes is not None else None
    return replace(t, shape=shape, nbytes=nbytes)


def _layer_tensors(i: int, layer: Layer, h: int) -> list[TensorSpec]:
    def t(role: str, *shape: int) -> TensorSpec:
        return TensorSpec(f"blk.{i}.{role}", tuple(shape), i)

    att, out = layer.attention, []
    norm_names = ["attn_norm", "ffn_norm", "attn_post_norm", "ffn_post_norm"][: layer.n_norms]
    if layer.parallel and layer.n_norms == 2:
        norm_names = ["attn_norm", "ffn_norm"]
    for n in norm_names:
        out.append(t(f"{n}.weight", h))
        if layer.norm_bias:
            out.append(t(f"{n}.bias", h))
    nq, nkv, d = att.n_heads, att.n_kv_heads, att.head_dim
    if att.mla:
        m = att.mla
        dqk = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank:
            out += [t("attn_q_a.weight", m.q_lora_rank, h), t("attn_q_a_norm.weight", m.q_lora_rank),
                    t("attn_q_b.weight", nq * dqk, m.q_lora_rank)]
        else:
            out.append(t("attn_q.weight", nq * dqk, h))
        out += [t("attn_kv_a_mqa.weight", m.kv_lora_rank + m.qk_rope_head_dim, h),
                t("attn_kv_a_norm.weight", m.kv_lora_rank),
                t("attn_kv_b.weight", nq * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank),
                t("attn_output.weight", h, nq * m.v_head_dim)]
    else:
        if att.fused_qkv:
            out.append(t("attn_qkv.weight", (nq + 2 * nkv) * d, h))
            if att.qkv_bias:
                out.append(t("attn_qkv.bias", (nq + 2 * nkv) * d))
        else:
            for role, rows in (("attn_q", nq * d), ("attn_k", nkv * d), ("attn_v", nkv * d)):
                out.append(t(f"{role}.weight", rows, h))
                if att.qkv_bias:
                    out.append(t(f"{role}.bias", rows))
        if att.qk_norm:
            out += [t("attn_q_norm.weight", d), t("attn_k_norm.weight", d)]
        out.append(t("attn_output.weight", h, nq * d))
        if att.o_bias:
            out.append(t("attn_output.bias", h))
    if layer.ffn:
        f = layer.ffn
        if f.glu and f.fused_gate_up:
            out.append(t("ffn_up.weight", 2 * f.intermediate, h))
        elif f.glu:
            out += [t("ffn_gate.weight", f.intermediate, h), t("ffn_up.weight", f.intermediate, h)]
        else:
            out.append(t("ffn_up.weight", f.intermediate, h))
        if f.bias:
            out += [t("ffn_gate.bias", f.intermediate)] if f.glu and not f.fused_gate_up else []
            out.append(t("ffn_up.bias", f.intermediate * (2 if f.fused_gate_up else 1)))
        out.append(t("ffn_down.weight", h, f.intermediate))
        if f.bias:
            out.append(t("ffn_down.bias", h))
    if layer.moe:
        e = layer.moe
        out += [t("ffn_gate_inp.weight", e.n_experts, h),
                t("ffn_gate_exps.weight", e.n_experts, e.expert_intermediate, h),
                t("ffn_up_exps.weight", e.n_experts, e.expert_intermediate, h),
                t("ffn_down_exps.weight", e.n_experts, h, e.expert_intermediate)]
        if e.shared_intermediate:
            s = e.shared_intermediate
            out += [t("ffn_gate_shexp.weight", s, h), t("ffn_up_shexp.weight", s, h),
                    t("ffn_down_shexp.weight", h, s)]
            if e.shared_gate:
                out.append(t("ffn_gate_inp_shexp.weight", h))
    return out


# ---------------------------------------------------------------------------------------------
# config.json -> ModelSpec


#: ridgeline's limits on config sizes (far above every published model, far below what would exhaust memory when
#: every layer and tensor is listed): field -> largest value accepted
LIMITS = {"layers": 1024, "hidden": 1 << 17, "heads": 1 << 12, "head_dim": 1 << 14, "intermediate": 1 << 20,
          "vocab": 1 << 24, "experts": 1 << 12, "positions": 1 << 27, "rank": 1 << 17}
_LIMIT_OF = {"hidden_size": "hidden", "n_embd": "hidden", "d_model": "hidden",
             "num_hidden_layers": "layers", "n_layer": "layers", "num_layers": "layers",
             "num_attention_heads": "heads", "n_head": "heads", "num_heads": "heads", "num_key_value_heads": "heads",
             "n_head_kv": "heads", "num_kv_heads": "heads", "head_dim": "head_dim", "vocab_size": "vocab",
             "intermediate_size": "intermediate", "n_inner": "intermediate", "ffn_hidden_size": "intermediate",
             "moe_intermediate_size": "intermediate", "moe_ffn_hidden_size": "intermediate",
             "shared_expert_intermediate_size": "intermediate", "n_experts": "experts", "num_experts_per_tok": "experts",
             "moe_top_k": "experts", "moe_num_active_primary_experts": "experts", "n_shared_experts": "experts",
             "q_lora_rank": "rank", "kv_lora_rank": "rank", "qk_nope_head_dim": "head_dim",
             "qk_rope_head_dim": "head_dim", "v_head_dim": "head_dim", "max_position_embeddings": "positions",
             "n_positions": "positions", "sliding_window": "positions", "sliding_window_size": "positions"}


def _get(cfg: dict, names: tuple[str, ...], where: str, required: bool = True, default: Any = None) -> Any:
    for n in names:
        if cfg.get(n) is not None:
            v = cfg[n]
            if isinstance(v, bool) or not isinstance(v, int):
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                else:
                    raise RidgelineError(f"{where}: field {n!r} must be an integer, got {v!r}")
            if v <= 0:
                raise RidgelineError(f"{where}: field {n!r} must be positive, got {v}")
            limit = LIMITS.get(_LIMIT_OF.get(n, ""))
            if limit is not None and v > limit:
                raise RidgelineError(f"{where}: field {n!r} is {v}, above ridgeline's limit of {limit} for it")
            return v
    if required:
        raise RidgelineError(f"{where}: missing required field {names[0]!r}")
    return default


def _check_fields(cfg: dict[str, Any], where: str) -> None:
    """Fields beyond the sizes: finite positive epsilons and rope bases, fractions in (0, 1], sizes that must be
    given as >= 1 when present (a config saying 0 experts or -1 positions is wrong, not dense or unbounded)."""
    from ridgeline.inputs import Node

    node = Node(cfg, where)
    for key in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps", "rope_theta"):
        node[key].number(gt=0, default=None)
    for key in ("partial_rotary_factor", "rotary_pct"):
        node[key].number(gt=0, le=1, default=None)
    for key in ("max_position_embeddings", "n_positions", "num_local_experts", "num_experts", "n_routed_experts",
                "moe_num_primary_experts", "sliding_window", "sliding_window_size"):
        if cfg.get(key) is not None and not (key.startswith("sliding") and cfg[key] in (0, False)):
            _get(cfg, (key,), where)
    for key in ("first_k_dense_replace", "max_window_layers"):
        node[key].integer(ge=0, le=LIMITS["layers"], default=None)
    for key in ("moe_layer_freq", "decoder_sparse_step", "sliding_window_pattern"):
        node[key].integer(ge=1, le=LIMITS["layers"], default=None)
    for key in ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window", "use_parallel_residual"):
        node[key].boolean(default=None)
    if cfg.get("mlp_only_layers") is not None:
        for entry in node["mlp_only_layers"].entries(max_len=LIMITS["layers"]):
            entry.integer(ge=0, le=LIMITS["layers"])
    for key in ("layer_types", "sliding_window_layout"):
        if isinstance(cfg.get(key), list) and len(cfg[key]) > LIMITS["layers"]:
            node[key].fail(f"a list of at most {LIMITS['layers']} layers")


def spec_from_config(cfg: dict[str, Any], name: str = "model", source: str = "") -> ModelSpec:
    """Build a ModelSpec from a config.json dict; a missing or invalid field raises naming it."""
    where = source or name
    if not isinstance(cfg, dict):
        raise RidgelineError(f"{where}: a config must be a JSON object")
    for key, kind, expected in (("text_config", dict, "an object"), ("rope_parameters", dict, "an object"),
                                ("partial_rotary_factor", (int, float), "a number"),
                                ("rotary_pct", (int, float), "a number"),
                                ("max_window_layers", int, "an integer"), ("layer_types", list, "a list"),
                                ("mlp_only_layers", list, "a list of layer indices")):
        if cfg.get(key) is not None and (not isinstance(cfg[key], kind) or isinstance(cfg[key], bool)):
            raise RidgelineError(f"{where}: field {key!r} must be {expected}, got {cfg[key]!r}")
    _check_fields(cfg, where)
    try:
        return _spec_from_config(cfg, name, source, where)
    except (TypeError, AttributeError, KeyError) as exc:  # a field of an unexpected type deep inside
        raise RidgelineError(f"{where}: malformed config ({type(exc).__name__}: {exc})") from None


def _spec_from_config(cfg: dict[str, Any], name: str, source: str, where: str) -> ModelSpec:
    if "text_config" in cfg and "hidden_size" not in cfg:  # multimodal wrappers (gemma3, llava...)
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
    mt = str(cfg.get("model_type") or "unknown")
    h = _get(cfg, ("hidden_size", "n_embd", "d_model"), where)
    n_layers = _get(cfg, ("num_hidden_layers", "n_layer", "num_layers"), where)
    nq = _get(cfg, ("num_attention_heads", "n_head", "num_heads"), where)
    vocab = _get(cfg, ("vocab_size",), where)
    nkv = _get(cfg, ("num_key_value_heads", "n_head_kv", "num_kv_heads"), where, False, nq)
    if mt in _MHA_ONLY:
        nkv = nq
    head_dim = _get(cfg, ("head_dim",), where, False, None)
    if head_dim is None:
        if h % nq:
            raise RidgelineError(f"{where}: hidden_size {h} is not divisible by num_attention_heads {nq}; set head_dim")
        head_dim = h // nq
    if nq % nkv:
        raise RidgelineError(f"{where}: num_attention_heads {nq} is not a multiple of num_key_value_heads {nkv}")
    tied = bool(cfg.get("tie_word_embeddings", _TIED_DEFAULT.get(mt, False)))
    plain_mlp = mt in _PLAIN_MLP
    norm_bias = mt in _LAYERNORM
    attn_bias = cfg.get("attention_bias", _QKV_BIAS_DEFAULT.get(mt, False))
    qkv_bias = bool(attn_bias)
    o_bias = bool(attn_bias) and mt not in ("qwen2", "qwen2_moe")
    if mt in ("qwen2", "qwen2_moe") and "attention_bias" not in cfg:
        qkv_bias, o_bias = True, False
    rope = cfg.get("rope_parameters") or {}
    partial = cfg.get("partial_rotary_factor", cfg.get("rotary_pct", rope.get("partial_rotary_factor")))
    if partial is None:
        partial = 0.25 if mt == "gpt_neox" else 1.0
    mla = None
    if cfg.get("kv_lora_rank"):
        mla = MLA(q_lora_rank=_get(cfg, ("q_lora_rank",), where, False, None),
                  kv_lora_rank=_get(cfg, ("kv_lora_rank",), where),
                  qk_nope_head_dim=_get(cfg, ("qk_nope_head_dim",), where),
                  qk_rope_head_dim=_get(cfg, ("qk_rope_head_dim",), where),
                  v_head_dim=_get(cfg, ("v_head_dim",), where))
    windows = _layer_windows(cfg, mt, n_layers, where)
    moe_layers, moe = _moe(cfg, mt, n_layers, where)
    dense_f = _get(cfg, ("intermediate_size", "n_inner", "ffn_hidden_size"), where,
                   required=not (moe and len(moe_layers) == n_layers), default=4 * h if mt == "gpt2" else None)
    n_norms = 4 if mt in ("gemma3_text", "gemma3", "gemma2") else 2
    layers = []
    for i in range(n_layers):
        att = Attention(nq, nkv if not mla else nq, head_dim if not mla else mla.qk_nope_head_dim + mla.qk_rope_head_dim,
                        qkv_bias=qkv_bias and not mla, o_bias=o_bias and not mla, qk_norm=mt in _QK_NORM,
                        fused_qkv=mt in _FUSED_QKV, window=windows[i],
                        rotary_dim=mla.qk_rope_head_dim if mla else int(head_dim * partial), mla=mla)
        if i in moe_layers:
            layers.append(Layer(att, moe=moe, n_norms=n_norms))
        else:
            ffn = FFN(dense_f, glu=not plain_mlp, bias=norm_bias or bool(cfg.get("mlp_bias", False)),
                      fused_gate_up=mt == "phi3")
            layers.append(Layer(att, ffn=ffn, n_norms=n_norms, norm_bias=norm_bias,
                                parallel=mt == "gpt_neox" and bool(cfg.get("use_parallel_residual", True))))
    return ModelSpec(name=name, model_type=mt, hidden=h, vocab=vocab, layers=tuple(layers), tied=tied,
                     final_norm_bias=norm_bias,
                     max_position=_get(cfg, ("max_position_embeddings", "n_positions"), where, False), source=source)


def _layer_windows(cfg: dict, mt: str, n: int, where: str) -> list[int | None]:
    w = cfg.get("sliding_window") or cfg.get("sliding_window_size")
    types = cfg.get("layer_types")
    if types is None and isinstance(cfg.get("sliding_window_layout"), list):  # SmallThinker: 1 = sliding
        types = ["sliding_attention" if x else "full_attention" for x in cfg["sliding_window_layout"]]
    if types is not None:
        if not isinstance(types, list) or len(types) != n:
            raise RidgelineError(f"{where}: field 'layer_types' must list one type per layer ({n})")
        if any(t == "sliding_attention" for t in types) and not w:
            raise RidgelineError(f"{where}: layer_types has sliding_attention layers but no 'sliding_window'")
        return [w if t == "sliding_attention" else None for t in types]
    if mt in ("gemma3_text", "gemma3"):
        pattern = cfg.get("sliding_window_pattern", 6)
        w = w or 4096
        return [None if (i + 1) % pattern == 0 else w for i in range(n)]
    if not w or cfg.get("use_sliding_window") is False:
        return [None] * n
    if isinstance(w, bool) or not isinstance(w, int) or w <= 0:
        raise RidgelineError(f"{where}: field 'sliding_window' must be a positive integer, got {w!r}")
    if cfg.get("use_sliding_window") and cfg.get("max_window_layers") is not None:
        # Qwen2-style: the first max_window_layers layers use full attention
        return [None if i < cfg["max_window_layers"] else w for i in range(n)]
    return [w] * n


def _moe(cfg: dict, mt: str, n: int, where: str) -> tuple[set[int], MoE | None]:
    keys = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_primary_experts")
    e = next((cfg[k] for k in keys if cfg.get(k) is not None), None)
    if e is None:
        return set(), None
    e = _get(cfg, keys, where)  # 0 experts is an error, not a dense model
    k = _get(cfg, ("num_experts_per_tok", "moe_top_k", "moe_num_active_primary_experts"), where)
    if k > e:
        raise RidgelineError(f"{where}: num_experts_per_tok {k} exceeds the number of experts {e}")
    fe = _get(cfg, ("moe_intermediate_size", "moe_ffn_hidden_size", "intermediate_size"), where)
    shared, gate = 0, False
    if cfg.get("shared_expert_intermediate_size"):
        shared, gate = _get(cfg, ("shared_expert_intermediate_size",), where), True
    elif cfg.get("n_shared_experts"):
        shared = _get(cfg, ("n_shared_experts",), where) * fe
    if mt.startswith("deepseek"):
        first, freq = cfg.get("first_k_dense_replace", 0), cfg.get("moe_layer_freq") or 1
        layers = {i for i in range(n) if i >= first and i % freq == 0}
    elif mt in ("qwen2_moe", "qwen3_moe"):
        step, dense = cfg.get("decoder_sparse_step", 1) or 1, set(cfg.get("mlp_only_layers") or [])
        layers = {i for i in range(n) if i not in dense and (i + 1) % step == 0}
    else:
        layers = set(range(n))
    return layers, MoE(e, k, fe, shared, gate)


# ---------------------------------------------------------------------------------------------
# Where a spec comes from: a file, a folder, a GGUF, the catalogue


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a config.json (bounded: size, nesting, integers), with a one-line error for unreadable or non-JSON files."""
    from ridgeline.inputs import read_json

    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise RidgelineError(f"{path}: expected a JSON object (a Hugging Face config.json)")
    return cfg


def with_stored_formats(spec: ModelSpec, tensor_formats: dict[str, str], default: str) -> ModelSpec:
    """The spec with a stored-tensor table: tensors named in `tensor_formats` (GGUF names) in that format,
    other 2-D tensors in `default`, 1-D tensors in fp32 (what `--weights stored` then prices)."""
    from ridgeline.specs.formats import get_format

    table = []
    for t in spec.tensors():
        fmt = tensor_formats.get(t.name, default if len(t.shape) >= 2 else "fp32")
        table.append(replace(t, ggml_type=fmt, nbytes=get_format(fmt).tensor_bytes(t.shape, t.name)))
    return replace(spec, gguf_tensors=tuple(table))


def quantized_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The stored formats of a ridgeline-quantized folder (`ridgeline_quant.json`): per-tensor formats (GGUF
    names) and the float format of everything else; None for any other folder."""
    path = Path(folder) / "ridgeline_quant.json"
    if not path.is_file():
        return None
    from ridgeline.inputs import Node

    node = Node(load_config_file(path), str(path))
    formats = {k: v.text() for k, v in node["tensor_formats"].items()} if not node["tensor_formats"].missing else {}
    dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[
        node["float_dtype"].choice(("float32", "bfloat16", "float16"), default="float32")]
    return {"tensor_formats": formats, "float_format": dtype}


@dataclass(frozen=True)
class AttentionDims:
    """The attention shape of a transformers config: layers, hidden size, query/KV heads and head dim."""

    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @property
    def kv_width(self) -> int:
        """Elements one token's keys (or values) take in one layer: n_kv_heads · head_dim."""
        return self.n_kv_heads * self.head_dim


def attention_dims(config: Any) -> AttentionDims:
    """Attention dimensions of a transformers config object (or config dict), with transformers' defaults:
    KV heads = query heads when unset, head_dim = hidden / heads when unset."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    heads = int(get("num_attention_heads"))
    hidden = int(get("hidden_size"))
    return AttentionDims(int(get("num_hidden_layers")), hidden, heads,
                         int(get("num_key_value_heads", None) or heads),
                         int(get("head_dim", None) or hidden // heads))
