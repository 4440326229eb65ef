"""Runs that go wrong say so: `cl.health`'s checks, and a collapsed network flagged end to end.

The collapse is the one issue #32 describes, reproduced: a small CNN on split digits at lr 0.05
with momentum 0.9 predicts one class per experience (measured: 5 of 5 experiences flagged, final
average accuracy 9.6 %, train loss 0.70–0.73 ≈ ln 2). The same grid's healthy cell (an MLP at the
quickstart's lr 0.1) must not be flagged.
"""
import math

import pytest
from mlflow import MlflowClient

from cl.health import (LOSS_TOLERANCE, WARNING_TAG, check_experience, label_entropy, top_class_share,
                       warning_text)

BALANCED = {3: 100, 7: 100}


# --------------------------------------------------------------------------- pure checks


def test_label_entropy_is_the_loss_of_predicting_the_prior():
    assert label_entropy([50, 50]) == pytest.approx(math.log(2))
    assert label_entropy([10, 10, 10, 10]) == pytest.approx(math.log(4))
    assert label_entropy([7]) == 0.0 and label_entropy([]) == 0.0
    assert label_entropy([90, 10]) == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))
    assert label_entropy([5, 0, 5]) == pytest.approx(math.log(2))   # absent classes do not count


def test_top_class_share():
    assert top_class_share({3: 19, 7: 1}) == (3, pytest.approx(0.95))
    assert top_class_share([0, 4, 1]) == (1, pytest.approx(0.8))
    top, share = top_class_share({})
    assert top == -1 and math.isnan(share)


def test_loss_at_prior_entropy_is_flagged_and_a_learning_loss_is_not():
    near = math.log(2) * (1 + 0.9 * LOSS_TOLERANCE)
    stuck = check_experience(2, train_label_counts=BALANCED, train_loss=near, prediction_counts={3: 60, 7: 40})
    assert stuck.collapsed and "entropy of the label prior" in stuck.reasons[0]
    assert stuck.loss_minus_prior_entropy == pytest.approx(near - math.log(2))
    far = math.log(2) * (1 + 1.1 * LOSS_TOLERANCE)
    assert not check_experience(2, train_label_counts=BALANCED, train_loss=far,
                                prediction_counts={3: 60, 7: 40}).collapsed
    assert not check_experience(2, train_label_counts=BALANCED, train_loss=0.2,
                                prediction_counts={3: 60, 7: 40}).collapsed


def test_one_class_predicted_for_95_percent_is_flagged():
    one = check_experience(0, train_label_counts=BALANCED, train_loss=0.1, prediction_counts={7: 95, 3: 5})
    assert one.collapsed and one.top_class == 7 and one.top_class_share == pytest.approx(0.95)
    assert "95% of its test set predicted as class 7" in one.reasons[0]
    assert not check_experience(0, train_label_counts=BALANCED, train_loss=0.1,
                                prediction_counts={7: 94, 3: 6}).collapsed


def test_single_class_experience_is_not_checked():
    only = check_experience(0, train_label_counts={4: 100}, train_loss=0.0, prediction_counts={4: 30})
    assert not only.collapsed


def test_metrics_and_warning_text():
    bad = check_experience(1, train_label_counts=BALANCED, train_loss=0.69, prediction_counts={3: 50})
    good = check_experience(0, train_label_counts=BALANCED, train_loss=0.1, prediction_counts={3: 25, 7: 25})
    assert bad.metrics()["health/collapsed"] == 1.0 and good.metrics()["health/collapsed"] == 0.0
    assert bad.metrics()["health/top_class_share"] == 1.0
    assert warning_text([good]) is None
    text = warning_text([good, bad])
    assert text.startswith("network collapsed in 1 of 2 experience(s)") and "exp 1:" in text


# --------------------------------------------------------------------------- end to end


COLLAPSING_GRID = {
    "name": "health",
    "base": {"scenario": {"name": "split_digits", "n_experiences": 5}, "strategy": {"name": "naive"},
             "model": {"name": "mlp"}, "train": {"epochs": 3, "lr": 0.1}},
    "cases": [{"model": {"name": "mlp"}},                                         # the quickstart's setting
              {"model": {"name": "cnn"}, "train.lr": 0.05, "train.momentum": 0.9}],  # issue #32's collapse
    "seeds": [0],
}


def test_collapsed_run_is_flagged_in_store_summary_and_report(fresh_store, tmp_path, one_thread):
    from typer.testing import CliRunner

    from cl.analysis import load_runs, summarize, summary_table
    from cl.cli import app
    from cl.grid import GridSpec, expand
    from cl.launch import launch

    spec = GridSpec.model_validate(COLLAPSING_GRID)
    summary = launch(spec, expand(spec), tracking_uri=fresh_store)
    assert summary.finished == 2 and not summary.failed

    client = MlflowClient(fresh_store)
    exp = client.get_experiment_by_name("health")
    runs = {r.data.tags["cell"]: r for r in client.search_runs([exp.experiment_id], "tags.kind = 'cell'")}
    cnn = next(r for label, r in runs.items() if "cnn" in label)
    mlp = next(r for label, r in runs.items() if "cnn" not in label)

    # the collapsed run: a readable tag, per-experience metrics, counted at the end
    assert "network collapsed in" in cnn.data.tags[WARNING_TAG]
    flags = [m.value for m in client.get_metric_history(cnn.info.run_id, "health/collapsed")]
    assert len(flags) == 5 and sum(flags) >= 3
    assert cnn.data.metrics["health/collapsed_experiences"] >= 3
    # the healthy run: checked, nothing flagged
    assert WARNING_TAG not in mlp.data.tags
    assert [m.value for m in client.get_metric_history(mlp.info.run_id, "health/collapsed")] == [0.0] * 5
    assert mlp.data.metrics["health/top_class_share"] < 0.95

    # the launch summary names it
    assert [(label, seed) for label, seed, _ in summary.warnings] == [(cnn.data.tags["cell"], 0)]

    # the report marks the cell
    frame = load_runs("health", tracking_uri=fresh_store)
    table = summary_table(summarize(frame, ["final/avg_acc"]), ["final/avg_acc"])
    marks = dict(zip(table["group"], table["⚠"]))
    assert marks[cnn.data.tags["cell"]] == "⚠ 1/1" and marks[mlp.data.tags["cell"]] == ""
    out = CliRunner().invoke(app, ["report", "--experiment", "health", "--tracking-uri", fresh_store,
                                   "--plot-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "⚠ 1/1" in out.output and "network collapsed in" in out.output
