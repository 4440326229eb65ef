"""Continual-learning metrics as pure functions of the accuracy matrix, and memory in bytes.

R is a T×T array: R[t, j] is the accuracy on test experience j after training experience t
(values in [0, 1]). Only numpy here, so notebooks and reports can recompute any figure from
the CSV every run logs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

BYTES_PER_PARAMETER = 4          # float32
BYTES_PER_MB = 2**20             # MEMO's tables: DER on CIFAR-100 B0 Inc10 = 23.5 MB = 24,684,160 bytes


def _check(R) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"R must be a non-empty square T×T matrix, got shape {R.shape}")
    if not np.isfinite(R).all():
        raise ValueError("R has NaN or infinite entries: every experience must be evaluated after every step")
    return R


def _weights(weights, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=float)
    if w.shape != (n,) or (w < 0).any() or w.sum() == 0:
        raise ValueError(f"weights must be {n} non-negative numbers, not all zero; got {weights!r}")
    return w


def seen_accuracy(R, t: int, weights: Sequence[float] | None = None) -> float:
    """Accuracy on experiences 0..t after training t: Σ_{j≤t} w_j R[t, j] / Σ_{j≤t} w_j."""
    R = _check(R)
    if not 0 <= t < R.shape[0]:
        raise ValueError(f"t must be in 0..{R.shape[0] - 1}, got {t}")
    w = _weights(weights, R.shape[0])[: t + 1]
    return float(np.average(R[t, : t + 1], weights=w))


def average_accuracy(R, weights: Sequence[float] | None = None) -> float:
    """A_T = Σ_j w_j R[T−1, j] / Σ_j w_j — the final row's mean.

    Lopez-Paz & Ranzato 2017 (GEM), "ACC". With `weights` = test-set sizes this is the
    accuracy over all test samples seen, the class-incremental convention (PyCIL, MEMO).
    """
    R = _check(R)
    return seen_accuracy(R, R.shape[0] - 1, weights)


def class_subset_accuracy(class_accuracy, test_counts, classes: Sequence[int]) -> float:
    """Accuracy over the test samples of `classes` (per-class accuracies weighted by their test counts).

    Used for the rare classes of a rare-class stream, where the mean over all samples hides them."""
    acc, counts = np.asarray(class_accuracy, dtype=float), np.asarray(test_counts, dtype=float)
    index = [c for c in classes if counts[c] > 0]
    if not index:
        raise ValueError(f"no test samples of classes {list(classes)}")
    return float(np.average(acc[index], weights=counts[index]))


def accuracy_when_learnt(class_R, test_counts, classes: Sequence[int],
                         classes_per_experience: Sequence[Sequence[int]]) -> float:
    """Accuracy on `classes` right after the experience that taught each of them — learning, before forgetting.

    `class_R[t, c]` is the accuracy on class c after training experience t; weighted by test counts."""
    class_R = np.asarray(class_R, dtype=float)
    taught_at = {c: t for t, taught in enumerate(classes_per_experience) for c in taught}
    when_learnt = np.full(class_R.shape[1], np.nan)
    for c in classes:
        when_learnt[c] = class_R[taught_at[c], c]
    return class_subset_accuracy(when_learnt, test_counts, classes)


def average_incremental_accuracy(R, weights: Sequence[float] | None = None) -> float:
    """Ā = (1/T) Σ_t seen_accuracy(R, t): Rebuffi et al. 2017 (iCaRL); MEMO's Ā."""
    R = _check(R)
    return float(np.mean([seen_accuracy(R, t, weights) for t in range(R.shape[0])]))


def forgetting_per_experience(R) -> np.ndarray:
    """f_j = max_{t<T−1} R[t, j] − R[T−1, j] for j < T−1 (Chaudhry et al. 2018, RWalk)."""
    R = _check(R)
    T = R.shape[0]
    if T == 1:
        return np.zeros(0)
    return R[: T - 1, : T - 1].max(axis=0) - R[T - 1, : T - 1]


def forgetting(R) -> float:
    """F = mean_j f_j, max-based forgetting (Chaudhry et al. 2018); 0 when T = 1.

    Not Avalanche's `forgetting`, which is R[j, j] − R[t, j] (accuracy right after learning
    j, not the best accuracy ever reached on j).
    """
    f = forgetting_per_experience(R)
    return float(f.mean()) if f.size else 0.0


def backward_transfer(R) -> float:
    """BWT = (1/(T−1)) Σ_{j<T−1} (R[T−1, j] − R[j, j]) (Lopez-Paz & Ranzato 2017); 0 when T = 1."""
    R = _check(R)
    T = R.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean(R[T - 1, : T - 1] - np.diag(R)[: T - 1]))


# --------------------------------------------------------------------------- memory (MEMO)


def model_bytes(n_params: int) -> int:
    """A model costs its parameters × 4 bytes (float32): MEMO, Zhou et al. ICLR 2023, Sec. 3."""
    return int(n_params) * BYTES_PER_PARAMETER


def exemplar_bytes(n_exemplars: int, input_shape: Sequence[int]) -> int:
    """An exemplar costs its raw pixels, H·W·C bytes (uint8), as in MEMO's accounting."""
    return int(n_exemplars) * int(np.prod(input_shape))


@dataclass(frozen=True)
class MemoryFootprint:
    model_bytes: int
    exemplar_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.exemplar_bytes

    @property
    def total_mb(self) -> float:
        """Total in MB of 2^20 bytes, the unit of MEMO's tables."""
        return self.total_bytes / BYTES_PER_MB


def memory_footprint(n_params: int, n_exemplars: int, input_shape: Sequence[int]) -> MemoryFootprint:
    return MemoryFootprint(model_bytes(n_params), exemplar_bytes(n_exemplars, input_shape))


def aligned_exemplars(reference_params: int, params: int, reference_exemplars: int,
                      input_shape: Sequence[int]) -> int:
    """Exemplars a method may keep to match a reference's total memory (MEMO §4.2).

    extra = ⌊(P_ref − P) · 4 / (H·W·C)⌋: the bytes a smaller model saves are spent on
    exemplars. MEMO's worked example (CIFAR-100, B0 Inc10, 2,000 exemplars for DER): MEMO
    3,626,896 vs DER 4,635,040 backbone parameters -> 3,312 exemplars; a single ResNet-32
    (463,504) -> 7,431. Raises if the method's model is larger than the reference's.
    """
    saved = model_bytes(reference_params) - model_bytes(params)
    if saved < 0:
        raise ValueError(f"the model ({params:,} params) is larger than the reference ({reference_params:,}); "
                         "align to the largest model")
    return int(reference_exemplars) + saved // exemplar_bytes(1, input_shape)
