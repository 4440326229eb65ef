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

import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cl.config import canonical_hash
from cl.cache import cache_root, cached
from cl.transfer_run import single_thread

log = logging.getLogger(__name__)

FEATURE_SETS = ("full", "no_zero_shot", "meta", "entropy")




# ============================================================================ entropy profile


def matrix_entropy(z: np.ndarray) -> float:
    """Normalised matrix-based entropy of an embedding set ``z`` (N × d).

    K = Z Zᵀ / tr(Z Zᵀ); H = −Σ λ log λ over K's eigenvalues, divided by log N. Computed on
    the smaller of Z Zᵀ and Zᵀ Z (same non-zero spectrum). 0 for N ≤ 1 or an all-zero Z.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (N × d), got shape {z.shape}")
    n = z.shape[0]
    gram = z @ z.T if n <= z.shape[1] else z.T @ z
    trace = float(np.trace(gram))
    if n <= 1 or trace <= 0 or not np.isfinite(trace):
        return 0.0
    lam = np.clip(np.linalg.eigvalsh(gram / trace), 0.0, None)
    lam = lam[lam > 1e-12] / lam.sum()
    return float(-(lam * np.log(lam)).sum() / np.log(n))


def resample_profile(values: Sequence[float], length: int) -> np.ndarray:
    """Linear interpolation of a per-layer profile over relative depth [0, 1] to `length` points;
    the first and last values are kept exactly (a single value becomes a constant profile)."""
    values = np.asarray(values, dtype=np.float64)
    if length < 2:
        raise ValueError(f"profile length must be ≥ 2, got {length}")
    if values.size == 0:
        raise ValueError("empty profile")
    if values.size == 1:
        return np.full(length, values[0])
    return np.interp(np.linspace(0.0, 1.0, length), np.linspace(0.0, 1.0, values.size), values)


def entropy_profile(model, contexts: np.ndarray, length: int = 8) -> np.ndarray:
    """Layer-wise entropy of `model` on standardised context windows (N × L), resampled to `length`."""
    import torch

    with torch.no_grad():
        states = model.hidden_states(torch.tensor(contexts, dtype=torch.float32))
    per_layer = []
    for state in states:
        z = state.detach().double()
        z = z.mean(dim=tuple(range(1, z.ndim - 1))) if z.ndim > 2 else z     # mean-pool time / patches
        per_layer.append(matrix_entropy(z.numpy()))
    return resample_profile(per_layer, length)


# ============================================================================ data meta-features


META_FEATURES: dict[str, str] = {
    "log_length": "log10 of the length of the dataset's training part",
    "acf1": "autocorrelation at lag 1", "acf2": "at lag 2", "acf5": "at lag 5", "acf10": "at lag 10",
    "acf_sum10": "sum of squared autocorrelations, lags 1–10 (tsfeatures x_acf10)",
    "diff_acf1": "lag-1 autocorrelation of the first differences",
    "log_period": "log(1 + dominant period): first ACF peak after its first zero crossing with ACF > 0.1, else 0",
    "trend_strength": "max(0, 1 − Var(R)/Var(T + R)) of a moving-average decomposition (tsfeatures)",
    "seasonal_strength": "max(0, 1 − Var(R)/Var(S + R)) of the same decomposition at the dominant period",
    "spectral_entropy": "Shannon entropy of the normalised periodogram / log(number of frequencies)",
    "diff_var_ratio": "Var(Δx) / Var(x) (≈ 2 for white noise, ≈ 0 for a smooth series): a stationarity proxy",
    "stability": "variance of the means of 10-value tiles (tsfeatures stability)",
    "lumpiness": "variance of the variances of 10-value tiles (tsfeatures lumpiness)",
    "level_shift": "largest absolute change between consecutive tile means",
    "skew": "skewness", "kurtosis": "excess kurtosis",
    "crossing_rate": "fraction of steps that cross the median",
}


def _acf(x: np.ndarray, max_lag: int) -> np.ndarray:
    x = x - x.mean()
    denom = float(x @ x)
    if denom <= 0:
        return np.zeros(max_lag + 1)
    return np.array([1.0] + [float(x[:-k] @ x[k:]) / denom if k < len(x) else 0.0 for k in range(1, max_lag + 1)])


def _moving_average(x: np.ndarray, window: int) -> np.ndarray:
    window = max(2, min(window, len(x)))
    kernel = np.ones(window) / window
    if window % 2 == 0:                                   # 2×m moving average, centred
        kernel = np.convolve(kernel, [0.5, 0.5])
    valid = np.convolve(x, kernel, mode="valid")
    left = (len(x) - len(valid)) // 2
    return np.concatenate([np.full(left, valid[0]), valid, np.full(len(x) - len(valid) - left, valid[-1])])


def meta_features(segment: np.ndarray, train_length: int) -> dict[str, float]:
    """`META_FEATURES` of one segment (standardised first); all finite."""
    x = np.asarray(segment, dtype=np.float64)
    std = x.std()
    z = (x - x.mean()) / std if std > 0 else np.zeros_like(x)
    n = len(z)
    acf = _acf(z, min(n // 2, 60))
    period = 0
    below = np.nonzero(acf[1:] < 0)[0]
    if below.size:
        for lag in range(below[0] + 2, len(acf) - 1):
            if acf[lag] > 0.1 and acf[lag] >= acf[lag - 1] and acf[lag] >= acf[lag + 1]:
                period = lag
                break
    trend = _moving_average(z, period if period >= 2 else 7)
    detrended = z - trend
    seasonal = np.zeros(n)
    if period >= 2:
        phase = np.arange(n) % period
        means = np.array([detrended[phase == p].mean() for p in range(period)])
        seasonal = means[phase] - means.mean()
    remainder = detrended - seasonal

    def strength(component):
        total = np.var(component + remainder)
        return float(max(0.0, 1.0 - np.var(remainder) / total)) if total > 0 else 0.0

    power = np.abs(np.fft.rfft(z)[1:]) ** 2
    p = power / power.sum() if power.sum() > 0 else np.full(len(power), 1.0 / max(len(power), 1))
    p = p[p > 0]
    spectral = float(-(p * np.log(p)).sum() / np.log(len(power))) if len(power) > 1 else 0.0
    diff = np.diff(z)
    tiles = [z[i:i + 10] for i in range(0, n - 9, 10)]
    tile_means = np.array([t.mean() for t in tiles]) if tiles else np.zeros(1)
    tile_vars = np.array([t.var() for t in tiles]) if tiles else np.zeros(1)
    centred = z - np.median(z)
    values = {
        "log_length": float(np.log10(train_length)),
        "acf1": acf[1], "acf2": acf[2], "acf5": acf[5] if len(acf) > 5 else 0.0,
        "acf10": acf[10] if len(acf) > 10 else 0.0, "acf_sum10": float((acf[1:11] ** 2).sum()),
        "diff_acf1": _acf(diff, 1)[1] if len(diff) > 2 else 0.0,
        "log_period": float(np.log1p(period)),
        "trend_strength": strength(trend), "seasonal_strength": strength(seasonal) if period >= 2 else 0.0,
        "spectral_entropy": spectral,
        "diff_var_ratio": float(diff.var()) if len(diff) else 0.0,   # Var(z) = 1
        "stability": float(tile_means.var()), "lumpiness": float(tile_vars.var()),
        "level_shift": float(np.abs(np.diff(tile_means)).max()) if len(tile_means) > 1 else 0.0,
        "skew": float((z ** 3).mean()), "kurtosis": float((z ** 4).mean() - 3.0),
        "crossing_rate": float(np.mean(np.sign(centred[1:]) != np.sign(centred[:-1]))),
    }
    return {k: float(np.nan_to_num(v)) for k, v in values.items()}


# ============================================================================ fine-tuning targets


@dataclass(frozen=True)
class TableSettings:
    """Everything the table depends on (its cache keys are built from these fields)."""

    datasets: tuple[str, ...]
    models: tuple[str, ...]
    horizons: tuple[int, ...] = (4, 8, 16)
    context: int = 32
    segments: int = 6
    segment_length: int = 96
    profile_length: int = 8
    test_fraction: float = 0.3
    max_train_windows: int = 256
    max_test_windows: int = 128
    pretrain_steps: int = 200
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    finetune_steps: int = 50
    finetune_batch: int = 32
    finetune_lr: float = 1e-3
    checkpoints: tuple[str, ...] = ()
    seed: int = 0
    cache_dir: Path = field(default_factory=cache_root)

    def finetune_key(self, **extra) -> dict:
        """Cache key of fine-tuning results: only the fields fine-tuning depends on (so runs that
        differ in segments, profile length, features or learner share them)."""
        names = ("horizons", "context", "test_fraction", "max_train_windows", "max_test_windows", "pretrain_steps",
                 "pretrain_batch", "pretrain_lr", "finetune_steps", "finetune_batch", "finetune_lr", "seed")
        return {**{k: getattr(self, k) for k in names}, **extra, "version": 1}


def _mse(model, x: np.ndarray, y: np.ndarray, horizon: int) -> float:
    import torch

    with torch.no_grad():
        pred = model(torch.tensor(x, dtype=torch.float32))[:, :horizon].double().numpy()
    return float(np.mean((pred - y[:, :horizon]) ** 2))


def finetune_results(name: str, model, series: np.ndarray, dataset: str, s: TableSettings) -> dict[int, dict]:
    """Per horizon: zero-shot and fine-tuned test MSE of zoo model `name` on `dataset` (cached).

    Fine-tuning: a copy of the pretrained model, every parameter, Adam at ``finetune_lr`` for
    ``finetune_steps`` mini-batches of ``finetune_batch`` training windows, loss = MSE on the
    first h outputs.
    """
    import copy

    import torch
    from torch.nn import functional as F

    from_disk = list(s.checkpoints) if name.startswith("ckpt:") else None     # a checkpoint: its files count
    key = s.finetune_key(model=name, checkpoints=from_disk, dataset=dataset, n=len(series),
                         checksum=float(np.round(series.sum(), 6)))

    def finetune(folder: Path) -> None:
        results = {}
        for horizon in s.horizons:
            rng = np.random.default_rng(s.seed + horizon)
            (xt, yt), (xe, ye), _ = _split(series, s, horizon, rng)
            tuned = copy.deepcopy(model).train()
            torch.manual_seed(s.seed + horizon)
            optimiser = torch.optim.Adam(tuned.parameters(), lr=s.finetune_lr)
            x_train, y_train = torch.tensor(xt, dtype=torch.float32), torch.tensor(yt, dtype=torch.float32)
            for _ in range(s.finetune_steps):
                batch = torch.randint(0, len(x_train), (min(s.finetune_batch, len(x_train)),))
                loss = F.mse_loss(tuned(x_train[batch])[:, :horizon], y_train[batch])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(tuned.parameters(), 1.0)
                optimiser.step()
            tuned.eval()
            results[horizon] = {"zero_shot": _mse(model, xe, ye, horizon), "finetuned": _mse(tuned, xe, ye, horizon),
                                "n_train": len(xt), "n_test": len(xe)}
        (folder / "result.json").write_text(json.dumps({str(h): v for h, v in results.items()}, indent=1))

    folder = cached("timetic/finetune", key, finetune, name=f"{name}-{dataset}", complete="result.json",
                    root=s.cache_dir)
    return {int(h): v for h, v in json.loads((folder / "result.json").read_text()).items()}


def _split(series, s: TableSettings, horizon: int, rng):
    from transfer.timetic.zoo import train_test_windows

    return train_test_windows(series, s.context, horizon, test_fraction=s.test_fraction,
                              max_train=s.max_train_windows, max_test=s.max_test_windows, rng=rng)


# ============================================================================ the table


def load_zoo(s: TableSettings) -> dict[str, Any]:
    """name -> pretrained forecaster: the zoo members of ``s.models`` (pretrained or cached), then
    every checkpoint of ``s.checkpoints`` loaded from disk."""
    from transfer.timetic.zoo import ZOO, load_forecaster, zoo_model

    unknown = [m for m in s.models if m not in ZOO]
    if unknown:
        raise ValueError(f"models: unknown zoo members {unknown}; the zoo: {', '.join(ZOO)}")
    with single_thread():
        zoo = {m: zoo_model(ZOO[m], cache_dir=s.cache_dir, context=s.context, steps=s.pretrain_steps,
                            batch=s.pretrain_batch, lr=s.pretrain_lr, seed=s.seed) for m in s.models}
    for path in s.checkpoints:
        model, config = load_forecaster(path, s.context)
        name = f"ckpt:{config['name']}"
        if name in zoo:
            raise ValueError(f"checkpoints: two checkpoints are named {config['name']!r}")
        zoo[name] = model
    return zoo


def build_table(s: TableSettings, zoo: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row per (dataset, model, horizon, segment): ``meta/*``, ``ent/*``, ``zero_shot``, ``horizon``,
    and the per-(dataset, model, horizon) targets ``finetuned`` and ``zero_shot_test`` (log10 MSE)."""
    from transfer.timetic.zoo import MAX_HORIZON

    if max(s.horizons) > MAX_HORIZON or min(s.horizons) < 1:
        raise ValueError(f"horizons: each must be in 1..{MAX_HORIZON}, got {list(s.horizons)}")
    with single_thread():
        return _build_table(s, load_zoo(s) if zoo is None else zoo)


def _build_table(s: TableSettings, zoo: Mapping[str, Any]) -> pd.DataFrame:
    from transfer.timetic.zoo import load_series, windows

    rows = []
    for dataset in s.datasets:
        series = load_series(dataset)
        cut = round(len(series) * (1 - s.test_fraction))
        train = series[:cut]
        if len(train) < s.context + max(s.horizons) + 1:
            raise ValueError(f"dataset {dataset!r}: its training part ({len(train)} values) is shorter than "
                             f"context + longest horizon ({s.context + max(s.horizons)})")
        length = min(len(train), s.segment_length)
        rng = np.random.default_rng(int(canonical_hash({"segments": dataset, "seed": s.seed}), 16) % (2 ** 32))
        starts = rng.integers(0, len(train) - length + 1, size=s.segments)
        segments = [train[a:a + length] for a in starts]
        metas = [meta_features(seg, len(train)) for seg in segments]
        contexts = [windows(seg, s.context, 0)[0] for seg in segments]
        for name, model in zoo.items():
            targets = finetune_results(name, model, series, dataset, s)
            profiles = [entropy_profile(model, c, s.profile_length) for c in contexts]
            for horizon in s.horizons:
                for j, seg in enumerate(segments):
                    xs, ys = windows(seg, s.context, horizon)
                    row = {"dataset": dataset, "model": name, "horizon": horizon, "segment": j,
                           **{f"meta/{k}": v for k, v in metas[j].items()},
                           **{f"ent/{i}": v for i, v in enumerate(profiles[j])},
                           "zero_shot": np.log10(_mse(model, xs, ys, horizon) + 1e-12),
                           "finetuned": np.log10(targets[horizon]["finetuned"] + 1e-12),
                           "zero_shot_test": np.log10(targets[horizon]["zero_shot"] + 1e-12)}
                    rows.append(row)
        log.info("table: %s done (%d models)", dataset, len(zoo))
    return pd.DataFrame(rows)


def feature_columns(table: pd.DataFrame, features: str) -> list[str]:
    """The columns of a feature set: ``full`` (meta-features, entropy profile, zero-shot on the
    segment, horizon), ``no_zero_shot``, ``meta`` (meta-features, horizon and a one-hot of the
    model: the models must still be told apart), ``entropy`` (entropy profile, horizon)."""
    meta = [c for c in table.columns if c.startswith("meta/")]
    ent = [c for c in table.columns if c.startswith("ent/")]
    sets = {"full": meta + ent + ["zero_shot", "horizon"], "no_zero_shot": meta + ent + ["horizon"],
            "meta": meta + ["horizon"] + [c for c in table.columns if c.startswith("model=")],
            "entropy": ent + ["horizon"]}
    if features not in sets:
        raise ValueError(f"features: {features!r} is not one of {', '.join(FEATURE_SETS)}")
    return sets[features]


def with_model_onehot(table: pd.DataFrame) -> pd.DataFrame:
    onehot = pd.get_dummies(table["model"], prefix="model", prefix_sep="=").astype(float)
    return pd.concat([table.drop(columns=[c for c in table.columns if c.startswith("model=")]), onehot], axis=1)


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
