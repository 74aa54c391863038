"""The loaded native module and its thread pool: `info()`, `native()`, thread count, pool overhead.

The variant is chosen once per process (see `_loader`); the pool starts with `torch.get_num_threads()`
threads. Library code asks `native()` for the module and gets a RidgelineError naming why native
kernels are off, which callers record before taking their pure-torch path.
"""

from __future__ import annotations

from types import ModuleType

from ridgeline.errors import RidgelineError
from ridgeline.kernels._loader import KernelInfo, load

_INFO: KernelInfo | None = None


def info() -> KernelInfo:
    """The native path of this process and why it was chosen (e.g. 'avx2 (fma, f16c): avx512: CPU lacks ...')."""
    global _INFO
    if _INFO is None:
        _INFO = load()
        if _INFO.module is not None:
            import torch

            _INFO.module.set_num_threads(max(1, torch.get_num_threads()))
    return _INFO


def available() -> bool:
    """True when native kernels run in this process."""
    return info().available


def native() -> ModuleType:
    """The native extension module; RidgelineError (with the reason) when native kernels are off."""
    current = info()
    if current.module is None:
        raise RidgelineError(f"native kernels unavailable: {current.reason}")
    return current.module


def set_num_threads(n: int) -> None:
    """Threads of the native pool, the calling thread included (default: torch.get_num_threads())."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RidgelineError(f"native thread count must be a positive integer, got {n!r}")
    native().set_num_threads(n)


def get_num_threads() -> int:
    """Threads of the native pool."""
    return int(native().get_num_threads())


def set_spin_us(us: int) -> None:
    """How long idle pool threads spin (microseconds) before they sleep until the next call."""
    if isinstance(us, bool) or not isinstance(us, int) or us < 0:
        raise RidgelineError(f"spin time must be a non-negative integer of microseconds, got {us!r}")
    native().set_spin_us(us)


def pool_overhead(iterations: int = 20000, handovers: int = 20000) -> dict[str, float]:
    """Measured fixed costs of the pool: seconds per empty parallel run (fork/join of all threads) and per
    phase hand-over inside a run (every thread claims one empty partition, then waits for all)."""
    run_s, handover_s = native().pool_overhead(int(iterations), int(handovers))
    return {"run_s": run_s, "handover_s": handover_s, "threads": get_num_threads()}
