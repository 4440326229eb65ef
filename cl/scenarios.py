"""Class-incremental Avalanche benchmarks that build offline.

Every builder loads its data into tensors, reads them through `from_tensors` (layout, dtype,
labels and normalisation checked by `cl.arrays`; built-in datasets state their layout, only a
user's arrays are left to `layout: auto`), then splits classes into experiences with
Avalanche 0.6's `class_incremental_benchmark`. Image scenarios take `augment:`, applied to
training minibatches by the plugin `Scenario.train_plugins()` returns (`cl.augment`); the
datasets themselves stay un-augmented, so evaluation and exemplar selection see clean images.
Scenario seed (class order) and training seed are separate: the class order comes from `seed`
here, never from the global RNG.

Avalanche 0.6 quirks handled here (see ../shared/notes/avalanche-0.6.md):
- samples are ``(x, y, t)`` with `y` a Python int: iCaRL's mixed batches (memory + new data)
  fail to collate otherwise;
- datasets are task-aware (`task_set`), which LwF needs;
- task labels are a `ConstantSequence`, which iCaRL's memory concatenation needs;
- new-style experiences have no `benchmark`; iCaRL reads `experience.benchmark.
  n_classes_per_exp` and `.classes_order`, so every experience gets a small `_BenchmarkInfo`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from cl.datafiles import DataNotFoundError, check_dataset, check_path, resolve_data_root  # noqa: F401
from cl.errors import ConfigError

DIGITS_SPLIT_SEED = 0                       # the digits train/test split is fixed, whatever the seed
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass(frozen=True)
class Scenario:
    benchmark: Any                                  # avalanche CLScenario: train_stream, test_stream
    name: str
    n_classes: int
    input_shape: tuple[int, ...]                    # (C, H, W) of one sample
    class_order: tuple[int, ...]
    classes_per_experience: tuple[tuple[int, ...], ...]
    task_labels: bool
    train_sizes: tuple[int, ...]
    test_sizes: tuple[int, ...]
    rare_classes: tuple[int, ...] = ()               # classes trained on few samples (rare_class_stream)
    data: dict = field(default_factory=dict)         # how the arrays were read: logged as data.* run params
    augment: Any = None                              # cl.augment.BatchAugment for training minibatches, or None

    @property
    def n_experiences(self) -> int:
        return len(self.classes_per_experience)

    def train_plugins(self) -> list:
        """Avalanche plugins the scenario needs in training: its minibatch augmentation, if any."""
        if self.augment is None:
            return []
        from cl.augment import AugmentPlugin

        return [AugmentPlugin(self.augment)]

    @property
    def exemplar_bytes(self) -> int:
        """Raw bytes to keep one exemplar: C·H·W (uint8 pixels), MEMO's accounting."""
        return int(np.prod(self.input_shape))


@dataclass(frozen=True)
class _BenchmarkInfo:
    """What iCaRL expects to find as `experience.benchmark`."""

    n_classes_per_exp: list[int]
    classes_order: list[int]
    n_classes: int


class _Samples(Dataset):
    """(x, int(y)) pairs over tensors, with an optional per-sample transform on x."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x = x
        self.y = y.tolist()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def _avalanche_dataset(x: torch.Tensor, y: torch.Tensor, train_transform: Callable | None = None):
    from avalanche.benchmarks.utils import DataAttribute
    from avalanche.benchmarks.utils.classification_dataset import TaskAwareSupervisedClassificationDataset
    from avalanche.benchmarks.utils.flat_data import ConstantSequence
    from avalanche.benchmarks.utils.transform_groups import TransformGroups

    groups = TransformGroups({"train": train_transform, "eval": None}) if train_transform else None
    return TaskAwareSupervisedClassificationDataset(
        [_Samples(x, y)],
        data_attributes=[
            DataAttribute(y.tolist(), "targets"),
            DataAttribute(ConstantSequence(0, len(y)), "targets_task_labels", use_in_getitem=True),
        ],
        transform_groups=groups,
    )


# --------------------------------------------------------------------------- class order


def resolve_class_order(n_classes: int, *, class_order: Optional[Sequence[int]], shuffle_classes: bool,
                        seed: int) -> list[int]:
    if class_order is not None:
        order = [int(c) for c in class_order]
        if sorted(order) != list(range(n_classes)):
            raise ValueError(f"scenario.class_order must be a permutation of 0..{n_classes - 1}, got {order}")
        return order
    if not shuffle_classes:
        return list(range(n_classes))
    return np.random.default_rng(seed).permutation(n_classes).tolist()


def resolve_split(n_classes: int, *, n_experiences: Optional[int],
                  classes_per_experience: Optional[Sequence[int]]) -> list[int]:
    if classes_per_experience is not None:
        sizes = [int(n) for n in classes_per_experience]
        if sum(sizes) != n_classes or any(n < 1 for n in sizes):
            raise ValueError(f"scenario.classes_per_experience must be positive and sum to {n_classes}, got {sizes}")
        return sizes
    n_experiences = n_experiences or 5
    if n_classes % n_experiences:
        raise ValueError(f"scenario.n_experiences={n_experiences} does not divide the {n_classes} classes; "
                         "choose a divisor or give classes_per_experience")
    return [n_classes // n_experiences] * n_experiences


# --------------------------------------------------------------------------- generic builder


def from_tensors(
    x_train, y_train, x_test, y_test, *,
    name: str = "tensors",
    n_experiences: Optional[int] = None,
    classes_per_experience: Optional[Sequence[int]] = None,
    class_order: Optional[Sequence[int]] = None,
    shuffle_classes: bool = True,
    seed: int = 0,
    task_labels: bool = False,
    layout: str = "auto",
    normalize: Any = "none",
    augment: Any = "none",
    train_transform: Callable | None = None,
) -> Scenario:
    """A class-incremental scenario from arrays (numpy or torch), read as `cl.arrays.check_arrays` says.

    x: (N, C, H, W) or (N, H, W, C) — `layout` auto | nchw | nhwc; `auto` decides only when exactly
    one side has 1, 3 or 4 entries, else a `ConfigError` names the shape and `scenario.layout` —
    as uint8 (scaled to [0, 1]) or float (kept as given); or (N, D) feature vectors, read as
    (N, 1, 1, D). y: integers 0..C-1, the test split holding exactly the training classes.
    `normalize`: none | per_channel (statistics of the training split) | {mean, std}.
    `augment`: a preset or a list of v2 transforms applied to training minibatches by
    `cl.augment.AugmentPlugin` (the scenario's `train_plugins()`), before normalisation.
    `train_transform` is the older per-sample alternative: a callable applied by the dataset to
    each training sample (Avalanche's train transform group).
    """
    from cl.arrays import augment_label, check_arrays, parse_augment

    reading = check_arrays(x_train, y_train, x_test, y_test, layout=layout, normalize=normalize)
    try:
        augment = parse_augment(augment, "scenario.augment")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    x_train, x_test = (_read_images(x, reading) for x in (x_train, x_test))
    y_train, y_test = (torch.as_tensor(np.asarray(y).reshape(-1), dtype=torch.long) for y in (y_train, y_test))
    augmenter = None
    if augment != "none":
        if reading.layout == "vector":
            raise ConfigError("scenario.augment: applies to images; x is (N, D) feature vectors: drop `augment`")
        if augment == "crop_flip_jitter" and (float(x_train.min()) < 0 or float(x_train.max()) > 1):
            raise ConfigError(
                f"scenario.augment: crop_flip_jitter clamps brightness to [0, 1], but the training pixels span "
                f"[{float(x_train.min()):.3g}, {float(x_train.max()):.3g}]; scale them to [0, 1] (or give uint8), "
                "or use crop_flip")
    mean, std, norm_label = _normalisation(x_train, normalize)
    if mean is not None:
        x_train, x_test = ((x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1) for x in (x_train, x_test))
    if augment != "none":
        from cl.augment import BatchAugment

        augmenter = BatchAugment(augment, mean=None if mean is None else mean.tolist(),
                                 std=None if std is None else std.tolist())
        augmenter.check(x_train[:2])
    n_classes = reading.n_classes
    order = resolve_class_order(n_classes, class_order=class_order, shuffle_classes=shuffle_classes, seed=seed)
    sizes = resolve_split(n_classes, n_experiences=n_experiences, classes_per_experience=classes_per_experience)

    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

    benchmark = class_incremental_benchmark(
        {"train": _avalanche_dataset(x_train, y_train, train_transform),
         "test": _avalanche_dataset(x_test, y_test)},
        class_order=order, num_classes_per_exp=sizes)
    if task_labels:
        from avalanche.benchmarks.scenarios.task_aware import task_incremental_benchmark

        benchmark = task_incremental_benchmark(benchmark, reset_task_labels=True)
    info = _BenchmarkInfo(n_classes_per_exp=sizes, classes_order=order, n_classes=n_classes)
    for stream in (benchmark.train_stream, benchmark.test_stream):
        for experience in stream:
            experience.benchmark = info
    bounds = np.cumsum([0, *sizes])
    per_exp = tuple(tuple(order[bounds[i]:bounds[i + 1]]) for i in range(len(sizes)))
    data = {**reading.params(), "normalize": norm_label, "augment": augment_label(augment)}
    return Scenario(
        benchmark=benchmark, name=name, n_classes=n_classes, input_shape=tuple(x_train.shape[1:]),
        class_order=tuple(order), classes_per_experience=per_exp, task_labels=task_labels,
        train_sizes=tuple(len(e.dataset) for e in benchmark.train_stream),
        test_sizes=tuple(len(e.dataset) for e in benchmark.test_stream),
        data=data, augment=augmenter,
    )


def _read_images(x, reading) -> torch.Tensor:
    """x as float32 (N, C, H, W): uint8 scaled to [0, 1], channels-last permuted, vectors as (N, 1, 1, D)."""
    x = x.detach().cpu() if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if reading.layout == "vector":
        return x.reshape(len(x), 1, 1, x.shape[1])
    if reading.layout == "nhwc":
        x = x.permute(0, 3, 1, 2)
    return x.contiguous()


def _normalisation(x_train: torch.Tensor, normalize: Any):
    """(mean, std, label) per channel for `normalize`; per_channel uses the training split only."""
    if normalize in (None, "none"):
        return None, None, "none"
    channels = x_train.shape[1]
    if normalize == "per_channel":
        mean = x_train.mean(dim=(0, 2, 3))
        std = x_train.std(dim=(0, 2, 3))
        flat = [c for c in range(channels) if float(std[c]) == 0]
        if flat:
            raise ConfigError(f"scenario.normalize: channel(s) {flat} are constant in x_train, so per_channel "
                              "would divide by 0; give {mean: [...], std: [...]} or none")
        label = "per_channel"
    else:
        mean, std = (torch.tensor(normalize[k], dtype=torch.float32) for k in ("mean", "std"))
        if len(mean) == 1:
            mean, std = mean.expand(channels).clone(), std.expand(channels).clone()
        label = "given"
    rounded = lambda t: [round(float(v), 4) for v in t]  # noqa: E731
    return mean, std, f"{label} mean={rounded(mean)} std={rounded(std)}"


def _per_class_subset(x: torch.Tensor, y: torch.Tensor, per_class: Optional[int], seed: int = 0):
    """The first `per_class` samples of each class after a fixed shuffle (same subset every run)."""
    if per_class is None:
        return x, y
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    keep = []
    for c in torch.unique(y).tolist():
        keep.append(order[y[order] == c][:per_class])
    idx = torch.sort(torch.cat(keep)).values
    return x[idx], y[idx]


# --------------------------------------------------------------------------- datasets


def image_tensors(dataset: str, *, data_root=None, train_samples_per_class: Optional[int] = None,
                  test_fraction: float = 0.3):
    """(x_train, y_train, x_test, y_test) of 'digits', 'mnist' or 'fmnist', pixels in [0, 1], (N, 1, H, W).

    The one loader behind the split scenarios and the transfer experiments. Digits: the fixed
    stratified split of `split_digits`; MNIST / Fashion-MNIST: torchvision's files under
    `data_root` (checked first, never downloaded).
    """
    if dataset == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
        y = torch.tensor(digits.target, dtype=torch.long)
        i_train, i_test = train_test_split(np.arange(len(y)), test_size=test_fraction,
                                           stratify=digits.target, random_state=DIGITS_SPLIT_SEED)
        return (*_per_class_subset(x[i_train], y[i_train], train_samples_per_class), x[i_test], y[i_test])
    if dataset not in ("mnist", "fmnist"):
        raise ValueError(f"dataset: {dataset!r}; one of digits, mnist, fmnist")
    import torchvision

    root = check_dataset(dataset, data_root)
    cls = getattr(torchvision.datasets, {"mnist": "MNIST", "fmnist": "FashionMNIST"}[dataset])
    train, test = cls(root=str(root), train=True, download=False), cls(root=str(root), train=False, download=False)
    x_train, y_train = _per_class_subset(train.data.unsqueeze(1).float() / 255.0, train.targets.long(),
                                         train_samples_per_class)
    return x_train, y_train, test.data.unsqueeze(1).float() / 255.0, test.targets.long()


def split_digits(*, test_fraction: float = 0.3, train_samples_per_class: Optional[int] = None, **split) -> Scenario:
    """scikit-learn's 8×8 digits (1,797 images, 10 classes), values scaled to [0, 1].

    The stratified train/test split is fixed (random_state 0), so `seed` changes only the
    class order. `augment` (in `split`) as for every image scenario.
    """
    tensors = image_tensors("digits", train_samples_per_class=train_samples_per_class, test_fraction=test_fraction)
    return from_tensors(*tensors, name="split_digits", layout="nchw", **split)


def split_mnist(*, data_root=None, train_samples_per_class: Optional[int] = None, **split) -> Scenario:
    """MNIST from `data_root` (torchvision layout, `MNIST/raw`), pixels in [0, 1], (1, 28, 28)."""
    tensors = image_tensors("mnist", data_root=data_root, train_samples_per_class=train_samples_per_class)
    return from_tensors(*tensors, name="split_mnist", layout="nchw", **split)


def split_fmnist(*, data_root=None, train_samples_per_class: Optional[int] = None, **split) -> Scenario:
    """Fashion-MNIST from `data_root` (`FashionMNIST/raw`), pixels in [0, 1], (1, 28, 28)."""
    tensors = image_tensors("fmnist", data_root=data_root, train_samples_per_class=train_samples_per_class)
    return from_tensors(*tensors, name="split_fmnist", layout="nchw", **split)


def rare_class_stream(*, base: str = "digits", data_root=None, train_samples_per_class: Optional[int] = None,
                      rare_classes: Optional[Sequence[int]] = None, n_rare: int = 2, rare_fraction: float = 0.05,
                      rare_seed: int = 0, **split) -> Scenario:
    """A class-incremental stream in which a few classes are rare: their training samples are cut to
    `rare_fraction` of the others' (at least one); test sets stay whole, so rare-class accuracy is measured
    on as many images as any class. The motivating case of memory networks with fast-learning controllers.

    `rare_classes` names them; by default `n_rare` classes drawn with `rare_seed`. Base data: 'digits'
    (offline), 'mnist' or 'fmnist' (from `data_root`).
    """
    x, y, x_test, y_test = image_tensors(base, data_root=data_root, train_samples_per_class=train_samples_per_class)
    classes = sorted(torch.unique(y).tolist())
    rng = np.random.default_rng(rare_seed)
    rare = sorted(rare_classes) if rare_classes is not None else sorted(rng.choice(classes, n_rare, replace=False).tolist())
    unknown = [c for c in rare if c not in classes]
    if unknown:
        raise ValueError(f"scenario.rare_classes: {unknown} are not classes of {base} (0..{max(classes)})")
    keep = torch.ones(len(y), dtype=torch.bool)
    for c in rare:
        index = torch.nonzero(y == c).flatten().numpy()
        n = max(1, int(round(rare_fraction * len(index))))
        keep[torch.from_numpy(np.setdiff1d(index, rng.choice(index, n, replace=False)))] = False
    scenario = from_tensors(x[keep], y[keep], x_test, y_test, name="rare_class_stream", layout="nchw", **split)
    return replace(scenario, rare_classes=tuple(int(c) for c in rare))


def _cifar(dataset: str, cls_name: str, data_root, train_samples_per_class, augment, split) -> Scenario:
    """CIFAR's uint8 (N, 32, 32, 3) arrays read through `from_tensors`, normalised with the usual statistics."""
    import torchvision

    root = check_dataset(dataset, data_root)
    cls = getattr(torchvision.datasets, cls_name)
    mean, std = CIFAR_STATS[dataset]

    def arrays(train: bool):
        ds = cls(root=str(root), train=train, download=False)
        return torch.from_numpy(ds.data), torch.tensor(ds.targets, dtype=torch.long)

    x_train, y_train = _per_class_subset(*arrays(True), train_samples_per_class)
    return from_tensors(x_train, y_train, *arrays(False), name=f"split_{dataset}", layout="nhwc",
                        normalize={"mean": list(mean), "std": list(std)}, augment=augment, **split)


def split_cifar10(*, data_root=None, train_samples_per_class: Optional[int] = None, augment: Any = "crop_flip",
                  **split) -> Scenario:
    """CIFAR-10 (`cifar-10-batches-py` under data_root), normalised; `augment` default crop_flip (PyCIL's)."""
    return _cifar("cifar10", "CIFAR10", data_root, train_samples_per_class, augment, split)


def split_cifar100(*, data_root=None, train_samples_per_class: Optional[int] = None, augment: Any = "crop_flip",
                   **split) -> Scenario:
    """CIFAR-100 (`cifar-100-python` under data_root), normalised; `augment` default crop_flip (PyCIL's)."""
    return _cifar("cifar100", "CIFAR100", data_root, train_samples_per_class, augment, split)


def from_file(*, path: str | os.PathLike, **options) -> Scenario:
    """Arrays x_train, y_train, x_test, y_test from an .npz (numpy) or .pt (torch.save of a dict)."""
    from cl.arrays import load_arrays

    arrays = load_arrays(check_path("path", path))
    return from_tensors(*arrays.values(), name=Path(path).stem, **options)


def from_folder(*, train_dir, test_dir, image_size: int = 32, grayscale: bool = False, **options) -> Scenario:
    """Images in torchvision's ImageFolder layout (one sub-folder per class), resized, in [0, 1].

    `normalize` and `augment` (in `options`) as for `from_tensors`.
    """
    from torchvision import datasets
    from torchvision.transforms import v2

    steps = [v2.Grayscale()] if grayscale else [v2.RGB()]
    transform = v2.Compose([*steps, v2.Resize((image_size, image_size)), v2.ToImage(),
                            v2.ToDtype(torch.float32, scale=True)])

    def load(folder):
        ds = datasets.ImageFolder(str(check_path("train_dir" if folder is train_dir else "test_dir", folder,
                                                 directory=True)), transform=transform)
        return ds, torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor(ds.targets, dtype=torch.long)

    train, x_train, y_train = load(train_dir)
    test, x_test, y_test = load(test_dir)
    if test.classes != train.classes:
        raise ValueError(f"scenario.test_dir: classes {test.classes} differ from train_dir's {train.classes}")
    return from_tensors(x_train, y_train, x_test, y_test, name=Path(train_dir).parent.name or "folder",
                        layout="nchw", **options)
