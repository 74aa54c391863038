"""Backends that run one scenario: a prefill, then one decode step per generated token, greedy.

Every backend exposes the same three calls, so the timing loop in `bench.py` is shared and the
scenario means the same thing everywhere: `prefill(prompt_ids)` fills the cache with exactly P
tokens and returns the first generated token; `decode(token)` appends that token to the cache and
returns the next; `cached()` says how many tokens the cache holds. After N decode steps the cache
holds P + N tokens, the context the analytic decode phase integrates over (c = P … P+N-1).
EOS is ignored: generation never stops early.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

from ridgeline.errors import RidgelineError


class Runner(Protocol):
    """What the timing loop needs from a backend."""

    impl: str  # what actually runs, e.g. "ridgeline lean torch", "transformers eager", "llama.cpp"

    def prefill(self, prompt: Sequence[int]) -> int:
        """Process the prompt from an empty cache; return the first generated token."""
        ...

    def decode(self, token: int) -> int:
        """Append `token` to the cache; return the next token."""
        ...

    def cached(self) -> int:
        """Tokens held in the cache now."""
        ...


class HFRunner:
    """transformers' own forward with a cache, one token at a time: a DynamicCache (what `generate` runs),
    or the cache of a KV format (`kv`) or of a sliding-window model (a rolling buffer)."""

    impl = "transformers eager"

    def __init__(self, model: Any, kv: str | None = None, rolling: bool = False) -> None:
        self.model, self.kv, self.rolling = model, kv, rolling
        self.cache, self.tokens = None, 0
        if kv is not None or rolling:
            self.impl = f"transformers eager · {type(self._new_cache()).__name__}"

    def _new_cache(self) -> Any:
        """The run's cache: a KV format's (KIVI, Harmonia, BFP), a rolling buffer for a window the run set, else
        dynamic (which also handles a model's own sliding-window layers)."""
        from transformers import DynamicCache

        from ridgeline.kv import make_kv_cache

        cache = make_kv_cache(self.kv, self.model)
        if cache is None and self.rolling:
            from ridgeline.arch import RollingBufferCache

            cache = RollingBufferCache.for_model(self.model)
        return cache if cache is not None else DynamicCache(config=self.model.config)

    def prefill(self, prompt: Sequence[int]) -> int:
        """Fresh cache, one forward over the prompt, lm_head on the last position only."""
        import torch

        self.cache = self._new_cache()
        window = (self.model.config.sliding_window if self.rolling else None) or len(prompt)
        with torch.inference_mode():
            for s in range(0, len(prompt), window):  # a rolling buffer takes chunks of at most W tokens
                chunk = list(prompt[s:s + window])
                out = self.model(torch.tensor([chunk]), position_ids=torch.arange(s, s + len(chunk))[None],
                                 cache=self.cache, use_cache=True, logits_to_keep=1)
        self.tokens = len(prompt)
        self.last = out.logits[0, -1]  # checked for NaN/Inf by the timing loop, outside the timed region
        return int(self.last.argmax())

    def decode(self, token: int) -> int:
        """One forward of one token against the cache."""
        import torch

        with torch.inference_mode():
            out = self.model(torch.tensor([[token]]), position_ids=torch.tensor([[self.tokens]]),
                             cache=self.cache, use_cache=True, logits_to_keep=1)
        self.tokens += 1
        self.last = out.logits[0, -1]
        return int(self.last.argmax())

    def cached(self) -> int:
        """Tokens the cache has seen (a rolling buffer holds only the last W of them)."""
        return int(self.cache.get_seq_length()) if self.cache is not None else 0


class LeanRunner:
    """ridgeline's gpt-fast-style decode path (static cache, fused projections) over the same weights."""

    impl = "ridgeline lean torch"

    def __init__(self, model: Any, max_len: int) -> None:
        from ridgeline.measure.lean import LeanCausalLM

        self.lean = LeanCausalLM.from_hf(model, max_len)
        self.model = model  # reran with hooks when the logits are not finite

    def prefill(self, prompt: Sequence[int]) -> int:
        """Reset the static cache and prefill."""
        import torch

        self.lean.reset()
        with torch.inference_mode():
            self.last = self.lean.prefill(torch.tensor([list(prompt)]))
            return int(self.last.argmax())

    def decode(self, token: int) -> int:
        """One lean decode step."""
        import torch

        with torch.inference_mode():
            self.last = self.lean.decode(torch.tensor([[token]]))
            return int(self.last.argmax())

    def cached(self) -> int:
        """Current length of the static cache."""
        return int(self.lean.length)


class NativeRunner:
    """ridgeline's native kernels (`ridgeline.kernels.NativeCausalLM`): every layer of a step in one C++ call,
    weights as stored (float, or the packed blocks of a quantized model), on the native thread pool."""

    def __init__(self, model: Any, max_len: int) -> None:
        from ridgeline.kernels import NativeCausalLM, info

        self.native = NativeCausalLM.from_hf(model, max_len)
        formats = ", ".join(sorted(self.native.formats))
        self.impl = f"ridgeline native {info().path} · {formats}"
        self.model = model  # reran with hooks when the logits are not finite

    def prefill(self, prompt: Sequence[int]) -> int:
        """Reset the cache and prefill (chunks of up to 16 tokens through the small-M kernels)."""
        import torch

        from ridgeline.kernels import set_num_threads

        set_num_threads(torch.get_num_threads())  # the run's threads (a no-op when unchanged)
        self.native.reset()
        self.last = self.native.prefill(torch.tensor([list(prompt)]))
        return int(self.last.argmax())

    def decode(self, token: int) -> int:
        """One native decode step."""
        self.last = self.native.decode(token)
        return int(self.last.argmax())

    def cached(self) -> int:
        """Tokens in the native KV cache."""
        return int(self.native.length)


class LlamaCppRunner:
    """llama.cpp through llama-cpp-python on a GGUF file; greedy argmax over the last logits."""

    def __init__(self, gguf: str, n_ctx: int, threads: int, n_batch: int = 512) -> None:
        llama_cpp = import_llama_cpp()
        self.np = __import__("numpy")
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                   n_batch=min(n_batch, n_ctx), n_ubatch=min(n_batch, n_ctx), logits_all=False,
                                   verbose=False)
        self.n_vocab = self.llm.n_vocab()
        train_ctx = self.llm._model.n_ctx_train()
        if n_ctx - 1 > train_ctx:
            self.llm.close()
            raise RidgelineError(f"the run needs {n_ctx - 1} positions; {Path(gguf).name} was trained for {train_ctx}")
        self.impl = f"llama.cpp (llama-cpp-python {llama_cpp.__version__})"

    def _next(self) -> int:
        self.last = self.np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,))
        return int(self.last.argmax())

    def prefill(self, prompt: Sequence[int]) -> int:
        """Clear the KV cache and evaluate the prompt (in n_batch chunks, as llama.cpp does)."""
        self.llm.reset()
        self.llm.eval(list(prompt))
        return self._next()

    def decode(self, token: int) -> int:
        """Evaluate one token."""
        self.llm.eval([token])
        return self._next()

    def cached(self) -> int:
        """Tokens evaluated into the context."""
        return int(self.llm.n_tokens)

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenizer (no BOS added)."""
        return self.llm.tokenize(text.encode(), add_bos=False, special=False)

    def close(self) -> None:
        """Free the model and context."""
        self.llm.close()


def import_llama_cpp():
    """Import llama_cpp, or say how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise RidgelineError("the llama.cpp backend needs llama-cpp-python: pip install 'ridgeline[llamacpp]' "
                             "(builds llama.cpp from source, about ten minutes; `make demo` does it)") from None
    return llama_cpp


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python can be imported."""
    try:
        import_llama_cpp()
    except RidgelineError:
        return False
    return True
