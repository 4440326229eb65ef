"""Where each on-disk dataset must be, checked before anything runs.

Light on purpose (no torch): the CLI checks every cell's data before it opens a single
MLflow run, so a missing folder is a clear exit-2 error, not a grid of failed runs. The
scenario builders run the same check when called directly from Python.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cl.errors import ConfigError

DATA_ROOT_ENV = "CLSUITE_DATA_ROOT"

_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class DatasetFiles:
    title: str
    folder: str                 # relative to the data root
    files: tuple[str, ...]
    torchvision_class: str

    def missing(self, root: Path) -> list[str]:
        base = root / self.folder
        return [f for f in self.files if not (base / f).is_file() and not (base / f"{f}.gz").is_file()]


DATASETS = {
    "mnist": DatasetFiles("MNIST", "MNIST/raw", _MNIST_FILES, "MNIST"),
    "fmnist": DatasetFiles("Fashion-MNIST", "FashionMNIST/raw", _MNIST_FILES, "FashionMNIST"),
    "cifar10": DatasetFiles("CIFAR-10", "cifar-10-batches-py",
                            ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
                            "CIFAR10"),
    "cifar100": DatasetFiles("CIFAR-100", "cifar-100-python", ("meta", "train", "test"), "CIFAR100"),
}


class DataNotFoundError(ConfigError, FileNotFoundError):
    """A dataset's files are not where the config says; the message lists them and the fix."""


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """`data_root`, else $CLSUITE_DATA_ROOT, else ./data."""
    return Path(data_root or os.environ.get(DATA_ROOT_ENV) or "data").expanduser()


def check_dataset(dataset: str, data_root: str | os.PathLike | None) -> Path:
    """The resolved root if `dataset` is complete there; else `DataNotFoundError`."""
    spec = DATASETS[dataset]
    root = resolve_data_root(data_root)
    missing = spec.missing(root)
    if missing:
        raise DataNotFoundError(
            f"scenario.data_root: {spec.title} not found under {root.resolve()}: expected "
            f"{', '.join(missing)} in {(root / spec.folder).resolve()} (or their .gz). Set "
            f"scenario.data_root (or ${DATA_ROOT_ENV}) to the folder that contains "
            f"{spec.folder.split('/')[0]}/, or fetch it once on a connected machine: "
            f"`clsuite data fetch {dataset} --root <data root>`.")
    return root


def check_path(field: str, path: str | os.PathLike, *, directory: bool = False) -> Path:
    p = Path(path).expanduser()
    ok = p.is_dir() if directory else p.is_file()
    if not ok:
        kind = "folder" if directory else "file"
        raise DataNotFoundError(f"scenario.{field}: {kind} {p.resolve()} does not exist")
    return p
