"""`clsuite recommend`: TimeTic's table built from the suite's own run history.

Beyond the paper (arXiv 2509.23695, see `transfer.timetic.estimator`): the same in-context recipe ranks
*strategy configurations* for a dataset that has no runs yet, from the FINISHED runs an
MLflow experiment already holds.

Table. One row per run (each seed is a row, as each sampled window is in TimeTic):
  * configuration columns — every logged ``param.*`` that varies across the experiment's runs,
    except the dataset key, seeds, data paths and values resolved at run time: numbers as
    they are, everything else one-hot. Other scenario options (e.g. ``scenario.n_experiences``)
    count as part of the configuration: they are set per run, not a property of the data.
  * dataset meta-features — computed from the data, never from runs, so a new dataset has them:
    for digits / MNIST / Fashion-MNIST (``split_*`` scenarios and transfer targets of those
    names) `image_meta_features`; for anything else a JSON file
    ``{dataset: {feature: value}}`` given with ``--meta-features``.
  * target — the headline metric (``final/avg_acc``, else ``final/acc``; ``--metric`` overrides).
Ranking a new dataset: every configuration seen in the store gets one target row with the new
dataset's meta-features; its score is the prediction (runs already on that dataset, if any,
are left out of the context and shown next to the prediction).

Evaluation (honest by construction): leave-one-dataset-out over the datasets in the store,
Spearman and Kendall between predicted and true (mean over seeds) metric across the
configurations run on the held-out dataset; next to it the baseline a practitioner would use
without any model — a configuration's mean metric on the *other* datasets. With fewer than
three datasets the evaluation is reported as not possible / not meaningful, not invented.
"""
from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cl.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_DATASETS = {"split_digits": "digits", "digits": "digits", "split_mnist": "mnist", "mnist": "mnist",
                  "split_fmnist": "fmnist", "fmnist": "fmnist"}
SKIP_PARAM_PARTS = ("seed", "data_root", "resolved", "imports", "experiment", "device", "num_workers")


def image_meta_features(name: str, *, data_root: str | None = None, samples: int = 1000) -> dict[str, float]:
    """Meta-features of digits / MNIST / Fashion-MNIST from the data itself (a seeded subsample of
    ``samples`` training and ``samples // 2`` test images): log10 training size, number of classes,
    log10 input size, pixel mean / std, fraction of near-zero pixels, normalised class entropy,
    PCA components for 90% variance / input size, and two landmarkers (accuracy of a
    nearest-class-mean and a 1-nearest-neighbour classifier)."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier, NearestCentroid

    from cl.scenarios import image_tensors

    if name not in IMAGE_DATASETS:
        raise ConfigError(f"--dataset {name!r}: no built-in meta-features (built in: {', '.join(IMAGE_DATASETS)}); "
                          "give them with --meta-features FILE.json ({dataset: {feature: value}})")
    x, y, xt, yt = image_tensors(IMAGE_DATASETS[name], data_root=data_root)
    rng = np.random.default_rng(0)
    i = rng.choice(len(y), min(samples, len(y)), replace=False)
    j = rng.choice(len(yt), min(samples // 2, len(yt)), replace=False)
    xa, ya = x[i].flatten(1).numpy(), y[i].numpy()
    xb, yb = xt[j].flatten(1).numpy(), yt[j].numpy()
    counts = np.bincount(y.numpy())
    p = counts[counts > 0] / counts.sum()
    pca = PCA().fit(xa)
    with warnings.catch_warnings():            # constant border pixels within a class are expected
        warnings.filterwarnings("ignore", message=".*zero standard deviation", category=UserWarning)
        nearest_mean = float(NearestCentroid().fit(xa, ya).score(xb, yb))
    return {
        "log_train_size": float(np.log10(len(y))), "n_classes": float(len(p)),
        "log_input_size": float(np.log10(xa.shape[1])), "pixel_mean": float(xa.mean()), "pixel_std": float(xa.std()),
        "sparsity": float((xa < 0.05).mean()), "class_entropy": float(-(p * np.log(p)).sum() / np.log(len(p))),
        "pca90_ratio": float((np.searchsorted(np.cumsum(pca.explained_variance_ratio_), 0.9) + 1) / xa.shape[1]),
        "nearest_mean_acc": nearest_mean,
        "one_nn_acc": float(KNeighborsClassifier(1).fit(xa, ya).score(xb, yb)),
    }


def meta_feature_source(meta_file: Path | None, data_root: str | None) -> Callable[[str], dict[str, float]]:
    """dataset -> meta-features: the JSON file's entry when it has one, else the built-in image features."""
    table: Mapping[str, Mapping[str, float]] = {}
    if meta_file is not None:
        try:
            table = json.loads(Path(meta_file).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"--meta-features {meta_file}: cannot read a JSON object ({error})") from None
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise ConfigError(f"--meta-features {meta_file}: expected {{dataset: {{feature: number}}}}")
    cache: dict[str, dict[str, float]] = {}

    def lookup(dataset: str) -> dict[str, float]:
        if dataset not in cache:
            if dataset in table:
                cache[dataset] = {k: float(v) for k, v in table[dataset].items()}
            else:
                cache[dataset] = image_meta_features(dataset, data_root=data_root)
        return cache[dataset]

    return lookup


@dataclass
class Recommendation:
    dataset_key: str
    metric: str
    learner: str
    ranking: pd.DataFrame          # configuration, predicted, (observed when the dataset has runs)
    evaluation: pd.DataFrame       # per held-out dataset: n_configs, spearman, kendall, baseline_*
    datasets: list[str]


def history_table(runs: pd.DataFrame, dataset_key: str | None = None, metric: str | None = None):
    """(runs with a ``dataset`` and ``configuration`` column, configuration feature frame, key, metric)."""
    if runs.empty:
        raise ConfigError("--experiment: no FINISHED runs in this experiment")
    if dataset_key is None:
        for candidate in ("scenario.name", "transfer.target"):
            if f"param.{candidate}" in runs.columns and runs[f"param.{candidate}"].notna().any():
                dataset_key = candidate
                break
        else:
            raise ConfigError("--dataset-key: the runs log neither scenario.name nor transfer.target; "
                              "name the parameter that identifies the dataset")
    column = f"param.{dataset_key}"
    if column not in runs.columns:
        raise ConfigError(f"--dataset-key: no run logs the parameter {dataset_key!r}")
    if metric is None:
        metric = next((m for m in ("final/avg_acc", "final/acc") if m in runs.columns), None)
        if metric is None:
            raise ConfigError("--metric: the runs have neither final/avg_acc nor final/acc; name the metric to rank by")
    if metric not in runs.columns:
        raise ConfigError(f"--metric: no run logged {metric!r}")
    runs = runs[runs[column].notna() & runs[metric].notna()].copy()
    runs["dataset"] = runs[column].astype(str)
    params = [c for c in runs.columns if c.startswith("param.") and c != column
              and not any(part in c for part in SKIP_PARAM_PARTS)]
    varying = [c for c in params if runs[c].astype(str).nunique() > 1]
    runs["configuration"] = (runs[varying].astype(str).apply(
        lambda r: ", ".join(f"{c.removeprefix('param.')}={v}" for c, v in r.items()), axis=1)
        if varying else "(one configuration)")
    features = []
    for c in varying:
        numeric = pd.to_numeric(runs[c], errors="coerce")
        if numeric.notna().all():
            features.append(numeric.rename(c))
        else:
            features.append(pd.get_dummies(runs[c].astype(str), prefix=c, prefix_sep="=").astype(float))
    config_features = pd.concat(features, axis=1) if features else pd.DataFrame(index=runs.index)
    return runs, config_features, dataset_key, metric


def _design(runs: pd.DataFrame, config_features: pd.DataFrame, meta: Callable[[str], dict]) -> pd.DataFrame:
    rows = pd.DataFrame([meta(d) for d in runs["dataset"]], index=runs.index).add_prefix("meta/")
    return pd.concat([config_features, rows], axis=1).fillna(0.0)


def recommend(runs: pd.DataFrame, new_dataset: str, meta: Callable[[str], dict], *, learner="auto",
              model_path=None, dataset_key=None, metric=None, random_state: int = 0) -> Recommendation:
    from transfer.timetic.estimator import TimeTicEstimator, _rank_corr

    runs, config_features, dataset_key, metric = history_table(runs, dataset_key, metric)
    X = _design(runs, config_features, meta)
    y = runs[metric].to_numpy(float)
    configs = runs.drop_duplicates("configuration")
    estimator = TimeTicEstimator(learner, model_path=model_path, random_state=random_state)

    # the new dataset: every configuration with its meta-features; its own runs (if any) never in the context
    context = (runs["dataset"] != new_dataset).to_numpy()
    if context.sum() == 0:
        raise ConfigError(f"--dataset {new_dataset!r}: every run in the store is on this dataset; "
                          "nothing to learn from")
    estimator.fit(X[context].to_numpy(float), y[context])
    learners = {estimator.learner_name_}
    new_meta = {f"meta/{k}": v for k, v in meta(new_dataset).items()}
    target = config_features.loc[configs.index].copy()
    for k, v in new_meta.items():
        target[k] = v
    target = target.reindex(columns=X.columns, fill_value=0.0)
    ranking = pd.DataFrame({"configuration": configs["configuration"].to_numpy(),
                            "predicted": estimator.predict(target.to_numpy(float))})
    observed = runs[runs["dataset"] == new_dataset].groupby("configuration")[metric].mean()
    if len(observed):
        ranking["observed"] = ranking["configuration"].map(observed)
    ranking = ranking.sort_values("predicted", ascending=False).reset_index(drop=True)

    rows = []
    for dataset in sorted(runs["dataset"].unique()):
        held = (runs["dataset"] == dataset).to_numpy()
        truth = runs[held].groupby("configuration")[metric].mean()
        if len(truth) < 2 or held.all():
            continue
        estimator.fit(X[~held].to_numpy(float), y[~held])
        learners.add(estimator.learner_name_)
        predicted = pd.Series(estimator.predict(X[held].to_numpy(float)),
                              index=runs.loc[held, "configuration"].to_numpy()).groupby(level=0).mean()
        rho, tau = _rank_corr(predicted[truth.index].to_numpy(), truth.to_numpy())
        others = runs[~held].groupby("configuration")[metric].mean()
        seen = [c for c in truth.index if c in others.index]
        b_rho, b_tau = (_rank_corr(others[seen].to_numpy(), truth[seen].to_numpy()) if len(seen) >= 2
                        else (float("nan"), float("nan")))
        rows.append({"dataset": dataset, "n_configs": len(truth), "spearman": rho, "kendall": tau,
                     "baseline_spearman": b_rho, "baseline_kendall": b_tau})
    return Recommendation(dataset_key, metric, ",".join(sorted(learners)), ranking, pd.DataFrame(rows),
                          sorted(runs["dataset"].unique()))
