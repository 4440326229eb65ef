"""How a user's image arrays are read, checked without torch: layout, dtype, labels, options.

Researchers bring arrays in whatever layout their tools wrote: numpy, PIL and CIFAR's pickles
are channels-last (N, H, W, C); torch is channels-first (N, C, H, W). Read the wrong way, a
(N, 32, 32, 3) array becomes 32-channel 32×3 images that train to garbage without a word, so
`layout: auto` decides only when the shape leaves no doubt — a channel axis of 1, 3 or 4 on
exactly one side — and otherwise asks for `scenario.layout`. Every check here runs on numpy
(or CPU torch tensors through `np.asarray`), so `TensorFileParams.preflight` can reject a
file with exit 2 before a run is opened, and `cl.scenarios.from_tensors` runs the same checks
when called from Python.

Also here, for the same reason (config-time validation must not import torch): the options
`normalize:` and `augment:` and the static list of torchvision.transforms.v2 names that
`augment:` lists may use (`tests/test_own_data.py` checks it against torchvision).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from cl.errors import ConfigError

LAYOUTS = ("auto", "nchw", "nhwc")
CHANNEL_SIZES = (1, 3, 4)                     # grey, RGB, RGBA: what `auto` recognises as a channel axis
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")

# ------------------------------------------------------------------------------------------ augment spec

AUGMENT_PRESETS = ("none", "crop_flip", "crop_flip_jitter")
PRESET_PADDING = 4                            # PyCIL's CIFAR RandomCrop(32, padding=4)
PRESET_BRIGHTNESS = 63 / 255                  # PyCIL's ColorJitter(brightness=63/255)

# torchvision.transforms.v2 classes that act on one image tensor (C, H, W) and may be named in `augment:`
# (static, so validating a grid imports no torch; tests/test_own_data.py checks each exists in torchvision).
V2_TRANSFORMS = (
    "AugMix", "AutoAugment", "CenterCrop", "ColorJitter", "ElasticTransform", "GaussianBlur", "GaussianNoise",
    "Grayscale", "Identity", "JPEG", "Pad", "RGB", "RandAugment", "RandomAdjustSharpness", "RandomAffine",
    "RandomAutocontrast", "RandomChannelPermutation", "RandomCrop", "RandomEqualize", "RandomErasing",
    "RandomGrayscale", "RandomHorizontalFlip", "RandomInvert", "RandomPerspective", "RandomPhotometricDistort",
    "RandomPosterize", "RandomResizedCrop", "RandomRotation", "RandomSolarize", "RandomVerticalFlip",
    "RandomZoomOut", "Resize", "TrivialAugmentWide",
)
# v2 names that exist but cannot be an entry of `augment:`, and why
V2_REFUSED = {
    "Normalize": "normalisation is `scenario.normalize` (applied after augmentation)",
    "CutMix": "it mixes labels too; not supported as an input augmentation",
    "MixUp": "it mixes labels too; not supported as an input augmentation",
    "Compose": "give the transforms as a list instead",
    "RandomApply": "nested transforms are not supported; give a flat list",
    "RandomChoice": "nested transforms are not supported; give a flat list",
    "RandomOrder": "nested transforms are not supported; give a flat list",
    "Lambda": "a config cannot hold a function",
    "LinearTransformation": "it needs tensors as arguments",
    "FiveCrop": "it returns several images per sample", "TenCrop": "it returns several images per sample",
    "ToDtype": "samples are already float tensors", "ConvertImageDtype": "samples are already float tensors",
    "ToImage": "samples are already image tensors", "ToTensor": "samples are already image tensors",
    "PILToTensor": "samples are already image tensors", "ToPILImage": "samples stay tensors",
    "ToPureTensor": "samples are already plain tensors",
    **dict.fromkeys(("RandomResize", "RandomShortestSize", "ScaleJitter", "RandomIoUCrop"),
                    "it changes the image size, and the model is built for one input shape"),
    **dict.fromkeys(("ClampBoundingBoxes", "ClampKeyPoints", "ConvertBoundingBoxFormat", "SanitizeBoundingBoxes",
                     "SanitizeKeyPoints", "SetClampingMode"), "it acts on bounding boxes or key points"),
    "UniformTemporalSubsample": "it acts on videos",
}


def parse_augment(value: Any, where: str = "") -> Any:
    """The canonical `augment:` value: a preset name, or a list of ``{name, **kwargs}`` dicts.

    `true` / `false` (CIFAR's earlier boolean) mean `crop_flip` / `none`. Raises `ValueError`
    naming the entry (pydantic turns it into a config error, exit 2); `where` prefixes messages.
    """
    where = f"{where}: " if where else ""
    if value is None or value is False:
        return "none"
    if value is True:
        return "crop_flip"
    if isinstance(value, str):
        if value not in AUGMENT_PRESETS:
            raise ValueError(f"{where}unknown preset {value!r}; one of {', '.join(AUGMENT_PRESETS)}, "
                             "or a list of torchvision v2 transforms, e.g. [{name: RandomCrop, size: 32, padding: 4}]")
        return value
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}expected a preset name or a list of transforms, got {value!r}")
    steps = []
    for i, step in enumerate(value):
        if isinstance(step, str):
            step = {"name": step}
        if not isinstance(step, Mapping) or not isinstance(step.get("name"), str):
            raise ValueError(f"{where}entry {i}: expected {{name: <v2 transform>, ...kwargs}}, got {step!r}")
        name = step["name"]
        if name in V2_REFUSED:
            raise ValueError(f"{where}entry {i}: transform {name!r} cannot be used here: {V2_REFUSED[name]}")
        if name not in V2_TRANSFORMS:
            raise ValueError(f"{where}entry {i}: unknown transform {name!r}; torchvision.transforms.v2 transforms "
                             f"usable here: {', '.join(V2_TRANSFORMS)}")
        steps.append({"name": name, **{k: v for k, v in step.items() if k != "name"}})
    return steps


def augment_label(value: Any) -> str:
    """One line for the run params: the preset name, or the transform names."""
    if isinstance(value, str):
        return value
    import json

    return json.dumps(value, sort_keys=True)


# ------------------------------------------------------------------------------------------ normalize spec


def parse_normalize(value: Any, where: str = "") -> Any:
    """'none', 'per_channel' or {mean: [...], std: [...]} (lists of equal length, std > 0)."""
    where = f"{where}: " if where else ""
    if value is None:
        return "none"
    if isinstance(value, str):
        if value not in ("none", "per_channel"):
            raise ValueError(f"{where}{value!r}; one of none, per_channel, or {{mean: [...], std: [...]}}")
        return value
    if not isinstance(value, Mapping) or set(value) != {"mean", "std"}:
        raise ValueError(f"{where}expected none, per_channel or {{mean: [...], std: [...]}}, got {value!r}")
    mean, std = (value[k] if isinstance(value[k], (list, tuple)) else [value[k]] for k in ("mean", "std"))
    try:
        mean, std = [float(v) for v in mean], [float(v) for v in std]
    except (TypeError, ValueError):
        raise ValueError(f"{where}mean and std must be numbers, one per channel; got {value!r}") from None
    if not mean or len(mean) != len(std):
        raise ValueError(f"{where}mean and std need one value per channel each; got {len(mean)} and {len(std)}")
    if not all(np.isfinite(mean)) or any(not np.isfinite(s) or s <= 0 for s in std):
        raise ValueError(f"{where}mean must be finite and std > 0; got mean {mean}, std {std}")
    return {"mean": mean, "std": std}


# ------------------------------------------------------------------------------------------ arrays


@dataclass(frozen=True)
class ArrayReading:
    """How the arrays were read: what a run logs as its `data.*` params."""

    layout: str                         # 'nchw', 'nhwc' or 'vector' ((N, D) inputs, read as (1, 1, D))
    dtype: str                          # dtype of x as given ('uint8', 'float32', ...)
    input_shape: tuple[int, ...]        # (C, H, W) after reading
    n_classes: int
    scaled: bool                        # uint8 → /255

    def params(self) -> dict[str, str]:
        return {"layout": self.layout, "dtype": self.dtype, "input_shape": str(tuple(self.input_shape)),
                "scaled_to_unit": str(self.scaled).lower()}


def resolve_layout(shape: Sequence[int], layout: str, what: str = "x_train") -> str:
    """'nchw' or 'nhwc' for a 4-D array of `shape`; `auto` only when exactly one side is a channel axis."""
    if layout not in LAYOUTS:
        raise ConfigError(f"scenario.layout: {layout!r}; one of {', '.join(LAYOUTS)}")
    if layout != "auto":
        return layout
    first, last = shape[1] in CHANNEL_SIZES, shape[-1] in CHANNEL_SIZES
    if first != last:
        return "nchw" if first else "nhwc"
    why = (f"both axis 1 ({shape[1]}) and the last axis ({shape[-1]}) could be channels" if first else
           f"neither axis 1 ({shape[1]}) nor the last axis ({shape[-1]}) is 1, 3 or 4 channels")
    raise ConfigError(
        f"scenario.layout: cannot tell the layout of {what} with shape {tuple(int(s) for s in shape)}: {why}. "
        "Set `scenario.layout: nchw` for (N, C, H, W) or `scenario.layout: nhwc` for (N, H, W, C).")


def _numpy(a: Any, what: str) -> np.ndarray:
    if hasattr(a, "detach"):               # a torch tensor: CPU view, no copy
        a = a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except Exception as exc:  # noqa: BLE001 - ragged lists and the like
        raise ConfigError(f"scenario: {what} is not an array ({exc})") from None


def _check_x(x: np.ndarray, what: str) -> None:
    if x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating):
        if x.shape[0] == 0:
            raise ConfigError(f"scenario: {what} is empty (shape {x.shape})")
        if np.issubdtype(x.dtype, np.floating):
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            if bad:
                raise ConfigError(f"scenario: {what} holds {bad} NaN or infinite values; clean them first")
        return
    hint = (" If they are pixels 0..255, convert with x.astype(np.uint8)." if np.issubdtype(x.dtype, np.integer)
            else "")
    raise ConfigError(f"scenario: {what} has dtype {x.dtype}; give uint8 (0..255, scaled to [0, 1]) or float.{hint}")


def _labels(y: Any, n: int, what: str) -> np.ndarray:
    y = _numpy(y, what)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = " (one-hot? use y.argmax(1))" if y.ndim == 2 else ""
        raise ConfigError(f"scenario: {what} must be 1-D class indices, got shape {y.shape}{hint}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"scenario: {what} has dtype {y.dtype}; labels must be integers 0..C-1")
    if len(y) != n:
        x_name = what.replace("y_", "x_")
        raise ConfigError(f"scenario: {what} has {len(y)} labels but {x_name} has {n} samples")
    return y.astype(np.int64)


def check_arrays(x_train, y_train, x_test, y_test, *, layout: str = "auto",
                 normalize: Any = "none") -> ArrayReading:
    """Check four arrays as `from_tensors` reads them; raises `ConfigError` naming what to fix.

    x: (N, C, H, W) or (N, H, W, C) as uint8 (scaled to [0, 1]) or float, or (N, D) feature
    vectors (read as (N, 1, 1, D); `layout` does not apply). 3-D arrays are refused: a grey
    (N, H, W) stack needs its channel axis added, which says which side it is on.
    y: integers 0..C-1, every class present in training, and the test split holding exactly
    the training classes — Avalanche's class-incremental split requires the same classes in
    both streams, and an experience with no test samples would leave its accuracy undefined,
    so a test split lacking classes is refused up front, naming them, rather than supported.
    """
    xs = {"x_train": _numpy(x_train, "x_train"), "x_test": _numpy(x_test, "x_test")}
    for what, x in xs.items():
        if x.ndim == 3:
            raise ConfigError(
                f"scenario: {what} has shape {x.shape}: 3-D arrays have no channel axis. For grey images add "
                f"one: x[:, None] gives (N, 1, H, W), x[..., None] gives (N, H, W, 1).")
        if x.ndim not in (2, 4):
            raise ConfigError(f"scenario: {what} has shape {x.shape}; expected (N, C, H, W), (N, H, W, C) "
                              "or (N, D) feature vectors")
        _check_x(x, what)
    a, b = xs["x_train"], xs["x_test"]
    if a.ndim != b.ndim or a.shape[1:] != b.shape[1:]:
        raise ConfigError(f"scenario: x_train samples have shape {a.shape[1:]} but x_test samples {b.shape[1:]}")
    if (a.dtype == np.uint8) != (b.dtype == np.uint8):
        raise ConfigError(f"scenario: x_train is {a.dtype} but x_test is {b.dtype}; give both as uint8 or both "
                          "as float, so they are scaled alike")
    if a.ndim == 2:
        if layout != "auto":
            raise ConfigError(f"scenario.layout: {layout!r} applies to 4-D image arrays; x_train is (N, D) "
                              f"{a.shape}: drop `layout`")
        resolved, shape = "vector", (1, 1, a.shape[1])
    else:
        resolved = resolve_layout(a.shape, layout)
        shape = tuple(a.shape[1:]) if resolved == "nchw" else (a.shape[3], a.shape[1], a.shape[2])
    ys = {"y_train": _labels(y_train, len(a), "y_train"), "y_test": _labels(y_test, len(b), "y_test")}
    train, test = set(np.unique(ys["y_train"]).tolist()), set(np.unique(ys["y_test"]).tolist())
    n_classes = max(train) + 1
    if min(train) < 0 or train != set(range(n_classes)):
        absent = sorted(set(range(max(n_classes, 0))) - train)
        raise ConfigError(f"scenario: labels must be the integers 0..C-1, each present in the training data "
                          f"(remap your labels first); y_train has {sorted(train)[:20]}"
                          + (f", lacking {absent[:20]}" if absent else ""))
    if test - train:
        raise ConfigError(f"scenario: y_test has classes {sorted(test - train)[:20]} that y_train lacks")
    if train - test:
        raise ConfigError(f"scenario: y_test lacks training classes {sorted(train - test)[:20]}: every class must "
                          "have test samples (Avalanche splits both streams by the same classes)")
    try:
        norm = parse_normalize(normalize, "scenario.normalize")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if isinstance(norm, dict) and len(norm["mean"]) not in (1, shape[0]):
        raise ConfigError(f"scenario.normalize: {len(norm['mean'])} mean/std values for {shape[0]} channels "
                          f"(input shape {shape})")
    return ArrayReading(layout=resolved, dtype=str(a.dtype), input_shape=shape, n_classes=n_classes,
                        scaled=a.dtype == np.uint8)


def load_arrays(path: str | os.PathLike) -> dict[str, Any]:
    """x_train, y_train, x_test, y_test from an .npz (numpy) or .pt (a dict saved by torch.save)."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k in ARRAY_KEYS}
    elif path.suffix in (".pt", ".pth"):
        import torch

        arrays = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(arrays, Mapping):
            raise ConfigError(f"scenario.path: {path} holds a {type(arrays).__name__}; save a dict with "
                              f"{', '.join(ARRAY_KEYS)}")
    else:
        raise ConfigError(f"scenario.path: {path} must be an .npz or .pt file")
    missing = [k for k in ARRAY_KEYS if k not in arrays]
    if missing:
        raise ConfigError(f"scenario.path: {path} lacks {', '.join(missing)} (needs {', '.join(ARRAY_KEYS)})")
    return {k: arrays[k] for k in ARRAY_KEYS}


@functools.lru_cache(maxsize=32)
def _check_file_cached(path: str, stamp: tuple, layout: str, normalize: str) -> ArrayReading:
    import json

    arrays = load_arrays(path)
    try:
        return check_arrays(*arrays.values(), layout=layout, normalize=json.loads(normalize))
    except ConfigError as exc:
        raise ConfigError([f"{p} (in {path})" for p in exc.problems]) from None


def check_file(path: str | os.PathLike, *, layout: str = "auto", normalize: Any = "none",
               ) -> Optional[ArrayReading]:
    """`check_arrays` on a file, cached per (file, mtime, size, options) so a grid checks it once."""
    import json

    p = Path(path)
    stat = p.stat()
    return _check_file_cached(str(p.resolve()), (stat.st_mtime_ns, stat.st_size), layout,
                              json.dumps(normalize, sort_keys=True))
