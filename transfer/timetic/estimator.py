"""TimeTic: estimating forecasting-model transferability by in-context learning over a table.

Paper: "Estimating Time Series Foundation Model Transferability via In-Context Learning"
(TimeTic), arXiv 2509.23695. What is the paper's and what is ours, part by part:

Problem (paper). Given a zoo of pretrained forecasters and a new dataset, rank the models by
the performance each would reach *after fine-tuning* on it, without fine-tuning them all.

Table (paper). Model selection is recast as in-context learning over a table: one row per
(model, sampled window of a dataset); columns = dataset meta-features + model
characteristics; target = the model's fine-tuned performance on that dataset. Offline,
context rows come from models fine-tuned on source datasets; online, a tabular foundation
model predicts the target rows of the new dataset, and a model's transferability score is the
mean prediction over its rows. — Ours: exactly this shape (`build_table`, `TimeTicEstimator`,
`leave_one_dataset_out`). Our choices: a "sampled window" is a segment of
``segment_length`` (96) consecutive values drawn at random from the dataset's *training*
part; the forecasting task (horizon h) is one more column; the target is log10 of the test
MSE after fine-tuning (lower is better; see `transfer.timetic.zoo` for the standardised
error); we also put the model's zero-shot log10 MSE on the segment in a column (the issue
lists the zero-shot score in the table builder; the ``no_zero_shot`` variant drops it).

Model characteristic (paper: "entropy evolution across model layers"; the formula is not
public). Ours: for each layer ℓ, Z_ℓ (N × d) = the layer's output for the N sliding
context windows of a segment, mean-pooled over time/patches when the layer is a sequence;
K = Z Zᵀ / tr(Z Zᵀ) (no centring); H_ℓ = −Σ λᵢ log λᵢ / log N over K's eigenvalues, in
[0, 1] (0 for rank one; 1 only when N ≤ d and the rows are orthogonal with equal norms).
Layers: the input window, every hidden layer, the output. The profile (H_0 … H_last) is
linearly resampled over relative depth [0, 1] to ``profile_length`` (8) points, so the first
and last values are kept exactly and models of any depth line up (`entropy_profile`). It is
computed with the *pretrained* model on the target dataset's own segments (available online).

Data meta-features (paper: several hundred tsfresh/tsfeatures statistics, then feature
selection). Ours: a fixed compact set of 18, computed by us on each standardised segment
(`META_FEATURES`, `meta_features`), no selection step.

In-context learner (paper: TabPFN). Ours: any scikit-learn-style regressor.
``learner="tabpfn"`` uses ``tabpfn.TabPFNRegressor`` with weights found on disk only
(``model_path``, ``$TABPFN_MODEL_CACHE_DIR``, the user cache dir — we look for the files
ourselves and never let TabPFN download; a clear `TabPFNWeightsMissing` names the paths
tried). ``learner="auto"`` runs TabPFN when its weights load and otherwise the documented
fallback: a Gaussian-process regressor (standardised features, constant × RBF + white-noise
kernel, normalised targets, hyperparameters by marginal likelihood), the closest classical
analogue of TabPFN's approximate Bayesian inference; ``"hgb"`` (histogram gradient boosting)
is the other built-in choice. The learner that ran is recorded (``learner_name_``; the
transfer experiment logs it as the MLflow tag and param ``timetic.learner``).

Benchmark (paper: 10 TSFMs, 10 datasets, 3 forecasting tasks; mean rank correlation ≈ 0.6,
30% better than the zero-shot score). Ours: 10 small forecasters of four architectures
pretrained here on five synthetic families (`transfer.timetic.zoo.ZOO`), 11 target datasets
(8 statsmodels series + 3 held-out synthetic families), 3 horizons (4, 8, 16) as the 3 tasks;
leave-one-dataset-out; Spearman and Kendall between predicted and true fine-tuned error
across the zoo, per (dataset, horizon), averaged over horizons, then datasets.

Deviations, all of them:
  1. The zoo is ten small forecasters pretrained here, not real TSFMs (none can be
     downloaded here); real checkpoints load from disk (`timetic_zoo.load_forecaster`).
  2. The entropy formula is our choice (above), as the paper's is unavailable.
  3. 18 hand-picked meta-features instead of hundreds plus feature selection.
  4. TabPFN weights cannot be obtained offline, so the numbers we report come from the
     fallback learner unless the weights are on disk; every report names its learner.
  5. Fine-tuning is a fixed budget of Adam steps for every model (no early stopping, no
     per-model tuning); errors are MSE on instance-standardised windows, not MASE/CRPS.
  6. The table has a zero-shot column (dropped by the ``no_zero_shot`` variant).
  7. A constant prediction across the zoo (no ranking) counts as rank correlation 0.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cl.transfer_run import single_thread

from transfer.timetic.table import feature_columns, with_model_onehot

log = logging.getLogger(__name__)





# ============================================================================ the estimator


class TabPFNWeightsMissing(FileNotFoundError):
    """TabPFN was asked for, but no weight file is on disk (downloads are never attempted here)."""


TABPFN_FILES = ("tabpfn-v2-regressor.ckpt",)
_WARNED: set[str] = set()          # the fallback is announced once per process, then logged at INFO


def tabpfn_weight_candidates(model_path: str | os.PathLike | None = None) -> list[Path]:
    """Where TabPFN regressor weights are looked for, in order, without importing tabpfn:
    ``model_path`` (a file, or a folder holding ``tabpfn-*regressor*.ckpt``); else
    ``$TABPFN_MODEL_CACHE_DIR`` and the user cache dir (``$XDG_CACHE_HOME/tabpfn``, else
    ``~/.cache/tabpfn``) — TabPFN's own lookup order — for any ``tabpfn-*regressor*.ckpt``
    (the ungated v2 file is ``tabpfn-v2-regressor.ckpt``)."""
    if model_path is not None:
        path = Path(model_path).expanduser()
        return [path] if not path.is_dir() else _ckpts_in(path)
    folders = []
    if os.environ.get("TABPFN_MODEL_CACHE_DIR", "").strip():
        folders.append(Path(os.environ["TABPFN_MODEL_CACHE_DIR"]).expanduser())
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    folders.append((Path(xdg) if xdg else Path.home() / ".cache") / "tabpfn")
    out: list[Path] = []
    for folder in folders:
        out += [p for p in _ckpts_in(folder) if p not in out]
    return out


def _ckpts_in(folder: Path) -> list[Path]:
    found = sorted(folder.glob("tabpfn-*regressor*.ckpt")) if folder.is_dir() else []
    return found or [folder / f for f in TABPFN_FILES]


def find_tabpfn_weights(model_path: str | os.PathLike | None = None) -> Path:
    tried = tabpfn_weight_candidates(model_path)
    for path in tried:
        if path.is_file():
            return path
    raise TabPFNWeightsMissing(
        "learner='tabpfn': no TabPFN regressor weights on disk; tried "
        + ", ".join(str(p) for p in tried)
        + ". TabPFN weights are never downloaded by clsuite. Fix: on a machine with network, download "
          "tabpfn-v2-regressor.ckpt from https://huggingface.co/Prior-Labs/TabPFN-v2-reg and pass its path as "
          "model_path (or put it in $TABPFN_MODEL_CACHE_DIR); or use learner='auto' to fall back to a "
          "Gaussian process.")


def _tabpfn(path: Path, random_state: int):
    try:
        from tabpfn import TabPFNRegressor
    except ImportError as error:
        raise ImportError("learner='tabpfn' needs the tabpfn package: pip install 'clsuite[tabpfn]'") from error
    return TabPFNRegressor(model_path=str(path), device="cpu", ignore_pretraining_limits=True,
                           random_state=random_state)


def fallback_learner(kind: str, random_state: int = 0):
    """``gp``: StandardScaler → GaussianProcessRegressor(C·RBF + White, normalize_y); ``hgb``:
    HistGradientBoostingRegressor (200 iterations, learning rate 0.05)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "gp":
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        kernel = ConstantKernel(1.0, (1e-2, 1e2)) * RBF(3.0, (1e-1, 1e3)) + WhiteKernel(0.1, (1e-5, 1e1))
        return make_pipeline(StandardScaler(), GaussianProcessRegressor(kernel, normalize_y=True,
                                                                        random_state=random_state))
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingRegressor

        return HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, random_state=random_state)
    raise ValueError(f"fallback: {kind!r} is not one of gp, hgb")


class TimeTicEstimator:
    """Predict a model's fine-tuned performance from table rows by in-context learning.

    ``learner``: ``"auto"`` (TabPFN when its weights are on disk and load, else ``fallback``),
    ``"tabpfn"`` (TabPFN or `TabPFNWeightsMissing`), ``"gp"``, ``"hgb"``, or any object with
    scikit-learn's ``fit``/``predict`` (cloned before fitting). ``max_context``: at most this
    many context rows are used (a seeded uniform sample; None = all; the GP's cost is cubic).
    Fitted attributes: ``learner_`` and ``learner_name_`` (what ran), ``fallback_reason_``.
    """

    def __init__(self, learner: Any = "auto", *, model_path: str | None = None, fallback: str = "gp",
                 max_context: int | None = 1000, random_state: int = 0):
        self.learner = learner
        self.model_path = model_path
        self.fallback = fallback
        self.max_context = max_context
        self.random_state = random_state

    def _resolve(self):
        self.fallback_reason_ = None
        if not isinstance(self.learner, str):
            from sklearn.base import clone

            try:
                learner = clone(self.learner)
            except TypeError:
                learner = self.learner
            return learner, type(self.learner).__name__
        if self.learner == "tabpfn":
            return _tabpfn(find_tabpfn_weights(self.model_path), self.random_state), "tabpfn"
        if self.learner == "auto":
            try:
                return _tabpfn(find_tabpfn_weights(self.model_path), self.random_state), "tabpfn"
            except (TabPFNWeightsMissing, ImportError) as error:
                self.fallback_reason_ = str(error)
                message = f"TimeTic learner 'auto': TabPFN unavailable, using fallback {self.fallback!r} " \
                          f"({str(error).split(';')[0]})"
                (log.info if message in _WARNED else log.warning)(message)
                _WARNED.add(message)
                return fallback_learner(self.fallback, self.random_state), self.fallback
        if self.learner in ("gp", "hgb"):
            return fallback_learner(self.learner, self.random_state), self.learner
        raise ValueError(f"learner: {self.learner!r} is not one of auto, tabpfn, gp, hgb "
                         "or a scikit-learn-style regressor")

    def fit(self, X, y) -> TimeTicEstimator:
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
            raise ValueError(f"fit: X must be (n_rows, n_features) with one target per row; got X {X.shape}, "
                             f"y {y.shape}")
        if self.max_context is not None and len(y) > self.max_context:
            keep = np.sort(np.random.default_rng(self.random_state).choice(len(y), self.max_context, replace=False))
            X, y = X[keep], y[keep]
        self.learner_, self.learner_name_ = self._resolve()
        try:
            with warnings.catch_warnings():       # the GP's "hyperparameter at its bound" notes
                warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
                self.learner_.fit(X, y)
        except Exception as error:
            if self.learner != "auto" or self.learner_name_ != "tabpfn":
                raise
            self.fallback_reason_ = f"TabPFN failed to load or fit: {error}"
            log.warning("TimeTic learner 'auto': %s; using fallback %r", self.fallback_reason_, self.fallback)
            self.learner_, self.learner_name_ = fallback_learner(self.fallback, self.random_state), self.fallback
            self.learner_.fit(X, y)
        self.n_context_ = len(y)
        return self

    def predict(self, X) -> np.ndarray:
        if not hasattr(self, "learner_"):
            raise RuntimeError("TimeTicEstimator: call fit(context rows) before predict")
        return np.asarray(self.learner_.predict(np.asarray(X, dtype=np.float64)), dtype=np.float64).ravel()

    def score_models(self, X, models: Sequence[str]) -> pd.Series:
        """A model's transferability score: the mean prediction over its rows (here: predicted
        log10 fine-tuned error, so lower is better)."""
        return pd.Series(self.predict(X), index=np.asarray(models)).groupby(level=0).mean()


# ============================================================================ leave one dataset out


def lodo_splits(table: pd.DataFrame) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(held-out dataset, context row positions, target row positions): no row of the held-out
    dataset is ever in the context."""
    datasets = table["dataset"].to_numpy()
    for dataset in pd.unique(datasets):
        target = np.nonzero(datasets == dataset)[0]
        context = np.nonzero(datasets != dataset)[0]
        yield dataset, context, target


def _rank_corr(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    from scipy.stats import kendalltau, spearmanr

    if len(truth) < 2 or np.ptp(predicted) == 0 or np.ptp(truth) == 0:
        return 0.0, 0.0
    return float(spearmanr(predicted, truth).statistic), float(kendalltau(predicted, truth).statistic)


def rank_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, horizon) Spearman, Kendall and top-1 gap (true log10 error of the model ranked
    first minus the best one's) from a frame with dataset, horizon, model, predicted, truth."""
    rows = []
    for (dataset, horizon), group in scores.groupby(["dataset", "horizon"], sort=False):
        rho, tau = _rank_corr(group["predicted"].to_numpy(), group["truth"].to_numpy())
        gap = float(group["truth"].iloc[int(np.argmin(group["predicted"].to_numpy()))] - group["truth"].min())
        rows.append({"dataset": dataset, "horizon": horizon, "spearman": rho, "kendall": tau, "top1_gap": gap})
    return pd.DataFrame(rows)


def zero_shot_scores(table: pd.DataFrame) -> pd.DataFrame:
    """The baseline: a model's zero-shot test error on the dataset is its score."""
    per = table.groupby(["dataset", "horizon", "model"], sort=False)[["zero_shot_test", "finetuned"]].first()
    return per.rename(columns={"zero_shot_test": "predicted", "finetuned": "truth"}).reset_index()


def leave_one_dataset_out(table: pd.DataFrame, features: str, estimator: TimeTicEstimator,
                          datasets: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """For each held-out dataset (all, or `datasets`): fit on every other dataset's rows, score the
    models on the held-out rows. Returns (dataset, horizon, model, predicted, truth) rows and the
    learner that ran in each fold."""
    with single_thread():
        return _lodo(with_model_onehot(table), features, estimator, datasets)


def _lodo(table, features, estimator, datasets):
    columns = feature_columns(table, features)
    out, learners = [], []
    for dataset, context, target in lodo_splits(table):
        if datasets is not None and dataset not in datasets:
            continue
        ctx, tgt = table.iloc[context], table.iloc[target]
        estimator.fit(ctx[columns].to_numpy(float), ctx["finetuned"].to_numpy(float))
        learners.append(estimator.learner_name_)
        for horizon, rows in tgt.groupby("horizon", sort=False):
            scores = estimator.score_models(rows[columns].to_numpy(float), rows["model"].to_numpy())
            truth = rows.groupby("model")["finetuned"].first()
            for model in scores.index:
                out.append({"dataset": dataset, "horizon": horizon, "model": model,
                            "predicted": float(scores[model]), "truth": float(truth[model])})
    return pd.DataFrame(out), learners


def summarise(ranks: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: mean over horizons of Spearman, Kendall, top-1 gap."""
    return ranks.groupby("dataset", sort=False)[["spearman", "kendall", "top1_gap"]].mean()
