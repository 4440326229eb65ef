"""Built-in scenarios and models: their options and where their builders live.

Kept free of torch/Avalanche imports so configs validate instantly; the builders in
`cl.scenarios` and `cl.models` are imported only when a run is built.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

from pydantic import Field, field_validator, model_serializer, model_validator

from cl.arrays import LAYOUTS, parse_augment, parse_normalize
from cl.datafiles import check_dataset, check_path
from cl.errors import ConfigError
from cl.registry import MODELS, SCENARIOS, NoParams, Params, added_option

DEFAULT_EXPERIENCES = 5


class ClassSplitParams(Params):
    """How classes are split into experiences (shared by every class-incremental scenario)."""

    n_experiences: Optional[int] = Field(
        None, ge=1, description="number of experiences; must divide the number of classes "
        f"(default {DEFAULT_EXPERIENCES}, or len(classes_per_experience))")
    classes_per_experience: Optional[list[int]] = Field(
        None, description="classes in each experience, e.g. [5, 1, 1, 1, 1, 1] for B5-Inc1")
    class_order: Optional[list[int]] = Field(
        None, description="explicit class order (a permutation of 0..C-1); overrides shuffling")
    shuffle_classes: bool = Field(
        True, description="draw the class order from `seed` when class_order is not given")
    seed: int = Field(
        0, description="scenario seed (class order); separate from the training seed")
    task_labels: bool = Field(
        False, description="task-incremental: experience t carries task label t")

    @model_validator(mode="after")
    def _resolve_experiences(self):
        per_exp = self.classes_per_experience
        if per_exp is not None:
            if not per_exp or any(n < 1 for n in per_exp):
                raise ValueError("classes_per_experience must be a non-empty list of positive ints")
            if self.n_experiences is not None and self.n_experiences != len(per_exp):
                raise ValueError(
                    f"n_experiences={self.n_experiences} disagrees with classes_per_experience "
                    f"(length {len(per_exp)}); set only one of them")
            object.__setattr__(self, "n_experiences", len(per_exp))
        elif self.n_experiences is None:
            object.__setattr__(self, "n_experiences", DEFAULT_EXPERIENCES)
        return self

    def split_kwargs(self) -> dict:
        """Options for a builder: `n_experiences` is passed only when it defines the split."""
        kwargs = self.model_dump()
        if self.classes_per_experience is not None:
            kwargs.pop("n_experiences")
        return kwargs


    def preflight(self) -> None:
        """Cheap checks before any run starts (data present); raises `ConfigError`."""


class ImageParams(ClassSplitParams):
    """A scenario of images: `augment:` applies to its training minibatches (see `cl.augment`).

    Options added after configs were published are `added_option`s: left out of the resolved
    config while they hold their default, so older configs keep their hash.
    """

    augment: Any = added_option(
        "none", description="training-minibatch augmentation: none, crop_flip (random crop, 4-pixel padding, "
        "+ horizontal flip, as PyCIL on CIFAR), crop_flip_jitter (+ brightness jitter 63/255), or a list of "
        "torchvision v2 transforms, e.g. [{name: RandomCrop, size: 32, padding: 4}, {name: RandomHorizontalFlip}]")
    _augment_as_bool: ClassVar[bool] = False        # CIFAR's published configs spell crop_flip / none as true / false

    @field_validator("augment", mode="before")
    @classmethod
    def _parse_augment(cls, value):
        return parse_augment(value)

    @model_serializer(mode="wrap")
    def _canonical(self, handler):
        out = handler(self)
        if self._augment_as_bool and out.get("augment") in ("crop_flip", "none"):
            out["augment"] = out["augment"] == "crop_flip"
        return out

    def preflight(self) -> None:
        super().preflight()
        if isinstance(self.augment, list):   # the names are checked already; the arguments need torchvision
            from cl.augment import check_transforms

            check_transforms(self.augment)


class DigitsParams(ImageParams):
    test_fraction: float = Field(0.3, gt=0, lt=1, description="held-out share (fixed split)")
    train_samples_per_class: Optional[int] = Field(None, ge=1, description="subsample training data")


class DiskParams(ImageParams):
    dataset: ClassVar[str]
    data_root: Optional[str] = Field(
        None, description="folder holding the dataset in torchvision's layout "
        "(default: $CLSUITE_DATA_ROOT, else ./data)")
    train_samples_per_class: Optional[int] = Field(None, ge=1, description="subsample training data")

    def preflight(self) -> None:
        super().preflight()
        check_dataset(self.dataset, self.data_root)


class MNISTParams(DiskParams):
    dataset = "mnist"


class FMNISTParams(DiskParams):
    dataset = "fmnist"


class CifarParams(DiskParams):
    augment: Any = Field(True, description="as for every image scenario, default crop_flip (PyCIL's CIFAR "
                         "training transforms); `true` / `false` are the earlier spellings of crop_flip / none")
    _augment_as_bool: ClassVar[bool] = True


class Cifar10Params(CifarParams):
    dataset = "cifar10"


class Cifar100Params(CifarParams):
    dataset = "cifar100"


class OwnImageParams(ImageParams):
    """Your own images: how to normalise them."""

    normalize: Any = added_option(
        "none", description="none, per_channel (mean and std of each channel over the training split), "
        "or {mean: [...], std: [...]} one value per channel; applied after uint8 → [0, 1] scaling")

    @field_validator("normalize", mode="before")
    @classmethod
    def _parse_normalize(cls, value):
        return parse_normalize(value)


class TensorFileParams(OwnImageParams):
    path: str = Field(description=".npz or .pt file with x_train, y_train, x_test, y_test")
    layout: Literal[LAYOUTS] = added_option(
        "auto", description="axis order of 4-D x arrays: nchw (N, C, H, W), nhwc (N, H, W, C), or auto "
        "(decided only when exactly one of axis 1 and the last axis has 1, 3 or 4 entries)")

    def preflight(self) -> None:
        """Reads the file and checks it as the run will (layout, dtype, labels, NaNs): exit 2, not a FAILED run."""
        from cl.arrays import check_file

        super().preflight()
        check_file(check_path("path", self.path), layout=self.layout, normalize=self.normalize)


class FolderParams(OwnImageParams):
    train_dir: str = Field(description="ImageFolder root of the training images")
    test_dir: str = Field(description="ImageFolder root of the test images")
    image_size: int = Field(32, ge=1, description="images are resized to image_size²")
    grayscale: bool = False

    def preflight(self) -> None:
        super().preflight()
        train = check_path("train_dir", self.train_dir, directory=True)
        test = check_path("test_dir", self.test_dir, directory=True)
        train_classes, test_classes = ({p.name for p in d.iterdir() if p.is_dir()} for d in (train, test))
        if train_classes != test_classes:   # ImageFolder numbers classes by sorted folder name: they must agree
            raise ConfigError(f"scenario.test_dir: class folders differ from train_dir's: test lacks "
                              f"{sorted(train_classes - test_classes)}, "
                              f"has extra {sorted(test_classes - train_classes)}")


class RareClassParams(ImageParams):
    base: Literal["digits", "mnist", "fmnist"] = Field("digits", description="the dataset the stream is cut from")
    data_root: Optional[str] = Field(None, description="for mnist / fmnist (default $CLSUITE_DATA_ROOT)")
    train_samples_per_class: Optional[int] = Field(None, ge=1, description="subsample training data first")
    rare_classes: Optional[list[int]] = Field(None, description="the rare classes (default: n_rare drawn with rare_seed)")
    n_rare: int = Field(2, ge=1)
    rare_fraction: float = Field(0.05, gt=0, le=1, description="a rare class keeps this share of its training samples")
    rare_seed: int = Field(0, description="which classes are rare and which of their samples stay")

    def preflight(self) -> None:
        super().preflight()
        if self.base != "digits":
            check_dataset(self.base, self.data_root)


for _name, _params, _target, _summary in [
    ("split_digits", DigitsParams, "split_digits",
     "scikit-learn's bundled 8×8 digits, 10 classes (offline default)"),
    ("split_mnist", MNISTParams, "split_mnist", "MNIST from data_root (torchvision layout)"),
    ("split_fmnist", FMNISTParams, "split_fmnist", "Fashion-MNIST from data_root"),
    ("split_cifar10", Cifar10Params, "split_cifar10", "CIFAR-10 from data_root"),
    ("split_cifar100", Cifar100Params, "split_cifar100", "CIFAR-100 from data_root"),
    ("from_tensors", TensorFileParams, "from_file", "your own arrays from an .npz/.pt file"),
    ("from_folder", FolderParams, "from_folder", "your own images in ImageFolder layout"),
    ("rare_class_stream", RareClassParams, "rare_class_stream",
     "a class-incremental stream where a few classes have ~5% of the others' training samples"),
]:
    SCENARIOS.register(_name, params=_params, target=f"cl.scenarios:{_target}", summary=_summary)


class MLPParams(Params):
    hidden: list[int] = Field([256, 256], description="hidden layer widths")
    dropout: float = Field(0.0, ge=0, lt=1)


class CNNParams(Params):
    channels: list[int] = Field([32, 64], description="conv block widths (3×3 conv, ReLU, 2×2 pool)")
    hidden: int = Field(128, ge=1, description="width of the feature layer")
    dropout: float = Field(0.0, ge=0, lt=1)


class ResNet18Params(Params):
    width: int = Field(64, ge=1, description="channels of the first stage (64 = mammoth's; 20 = reduced)")


for _name, _params, _summary in [
    ("mlp", MLPParams, "multi-layer perceptron on flattened input"),
    ("cnn", CNNParams, "small conv net"),
    ("resnet32", NoParams, "CIFAR-style ResNet-32 as PyCIL builds it (463,504 params)"),
    ("resnet18", ResNet18Params, "ResNet-18 for small images as mammoth builds it (3×3 stem, no max-pool)"),
]:
    MODELS.register(_name, params=_params, target=f"cl.models:build_{_name}", summary=_summary)
