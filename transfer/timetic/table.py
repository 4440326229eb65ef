"""TimeTic's table (see `transfer.timetic.estimator` for the paper's recipe and our deviations): one row per
(zoo model, dataset) with its features and the fine-tuned error the estimator learns to predict, fine-tuning cached."""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cl.config import canonical_hash
from cl.cache import cache_root, cached
from cl.transfer_run import single_thread
from transfer.timetic.features import entropy_profile, meta_features

log = logging.getLogger(__name__)

FEATURE_SETS = ("full", "no_zero_shot", "meta", "entropy")


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
