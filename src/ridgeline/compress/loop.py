"""The training loop both compress trainers share: interruptible between steps, checkpointed, resumable.

A Ctrl-C (SIGINT in the main thread) is deferred to the end of the step in progress, and a KeyboardInterrupt
raised by the progress callback lands between steps too; either way the loop stops there, the caller saves a
checkpoint of the last completed step (written to a temporary folder and renamed: never half-written), and
the run can be resumed from it. Each step draws its randomness from a generator seeded by (seed, step), so a
resumed run takes exactly the batches and samples an uninterrupted one would have. A second Ctrl-C
interrupts at once.

Optimizer state goes to safetensors (tensors per parameter index) plus its JSON param groups: no pickle.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ridgeline.errors import RidgelineError
from ridgeline.io import deferred_sigint

Progress = Callable[[str, int, int], None]


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random generator of one step: the same (seed, step) gives the same draws, resumed or not."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2 ** 63))


def run_steps(step: Callable[[int], dict], start: int, total: int, checkpoint: Callable[[int], None], every: int,
              what: str, progress: Progress | None = None) -> tuple[int, bool]:
    """Run steps start..total-1 (each returns its curve row), checkpointing every `every` steps and at the end or
    on interruption; (steps completed, interrupted)."""
    done, interrupted = start, False
    with deferred_sigint() as stop_requested:
        for i in range(start, total):
            if stop_requested():
                interrupted = True
                break
            step(i)
            done = i + 1
            try:
                if progress is not None:
                    progress(what, done, total)
            except KeyboardInterrupt:
                interrupted = True
                break
            if every and done % every == 0 and done < total:
                checkpoint(done)
        interrupted = interrupted or (stop_requested() and done < total)
    checkpoint(done)
    return done, interrupted


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer's state as flat named tensors ('<param index>.<key>') and its param groups (JSON-able)."""
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{idx}.{key}"] = t.detach().contiguous().cpu()
    return tensors, sd["param_groups"]


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    """Restore what `optimizer_tensors` saved into an optimizer over the same parameters."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        idx, _, key = name.partition(".")
        state.setdefault(int(idx), {})[key] = t
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise RidgelineError(f"the checkpoint's optimizer state does not fit these parameters ({exc})") from None
