"""The runner in-process: reproducibility from the seed, task-aware evaluation, accounting."""
import numpy as np

from cl.config import RunConfig
from cl.runner import execute
from cl.tracking import NullRunLog


def config(**changes):
    raw = {"scenario": {"name": "split_digits", "n_experiences": 2}, "model": {"name": "mlp", "hidden": [32]},
           "strategy": {"name": "naive"}, "train": {"epochs": 2, "lr": 0.1}, "seed": 0}
    raw.update(changes)
    return RunConfig.from_dict(raw)


class RecordingRunLog(NullRunLog):
    def __init__(self):
        self.metrics, self.progress_calls = [], []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def progress(self, done, total, what):
        self.progress_calls.append((done, total, what))


def test_same_seed_same_run_other_seed_other_run():
    a, b = execute(config(), NullRunLog()), execute(config(), NullRunLog())
    c = execute(config(seed=1), NullRunLog())
    assert a.ok and b.ok and c.ok
    assert a.accuracy_matrix == b.accuracy_matrix
    assert a.accuracy_matrix != c.accuracy_matrix


def test_task_aware_evaluation_restricts_predictions_to_the_task():
    class_il = np.array(execute(config(), NullRunLog()).accuracy_matrix)
    task_il = np.array(execute(config(scenario={"name": "split_digits", "n_experiences": 2, "task_labels": True}),
                               NullRunLog()).accuracy_matrix)
    # class-incremental naive forgets experience 0 entirely; told the task, the old head still separates it
    assert class_il[1, 0] < 0.05
    assert task_il[1, 0] > 0.5


def test_rows_are_logged_per_experience_and_progress_per_epoch():
    log = RecordingRunLog()
    result = execute(config(), log)
    rows = [(step, m) for step, m in log.metrics if "acc/exp_0" in m and "final/avg_acc" not in m]
    assert [step for step, _ in rows] == [0, 1]
    assert rows[1][1]["acc/exp_1"] == result.accuracy_matrix[1][1]
    assert "acc/avg_seen" in rows[0][1]
    assert [(d, t) for d, t, _ in log.progress_calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert log.progress_calls[-1][2] == "experience 2/2, epoch 2/2"
