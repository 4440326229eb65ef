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


class ArtifactRunLog(RecordingRunLog):
    def __init__(self):
        super().__init__()
        self.artifacts, self.params = {}, {}

    def log_artifact(self, path, data):
        self.artifacts[path] = data

    def log_params(self, params):
        self.params.update(params)


def _class_matrix(log):
    """(C after each experience, test samples per class) from the per-class artifact."""
    lines = log.artifacts["per_class_accuracy.csv"].decode().splitlines()
    assert lines[0].startswith("after_exp,class_0,")
    C = np.array([[float(v) if v else np.nan for v in line.split(",")[1:]] for line in lines[1:-1]])
    assert lines[-1].startswith("test_samples,")
    return C, np.array([int(v) for v in lines[-1].split(",")[1:]])


def _weighted(accuracy, counts, classes):
    classes = list(classes)
    return float(np.average(accuracy[classes], weights=counts[classes]))


def test_per_class_accuracy_agrees_with_R():
    from cl.runner import build_scenario

    log = ArtifactRunLog()
    result = execute(config(), log)
    C, counts = _class_matrix(log)
    R = np.array(result.accuracy_matrix)
    # each experience's accuracy is the sample-weighted mean over its classes, after every experience
    for t, classes in enumerate(build_scenario(config().scenario).classes_per_experience):
        for after in range(t, len(R)):
            assert abs(_weighted(C[after], counts, classes) - R[after, t]) < 1e-6
    assert "final/rare_acc" not in result.metrics      # no rare classes in a plain split


def test_rare_class_stream_reports_rare_and_common_accuracy_now_and_when_learnt():
    from cl.runner import build_scenario

    log = ArtifactRunLog()
    scenario = {"name": "rare_class_stream", "n_experiences": 2, "rare_classes": [1, 6], "rare_fraction": 0.05}
    result = execute(config(scenario=scenario), log)
    assert result.ok, result.reason
    C, counts = _class_matrix(log)
    common = [c for c in range(10) if c not in (1, 6)]
    assert abs(result.metrics["final/rare_acc"] - _weighted(C[-1], counts, [1, 6])) < 1e-6
    assert abs(result.metrics["final/common_acc"] - _weighted(C[-1], counts, common)) < 1e-6
    taught = build_scenario(config(scenario=scenario).scenario).classes_per_experience
    when = np.array([C[next(t for t, cs in enumerate(taught) if c in cs), c] for c in range(10)])
    assert abs(result.metrics["final/rare_acc_when_learnt"] - _weighted(when, counts, [1, 6])) < 1e-6
    assert log.params["scenario.resolved_rare_classes"] == "1,6"
