"""Speculative runners on a loaded model: the verify-cost curve, the tree it chooses, and the bench factory.

`measure_cost_curve` times, on the verifier that will run, a plain decode step and the verification of m
tokens (m = 1 .. max) after a real prefix, interleaved over repeats (medians), plus the drafter's own time per
step (Medusa heads on one hidden state). t(m) / t_decode is the curve the tree size is chosen from
(`ridgeline.engine.tree.choose_tree`): on a CPU a forward over m tokens is a small-M GEMM whose cost rises with m
(torch's fp32 GEMM with a few rows is much slower than its GEMV), so the best tree is re-derived from the curve
of whatever path runs, never hard-coded.

`spec_runner(setting, loaded)` is the factory `ridgeline bench --spec` passes to the bench grid: it builds a
`SpecDecoder` on the loaded model's path (the native or lean model when the bench loaded one, else transformers'
forward) for `medusa:DIR`, `prompt-lookup[:N]` or `draft:N|MODEL`, and records what it chose in `info`.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ridgeline.engine.drafters import DraftModelDrafter, MedusaDrafter, PromptLookupDrafter
from ridgeline.engine.hf_verifier import HFVerifier
from ridgeline.engine.speculative import Acceptance, SpecDecoder, glue_threads
from ridgeline.engine.tree import Tree, choose_tree, expected_tokens, parse_tree
from ridgeline.errors import RidgelineError

#: tokens verified at most when the tree is chosen from the cost curve
MAX_VERIFY = 24
#: verify sizes the curve measures (the tree sizes considered): every m up to 8, then sparser
CURVE_SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 20, 24, 32, 48, 64)


def curve_sizes(cap: int) -> list[int]:
    """The measured verify sizes up to `cap` (cap itself included)."""
    return sorted({m for m in CURVE_SIZES if m <= cap} | {cap})


@dataclass(frozen=True)
class CostCurve:
    """Measured medians: one plain decode step, verifying m tokens, and the drafter's time per step (seconds)."""

    decode_s: float
    verify_s: dict[int, float]
    draft_s: float
    prefix: int
    repeats: int
    samples: dict

    def relative(self) -> dict[int, float]:
        """t(m) / t_decode for every m measured."""
        return {m: t / self.decode_s for m, t in self.verify_s.items()}

    def to_json(self) -> dict:
        """JSON form (medians, ratios and every sample)."""
        return {"decode_s": self.decode_s, "verify_s": {str(m): t for m, t in self.verify_s.items()},
                "relative": {str(m): r for m, r in self.relative().items()}, "draft_s": self.draft_s,
                "draft_relative": self.draft_s / self.decode_s, "prefix_tokens": self.prefix, "repeats": self.repeats,
                "samples": self.samples}


@torch.inference_mode()
def measure_cost_curve(verifier: Any, prefix: Sequence[int], sizes: Sequence[int] = tuple(range(1, MAX_VERIFY + 1)),
                       repeats: int = 5, draft: Callable[[torch.Tensor], Any] | None = None,
                       warmup: int = 1) -> CostCurve:
    """Time decode, verify(m) for every m in `sizes` and `draft(hidden)` after a prefill of `prefix`, interleaved."""
    sizes = sorted({int(m) for m in sizes})
    if not sizes or sizes[0] < 1 or repeats < 1:
        raise RidgelineError("the cost curve needs verify sizes >= 1 and repeats >= 1")
    with glue_threads(verifier):
        return _cost_curve(verifier, prefix, sizes, repeats, draft, warmup)


def _cost_curve(verifier: Any, prefix: Sequence[int], sizes: list[int], repeats: int,
                draft: Callable[[torch.Tensor], Any] | None, warmup: int) -> CostCurve:
    verifier.reset()
    verifier.prefill(torch.tensor([list(prefix)]))
    token = torch.tensor([[int(prefix[-1])]])
    dec, ver, drf = [], {m: [] for m in sizes}, []
    # masks built before timing: torch.tril runs an OpenMP region whose spinning workers would slow the native
    # verify timed right after it
    masks = {m: torch.tril(torch.ones(m, m, dtype=torch.bool)) for m in sizes}
    for r in range(warmup + repeats):
        t0 = time.perf_counter()
        verifier.decode(token)
        t = time.perf_counter() - t0
        hidden = verifier.hidden[-1]
        if r >= warmup:
            dec.append(t)
        if draft is not None:
            t0 = time.perf_counter()
            draft(hidden)
            if r >= warmup:
                drf.append(time.perf_counter() - t0)
        for m in sizes:
            start = verifier.length
            tokens = torch.full((m,), int(prefix[-1]), dtype=torch.long)
            t0 = time.perf_counter()
            verifier.verify(tokens, torch.arange(start, start + m), masks[m])
            t = time.perf_counter() - t0
            verifier.keep(torch.zeros(0, dtype=torch.long))
            if r >= warmup:
                ver[m].append(t)
    med = statistics.median
    return CostCurve(med(dec), {m: med(v) for m, v in ver.items()}, med(drf) if drf else 0.0, len(prefix), repeats,
                     {"decode_s": dec, "verify_s": {str(m): v for m, v in ver.items()}, "draft_s": drf})


def first_layers(model: Any, n: int) -> Any:
    """A transformers causal LM made of `model`'s first n decoder layers, its final norm and lm_head, sharing their
    weights (a draft model for assisted generation; nothing is copied)."""
    layers = model.model.layers
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < len(layers):
        raise RidgelineError(f"a draft of the first N layers needs 1 <= N < {len(layers)}, got {n!r}")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = n
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:n]
    draft, inner = copy.copy(model), copy.copy(model.model)
    draft._modules, inner._modules = dict(model._modules), dict(model.model._modules)  # own child tables
    inner.layers = nn.ModuleList(list(layers)[:n])
    inner.config, draft.config = config, config
    draft.model = inner
    return draft


def _verifier(loaded: Any) -> Any:
    """The verifier on the loaded path: the bench's native model, its lean model, else transformers' forward."""
    for attr in ("native", "lean"):
        path = getattr(loaded.runner, attr, None)
        if path is not None:
            return path
    return HFVerifier(loaded.model, loaded.max_len)


def medusa_decoder(verifier: Any, heads: Any, manifest: dict, prefix: Sequence[int], tree: str | Tree = "auto",
                   acceptance: Acceptance | None = None, max_verify: int = MAX_VERIFY, repeats: int = 5) -> SpecDecoder:
    """A Medusa decoder; tree 'auto' (or 'auto:M' for at most M verified tokens) is chosen from the heads' rank
    accuracies in `manifest` and the cost curve measured on `verifier` now."""
    acc = (manifest.get("accuracy") or {}).get("rank")
    info: dict[str, Any] = {"drafter": "medusa", "heads_available": heads.num_heads, "untied": not heads.tied,
                            "heads_trained_for": manifest.get("base", {}).get("name"),
                            "draft_vocab": None if heads.draft_vocab is None else int(heads.draft_vocab.numel())}
    if _impl(verifier) == "ridgeline native" and heads.tied and heads.packed_format is None:
        heads.pack_projection("bf16")  # draft at the native rate too (ranking only: verification stays exact)
    info["draft_projection"] = f"native {heads.packed_format}" if heads.packed_format else "torch"
    if isinstance(tree, str) and tree.startswith("auto"):
        if not acc:
            raise RidgelineError("these heads carry no rank accuracies to choose a tree from; pass --tree PATHS")
        cap = int(tree.partition(":")[2] or max_verify)
        if not 2 <= cap <= 256:
            raise RidgelineError(f"tree auto:M needs 2 <= M <= 256 verified tokens, got {cap}")
        cap = min(cap, getattr(verifier, "max_verify", cap))  # the native path verifies at most 16 tokens
        probe = MedusaDrafter(heads, Tree.chain(min(heads.num_heads, cap - 1)))
        curve = measure_cost_curve(verifier, prefix, curve_sizes(cap), repeats, probe.observe)
        choice = choose_tree(acc, curve.relative(), curve.draft_s / curve.decode_s)
        tree = choice.tree
        info.update(tree_choice=choice.to_json(), cost_curve=curve.to_json())
    elif isinstance(tree, str):
        tree = parse_tree(tree)
    info.update(tree=tree.to_json(), verify_tokens=tree.size, tree_depth=tree.depth,
                expected_tokens_per_step=expected_tokens(tree, acc) if acc else None)
    info["heads"] = tree.depth  # the heads a step runs (what the Workload counts)
    acceptance = acceptance or Acceptance()
    return SpecDecoder(verifier, MedusaDrafter(heads, tree), acceptance, f"{_impl(verifier)} · medusa", info=info)


def _impl(verifier: Any) -> str:
    from ridgeline.kernels import NativeCausalLM  # function level: the kernels load their library on import

    if isinstance(verifier, NativeCausalLM):
        return "ridgeline native"
    return "ridgeline lean torch" if not isinstance(verifier, HFVerifier) else "transformers eager"


def draft_model(model: Any, arg: str | int, dtype: Any = None) -> Any:
    """The draft: `model`'s first N layers (an integer), or another model (a reference) with the same vocabulary."""
    if isinstance(arg, int) or str(arg).isdigit():
        return first_layers(model, int(arg))
    from ridgeline.loader import load_model

    other, _ = load_model(str(arg), dtype or next(model.parameters()).dtype)
    if other.lm_head.weight.shape[0] != model.lm_head.weight.shape[0]:
        raise RidgelineError(f"draft model {arg!r} has a vocabulary of {other.lm_head.weight.shape[0]}; the target's "
                             f"is {model.lm_head.weight.shape[0]}")
    return other


def draft_verifier(draft: Any, max_len: int, target: Any) -> Any:
    """The draft model on the target verifier's kind of path (native or lean when it can, else transformers')."""
    if not isinstance(target, HFVerifier):
        from ridgeline.kernels import NativeCausalLM
        from ridgeline.measure import LeanCausalLM

        kind = NativeCausalLM if isinstance(target, NativeCausalLM) else LeanCausalLM
        try:
            return kind.from_hf(draft, max_len)
        except RidgelineError:
            pass
    return HFVerifier(draft, max_len)


def spec_runner(setting: Any, loaded: Any) -> SpecDecoder:
    """The bench factory: a `SpecDecoder` for a `SpecSetting` on a loaded torch model (see the module docstring)."""
    from ridgeline.measure import prompt_ids

    verifier = _verifier(loaded)
    acceptance = Acceptance(**setting.acceptance())
    impl = _impl(verifier)
    if setting.kind == "medusa":
        from ridgeline.engine.medusa_heads import load_heads

        heads, manifest = load_heads(setting.arg, loaded.model)
        # the curve is measured after a real prefix that leaves room for the largest verify and the decode steps
        cap = int(setting.tree.partition(":")[2] or MAX_VERIFY) if setting.tree.startswith("auto") else 0
        prefix = prompt_ids(loaded.encode, max(8, min(256, loaded.max_len - cap - 16)))
        return medusa_decoder(verifier, heads, manifest, prefix, setting.tree, acceptance)
    if setting.kind == "prompt-lookup":
        n = min(int(setting.arg or 10), getattr(verifier, "max_verify", 1 << 30) - 1)
        eos = getattr(loaded.model.config, "eos_token_id", None)
        drafter = PromptLookupDrafter(n, 2, eos if isinstance(eos, list) else ([] if eos is None else [eos]))
        info = {"drafter": "prompt-lookup", "num_tokens": n, "max_ngram": 2}
        return SpecDecoder(verifier, drafter, acceptance, f"{impl} · prompt lookup", info=info)
    draft = draft_model(loaded.model, setting.arg)
    dv = draft_verifier(draft, loaded.max_len, verifier)
    n = min(20, getattr(verifier, "max_verify", 21) - 1)  # transformers' assisted-generation default, within the path
    info = {"drafter": "draft", "draft": setting.arg, "draft_layers": draft.config.num_hidden_layers,
            "num_tokens": n, "confidence": 0.4, "note": "the draft model's own forwards are not in the Workload"}
    return SpecDecoder(verifier, DraftModelDrafter(dv, n), acceptance, f"{impl} · draft model", info=info)


def medusa_tree(model: Any, tokenizer: Any, heads_dir: str, impl: str = "auto", max_verify: int = MAX_VERIFY,
                repeats: int = 5) -> dict:
    """Measure the verify-cost curve of `model` on a path ('auto': native where it runs, else lean; 'native',
    'lean' or 'hf') and choose the tree for saved heads: the heads' account (path, tree, choice table, curve)."""
    from ridgeline.kernels import NativeCausalLM
    from ridgeline.measure import LeanCausalLM, prompt_ids
    from ridgeline.engine.medusa_heads import load_heads

    if impl not in ("auto", "native", "lean", "hf"):
        raise RidgelineError(f"path {impl!r} is not auto, native, lean or hf")
    heads, manifest = load_heads(heads_dir, model)
    prefix = prompt_ids(lambda text: tokenizer(text, add_special_tokens=False).input_ids, 256)
    max_len = len(prefix) + max_verify + repeats + 8
    verifier, why = None, None
    if impl in ("auto", "native"):
        try:
            verifier = NativeCausalLM.from_hf(model, max_len)
        except RidgelineError as exc:
            if impl == "native":
                raise
            why = f"native: {exc}"
    if verifier is None:
        verifier = HFVerifier(model, max_len) if impl == "hf" else LeanCausalLM.from_hf(model, max_len)
    info = medusa_decoder(verifier, heads, manifest, prefix, f"auto:{max_verify}", repeats=repeats).info
    return {"impl": _impl(verifier), "fallback": why, **info}
