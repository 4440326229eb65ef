"""The strategy API: what every strategy builder receives, and how a built strategy's memory is counted.

Platform code (the runner uses it; strategy modules and third-party builders import it).
Builders are ``build(ctx: StrategyContext, params) -> SupervisedTemplate``. The runner owns
the model, optimiser, evaluator and the suite's own plugins (logging, NaN guard); a builder
only chooses the Avalanche template and its algorithm-specific plugins. A strategy or plugin
of its own reports what it keeps through the protocols below (`StoresExemplars`,
`KeepsState`, ...); for classes we do not own (Avalanche's strategies and plugins) the strategy
module that uses them registers readers with `register_accounting`. Avalanche's exemplar buffers
(`storage_policy`) are read directly: they are the template's own API.

Memory accounting follows MEMO (Zhou et al., ICLR 2023, Sec. 3): exemplars are what a
strategy *stores* between experiences. Strategies that keep extra tensors across
experiences (a regulariser's importances, a distilled previous model) report them separately as
*persistent state*, which MEMO's budget does not count but a reader should see.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class StrategyContext:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    train: Any                      # cl.config.TrainConfig
    scenario: Any                   # cl.scenarios.Scenario
    device: torch.device
    evaluator: Any                  # avalanche EvaluationPlugin (metric-free: the suite logs itself)
    plugins: list = field(default_factory=list)

    def template_kwargs(self, extra_plugins: list | tuple = ()) -> dict[str, Any]:
        """Keyword arguments every Avalanche template takes."""
        return dict(
            train_mb_size=self.train.batch_size,
            train_epochs=self.train.epochs,
            eval_mb_size=self.train.eval_batch_size,
            device=self.device,
            plugins=[*extra_plugins, *self.plugins],
            evaluator=self.evaluator,
        )


@runtime_checkable
class StoresExemplars(Protocol):
    """Implemented by strategies and plugins that keep a buffer of their own."""

    def n_exemplars(self) -> int: ...


@runtime_checkable
class KeepsState(Protocol):
    """Implemented by the suite's own plugins that keep tensors across experiences."""

    def persistent_state_bytes(self) -> int: ...


@runtime_checkable
class ProducesArtifacts(Protocol):
    """Implemented by plugins with files worth keeping (e.g. a score per module)."""

    def artifacts(self) -> dict[str, bytes]: ...


@runtime_checkable
class ProducesMetrics(Protocol):
    """Implemented by plugins that measure something of their own (e.g. accuracy around a step of theirs)."""

    def run_metrics(self) -> list[tuple[int, dict[str, float]]]: ...


def plugin_metrics(strategy: Any) -> list[tuple[int, dict[str, float]]]:
    """Every (step, metrics) the strategy's plugins measured, to log after the run."""
    out: list[tuple[int, dict[str, float]]] = []
    for obj in _parts(strategy):
        if isinstance(obj, ProducesMetrics):
            out.extend(obj.run_metrics())
    return out


def plugin_artifacts(strategy: Any) -> dict[str, bytes]:
    """Every artifact the strategy's plugins produced, by path."""
    out: dict[str, bytes] = {}
    for obj in _parts(strategy):
        if isinstance(obj, ProducesArtifacts):
            out.update(obj.artifacts())
    return out


def storage_policy(strategy: Any) -> Any:
    """The Avalanche exemplar buffer (`storage_policy`) of a strategy or its plugins, or None."""
    for obj in _parts(strategy):
        policy = getattr(obj, "storage_policy", None)
        if policy is not None:
            return policy
    return None


def count_exemplars(strategy: Any) -> int:
    """Raw samples the strategy holds after training (its buffers, or whatever its readers count)."""
    return sum(_exemplars_of(obj) for obj in _parts(strategy))


def persistent_state_bytes(strategy: Any) -> int:
    """Float32 bytes of tensors a strategy keeps across experiences besides its model."""
    return sum(_state_bytes_of(obj) for obj in _parts(strategy))


_READERS: dict[type, tuple[Callable[[Any], int] | None, Callable[[Any], int] | None]] = {}


def register_accounting(cls: type, *, exemplars: Callable[[Any], int] | None = None,
                        state_bytes: Callable[[Any], int] | None = None) -> None:
    """How to count what instances of `cls` (a strategy or plugin class we do not own) keep: `exemplars(obj)`
    samples, `state_bytes(obj)` bytes of persistent state. The strategy module that uses the class registers it."""
    _READERS[cls] = (exemplars, state_bytes)


def _reader(obj: Any, which: int) -> Callable[[Any], int] | None:
    for klass in type(obj).__mro__:
        reader = _READERS.get(klass, (None, None))[which]
        if reader is not None:
            return reader
    return None


def _exemplars_of(obj: Any) -> int:
    """Samples one part (the strategy or a plugin) holds: its own report, its registered reader, its buffer."""
    if isinstance(obj, StoresExemplars):
        return int(obj.n_exemplars())
    reader = _reader(obj, 0)
    if reader is not None:
        return int(reader(obj))
    if getattr(obj, "storage_policy", None) is not None:     # an Avalanche exemplar buffer
        return len(obj.storage_policy.buffer)
    return 0


def _state_bytes_of(obj: Any) -> int:
    """Bytes one part keeps across experiences: its own report, else its registered reader's."""
    if isinstance(obj, KeepsState):
        return int(obj.persistent_state_bytes())
    reader = _reader(obj, 1)
    return int(reader(obj)) if reader is not None else 0


def _parts(strategy: Any) -> list[Any]:
    return [strategy, *getattr(strategy, "plugins", [])]


def tensor_bytes(obj: Any) -> int:
    """Float32 bytes of a module's parameters, a tensor, a dict of them or Avalanche's `ParamData`."""
    if obj is None:
        return 0
    if isinstance(obj, nn.Module):
        return sum(p.numel() for p in obj.parameters()) * 4
    if isinstance(obj, torch.Tensor):
        return obj.numel() * 4
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    data = getattr(obj, "data", None)  # avalanche ParamData
    return data.numel() * 4 if isinstance(data, torch.Tensor) else 0


def final_backbone_parameters(strategy_name: str, model_factory, scenario, params) -> int:
    """Backbone parameters of the model `strategy_name` ends the stream with (heads excluded).

    MEMO's accounting counts backbones only: its worked example (DER = 10 × 463,504) has no
    classifier in it. Strategies that grow register `final_backbone_params`; the others end
    with the backbone they start with.
    """
    from cl.models import count_parameters
    from cl.registry import STRATEGIES

    entry = STRATEGIES.get(strategy_name)
    counter = entry.load_final_backbone_params()
    model = model_factory()
    if counter is not None:
        return int(counter(model, scenario, entry.params.model_validate(params)))
    return count_parameters(model.feature_extractor)


def aligned_mem_size(budget, strategy_name: str, strategy_options: dict, model_factory, scenario) -> int:
    """Exemplars `strategy_name` may keep so its total memory equals the budget's reference."""
    from cl.metrics import aligned_exemplars
    from cl.registry import STRATEGIES

    reference_options = {} if budget.aligned_to != strategy_name else strategy_options
    reference_entry = STRATEGIES.get(budget.aligned_to)
    reference = final_backbone_parameters(
        budget.aligned_to, model_factory, scenario,
        reference_entry.params.model_validate(reference_options).model_dump())
    own = final_backbone_parameters(strategy_name, model_factory, scenario, strategy_options)
    return aligned_exemplars(reference, own, budget.exemplars, scenario.input_shape)
