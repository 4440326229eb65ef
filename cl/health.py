"""Runs that go wrong say so: detecting a network that collapsed to a constant prediction.

A collapsed network (too high a learning rate, dead ReLUs, a broken input pipeline) outputs the
same thing whatever the input. Two symptoms, checked once per experience right after it is trained:

- **loss at the label prior's entropy**: a constant output minimises cross-entropy at the
  entropy H of the label distribution it is trained on (ln 2 for two balanced classes). The last
  epoch's mean training loss within ``LOSS_TOLERANCE · H`` of H means the network learnt no
  more than the class frequencies. H is taken over the labels of the minibatches that epoch
  actually trained on (with replay, the memory's classes count too);
- **one class predicted for ≥ ``TOP_CLASS_SHARE`` of the experience's test set**, although the
  experience has several classes.

Either symptom flags the experience (`ExperienceHealth.collapsed`). Forgetting is not
collapse: only the experience just trained is checked (on old experiences a class-incremental
model predicting the newest classes is expected). Experiences with a single class are not
checked (both symptoms are then what a healthy model shows).

The loss rule assumes a cross-entropy loss; with terms added to it (LwF's distillation, EWC's
penalty) or another loss (iCaRL's binary cross-entropy) it is approximate, which is why each
reason is reported on its own.

Measured on `experiments/quickstart.yaml` (fp32, both seeds): lwf (seeds 0 and 1) and ewc (seed 1)
are flagged — one class for 95–100 % of a just-trained experience's test set; their final average
accuracy (10.2 % for lwf s1 and ewc s1) is about half of the 20 % that knowing only the last
experience gives, i.e. they did not learn it. naive, replay and icarl are not flagged.

The pure checks come first; `make_health_plugin` feeds them from an Avalanche strategy and logs
``health/*`` metrics per experience and a readable ``health.warning`` tag.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

LOSS_TOLERANCE = 0.05          # |loss − H(prior)| < LOSS_TOLERANCE · H(prior)
TOP_CLASS_SHARE = 0.95         # one class for at least this share of the test set
WARNING_TAG = "health.warning"


def label_entropy(counts: Iterable[float]) -> float:
    """Shannon entropy (nats) of the label distribution given by per-class counts; 0 for one class.

    This is the cross-entropy a model reaches by predicting the class frequencies whatever the input.
    """
    p = np.asarray([c for c in counts if c > 0], dtype=float)
    if p.size == 0:
        return 0.0
    p = p / p.sum()
    return float(-(p * np.log(p)).sum())


def top_class_share(prediction_counts: Mapping[int, int] | Sequence[int]) -> tuple[int, float]:
    """(the most predicted class, its share of all predictions); (-1, nan) with no predictions."""
    counts = dict(prediction_counts) if isinstance(prediction_counts, Mapping) else dict(enumerate(prediction_counts))
    total = sum(counts.values())
    if total == 0:
        return -1, math.nan
    top = max(counts, key=lambda c: counts[c])
    return int(top), counts[top] / total


@dataclass(frozen=True)
class ExperienceHealth:
    """The verdict on one trained experience and the numbers behind it."""

    experience: int
    prior_entropy: float
    train_loss: float
    top_class: int
    top_class_share: float
    reasons: tuple[str, ...] = field(default=())

    @property
    def collapsed(self) -> bool:
        return bool(self.reasons)

    @property
    def loss_minus_prior_entropy(self) -> float:
        return self.train_loss - self.prior_entropy

    def metrics(self) -> dict[str, float]:
        """``health/*`` metrics (logged at step = experience)."""
        return {"health/collapsed": float(self.collapsed),
                "health/top_class_share": self.top_class_share,
                "health/loss_minus_prior_entropy": self.loss_minus_prior_entropy,
                "health/prior_entropy": self.prior_entropy}


def check_experience(experience: int, *, train_label_counts: Mapping[int, int], train_loss: float,
                     prediction_counts: Mapping[int, int], loss_tolerance: float = LOSS_TOLERANCE,
                     share_threshold: float = TOP_CLASS_SHARE) -> ExperienceHealth:
    """Check one experience: its training labels' counts, its last epoch's mean training loss, and
    how often each class was predicted on its test set right after training it."""
    prior = label_entropy(train_label_counts.values())
    top, share = top_class_share(prediction_counts)
    reasons = []
    n_classes = sum(1 for c in train_label_counts.values() if c > 0)
    if n_classes >= 2:
        if math.isfinite(train_loss) and abs(train_loss - prior) < loss_tolerance * prior:
            reasons.append(f"train loss {train_loss:.3f} ≈ entropy of the label prior {prior:.3f}")
        if math.isfinite(share) and share >= share_threshold:
            reasons.append(f"{share:.0%} of its test set predicted as class {top}")
    return ExperienceHealth(experience, prior, train_loss, top, share, tuple(reasons))


def warning_text(checks: Sequence[ExperienceHealth]) -> str | None:
    """One readable line for the `health.warning` tag, or None when every experience looks healthy.

    >>> warning_text([check_experience(0, train_label_counts={0: 50, 1: 50}, train_loss=0.70,
    ...                                prediction_counts={1: 40})])
    'network collapsed in 1 of 1 experience(s) — exp 0: train loss 0.700 ≈ entropy of the label prior 0.693, 100% of its test set predicted as class 1'
    """
    bad = [c for c in checks if c.collapsed]
    if not bad:
        return None
    head = f"network collapsed in {len(bad)} of {len(checks)} experience(s) — "
    return head + "; ".join(f"exp {c.experience}: {', '.join(c.reasons)}" for c in bad)


# --------------------------------------------------------------------------- the Avalanche hook


def make_health_plugin(runlog, progress):
    """An Avalanche plugin that checks each trained experience and logs the verdict to `runlog`.

    `progress` is the run's logger plugin (`cl.run_logger.make_logger_plugin`), which already counts the
    experiences trained (`trained`) and the latest epoch's mean loss (`epoch_loss`); it must run first.

    Metrics ``health/*`` at step t after experience t's evaluation; the ``health.warning`` tag
    (rewritten as experiences add reasons) and a log warning when something collapsed.
    """
    from avalanche.core import SupervisedPlugin

    class HealthPlugin(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.checks: list[ExperienceHealth] = []
            self._labels: dict[int, int] = {}
            self._preds: dict[int, int] = {}

        @property
        def warning(self) -> str | None:
            return warning_text(self.checks)

        def before_training_exp(self, strategy, **kwargs):
            self._labels = {}

        def before_training_epoch(self, strategy, **kwargs):
            self._epoch_labels: dict[int, int] = {}

        def after_training_iteration(self, strategy, **kwargs):
            # the labels the loss was computed on: with replay, the memory's classes are in the batch too
            for c, n in zip(*np.unique(strategy.mb_y.detach().cpu().numpy(), return_counts=True)):
                self._epoch_labels[int(c)] = self._epoch_labels.get(int(c), 0) + int(n)

        def after_training_epoch(self, strategy, **kwargs):
            if self._epoch_labels:
                self._labels = self._epoch_labels

        # cl.checkpoint.Resumable: a resumed run keeps the earlier experiences' verdicts
        def checkpoint_state(self, ctx) -> dict:
            return {"checks": [
                {"experience": c.experience, "prior_entropy": c.prior_entropy, "train_loss": c.train_loss,
                 "top_class": c.top_class, "top_class_share": c.top_class_share, "reasons": list(c.reasons)}
                for c in self.checks]}

        def restore_checkpoint_state(self, state: dict, ctx) -> None:
            self.checks = [ExperienceHealth(**{**c, "reasons": tuple(c["reasons"])}) for c in state["checks"]]

        def before_eval(self, strategy, **kwargs):
            self._preds = {}

        def after_eval_iteration(self, strategy, **kwargs):
            if strategy.experience.current_experience != progress.trained - 1:
                return            # only the experience just trained is checked
            pred = strategy.mb_output.detach().argmax(dim=1).cpu().numpy()
            for c, n in zip(*np.unique(pred, return_counts=True)):
                self._preds[int(c)] = self._preds.get(int(c), 0) + int(n)

        def after_eval(self, strategy, **kwargs):
            t = progress.trained - 1
            if t < 0 or not self._preds or any(c.experience == t for c in self.checks):
                return
            check = check_experience(t, train_label_counts=self._labels, train_loss=progress.epoch_loss,
                                     prediction_counts=self._preds)
            self.checks.append(check)
            runlog.log_metrics(check.metrics(), step=t)
            if check.collapsed:
                log.warning("experience %d looks collapsed: %s", t, ", ".join(check.reasons))
            if self.warning:       # rewritten after every experience, so its "k of n" stays current
                runlog.set_tags({WARNING_TAG: self.warning})

    return HealthPlugin()
