"""A lean, gpt-fast-style decode path for llama-family causal LMs, in plain eager PyTorch.

Why this exists: transformers' eager decode spends a lot of time in Python and operator dispatch on a
small model on a CPU (module calls, cache objects, mask building, kwargs plumbing: ~170 us per layer per
token in fp32 on a 2-vCPU Zen 4, where this path needs ~70 us; measured on a 30-layer model of negligible
width), so its tokens/s says little about how close the hardware could get to the memory-bandwidth roof.
Following gpt-fast (pytorch-labs), this module rebuilds the model as a handful of tensors and a short
straight-line loop:

* fused projections: one `wqkv` matmul (q, k and v weight rows concatenated; qwen2's biases too) and one
  `w13` matmul (gate and up rows); `wo`, `w2`, the embedding, final norm and lm_head share storage with the
  transformers model (the two fused weights are copies: a cat cannot share storage; each is placed at the
  source weight's address modulo 64 bytes, because MKL's fp32 gemv rounds differently on differently
  aligned rows). All four projections are `torch.nn.Linear` modules so quantization code can swap them.
* rotary cos/sin for positions 0..max_len-1 precomputed once with the model's own `rotary_emb`, so every
  static rope_scaling variant (linear, llama3, yarn, ...) matches transformers exactly. The tables cover the
  v heads too (cos 1, sin 0, an exact identity), so rope runs once over the whole qkv output, and the rotated
  k and the untouched v land next to each other and reach the cache with a single copy.
* a static KV cache for all layers in one preallocated tensor (layer i's keys are
  `kv[i, :, :n_kv_heads]`, its values `kv[i, :, n_kv_heads:]`, each (1, n_kv_heads, max_len, head_dim)),
  written in place; decode attends to the cache sliced to the current length with one
  `scaled_dot_product_attention` call (GQA through `enable_gqa`).
* RMSNorm through `torch.nn.functional.rms_norm`, one call whose composite kernel does the same operations
  in the same order as transformers' RMSNorm (fp32 statistics, cast back); in fp32 the weight goes into the
  call, in bf16/fp16 it is multiplied after the cast, as transformers does.

It implements ridgeline's speculative `Verifier` interface (`ridgeline.engine.speculative`): besides `prefill` and
`decode`, `verify(tokens [M], positions [M], visibility [M, M])` runs M new tokens through every layer at once
(their K/V in slots L..L+M-1, rope at the given positions, one SDPA per layer with a float additive mask: the whole
prefix visible, the new tokens as `visibility` says) and returns every token's logits and post-norm hidden state;
`keep(indices)` then moves the accepted tokens' K/V to contiguous slots L.. and drops the rest; `hidden` holds the
post-norm hidden state(s) behind the last logits; `crop(n)` forgets positions n.. (draft models). Verification is a
small-M GEMM per projection: torch's fp32 GEMM with a few rows costs far more than its GEMV here, which is what
limits the useful tree size on this path.

About 20 dispatched operators per layer per decoded token remain; there is no torch.compile, no CUDA graph.
The kernels are the ones transformers calls (MKL/oneDNN matmul, the flash SDPA kernel), so the logits are
bit-identical to transformers' (checked in fp32 and bf16 on SmolLM2-135M for prefill with
logits_to_keep=1 and 72 decode steps) and any speed-up is overhead removed, not different arithmetic.
Memory: the fused wqkv and w13 are copies (about 60% of the layer weights), the rope tables hold
2 * (n_heads + 2 * n_kv_heads) * max_len * head_dim values and the cache 2 * n_layers * n_kv_heads *
max_len * head_dim.

Not supported (refused with a RidgelineError): model types other than llama, mistral and qwen2; sliding-window
attention that would actually slide within `max_len`; biases other than the q/k/v ones; activations other
than silu; partial rotary; dynamic and longrope scaling past their original context; batch sizes above 1;
padding; sampling (callers take the argmax or sample from the returned logits themselves).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ridgeline.errors import RidgelineError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: model types this path rebuilds
SUPPORTED_TYPES = ("llama", "mistral", "qwen2")

#: rope types whose tables depend on the sequence length (usable only up to their original context)
_LENGTH_DEPENDENT_ROPE = {"dynamic", "longrope"}

#: whether scaled_dot_product_attention takes enable_gqa (torch >= 2.5)
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """An nn.Linear whose parameters are exactly `weight` (and `bias`): no copy, no fresh initialisation."""
    out_features, in_features = weight.shape
    lin = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    lin.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        lin.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)
    return lin


def _fused(parts: list[torch.Tensor]) -> torch.Tensor:
    """cat(parts) along dim 0, placed at the same address modulo 64 bytes as parts[0].

    MKL's fp32 matrix-vector product sums each row in an order that depends on where the row sits relative
    to a 64-byte boundary, and transformers' weights memory-mapped from safetensors often sit off it; a fused
    copy at the same offset gives bit-identical q/k/v (gate/up) outputs, so greedy decoding matches exactly.
    """
    first = parts[0].detach()
    size = first.element_size()
    rows = sum(p.shape[0] for p in parts)
    numel = rows * first[0].numel()
    buffer = torch.empty(numel + 64 // size, dtype=first.dtype, device=first.device)
    start = 0
    offset = first.data_ptr() % 64
    if offset % size == 0:
        start = ((offset - buffer.data_ptr()) % 64) // size
    out = buffer[start:start + numel].view(rows, *first.shape[1:])
    torch.cat([p.detach() for p in parts], dim=0, out=out)
    return out


def _fuse(modules: list[nn.Module]) -> nn.Module:
    """One module computing the concatenated outputs of `modules`: nn.Linear weights (and biases) are fused
    copies (a lone module is shared, not copied); quantized modules are concatenated by their own `cat`."""
    from ridgeline.quant import QuantLinear

    if isinstance(modules[0], QuantLinear):
        return modules[0] if len(modules) == 1 else type(modules[0]).cat(modules)
    if not all(type(m) is nn.Linear for m in modules):
        raise RidgelineError(f"lean decode cannot fuse {', '.join(type(m).__name__ for m in modules)}")
    if len(modules) == 1:
        return _linear(modules[0].weight, modules[0].bias)
    bias = _fused([m.bias for m in modules]) if modules[0].bias is not None else None
    return _linear(_fused([m.weight for m in modules]), bias)


def _check_supported(model: PreTrainedModel, max_len: int) -> None:
    """Raise RidgelineError naming the first feature of `model` this path does not reproduce exactly."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_TYPES:
        raise RidgelineError(f"lean decode supports model types {', '.join(SUPPORTED_TYPES)}, not {model_type!r}")
    if not isinstance(max_len, int) or max_len < 1:
        raise RidgelineError(f"max_len must be a positive integer, got {max_len!r}")
    window = getattr(config, "sliding_window", None)
    if model_type == "qwen2":
        sliding = any(t == "sliding_attention" for t in (getattr(config, "layer_types", None) or []))
        window = window if sliding else None
    if window is not None and window < max_len:
        raise RidgelineError(f"lean decode does not do sliding-window attention ({model_type} sliding_window={window} "
                             f"< max_len={max_len}); use max_len <= {window}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise RidgelineError(f"lean decode supports the silu activation only, not {config.hidden_act!r}")
    inner = getattr(model, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")) \
            or not hasattr(model, "lm_head"):
        raise RidgelineError("lean decode needs a transformers *ForCausalLM with model.{embed_tokens,layers,norm,"
                             "rotary_emb} and lm_head")
    rotary = inner.rotary_emb
    rope_type = getattr(rotary, "rope_type", "default")
    if not isinstance(rope_type, str):
        raise RidgelineError("lean decode does not support per-layer-type rope parameters")
    if rope_type in _LENGTH_DEPENDENT_ROPE:
        params = getattr(config, "rope_parameters", None) or {}
        original = (params.get("original_max_position_embeddings") if rope_type == "longrope"
                    else getattr(rotary, "original_max_seq_len", None))
        if original is None or max_len > original:
            raise RidgelineError(f"lean decode does not do {rope_type} rope scaling past the original context "
                                 f"({original} positions); use max_len <= {original}")
    for i, layer in enumerate(inner.layers):
        attn, mlp = layer.self_attn, layer.mlp
        if getattr(attn, "sliding_window", None) is not None and attn.sliding_window < max_len:
            raise RidgelineError(f"lean decode does not do sliding-window attention (layer {i})")
        if getattr(attn.o_proj, "bias", None) is not None:
            raise RidgelineError(f"lean decode does not support attention_bias (o_proj bias in layer {i})")
        if any(getattr(getattr(mlp, n), "bias", None) is not None for n in ("gate_proj", "up_proj", "down_proj")):
            raise RidgelineError(f"lean decode does not support mlp_bias (layer {i})")
        qkv_bias = [getattr(p, "bias", None) is not None for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
        if any(qkv_bias) and not all(qkv_bias):
            raise RidgelineError(f"lean decode needs biases on all of q, k, v or none (layer {i})")
        for name in ("q_norm", "k_norm"):
            if getattr(attn, name, None) is not None:
                raise RidgelineError(f"lean decode does not support per-head {name} (layer {i})")


class LeanLayer(nn.Module):
    """One decoder layer's weights: fused wqkv, wo, fused w13 (gate, up), w2 and the two RMSNorm weights."""

    def __init__(self, hf_layer: nn.Module) -> None:
        """Take (or, for the fused projections, concatenate) the weights of a transformers decoder layer."""
        super().__init__()
        attn, mlp = hf_layer.self_attn, hf_layer.mlp
        self.wqkv = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        self.wo = _fuse([attn.o_proj])
        self.w13 = _fuse([mlp.gate_proj, mlp.up_proj])
        self.w2 = _fuse([mlp.down_proj])
        self.attn_norm = hf_layer.input_layernorm.weight
        self.ffn_norm = hf_layer.post_attention_layernorm.weight


class LeanCausalLM(nn.Module):
    """A llama/mistral/qwen2 causal LM rebuilt for lean batch-1 decoding with a static KV cache."""

    def __init__(self, model: PreTrainedModel, max_len: int) -> None:
        """Rebuild `model` (see `from_hf`, which checks support first) with room for `max_len` positions."""
        super().__init__()
        config, inner = model.config, model.model
        embed = inner.embed_tokens.weight
        self.dtype, device = embed.dtype, embed.device
        self.max_len = max_len
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        attn0 = inner.layers[0].self_attn
        self.head_dim = attn0.head_dim
        self.scaling = float(attn0.scaling)
        self.n_all_heads = self.n_heads + 2 * self.n_kv_heads
        self.vocab_size = embed.shape[0]
        self.eps = float(inner.norm.variance_epsilon)
        self.hidden_size = embed.shape[1]
        self.embed = embed
        self.norm = inner.norm.weight
        self.lm_head = _fuse([model.lm_head])
        self.layers = nn.ModuleList(LeanLayer(layer) for layer in inner.layers)
        for layer in inner.layers:
            if float(layer.input_layernorm.variance_epsilon) != self.eps \
                    or float(layer.post_attention_layernorm.variance_epsilon) != self.eps:
                raise RidgelineError("lean decode needs one rms_norm_eps for every norm")
        self._build_rope(inner.rotary_emb, device)
        n_layers = len(self.layers)
        #: the KV cache of every layer: [layer, batch, k heads then v heads, position, head_dim]
        self.register_buffer("kv", torch.zeros(n_layers, 1, 2 * self.n_kv_heads, max_len, self.head_dim,
                                               dtype=self.dtype, device=device), persistent=False)
        self.length = 0
        #: post-norm hidden state(s) of the positions the last prefill (last one), decode or verify returned logits for
        self.hidden: torch.Tensor | None = None
        self._verified: int | None = None  # the cache length before the last verify, until keep
        # rms_norm with the weight folds the weight in before the cast back; in fp32 there is no cast, so the
        # fused call is exact, while in half precision transformers multiplies by the weight after the cast
        self._norm_has_weight = self.dtype == torch.float32

    @classmethod
    def from_hf(cls, model: PreTrainedModel, max_len: int) -> LeanCausalLM:
        """Build from a transformers llama/mistral/qwen2 *ForCausalLM; RidgelineError names anything unsupported."""
        _check_supported(model, max_len)
        with torch.no_grad():
            return cls(model, max_len)

    def _build_rope(self, rotary: nn.Module, device: torch.device) -> None:
        """Precompute cos/sin tables [head, position, head_dim] for all q, k and v heads with the model's rotary_emb."""
        positions = torch.arange(self.max_len, device=device)[None]
        with torch.no_grad():
            cos, sin = rotary(torch.empty(0, dtype=self.dtype, device=device), position_ids=positions)
        cos, sin = cos[0].to(self.dtype), sin[0].to(self.dtype)  # (max_len, head_dim)
        if cos.shape[-1] != self.head_dim:
            raise RidgelineError(f"lean decode does not support partial rotary "
                                 f"({cos.shape[-1]} of {self.head_dim} dims)")
        half = self.head_dim // 2
        # rotate_half(x) * sin == roll(x, half) * sin_signed exactly (negation is exact): one op instead of four
        sin_signed = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)
        qk, v = self.n_heads + self.n_kv_heads, self.n_kv_heads
        shape = (qk, self.max_len, self.head_dim)
        cos_all = torch.cat([cos.expand(shape), torch.ones(v, self.max_len, self.head_dim, dtype=self.dtype,
                                                                device=device)])
        sin_all = torch.cat([sin_signed.expand(shape), torch.zeros(v, self.max_len, self.head_dim,
                                                                      dtype=self.dtype, device=device)])
        self.register_buffer("cos", cos_all.contiguous(), persistent=False)
        self.register_buffer("sin", sin_all.contiguous(), persistent=False)

    def reset(self) -> None:
        """Empty the KV cache (the next prefill starts at position 0)."""
        self.length, self.hidden, self._verified = 0, None, None

    def crop(self, n: int) -> None:
        """Forget the cached positions n and after (the next token goes to position n)."""
        if not 0 <= n <= self.length:
            raise RidgelineError(f"crop: the cache holds {self.length} tokens, cannot keep {n}")
        self.length, self._verified = n, None

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm with transformers' numerics (fp32 statistics, cast back, then times the weight)."""
        if self._norm_has_weight:
            return F.rms_norm(x, (self.hidden_size,), weight, self.eps)
        return F.rms_norm(x, (self.hidden_size,), None, self.eps) * weight

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """scaled_dot_product_attention with GQA, causal flag or explicit mask."""
        if _SDPA_GQA:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.scaling,
                                                  enable_gqa=self.n_heads != self.n_kv_heads)
        rep = self.n_heads // self.n_kv_heads
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.scaling)

    def _check_room(self, n: int) -> None:
        if self.length + n > self.max_len:
            raise RidgelineError(f"KV cache full: {self.length} + {n} tokens > max_len {self.max_len}")

    def _layers(self, x: torch.Tensor, start: int, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """Run n new positions (embedded `x`, (1, n, hidden)) through every layer after `start` cached ones; their
        K/V land in slots start..start+n-1. `mask` (n, start+n) bool or float additive; None: causal from 0."""
        hq, hkv, hd, nh = self.n_heads, self.n_kv_heads, self.head_dim, self.n_all_heads
        n = x.shape[1]
        for i, layer in enumerate(self.layers):
            h = self._norm(x, layer.attn_norm)
            qkv = layer.wqkv(h).view(1, n, nh, hd).transpose(1, 2)
            y = qkv * cos + torch.roll(qkv, hd // 2, -1) * sin
            kv = self.kv[i]
            kv[:, :, start:start + n].copy_(y[:, hq:])
            if mask is not None:
                a = self._attend(y[:, :hq], kv[:, :hkv, :start + n], kv[:, hkv:, :start + n], False, mask)
            else:
                a = self._attend(y[:, :hq], y[:, hq:hq + hkv], y[:, hq + hkv:], True)
            x = x + layer.wo(a.transpose(1, 2).reshape(1, n, hq * hd))
            h = self._norm(x, layer.ffn_norm)
            gate, up = layer.w13(h).chunk(2, -1)
            x = x + layer.w2(F.silu(gate) * up)
        return x

    @torch.inference_mode()
    def prefill(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Run a (1, P) prompt chunk through the model, continuing the cache; its last position's logits (1, vocab).
        `hidden` holds that position's post-norm hidden state (1, hidden)."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
            raise RidgelineError(f"prefill takes input_ids of shape (1, P) with P >= 1, got {tuple(input_ids.shape)}")
        start, n = self.length, input_ids.shape[1]
        self._check_room(n)
        cos, sin = self.cos[:, start:start + n], self.sin[:, start:start + n]
        mask = None
        if start:
            rows = torch.arange(start, start + n, device=input_ids.device)[:, None]
            mask = torch.arange(start + n, device=input_ids.device)[None] <= rows
        x = self._layers(F.embedding(input_ids, self.embed), start, cos, sin, mask)
        self.length, self._verified = start + n, None
        self.hidden = self._norm(x[:, -1:], self.norm).view(1, -1)
        return self.lm_head(self.hidden).view(1, -1)

    @torch.inference_mode()
    def verify(self, tokens: torch.LongTensor, positions: torch.LongTensor,
               visibility: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append M tokens after the L cached ones (slots L..L+M-1) at rope `positions` [M]; token i attends every
        cached position and the new tokens j with visibility[i, j] (a bool [M, M] whose diagonal is True).
        Returns every new token's logits [M, vocab] and post-norm hidden state [M, hidden]; the cache length is
        L+M until `keep` chooses which of them stay."""
        m = _check_verify(tokens, positions, visibility, self.max_len)
        start = self.length
        self._check_room(m)
        pos = positions.reshape(-1)
        cos, sin = self.cos[:, pos], self.sin[:, pos]
        # a float additive mask: prefix all visible, the new tokens as `visibility` says (exact with SDPA's kernels)
        mask = torch.zeros(m, start + m, dtype=self.dtype, device=self.kv.device)
        mask[:, start:].masked_fill_(~visibility.to(self.kv.device), torch.finfo(self.dtype).min)
        x = self._layers(F.embedding(tokens.reshape(1, m), self.embed), start, cos, sin, mask)
        self.length, self._verified = start + m, start
        self.hidden = self._norm(x, self.norm).view(m, -1)
        return self.lm_head(self.hidden), self.hidden

    @torch.inference_mode()
    def keep(self, indices: torch.LongTensor) -> None:
        """After `verify` from length L: keep the new tokens at slots L+indices[k] as L+k (in that order, which must
        be increasing) and set the length to L+len(indices); the other verified tokens are dropped."""
        start = self._verified
        if start is None:
            raise RidgelineError("keep follows verify: no verified tokens to keep")
        idx = _check_keep(indices, self.length - start)
        n = idx.numel()
        if n and not torch.equal(idx, torch.arange(n)):
            self.kv[:, :, :, start:start + n] = self.kv.index_select(3, (idx + start).to(self.kv.device))
        self.length, self._verified = start + n, None

    @torch.inference_mode()
    def decode(self, token: torch.LongTensor) -> torch.Tensor:
        """Run one token (shape (1, 1)) at the next position, continuing the cache; its logits (1, vocab)."""
        pos = self.length
        if pos >= self.max_len:
            raise RidgelineError(f"KV cache full: position {pos} is past max_len {self.max_len}")
        if token.numel() != 1:
            raise RidgelineError(f"decode takes one token of shape (1, 1), got {tuple(token.shape)}")
        hq, hkv, hd, nh, half = self.n_heads, self.n_kv_heads, self.head_dim, self.n_all_heads, self.head_dim // 2
        n = pos + 1
        # per-step views, made once for all layers: rope rows (heads, 1, hd) broadcasting over (1, heads, 1, hd);
        # each layer's cache slot (1, 2*hkv, 1, hd) for this token; each layer's keys and values so far
        cos, sin = self.cos[:, pos:n], self.sin[:, pos:n]
        slots = self.kv[:, :, :, pos:n].unbind(0)
        cached = self.kv[:, :, :, :n]
        keys, values = cached[:, :, :hkv].unbind(0), cached[:, :, hkv:].unbind(0)
        shape, eps, scale, gqa = (self.hidden_size,), self.eps, self.scaling, hq != hkv
        fold = self._norm_has_weight
        rms_norm, sdpa, silu, roll = F.rms_norm, F.scaled_dot_product_attention, F.silu, torch.roll
        x = F.embedding(token.view(1, 1), self.embed)
        # Linear modules are entered through .forward: it is what a swapped-in (quantized) module overrides, and
        # skipping nn.Module.__call__ (hooks, which nothing here registers) saves ~7 us per layer.
        for layer, slot, k, v in zip(self.layers, slots, keys, values):
            h = rms_norm(x, shape, layer.attn_norm, eps) if fold else rms_norm(x, shape, None, eps) * layer.attn_norm
            qkv = layer.wqkv.forward(h).view(1, nh, 1, hd)  # one position: (1, 1, heads, hd) is (1, heads, 1, hd)
            y = qkv * cos
            y += roll(qkv, half, -1).mul_(sin)  # rope on q and k; v heads pass through (cos 1, sin 0)
            slot.copy_(y[:, hq:])
            if _SDPA_GQA:
                a = sdpa(y[:, :hq], k, v, scale=scale, enable_gqa=gqa)
            else:
                a = self._attend(y[:, :hq], k, v, False)
            x += layer.wo.forward(a.view(1, 1, hq * hd))
            h = rms_norm(x, shape, layer.ffn_norm, eps) if fold else rms_norm(x, shape, None, eps) * layer.ffn_norm
            gate, up = layer.w13.forward(h).chunk(2, -1)
            x += layer.w2.forward(silu(gate, inplace=True).mul_(up))
        self.length, self._verified = n, None
        self.hidden = self._norm(x, self.norm).view(1, -1)
        return self.lm_head.forward(self.hidden).view(1, -1)


def _check_verify(tokens: torch.Tensor, positions: torch.Tensor, visibility: torch.Tensor, max_len: int) -> int:
    """M, after checking the shapes and ranges of a verify call (RidgelineError names the bad argument)."""
    m = tokens.numel()
    if m < 1 or tokens.dim() > 2 or (tokens.dim() == 2 and tokens.shape[0] != 1):
        raise RidgelineError(f"verify takes M >= 1 tokens as [M] or [1, M], got shape {tuple(tokens.shape)}")
    if positions.numel() != m:
        raise RidgelineError(f"verify: {positions.numel()} positions for {m} tokens")
    if m and (int(positions.min()) < 0 or int(positions.max()) >= max_len):
        raise RidgelineError(f"verify: positions must lie in [0, {max_len}), got [{int(positions.min())}, "
                             f"{int(positions.max())}]")
    if visibility.shape != (m, m) or visibility.dtype != torch.bool:
        raise RidgelineError(f"verify: visibility must be a bool [{m}, {m}] tensor, got {visibility.dtype} "
                             f"{tuple(visibility.shape)}")
    if not bool(visibility.diagonal().all()):
        raise RidgelineError("verify: every token must see itself (visibility's diagonal all True)")
    return m


def _check_keep(indices: torch.Tensor | list[int], verified: int) -> torch.Tensor:
    """`indices` as a 1-D int64 tensor, checked to be increasing and within the `verified` new tokens."""
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= verified):
        raise RidgelineError(f"keep: indices must lie in [0, {verified}), got {idx.tolist()}")
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise RidgelineError(f"keep: indices must be increasing, got {idx.tolist()}")
    return idx


@torch.inference_mode()
def greedy(model: LeanCausalLM, input_ids: torch.LongTensor, n: int) -> list[int]:
    """Reset, prefill `input_ids` (1, P), then take n argmax tokens (EOS ignored); the n generated ids."""
    model.reset()
    logits = model.prefill(input_ids)
    out: list[int] = []
    for i in range(n):
        token = logits.argmax(-1)
        out.append(int(token))
        if i + 1 < n:
            logits = model.decode(token.view(1, 1))
    return out
