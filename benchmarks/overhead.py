"""What does the suite cost on top of Avalanche, and Avalanche on top of a plain loop?

The same model (small CNN), data (split Fashion-MNIST, 5 × 2 classes, class-incremental),
optimiser and epochs, trained three ways, each evaluating the whole test stream after every
experience:

  clsuite    `cl.runner.run` end to end: scenario build, Avalanche training, our logger
             plugin, MLflow writes to a fresh SQLite store, plots and provenance
  avalanche  the same scenario builder, Avalanche's `Naive` with an accuracy-only evaluator
  raw        a plain PyTorch loop over the same tensors (no Avalanche, no MLflow)

Each timing is end to end from the files on disk: loading the data, building the model,
training and evaluating (the MLflow store is created, empty, beforehand). Runs are
interleaved (clsuite, avalanche, raw, clsuite, ...) so machine noise hits all three alike;
the table reports medians and the ratios clsuite/avalanche and clsuite/raw.

Then, what training-minibatch augmentation (`augment:`, `cl.augment`) costs per epoch: one
training epoch of the small CNN on a fixed synthetic CIFAR-shaped set (uint8 (N, 32, 32, 3),
10 classes, read through `from_tensors` exactly as a user's file is), batch 32, with

  none               no augmentation
  crop_flip          batched: random crop (4-pixel padding) + flip, per-sample parameters
  crop_flip_jitter   batched: + brightness jitter 63/255
  v2 per sample      the same RandomCrop + RandomHorizontalFlip as a v2 list, applied per sample
                     in the plugin (what any transform without a batched equivalent costs)
  v2 in dataset      the same v2 transforms as a per-sample dataset transform (`train_transform`,
                     how split_cifar* augmented before)

Epochs are interleaved across the five and repeated; the table gives the median seconds per
epoch, the ratio to none, and the seconds spent in the augmentation itself (applying it to an
epoch's minibatches without the model; for the dataset variant, iterating the DataLoader).

    python benchmarks/overhead.py --quick        # ≤ 3 minutes on 2 cores
    python benchmarks/overhead.py                # the full measurement (60k images, 3 repeats)
    python benchmarks/overhead.py --augment-only # only the augmentation table (no data files needed)
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import torch
from torch import nn

from benchmarks.paths import SHARED_DATA
from cl.config import RunConfig
from cl.models import build_cnn
from cl.runner import make_optimizer, run, seed_everything
from cl.scenarios import split_fmnist


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="subsample to finish in ≤3 min")
    parser.add_argument("--data-root", default=os.environ.get("CLSUITE_DATA_ROOT", str(SHARED_DATA)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--samples-per-class", type=int, default=None,
                        help="training samples per class (default: all 6000; --quick: 300)")
    parser.add_argument("--augment-only", action="store_true", help="only the augmentation cost table")
    parser.add_argument("--augment-images", type=int, default=None,
                        help="images in the augmentation epoch (default 5000; --quick: 1000)")
    return parser.parse_args()


def make_config(args, data_root: str, per_class: int | None) -> RunConfig:
    return RunConfig.from_dict({
        "experiment": "overhead",
        "scenario": {"name": "split_fmnist", "n_experiences": 5, "shuffle_classes": False,
                     "data_root": data_root, "train_samples_per_class": per_class},
        "model": {"name": "cnn"},
        "strategy": {"name": "naive"},
        "train": {"epochs": args.epochs, "batch_size": 32, "eval_batch_size": 256, "lr": 0.01,
                  "momentum": 0.9},
        "seed": 0,
    })


def time_clsuite(cfg: RunConfig, store_dir: str, i: int) -> float:
    uri = f"sqlite:///{store_dir}/run{i}.db"
    from cl.tracking import client_for
    client_for(uri).search_experiments()   # create the store (schema migrations) outside the timing
    start = time.perf_counter()
    result = run(cfg, tracking_uri=uri)
    elapsed = time.perf_counter() - start
    assert result.ok, result.reason
    return elapsed


def time_avalanche(cfg: RunConfig, data_root: str, per_class: int | None) -> float:
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    start = time.perf_counter()
    scenario = split_fmnist(data_root=data_root, n_experiences=5, shuffle_classes=False,
                            train_samples_per_class=per_class)
    seed_everything(cfg.seed)
    model = build_cnn(input_shape=scenario.input_shape, n_classes=scenario.n_classes)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])
    strategy = Naive(model=model, optimizer=make_optimizer(model, cfg.train), criterion=nn.CrossEntropyLoss(),
                     train_mb_size=cfg.train.batch_size, train_epochs=cfg.train.epochs,
                     eval_mb_size=cfg.train.eval_batch_size, evaluator=evaluator)
    for experience in scenario.benchmark.train_stream:
        strategy.train(experience, num_workers=0)
        strategy.eval(scenario.benchmark.test_stream, num_workers=0)
    return time.perf_counter() - start


def load_raw(data_root: str, per_class: int | None):
    """Fashion-MNIST straight from torchvision, split 5 × 2 classes in natural order."""
    import torchvision

    def split(train: bool):
        ds = torchvision.datasets.FashionMNIST(root=data_root, train=train, download=False)
        x, y = ds.data.unsqueeze(1).float() / 255.0, ds.targets
        if train and per_class is not None:
            keep = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(10)])
            x, y = x[keep], y[keep]
        return [(x[(y == 2 * e) | (y == 2 * e + 1)], y[(y == 2 * e) | (y == 2 * e + 1)]) for e in range(5)]

    return split(True), split(False)


def time_raw(cfg: RunConfig, data_root: str, per_class: int | None) -> float:
    start = time.perf_counter()
    train_sets, test_sets = load_raw(data_root, per_class)
    seed_everything(cfg.seed)
    model = build_cnn(input_shape=(1, 28, 28), n_classes=10)
    optimizer = make_optimizer(model, cfg.train)
    loss_fn = nn.CrossEntropyLoss()
    bs, ebs = cfg.train.batch_size, cfg.train.eval_batch_size
    for x_train, y_train in train_sets:
        model.train()
        for _ in range(cfg.train.epochs):
            order = torch.randperm(len(y_train))
            for k in range(0, len(order), bs):
                idx = order[k:k + bs]
                optimizer.zero_grad()
                loss_fn(model(x_train[idx]), y_train[idx]).backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            for x_test, y_test in test_sets:
                correct = sum(int((model(x_test[k:k + ebs]).argmax(1) == y_test[k:k + ebs]).sum())
                              for k in range(0, len(y_test), ebs))
                _ = correct / len(y_test)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- augmentation cost

AUGMENT_WAYS = ("none", "crop_flip", "crop_flip_jitter", "v2 per sample", "v2 in dataset")
V2_LIST = [{"name": "RandomCrop", "size": 32, "padding": 4}, {"name": "RandomHorizontalFlip"}]


def _augment_scenario(way: str, x, y):
    from torchvision.transforms import v2

    from cl.augment import BatchAugment
    from cl.scenarios import from_tensors

    if way == "v2 in dataset":
        transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
        return from_tensors(x, y, x[:10], y[:10], n_experiences=1, train_transform=transform), None
    if way == "v2 per sample":
        scenario = from_tensors(x, y, x[:10], y[:10], n_experiences=1)
        augment = BatchAugment(V2_LIST, batched=False)
        assert augment.per_sample_steps == 1
        from dataclasses import replace
        return replace(scenario, augment=augment), augment
    scenario = from_tensors(x, y, x[:10], y[:10], n_experiences=1, augment=way)
    return scenario, scenario.augment


def time_augment_epoch(way: str, x, y, seed: int) -> tuple[float, float]:
    """(seconds of one training epoch, seconds of the augmentation alone over the same minibatches)."""
    from avalanche.training import Naive

    from cl.runner import _silent_evaluator

    scenario, augment = _augment_scenario(way, x, y)
    experience = scenario.benchmark.train_stream[0]
    seed_everything(seed)
    model = build_cnn(input_shape=scenario.input_shape, n_classes=scenario.n_classes)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                     criterion=nn.CrossEntropyLoss(), train_mb_size=32, train_epochs=1,
                     plugins=scenario.train_plugins(), evaluator=_silent_evaluator())
    start = time.perf_counter()
    strategy.train(experience, num_workers=0)
    epoch = time.perf_counter() - start

    if way == "v2 in dataset":   # the augmentation happens while the loader collates: time the loader alone
        loader = torch.utils.data.DataLoader(experience.dataset.train(), batch_size=32, shuffle=True)
        start = time.perf_counter()
        for _ in loader:
            pass
        return epoch, time.perf_counter() - start
    data = torch.stack([experience.dataset.eval()[i][0] for i in range(len(experience.dataset))])
    start = time.perf_counter()
    if augment is not None:
        for k in range(0, len(data), 32):
            augment(data[k:k + 32])
    return epoch, time.perf_counter() - start


def augment_table(args) -> dict[str, float]:
    """Prints the augmentation table; returns the RESULT fields."""
    import numpy as np

    n = args.augment_images or (1000 if args.quick else 5000)
    rng = np.random.default_rng(0)
    y = np.arange(n) % 10
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)   # the pixels do not matter for the cost
    time_augment_epoch("none", x[:200], y[:200], 0)                 # warm-up: imports, first allocations
    epochs: dict[str, list[float]] = {w: [] for w in AUGMENT_WAYS}
    alone: dict[str, list[float]] = {w: [] for w in AUGMENT_WAYS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for i in range(args.repeats):
            for way in AUGMENT_WAYS:
                e, a = time_augment_epoch(way, x, y, i)
                epochs[way].append(e)
                alone[way].append(a)
            print(f"augment repeat {i + 1}/{args.repeats}: "
                  + ", ".join(f"{w} {v[-1]:.2f}s" for w, v in epochs.items()), flush=True)
    med = {w: statistics.median(v) for w, v in epochs.items()}
    med_alone = {w: statistics.median(v) for w, v in alone.items()}
    print()
    print(f"augmentation cost per epoch: {n} synthetic uint8 32×32×3 images, cnn, batch 32, CPU, "
          f"medians of {args.repeats} interleaved repeats; torch threads {torch.get_num_threads()}")
    print(f"{'augment':<18}{'epoch s':>9}{'min s':>8}{'max s':>8}{'vs none':>9}{'augment alone s':>17}"
          f"{'alone / epoch':>15}")
    for way in AUGMENT_WAYS:
        print(f"{way:<18}{med[way]:>9.2f}{min(epochs[way]):>8.2f}{max(epochs[way]):>8.2f}"
              f"{med[way] / med['none']:>9.2f}{med_alone[way]:>17.3f}{med_alone[way] / med['none']:>15.3f}")
    print("'alone / epoch': seconds of the augmentation by itself over the seconds of an un-augmented epoch — "
          "the robust figure when the epoch-to-epoch noise of a shared machine exceeds the augmentation's cost")
    keys = {"crop_flip": "crop_flip", "crop_flip_jitter": "crop_flip_jitter", "v2 per sample": "v2_per_sample",
            "v2 in dataset": "v2_in_dataset"}
    out = {f"augment_{k}_over_none": med[w] / med["none"] for w, k in keys.items()}
    out.update({f"augment_{k}_alone_share": med_alone[w] / med["none"] for w, k in keys.items()})
    out["augment_none_epoch_s"] = med["none"]
    out["augment_images"] = n
    return out


def main() -> None:
    args = parse_args()
    if args.augment_only:
        fields = augment_table(args)
        print("RESULT " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
              + f" repeats={args.repeats} quick={int(args.quick)}")
        return
    per_class = args.samples_per_class or (300 if args.quick else None)
    repeats = args.repeats
    cfg = make_config(args, args.data_root, per_class)

    n_train = sum(len(y) for _, y in load_raw(args.data_root, per_class)[0])
    # warm-up (imports, first-call allocations) outside the timings
    time_avalanche(make_config(args, args.data_root, 10), args.data_root, 10)

    times: dict[str, list[float]] = {"clsuite": [], "avalanche": [], "raw": []}
    with tempfile.TemporaryDirectory() as store_dir:
        for i in range(repeats):
            times["clsuite"].append(time_clsuite(cfg, store_dir, i))
            times["avalanche"].append(time_avalanche(cfg, args.data_root, per_class))
            times["raw"].append(time_raw(cfg, args.data_root, per_class))
            print(f"repeat {i + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()),
                  flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print()
    print(f"split_fmnist 5×2, {n_train} train images, cnn, {args.epochs} epoch(s)/experience, "
          f"batch 32, medians of {repeats} interleaved repeats; torch threads {torch.get_num_threads()}")
    print(f"{'way':<11}{'median s':>10}{'min s':>9}{'max s':>9}{'vs raw':>9}")
    for way in ("clsuite", "avalanche", "raw"):
        print(f"{way:<11}{med[way]:>10.2f}{min(times[way]):>9.2f}{max(times[way]):>9.2f}{med[way] / med['raw']:>9.2f}")
    print(f"ratios: clsuite/avalanche = {med['clsuite'] / med['avalanche']:.3f}, "
          f"clsuite/raw = {med['clsuite'] / med['raw']:.3f}, avalanche/raw = {med['avalanche'] / med['raw']:.3f}")
    print()
    fields = augment_table(args)
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()))
    print(f"RESULT clsuite_over_avalanche={med['clsuite'] / med['avalanche']:.3f} "
          f"clsuite_over_raw={med['clsuite'] / med['raw']:.3f} avalanche_over_raw={med['avalanche'] / med['raw']:.3f} "
          f"clsuite_s={med['clsuite']:.2f} avalanche_s={med['avalanche']:.2f} raw_s={med['raw']:.2f} "
          f"repeats={repeats} train_images={n_train} quick={int(args.quick)} "
          + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
