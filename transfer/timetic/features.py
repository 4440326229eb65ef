"""TimeTic's features of a (model, dataset) pair (see `transfer.timetic.estimator` for the paper's recipe and our
deviations): the model's layer-wise entropy profile on the dataset's contexts, and the dataset's meta-features."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np


log = logging.getLogger(__name__)

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
