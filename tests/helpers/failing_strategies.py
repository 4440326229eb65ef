"""Strategies that fail on purpose, registered through a config's `imports:` list.

They exercise the failure path end to end: the run is marked FAILED with its reason and the
grid goes on.
"""
from cl.registry import STRATEGIES, Params


class FailParams(Params):
    at_experience: int = 1


STRATEGIES.register("explode", params=FailParams, target="tests.helpers.failing_strategies:build_explode",
                    summary="raises RuntimeError at the start of experience `at_experience`")
STRATEGIES.register("nan_loss", params=FailParams, target="tests.helpers.failing_strategies:build_nan_loss",
                    summary="its loss turns NaN at experience `at_experience`")


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
