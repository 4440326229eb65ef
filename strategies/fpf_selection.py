"""FPF's module selection: which leaf modules to fine-tune, by pattern or by their sensitivity score.

Part of FPF / k-FPF (`strategies.fpf` has the paper, Zhao et al. ICML 2023, and the list of our choices):
a module is a leaf module that owns parameters; its sensitivity is the L1 change of its parameters over an
experience per parameter, averaged over experiences.
"""
from __future__ import annotations

import json
import re
from typing import Sequence

import numpy as np
import torch
from torch import nn


def parametric_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Leaf modules that own parameters, by qualified name, in definition order."""
    return {name: module for name, module in model.named_modules()
            if name and not list(module.children()) and any(True for _ in module.parameters(recurse=False))}


def module_size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


ALIASES = {
    "bn": lambda modules: [n for n, m in modules.items() if isinstance(m, nn.modules.batchnorm._BatchNorm)],
    "fc": lambda modules: [n for n, m in modules.items() if isinstance(m, nn.Linear)][-1:],
    "conv1": lambda modules: [n for n, m in modules.items() if isinstance(m, nn.Conv2d)][:1],
}


def select_by_pattern(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the modules matching any pattern (an alias of `ALIASES` or a regex), in network order.

    An alias may match nothing (an MLP has no batch norm) as long as the selection is not
    empty; a regular expression must match, since a typo should not go unnoticed.
    """
    modules = parametric_modules(model)
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern in ALIASES:
            chosen.update(ALIASES[pattern](modules))
            continue
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"modules: {pattern!r} is not a valid regular expression ({exc})") from None
        hits = [n for n in modules if regex.search(n)]
        if not hits:
            raise ValueError(f"modules: {pattern!r} matches no module with parameters; "
                             f"modules are: {', '.join(modules)}")
        chosen.update(hits)
    if not chosen:
        raise ValueError(f"modules: {list(patterns)} select nothing in this model; modules are: {', '.join(modules)}")
    return [n for n in modules if n in chosen]


def select_by_score(model: nn.Module, scores: dict[str, float], max_param_fraction: float) -> list[str]:
    """The most sensitive modules whose parameters together fit in the budget (greedy)."""
    modules = parametric_modules(model)
    budget = max_param_fraction * sum(module_size(m) for m in modules.values())
    chosen, used = [], 0
    for name in sorted(scores, key=scores.get, reverse=True):
        size = module_size(modules[name])
        if used + size <= budget:
            chosen.append(name)
            used += size
    if not chosen:   # the single most sensitive module, even if it alone exceeds the budget
        chosen = [max(scores, key=scores.get)]
    return [n for n in modules if n in chosen]


class SensitivityTracker:
    """Per-module L1 parameter change per experience, divided by the module's size."""

    def __init__(self):
        self.per_experience: list[dict[str, float]] = []
        self._start: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: torch.cat([p.detach().flatten() for p in m.parameters(recurse=False)]).cpu().clone()
                for name, m in parametric_modules(model).items()}

    def start(self, model: nn.Module) -> None:
        self._start = self._snapshot(model)

    def _changes(self, model: nn.Module) -> dict[str, float]:
        now = self._snapshot(model)
        return {name: float((now[name] - before).abs().sum() / before.numel())
                for name, before in self._start.items() if name in now and now[name].shape == before.shape}

    def end(self, model: nn.Module) -> None:
        if self._start is not None:
            self.per_experience.append(self._changes(model))
            self._start = None

    def scores(self, model: nn.Module) -> dict[str, float]:
        """Mean change over finished experiences (or the running one, before any has finished)."""
        rows = self.per_experience or ([self._changes(model)] if self._start is not None else [])
        if not rows:
            return {}
        names = set(rows[0]).intersection(*rows[1:])
        return {name: float(np.mean([row[name] for row in rows])) for name in names}

    def artifacts(self, model: nn.Module, prefix: str = "fpf") -> dict[str, bytes]:
        from cl import plots

        scores = self.scores(model)
        if not scores:
            return {}
        ordered = [n for n in parametric_modules(model) if n in scores]
        data = {"score": {n: scores[n] for n in ordered}, "per_experience": self.per_experience}
        return {f"{prefix}/sensitivity.json": json.dumps(data, indent=1).encode(),
                f"{prefix}/sensitivity.png": plots.to_png(
                    plots.sensitivity_bars(ordered, [scores[n] for n in ordered]))}
