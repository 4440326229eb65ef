"""The contract every registered strategy passes (cf. scikit-learn's check_estimator).

Each one builds from its registry entry with default options, trains two experiences of
split_digits through the real runner into a real MLflow store, finishes with every final
metric and artifact, accounts its memory, learns above chance, and its logged config
round-trips to the same hash.
"""
import csv
import io

import numpy as np
import pytest
import yaml

from cl.config import RunConfig
from cl.registry import PLUGINS, STRATEGIES
from cl.runner import FINAL_METRICS, run

ARTIFACTS = {"config.yaml", "provenance.json", "accuracy_matrix.csv", "accuracy_matrix.png",
             "accuracy_curve.png"}
DIGITS_PIXELS = 8 * 8 * 1


def contract_config(name: str, plugins=()) -> RunConfig:
    return RunConfig.from_dict({
        "experiment": f"contract-{name}",
        "scenario": {"name": "split_digits", "n_experiences": 2},
        "model": {"name": "mlp", "hidden": [64]},
        "strategy": {"name": name},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.1},
        "plugins": list(plugins),
        "seed": 0,
    })


def keeps_exemplars(name: str) -> bool:
    return "mem_size" in STRATEGIES.get(name).params.model_fields


# every registered strategy, except the deliberately failing ones of tests/helpers
CONTRACT = [e.name for e in STRATEGIES.entries() if not str(e.target).startswith("tests.")]


def test_every_baseline_is_under_contract():
    assert {"naive", "replay", "ewc", "lwf", "icarl", "gdumb", "er_ace", "dark_er", "cumulative"} <= set(CONTRACT)


@pytest.mark.parametrize("name", CONTRACT)
def test_strategy_contract(name, shared_store):
    from mlflow import MlflowClient

    cfg = contract_config(name)
    result = run(cfg, tracking_uri=shared_store)
    assert result.ok, result.reason

    client = MlflowClient(shared_store)
    logged = client.get_run(result.run_id)
    assert logged.info.status == "FINISHED"
    metrics = logged.data.metrics
    assert set(FINAL_METRICS) <= set(metrics)
    assert all(np.isfinite(metrics[k]) for k in FINAL_METRICS)

    # the accuracy matrix: one row per experience, logged with step = experience
    history = client.get_metric_history(result.run_id, "acc/exp_0")
    assert [m.step for m in history] == [0, 1]
    R = np.array(result.accuracy_matrix)
    assert R.shape == (2, 2)
    assert max(R[0, 0], R[1, 1]) > 0.4, f"{name} learned nothing (5 classes per experience, chance 0.2): R={R}"
    assert metrics["final/avg_acc"] == pytest.approx(R[1].mean(), abs=0.05)

    # artifacts, and the CSV matches the logged metrics
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert ARTIFACTS <= names
    csv_path = client.download_artifacts(result.run_id, "accuracy_matrix.csv")
    rows = list(csv.reader(io.StringIO(open(csv_path).read())))
    assert float(rows[2][2]) == pytest.approx(R[1, 1], abs=1e-6)

    # memory accounting: params x 4 bytes + exemplars x H*W*C bytes (MEMO)
    n_ex = metrics["memory/n_exemplars"]
    expected_mb = (metrics["memory/model_bytes"] + n_ex * DIGITS_PIXELS) / 2**20
    assert metrics["final/memory_mb"] == pytest.approx(expected_mb)
    assert metrics["cost/train_flops"] > 0
    if keeps_exemplars(name):
        assert 0 < n_ex <= 200
    elif name == "cumulative":
        assert n_ex > 1000   # it keeps every training sample it has seen
    else:
        assert n_ex == 0

    # the logged config round-trips to the same identity; params mirror it
    logged_cfg = yaml.safe_load(open(client.download_artifacts(result.run_id, "config.yaml")).read())
    again = RunConfig.from_dict(logged_cfg)
    assert again == cfg and again.config_hash == cfg.config_hash == logged.data.tags["config_hash"]
    reading = {k: v for k, v in logged.data.params.items() if k.startswith("data.")}   # how the data was read
    assert {k: v for k, v in logged.data.params.items() if k not in reading} == cfg.flat_params()
    assert reading["data.input_shape"] == "(1, 8, 8)" and reading["data.layout"] == "nchw"


@pytest.mark.parametrize("strategy", ["naive", "replay"])
@pytest.mark.parametrize("plugin", [e.name for e in PLUGINS.entries()])
def test_plugin_contract(plugin, strategy, shared_store):
    """Every registered add-on runs on a strategy with and without a buffer, costs FLOPs, logs its files."""
    from mlflow import MlflowClient

    plain = run(contract_config(strategy), tracking_uri=shared_store)
    result = run(contract_config(strategy, [{"name": plugin}]), tracking_uri=shared_store)
    assert result.ok, result.reason
    assert result.metrics["cost/train_flops"] > plain.metrics["cost/train_flops"]
    R = np.array(result.accuracy_matrix)
    assert R[1].mean() > 0.2, f"{strategy}+{plugin} is at chance: R={R}"
    client = MlflowClient(shared_store)
    logged = client.get_run(result.run_id)
    assert logged.info.status == "FINISHED"
    files = {a.path for a in client.list_artifacts(result.run_id)}
    assert ARTIFACTS <= files and plugin in files, files
