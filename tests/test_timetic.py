"""TimeTic (transfer.timetic.estimator*) and `clsuite recommend`: the pieces, the leakage guard, TabPFN offline, MLflow."""
import json
import socket

import numpy as np
import pandas as pd
import pytest
import torch

from transfer.timetic import estimator as tt
from transfer.timetic import features
from transfer.timetic import zoo

# ---------------------------------------------------------------- entropy profile


def test_entropy_of_rank_one_is_zero_and_of_isotropic_is_one():
    rng = np.random.default_rng(0)
    rank_one = np.outer(rng.standard_normal(20), rng.standard_normal(8))
    assert features.matrix_entropy(rank_one) == pytest.approx(0.0, abs=1e-9)
    orthonormal = np.linalg.qr(rng.standard_normal((32, 16)))[0].T          # 16 orthonormal rows in R^32
    assert features.matrix_entropy(orthonormal) == pytest.approx(1.0, abs=1e-9)
    assert features.matrix_entropy(rng.standard_normal((16, 4096))) > 0.97        # isotropic Gaussian cloud
    two = np.repeat(np.eye(2, 5), 8, axis=0)                                # 16 rows on two orthogonal directions
    assert features.matrix_entropy(two) == pytest.approx(np.log(2) / np.log(16), abs=1e-9)
    with pytest.raises(ValueError, match="2-D"):
        features.matrix_entropy(np.zeros(5))


def test_resampling_keeps_endpoints_and_is_linear_in_depth():
    for values in ([0.3, 0.9, 0.1], [0.5, 0.2, 0.7, 0.6, 0.95], list(np.linspace(0.1, 0.8, 11))):
        out = features.resample_profile(values, 8)
        assert out.shape == (8,) and out[0] == values[0] and out[-1] == values[-1]
    assert np.allclose(features.resample_profile([0.0, 1.0], 5), [0, 0.25, 0.5, 0.75, 1.0])
    assert np.allclose(features.resample_profile([0.4], 4), 0.4)
    with pytest.raises(ValueError, match="length"):
        features.resample_profile([0.1, 0.2], 1)


def test_entropy_profile_spans_input_to_output_of_every_architecture():
    x = zoo.standardise(np.random.default_rng(1).standard_normal((40, 32)))[0]
    for name in ("linear-sines", "mlp_s-arma", "tfm_s-random_walk", "tcn_s-regime"):
        torch.manual_seed(0)
        model = zoo.ZOO[name].build(32).eval()
        profile = features.entropy_profile(model, x, 8)
        states = model.hidden_states(torch.tensor(x, dtype=torch.float32))
        assert profile[0] == pytest.approx(features.matrix_entropy(x))
        assert profile[-1] == pytest.approx(features.matrix_entropy(states[-1].detach().double().numpy()))
        assert np.all((profile >= 0) & (profile <= 1))


# ---------------------------------------------------------------- meta-features, checkpoints


def test_meta_features_see_period_trend_and_noise():
    t = np.arange(240)
    seasonal = features.meta_features(np.sin(2 * np.pi * t / 12) + 0.05 * np.random.default_rng(0).standard_normal(240),
                                240)
    noise = features.meta_features(np.random.default_rng(1).standard_normal(240), 240)
    trend = features.meta_features(0.05 * t + 0.1 * np.random.default_rng(2).standard_normal(240), 240)
    assert set(seasonal) == set(features.META_FEATURES) and all(np.isfinite(v) for v in seasonal.values())
    assert seasonal["log_period"] == pytest.approx(np.log(13)) and seasonal["seasonal_strength"] > 0.9
    assert noise["spectral_entropy"] > 0.85 > seasonal["spectral_entropy"] and abs(noise["acf1"]) < 0.2
    assert trend["trend_strength"] > 0.9 > noise["trend_strength"]


def test_checkpoints_load_back_exactly(tmp_path):
    spec = zoo.ZOO["tcn_s-regime"]
    model = spec.build(32).eval()
    zoo.save_forecaster(model, spec, 32, tmp_path / "ckpt")
    again, config = zoo.load_forecaster(tmp_path / "ckpt", 32)
    x = torch.randn(5, 32)
    assert config["family"] == "regime" and torch.equal(model(x), again(x))
    torch.save(model, tmp_path / "whole.pt")                 # a whole module implementing the protocol
    whole, _ = zoo.load_forecaster(tmp_path / "whole.pt")
    assert torch.equal(model(x), whole(x))
    with pytest.raises(ValueError, match="context 32 != requested context 48"):
        zoo.load_forecaster(tmp_path / "ckpt", 48)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        zoo.load_forecaster(tmp_path / "nothing")


# ---------------------------------------------------------------- leave one dataset out


def _known_table(informative: bool, seed: int = 0) -> pd.DataFrame:
    """6 datasets × 5 models × 2 horizons × 3 segments; the truth is a known function of the columns."""
    rng = np.random.default_rng(seed)
    quality = np.array([0.0, 0.3, 0.6, 0.9, 1.2])
    rows = []
    for d in range(6):
        difficulty, noise = rng.normal(), rng.standard_normal(5)
        for m in range(5):
            truth = (quality[m] + 0.2 * difficulty) if informative else noise[m]
            for h in (4, 16):
                for s in range(3):
                    rows.append({"dataset": f"d{d}", "model": f"m{m}", "horizon": h, "segment": s,
                                 "meta/marker": float(d), "meta/difficulty": difficulty + 0.05 * rng.normal(),
                                 "ent/0": quality[m] + 0.05 * rng.normal(), "ent/1": rng.normal(),
                                 "zero_shot": truth + 0.3 * rng.normal(), "finetuned": truth + 0.01 * h,
                                 "zero_shot_test": truth + 0.3 * rng.normal()})
    return pd.DataFrame(rows)


class _Recorder:
    """A regressor that remembers which datasets (meta/marker, column 0 of the meta set) it saw."""

    def __init__(self):
        self.seen = []

    def fit(self, X, y):
        self.seen.append(set(np.unique(X[:, 0])))
        self.mean_ = float(np.mean(y))
        return self

    def predict(self, X):
        return X[:, -2]                               # any column: only the leakage is checked here


def test_leave_one_dataset_out_never_leaks_the_held_out_dataset():
    table = _known_table(True)
    for dataset, context, target in tt.lodo_splits(table):
        assert set(table.iloc[target]["dataset"]) == {dataset}
        assert dataset not in set(table.iloc[context]["dataset"])
        assert len(context) + len(target) == len(table)
    recorder = _Recorder()
    scores, learners = tt.leave_one_dataset_out(table, "meta", tt.TimeTicEstimator(recorder, max_context=None))
    assert learners == ["_Recorder"] * 6 and len(recorder.seen) == 6
    for held_out, seen in zip(sorted(table["dataset"].unique()), recorder.seen):
        assert float(held_out[1:]) not in seen and len(seen) == 5
    assert set(scores["dataset"]) == set(table["dataset"]) and len(scores) == 6 * 2 * 5


def test_estimator_recovers_a_known_ranking_and_not_a_random_one():
    ours = tt.summarise(tt.rank_scores(tt.leave_one_dataset_out(_known_table(True), "entropy",
                                                                tt.TimeTicEstimator("gp"))[0]))
    assert (ours["spearman"] > 0.85).all() and (ours["top1_gap"] < 0.05).all()
    noise = tt.summarise(tt.rank_scores(tt.leave_one_dataset_out(_known_table(False, 1), "entropy",
                                                                 tt.TimeTicEstimator("gp"))[0]))
    assert abs(noise["spearman"].mean()) < 0.5
    zs = tt.summarise(tt.rank_scores(tt.zero_shot_scores(_known_table(True))))
    assert ours["spearman"].mean() >= zs["spearman"].mean()      # noisy zero-shot error ranks worse
    with pytest.raises(ValueError, match="features: 'all' is not one of"):
        tt.leave_one_dataset_out(_known_table(True), "all", tt.TimeTicEstimator("gp"))


# ---------------------------------------------------------------- TabPFN offline, the fallback


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No TabPFN weights anywhere we look, HF offline, and any socket connection recorded and refused."""
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TABPFN_MODEL_CACHE_DIR", str(tmp_path / "tabpfn-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_tabpfn_without_weights_raises_a_clear_error_and_never_touches_the_network(offline, tmp_path):
    X, y = np.random.default_rng(0).standard_normal((30, 3)), np.arange(30.0)
    with pytest.raises(tt.TabPFNWeightsMissing) as info:
        tt.TimeTicEstimator("tabpfn").fit(X, y)
    message = str(info.value)
    assert str(tmp_path / "tabpfn-cache" / "tabpfn-v2-regressor.ckpt") in message
    assert str(tmp_path / "xdg" / "tabpfn" / "tabpfn-v2-regressor.ckpt") in message
    assert "model_path" in message and "learner='auto'" in message
    with pytest.raises(tt.TabPFNWeightsMissing, match="mine.ckpt"):
        tt.TimeTicEstimator("tabpfn", model_path=str(tmp_path / "mine.ckpt")).fit(X, y)
    assert offline == []


def test_auto_takes_the_fallback_and_the_run_logs_it(offline, tmp_path, monkeypatch, shared_store):
    from mlflow import MlflowClient

    from cl.config import RunConfig
    from cl.registry import TRANSFERS
    from cl.runner import run

    X, y = np.random.default_rng(0).standard_normal((30, 3)), np.arange(30.0)
    estimator = tt.TimeTicEstimator("auto").fit(X, y)
    assert estimator.learner_name_ == "gp" and "no TabPFN regressor weights" in estimator.fallback_reason_
    assert tt.TimeTicEstimator("auto", fallback="hgb").fit(X, y).learner_name_ == "hgb"

    monkeypatch.setenv("CLSUITE_CACHE", str(tmp_path / "cache"))
    options = dict(TRANSFERS.get("timetic").smoke_options)
    cfg = RunConfig.from_dict({"experiment": "timetic-test", "transfer": {"name": "timetic", **options}, "seed": 0})
    result = run(cfg, tracking_uri=shared_store)
    assert result.ok, result.reason
    logged = MlflowClient(shared_store).get_run(result.run_id)
    assert logged.data.tags["timetic.learner"] == "gp" and logged.data.params["timetic.learner"] == "gp"
    assert "no TabPFN regressor weights" in logged.data.tags["timetic.fallback_reason"]
    metrics = logged.data.metrics
    assert metrics["final/n_datasets"] == 3 and metrics["final/n_models"] == 3
    assert -1 <= metrics["final/spearman"] <= 1 and -1 <= metrics["final/zero_shot_spearman"] <= 1
    assert {"spearman/nile", "zero_shot_spearman/square_wave"} <= set(metrics)
    assert (tmp_path / "cache" / "timetic" / "zoo").is_dir() and (tmp_path / "cache" / "timetic" / "finetune").is_dir()
    assert offline == []


def test_bad_options_name_the_field():
    from cl.config import RunConfig
    from cl.errors import ConfigError

    with pytest.raises(ConfigError, match="horizons"):
        RunConfig.from_dict({"transfer": {"name": "timetic", "horizons": [4, 32]}})
    with pytest.raises(ConfigError, match="target 'nile' must be one of datasets"):
        RunConfig.from_dict({"transfer": {"name": "timetic", "datasets": ["co2", "sunspots"], "target": "nile"}})
    with pytest.raises(ValueError, match="learner: 'tabpfm' is not one of"):
        tt.TimeTicEstimator("tabpfm").fit(np.zeros((3, 2)), np.zeros(3))


# ---------------------------------------------------------------- clsuite recommend on a real MLflow store


def _history_store(uri: str) -> None:
    """Runs logged like the runner logs them: 4 datasets × 3 strategies × 2 seeds; replay > ewc > naive
    everywhere, shifted by each dataset's difficulty (which its meta-feature tells)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.create_experiment("history")
    rng = np.random.default_rng(0)
    base = {"naive": 0.3, "ewc": 0.45, "replay": 0.7}
    for d, difficulty in {"split_a": 0.0, "split_b": 0.1, "split_c": 0.2, "split_d": 0.3}.items():
        for strategy, acc in base.items():
            for seed in (0, 1):
                run = client.create_run(exp, tags={"config_hash": f"{d}-{strategy}-{seed}", "group_hash": f"{d}-{strategy}",
                                                   "strategy": strategy, "scenario": d, "seed": str(seed)})
                for key, value in {"scenario.name": d, "strategy.name": strategy, "seed": seed,
                                   "train.epochs": 1}.items():
                    client.log_param(run.info.run_id, key, str(value))
                client.log_metric(run.info.run_id, "final/avg_acc", acc - difficulty + 0.01 * rng.normal())
                client.set_terminated(run.info.run_id, "FINISHED")


def test_recommend_ranks_strategies_for_a_new_dataset(tmp_path):
    from typer.testing import CliRunner

    from cl.cli import app

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _history_store(uri)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({d: {"difficulty": v, "size": 3.0} for d, v in
                                {"split_a": 0.0, "split_b": 0.1, "split_c": 0.2, "split_d": 0.3, "split_new": 0.15}.items()}))
    out = CliRunner().invoke(app, ["recommend", "--experiment", "history", "--dataset", "split_new",
                                   "--tracking-uri", uri, "--meta-features", str(meta), "--learner", "gp"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    ranked = [line for line in lines if "strategy.name=" in line]
    assert [r.split("strategy.name=")[1].split()[0] for r in ranked] == ["replay", "ewc", "naive"]
    assert "in-context learner: gp" in out.output and "leave-one-dataset-out" in out.output
    mean_row = next(line for line in lines if line.strip("│ ").startswith("mean"))
    assert mean_row.count("1.00") == 4                      # ours and the baseline both rank perfectly here

    from cl.analysis import load_runs
    from transfer.timetic.recommend import meta_feature_source, recommend

    result = recommend(load_runs("history", tracking_uri=uri), "split_b", meta_feature_source(meta, None), learner="gp")
    assert list(result.ranking["observed"].round(1)) == [0.6, 0.3, 0.2]   # split_b's own runs: shown, not learnt from
    assert len(result.evaluation) == 4 and (result.evaluation["spearman"] == 1.0).all()

    missing = CliRunner().invoke(app, ["recommend", "--experiment", "history", "--dataset", "cifar_x",
                                       "--tracking-uri", uri, "--learner", "gp"])
    assert missing.exit_code == 2 and "--meta-features" in missing.output


def test_image_meta_features_of_digits():
    from transfer.timetic.recommend import image_meta_features

    features = image_meta_features("split_digits", samples=400)
    assert features["n_classes"] == 10 and all(np.isfinite(v) for v in features.values())
    assert 0.5 < features["nearest_mean_acc"] <= features["one_nn_acc"] + 0.2
