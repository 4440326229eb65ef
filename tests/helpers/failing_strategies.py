"""Strategies that fail on purpose, registered through a config's `imports:` list.

They exercise the failure path end to end: the run is marked FAILED with its reason and the
grid goes on; `hoarder` runs but breaks the strategy contract (`cl.testing.check_strategy`).
"""
from cl.registry import STRATEGIES, NoParams, Params


class FailParams(Params):
    at_experience: int = 1


for _name, _params, _summary in [
    ("explode", FailParams, "raises RuntimeError at the start of experience `at_experience`"),
    ("nan_loss", FailParams, "its loss turns NaN at experience `at_experience`"),
    ("hoarder", NoParams, "reports 7 stored samples yet takes no mem_size: fails the strategy contract"),
]:
    STRATEGIES.register(_name, params=_params, target=f"tests.helpers.failing_strategies:build_{_name}",
                        summary=_summary)


def _naive_with(ctx, plugin):
    from avalanche.training import Naive

    return Naive(model=ctx.model, optimizer=ctx.optimizer, criterion=ctx.criterion,
                 **ctx.template_kwargs([plugin]))


def build_explode(ctx, params):
    from avalanche.core import SupervisedPlugin

    class Explode(SupervisedPlugin):
        def before_training_exp(self, strategy, **kwargs):
            if strategy.clock.train_exp_counter == params.at_experience:
                raise RuntimeError(f"boom at experience {params.at_experience}")

    return _naive_with(ctx, Explode())


def build_nan_loss(ctx, params):
    from avalanche.core import SupervisedPlugin

    class PoisonLoss(SupervisedPlugin):
        def before_backward(self, strategy, **kwargs):
            if strategy.clock.train_exp_counter == params.at_experience:
                strategy.loss = strategy.loss * float("nan")

    return _naive_with(ctx, PoisonLoss())


def build_hoarder(ctx, params):
    """Naive that reports 7 stored samples yet takes no `mem_size`: breaks the strategy contract (memory)."""
    from avalanche.core import SupervisedPlugin

    class Hoard(SupervisedPlugin):
        def n_exemplars(self) -> int:
            return 7

    return _naive_with(ctx, Hoard())
