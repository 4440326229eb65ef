"""Per-experience optimisation schedule: epochs, learning rate, weight decay, step decay.

Papers such as MEMO train the first task longer and with other settings than the later
ones, and decay the learning rate at fixed epochs within each task (MultiStepLR). This
plugin applies `TrainConfig.for_experience(t)` at the start of every training experience
and steps the decay after every epoch; without milestones or `first` overrides it leaves
the strategy's settings as they are.
"""
from __future__ import annotations

from avalanche.core import SupervisedPlugin
from torch.optim.lr_scheduler import MultiStepLR


class ExperienceSchedule(SupervisedPlugin):
    def __init__(self, train):
        super().__init__()
        self.train = train
        self.scheduler: MultiStepLR | None = None

    def before_training_exp(self, strategy, **kwargs):
        settings = self.train.for_experience(strategy.clock.train_exp_counter)
        strategy.train_epochs = settings["epochs"]
        for group in strategy.optimizer.param_groups:
            group["lr"] = settings["lr"]
            group["weight_decay"] = settings["weight_decay"]
            group.pop("initial_lr", None)   # a fresh schedule starts from this experience's lr
        self.scheduler = (MultiStepLR(strategy.optimizer, milestones=settings["milestones"], gamma=self.train.lr_decay)
                          if settings["milestones"] else None)

    def after_training_epoch(self, strategy, **kwargs):
        if self.scheduler is not None:
            self.scheduler.step()

    # cl.checkpoint.Resumable: the schedule is rebuilt at every experience's start, nothing to keep
    def checkpoint_state(self, ctx):
        return {}

    def restore_checkpoint_state(self, state, ctx):
        pass
