"""The Avalanche plugin that logs a continual-learning run through its `cl.tracking.RunLog`: strategies never call
MLflow; this plugin observes training and evaluation (the metrics it logs are listed in `cl.tracking`), and the
guard that stops a run whose loss is not finite."""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cl.tracking import RunLog

log = logging.getLogger(__name__)


def _plugin_base():
    from avalanche.core import SupervisedPlugin

    return SupervisedPlugin


@runtime_checkable
class SecondPredictor(Protocol):
    """A plugin with a classifier of its own (e.g. nearest-mean-of-exemplars), scored beside the model's.

    The logger keeps one accuracy matrix per `prediction_name` and logs it as
    ``<name>/acc/exp_<j>`` and ``<name>/acc/avg_seen``; `predict` returns the predicted class ids
    of the current evaluation minibatch, or None when it cannot predict yet.
    """

    prediction_name: str

    def predict(self, strategy) -> Any: ...


class AccuracyTally:
    """The accuracy matrix R of one predictor, filled one evaluation pass at a time."""

    def __init__(self, test_sizes):
        self.test_sizes = np.asarray(test_sizes, dtype=float)
        n = len(self.test_sizes)
        self.R = np.full((n, n), np.nan)
        self._correct = np.zeros(n)
        self._seen = np.zeros(n)

    def reset(self) -> None:
        self._correct[:] = 0
        self._seen[:] = 0

    def add(self, j: int, pred, y) -> None:
        self._correct[j] += float((pred == y).sum())
        self._seen[j] += len(y)

    def close_row(self, t: int, prefix: str) -> dict[str, float]:
        """Write row t of R from this pass; return it as metrics (with the seen-average)."""
        evaluated = self._seen > 0
        if not evaluated.any():
            return {}
        self.R[t, evaluated] = self._correct[evaluated] / self._seen[evaluated]
        row = {f"{prefix}acc/exp_{j}": float(self.R[t, j]) for j in np.flatnonzero(evaluated)}
        seen = self.R[t, : t + 1]
        if not np.isnan(seen).any():
            row[f"{prefix}acc/avg_seen"] = float(np.average(seen, weights=self.test_sizes[: t + 1]))
        return row


def make_logger_plugin(runlog: RunLog, *, test_sizes, classes_per_experience, task_aware: bool = False):
    """An Avalanche plugin that records the accuracy matrix and logs it per experience.

    Accuracy of test experience j is computed from the model's outputs on it during
    ``strategy.eval``; with ``task_aware`` (task-incremental scenarios) the prediction is
    restricted to that experience's classes (single-head model, task-aware inference).
    Plugins that are `SecondPredictor`s get a matrix of their own (`extra[name].R`). Per class, the
    same evaluations fill `class_R[t, c]` (accuracy on class c after experience t), with
    `class_test_counts`: what rare-class accuracy is computed from.
    """
    base = _plugin_base()

    class MLflowLoggerPlugin(base):  # type: ignore[misc, valid-type]
        def __init__(self):
            super().__init__()
            self.tally = AccuracyTally(test_sizes)
            self.extra: dict[str, AccuracyTally] = {}
            self.trained = 0
            self.epochs = 0
            self.epoch_loss = math.nan       # mean training loss of the experience's latest epoch
            self.train_seconds = 0.0
            self._t0: float | None = None
            self._class_mask: dict[int, Any] = {}
            n_classes = 1 + max(c for classes in classes_per_experience for c in classes)
            self._class_correct = np.zeros(n_classes)
            self._class_seen = np.zeros(n_classes)
            # C[t, c]: accuracy on class c's test samples after training experience t (NaN: not evaluated)
            self.class_R = np.full((len(test_sizes), n_classes), np.nan)
            self.class_test_counts = np.zeros(n_classes)

        @property
        def R(self) -> np.ndarray:
            return self.tally.R

        # ---- training
        # An experience's time runs from its start to the end of the train() call (or the next
        # experience's start), so work other plugins do after it (herding, FPF) is included.
        def before_training_exp(self, strategy, **kwargs):
            self._close_experience_timer()
            self._t0 = time.perf_counter()
            self.epoch_loss = math.nan

        def before_training_epoch(self, strategy, **kwargs):
            self._loss_sum, self._loss_n = 0.0, 0

        def after_training_iteration(self, strategy, **kwargs):
            self._loss_sum += float(strategy.loss.detach())
            self._loss_n += 1

        def after_training_epoch(self, strategy, **kwargs):
            if self._loss_n:
                self.epoch_loss = self._loss_sum / self._loss_n
                runlog.log_metrics({"train/loss": self.epoch_loss}, step=self.epochs)
            self.epochs += 1
            T, E = len(test_sizes), strategy.train_epochs
            runlog.progress(self.epochs, T * E,
                            f"experience {self.trained + 1}/{T}, epoch {strategy.clock.train_exp_epochs + 1}/{E}")

        def after_training_exp(self, strategy, **kwargs):
            self.trained += 1

        def after_training(self, strategy, **kwargs):
            self._close_experience_timer()

        def _close_experience_timer(self):
            if self._t0 is None:
                return
            seconds = time.perf_counter() - self._t0
            self._t0 = None
            self.train_seconds += seconds
            runlog.log_metrics({"time/train_exp_s": seconds}, step=self.trained - 1)

        # ---- evaluation
        def before_eval(self, strategy, **kwargs):
            self.tally.reset()
            self._class_correct[:] = 0
            self._class_seen[:] = 0
            for tally in self.extra.values():
                tally.reset()

        def after_eval_iteration(self, strategy, **kwargs):
            j = strategy.experience.current_experience
            logits = strategy.mb_output.detach()
            if task_aware:
                logits = logits + self._mask(j, logits)
            pred, y = logits.argmax(dim=1).cpu().numpy(), strategy.mb_y.cpu().numpy()
            self.tally.add(j, pred, y)
            np.add.at(self._class_correct, y, pred == y)
            np.add.at(self._class_seen, y, 1)
            for plugin in strategy.plugins:
                if isinstance(plugin, SecondPredictor):
                    pred = plugin.predict(strategy)
                    if pred is not None:
                        tally = self.extra.setdefault(plugin.prediction_name, AccuracyTally(test_sizes))
                        tally.add(j, pred.to(strategy.mb_y.device), strategy.mb_y)

        def after_eval(self, strategy, **kwargs):
            if self.trained == 0:
                return  # an evaluation before any training is not a row of R
            t = self.trained - 1
            seen = self._class_seen > 0
            self.class_R[t, seen] = self._class_correct[seen] / self._class_seen[seen]
            self.class_test_counts = np.maximum(self.class_test_counts, self._class_seen)
            row = self.tally.close_row(t, "")
            for name, tally in self.extra.items():
                row.update(tally.close_row(t, f"{name}/"))
            runlog.log_metrics(row, step=t)

        # ---- checkpoints (cl.checkpoint.Resumable): the matrices so far and the counters
        def checkpoint_state(self, ctx):
            import torch

            return {"R": torch.from_numpy(self.tally.R.copy()),
                    "extra": {name: torch.from_numpy(t.R.copy()) for name, t in self.extra.items()},
                    "class_R": torch.from_numpy(self.class_R.copy()),
                    "class_test_counts": torch.from_numpy(self.class_test_counts.copy()),
                    "trained": self.trained, "epochs": self.epochs, "train_seconds": self.train_seconds}

        def restore_checkpoint_state(self, state, ctx):
            self.tally.R[:] = state["R"].numpy()
            for name, R in state["extra"].items():
                self.extra.setdefault(name, AccuracyTally(test_sizes)).R[:] = R.numpy()
            self.class_R[:] = state["class_R"].numpy()
            self.class_test_counts = state["class_test_counts"].numpy().copy()
            self.trained, self.epochs = int(state["trained"]), int(state["epochs"])
            self.train_seconds = float(state["train_seconds"])

        def _mask(self, j, logits):
            import torch

            if j not in self._class_mask:
                mask = torch.full((logits.shape[1],), -math.inf)
                mask[list(classes_per_experience[j])] = 0.0
                self._class_mask[j] = mask
            return self._class_mask[j].to(logits.device)

    return MLflowLoggerPlugin()


def make_finite_loss_guard():
    """A plugin that stops training with `NonFiniteLossError` when the loss is NaN or infinite."""
    from cl.errors import NonFiniteLossError

    class FiniteLossGuard(_plugin_base()):  # type: ignore[misc]
        def checkpoint_state(self, ctx):   # keeps nothing between experiences
            return {}

        def restore_checkpoint_state(self, state, ctx):
            pass

        def before_backward(self, strategy, **kwargs):
            loss = strategy.loss
            if not bool(loss.detach().isfinite().all()):
                clock = strategy.clock
                raise NonFiniteLossError(
                    f"loss became {float(loss.detach().mean())} in experience "
                    f"{clock.train_exp_counter}, epoch {clock.train_exp_epochs}, "
                    f"iteration {clock.train_epoch_iterations}; lower train.lr or check the inputs")

    return FiniteLossGuard()
