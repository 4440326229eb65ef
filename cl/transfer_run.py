"""How a transfer experiment runs inside the suite: what it receives, and what the runner logs.

A transfer experiment is not a class-incremental stream, so it does not go through Avalanche.
It registers in `cl.registry.TRANSFERS` with a
params model and ``run(ctx: TransferContext, params) -> dict[str, float]``: it trains and
evaluates, logs its own curves through ``ctx.runlog`` and returns its final metrics, which
the runner logs (prefixed ``final/`` unless they already carry a ``/``). Everything around
it is the same as for a continual-learning run: config hash, seeds, provenance, MLflow
status, failure capture, grids. The runner seeds Python's, NumPy's and torch's RNGs with
``ctx.seed`` right before ``run``, so an experiment does not seed them again; it keeps reusable
intermediate results (a pretrained source model, …) with `cl.cache.cached`.

Checkpoints (`cl.checkpoint`): an experiment that trains long saves its progress through the
context and resumes from it, so a run killed part-way continues in the same MLflow run::

    state = ctx.resume()                       # None on a fresh start; RNG states are restored here
    start = 0 if state is None else state["epoch"]
    if state is not None:
        model.load_state_dict(state["model"]); optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
    for epoch in range(start, epochs):
        ...                                     # train, log metrics with step=epoch
        ctx.checkpoint(epoch + 1, lambda: {"epoch": epoch + 1, "model": model.state_dict(), ...})

The state holds tensors and JSON-like values only (``state_dict()``s, generator states, counters,
the data position); the global RNGs (Python, NumPy, torch) are saved and restored by the context.
Call `resume` after building everything that consumes the global RNG (models, heads), so a resumed
run and an uninterrupted one draw the same numbers from there on. Work before training (a cached
source model, probes) is redone on resume and must not log metrics twice at the same step.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from cl.tracking import RunLog


@dataclass
class TransferContext:
    runlog: RunLog
    train: Any                      # cl.config.TrainConfig: epochs, lr, batch size, device...
    device: Any                     # torch.device
    seed: int
    checkpoints: Any = None         # cl.checkpoint.RunCheckpoints (None: checkpoints off, e.g. benchmarks)

    @property
    def cache_dir(self) -> Path:
        from cl.cache import cache_root

        return cache_root()

    def resume(self) -> dict | None:
        """The state the run's last checkpoint saved, global RNGs restored; None when starting fresh.

        Raises `cl.checkpoint_file.CheckpointRefused` if the launcher chose to resume but the file cannot
        be used (the run then fails with that reason; ``--retry-failed`` starts it from scratch).
        """
        from cl.checkpoint import note_resumed
        from cl.checkpoint_file import restore_rng

        loaded = self.checkpoints.load() if self.checkpoints is not None else None
        if loaded is None:
            return None
        header, payload = loaded
        restore_rng(payload["rng"])
        note_resumed(self.runlog, header)
        return payload["state"]

    def checkpoint(self, step: int, state: Callable[[], dict], *, every: int = 1) -> None:
        """Save ``state()`` as the run's position `step` (the experiment's unit: epochs or optimiser steps
        done) when `step` is a multiple of `every`. `state` is only called when saving."""
        if self.checkpoints is None or not self.checkpoints.enabled or step % every:
            return
        from cl.checkpoint_file import capture_rng

        self.checkpoints.save({"step": step}, {"state": state(), "rng": capture_rng()})


def final_metric_names(metrics: Mapping[str, float]) -> dict[str, float]:
    """``acc`` → ``final/acc``; names with a namespace (``memory/…``, ``cost/…``) stay as they are."""
    return {(k if "/" in k else f"final/{k}"): float(v) for k, v in metrics.items()}


@contextmanager
def single_thread() -> Iterator[None]:
    """Torch and BLAS/OpenMP on one thread while inside, for experiments whose models are tiny: on a shared
    machine several threads per tiny op are slower (measured 3-5× for TimeTic's tables, ~30× per training step
    of MemControl's smoke DDPM, on 2 busy cores)."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)
