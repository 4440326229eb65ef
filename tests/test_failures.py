"""Failures are recorded, never half-logged: FAILED with a reason, and the grid goes on."""
import numpy as np
from mlflow import MlflowClient

from cl.config import RunConfig
from cl.grid import GridSpec, expand
from cl.launch import launch
from cl.runner import run

BASE = {
    "scenario": {"name": "split_digits", "n_experiences": 2},
    "model": {"name": "mlp", "hidden": [32]},
    "strategy": {"name": "naive"},
    "train": {"epochs": 1, "lr": 0.05},
    "imports": ["tests.helpers.failing_strategies"],
}


def test_nan_loss_fails_the_run_with_its_reason(fresh_store):
    cfg = RunConfig.from_dict({**BASE, "experiment": "nan", "strategy": {"name": "nan_loss"}})
    result = run(cfg, tracking_uri=fresh_store)
    assert result.status == "FAILED"
    assert "NonFiniteLossError" in result.reason and "experience 1" in result.reason
    logged = MlflowClient(fresh_store).get_run(result.run_id)
    assert logged.info.status == "FAILED"
    assert logged.data.tags["failure_reason"] == result.reason
    assert "final/avg_acc" not in logged.data.metrics
    # the first experience's row was logged before the failure
    assert np.isfinite(logged.data.metrics["acc/exp_0"])


def test_failing_cell_does_not_stop_the_grid(fresh_store):
    spec = GridSpec.model_validate({
        "name": "failing", "base": BASE,
        "grid": {"strategy.name": ["naive", "explode"]}, "seeds": [0],
    })
    summary = launch(spec, expand(spec), tracking_uri=fresh_store)
    assert summary.finished == 1
    assert [(label, reason) for label, _, reason in summary.failed] == [
        ("strategy.name=explode", "RuntimeError: boom at experience 1")]

    client = MlflowClient(fresh_store)
    exp = client.get_experiment_by_name("failing")
    runs = {r.data.tags.get("cell", "launch"): r for r in client.search_runs([exp.experiment_id])}
    assert runs["strategy.name=naive"].info.status == "FINISHED"
    assert runs["strategy.name=explode"].info.status == "FAILED"
    assert runs["strategy.name=explode"].data.tags["failure_reason"] == "RuntimeError: boom at experience 1"
    assert runs["launch"].info.status == "FAILED"   # the launch reports that a cell failed

    # relaunching skips both (the failure is reported, not silently rerun) ...
    again = launch(spec, expand(spec), tracking_uri=fresh_store)
    assert again.finished == 0 and again.skipped_finished == 1 and again.skipped_failed == 1
    # ... unless asked to retry
    retried = launch(spec, expand(spec), tracking_uri=fresh_store, retry_failed=True)
    assert retried.skipped_finished == 1 and len(retried.failed) == 1
    assert len(client.search_runs([exp.experiment_id], "tags.cell = 'strategy.name=explode'")) == 2
