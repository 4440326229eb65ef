"""The per-experience schedule: first-task overrides and step decay within each experience."""
from avalanche.core import SupervisedPlugin

from cl.config import RunConfig
from cl.runner import execute
from cl.tracking import NullRunLog

SEEN: list[tuple[int, int, float, float]] = []


class LrSpy(SupervisedPlugin):
    def before_training_epoch(self, strategy, **kwargs):
        group = strategy.optimizer.param_groups[0]
        SEEN.append((strategy.clock.train_exp_counter, strategy.clock.train_exp_epochs, group["lr"],
                     group["weight_decay"]))


def test_first_experience_overrides_and_milestones(monkeypatch):
    import strategies.baselines as baselines

    original = baselines.build_naive

    def with_spy(ctx, params):
        ctx.plugins.append(LrSpy())
        return original(ctx, params)

    monkeypatch.setattr(baselines, "build_naive", with_spy)
    SEEN.clear()
    cfg = RunConfig.from_dict({
        "scenario": {"name": "split_digits", "n_experiences": 2, "train_samples_per_class": 10},
        "model": {"name": "mlp", "hidden": [8]}, "strategy": {"name": "naive"},
        "train": {"epochs": 2, "lr": 0.1, "weight_decay": 2e-4, "milestones": [1], "lr_decay": 0.5,
                  "first": {"epochs": 3, "lr": 0.2, "weight_decay": 5e-4, "milestones": [2]}}})
    assert execute(cfg, NullRunLog()).ok
    rounded = [(t, e, round(lr, 6), wd) for t, e, lr, wd in SEEN]
    assert rounded == [
        (0, 0, 0.2, 5e-4), (0, 1, 0.2, 5e-4), (0, 2, 0.1, 5e-4),   # first task: 3 epochs, decay at 2
        (1, 0, 0.1, 2e-4), (1, 1, 0.05, 2e-4),                     # later tasks: 2 epochs, decay at 1
    ]
