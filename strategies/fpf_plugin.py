"""The FPF plugin: after a strategy trains, fine-tune its forgetting-prone modules on the buffer.

Part of FPF / k-FPF (`strategies.fpf`). `FPFBase` holds what FPF and k-FPF share: resolving the
selection (patterns or sensitivity), tracking sensitivity per experience, the fine-tuner and the
files a run keeps.
"""
from __future__ import annotations

import json
from typing import Sequence

from avalanche.core import SupervisedPlugin
from torch import nn

from cl.strategy_api import storage_policy
from strategies.fpf_buffers import ReservoirBuffer, strategy_buffer
from strategies.fpf_selection import SensitivityTracker, select_by_pattern, select_by_score
from strategies.fpf_tuning import FineTuner


class FPFBase(SupervisedPlugin):
    """Module selection, sensitivity tracking and the fine-tuner shared by FPF and k-FPF."""

    def __init__(self, *, modules: Sequence[str] | str, max_param_fraction: float, tuner: FineTuner):
        super().__init__()
        self.modules = modules
        self.max_param_fraction = max_param_fraction
        self.tuner = tuner
        self.sensitivity = SensitivityTracker()
        self.selections: list[list[str]] = []
        self._model: nn.Module | None = None     # for the artifacts written after the run

    def selected_modules(self, model: nn.Module) -> list[str]:
        return self.resolve(model, self.modules)

    def resolve(self, model: nn.Module, modules: Sequence[str] | str) -> list[str]:
        """Module names for a selection: patterns, or 'auto' (by this run's sensitivity scores)."""
        if modules == "auto" or list(modules) == ["auto"]:
            scores = self.sensitivity.scores(model)
            if scores:
                return select_by_score(model, scores, self.max_param_fraction)
            return select_by_pattern(model, ["bn", "fc"])
        return select_by_pattern(model, list(modules))

    def run_fpf(self, strategy, buffer) -> None:
        if buffer is None or len(buffer) == 0:
            return
        names = self.selected_modules(strategy.model)
        self.selections.append(names)
        self.tuner(strategy.model, names, buffer, strategy.device)

    def before_training(self, strategy, **kwargs):
        self._model = strategy.model

    def before_training_exp(self, strategy, **kwargs):
        self.sensitivity.start(strategy.model)

    def after_training_exp(self, strategy, **kwargs):
        self.sensitivity.end(strategy.model)

    def extra_train_flops(self) -> float:
        return self.tuner.flops

    def artifacts(self) -> dict[str, bytes]:
        """Per-module sensitivity (JSON + bar plot) and the modules each FPF call tuned."""
        out = self.sensitivity.artifacts(self._model) if self._model is not None else {}
        out["fpf/selections.json"] = json.dumps(
            {"calls": self.tuner.calls, "selections": self.selections}, indent=1).encode()
        return out


class FPFPlugin(FPFBase):
    """FPF on top of any strategy: fine-tune the selected modules on the buffer after training."""

    def __init__(self, *, modules: Sequence[str] | str = ("bn", "fc"), max_param_fraction: float = 0.02,
                 iterations: int = 100, lr: float = 0.05, batch_size: int = 32, at: str = "every_experience",
                 mem_size: int = 200, n_experiences: int | None = None, seed: int = 0, momentum: float = 0.0):
        super().__init__(modules=modules, max_param_fraction=max_param_fraction,
                         tuner=FineTuner(iterations=iterations, lr=lr, batch_size=batch_size, momentum=momentum))
        if at not in ("every_experience", "end"):
            raise ValueError(f"at: {at!r}; use 'every_experience' or 'end'")
        if at == "end" and n_experiences is None:
            raise ValueError("at='end' needs n_experiences (the stream's length)")
        self.at = at
        self.n_experiences = n_experiences
        self.seed = seed
        self.own_buffer: ReservoirBuffer | None = None
        self._mem_size = mem_size
        self._trained = 0

    def before_training(self, strategy, **kwargs):
        super().before_training(strategy)
        if self.own_buffer is None and storage_policy(strategy) is None:
            self.own_buffer = ReservoirBuffer(self._mem_size, seed=self.seed)

    def after_training_iteration(self, strategy, **kwargs):
        if self.own_buffer is not None:
            self.own_buffer.add(strategy.mb_x, strategy.mb_y)

    def after_training_exp(self, strategy, **kwargs):
        super().after_training_exp(strategy)
        self._trained += 1

    def after_training(self, strategy, **kwargs):
        if self.at == "end" and self._trained < self.n_experiences:
            return
        buffer = self.own_buffer
        if buffer is None:
            buffer = strategy_buffer(strategy, self.seed + self._trained)
        self.run_fpf(strategy, buffer)

    def n_exemplars(self) -> int:
        return len(self.own_buffer) if self.own_buffer is not None else 0
