"""Augmentation of training minibatches: on the batch tensor, on its device, per-sample random.

What `augment:` means (options validated without torch in `cl.arrays.parse_augment`):

- `crop_flip`: random crop back to H×W from the image zero-padded by 4 pixels, then a horizontal
  flip with probability 1/2 — PyCIL's CIFAR training transforms, `RandomCrop(32, padding=4),
  RandomHorizontalFlip()` (PyCIL utils/data.py, iCIFAR10.train_trsf); `crop_flip_jitter` adds
  PyCIL's `ColorJitter(brightness=63/255)`: each image's pixels times a factor drawn from
  U[1 − 63/255, 1 + 63/255], clamped to [0, 1].
- a list of torchvision.transforms.v2 transforms by name and keyword arguments, applied in order.

Why batches, and why not v2 on the batch: a transform per sample in the DataLoader is a Python
call per image (slow on small images, where the model step is cheap). Called on a (B, C, H, W)
tensor, a v2 transform draws ONE set of random parameters for the whole batch — every image
cropped at the same offset, all flipped or none — which is not the augmentation papers use.
So crop, flips and brightness jitter are implemented here as vectorised tensor ops with random
parameters drawn per sample (`_crop`, `_flip`, `_brightness`); the presets use them, and so do
list entries `RandomCrop` (constant zero fill, no pad_if_needed), `RandomHorizontalFlip`,
`RandomVerticalFlip` and `ColorJitter` with brightness only. Any other list entry (or those with
other arguments) falls back to the v2 transform applied per sample in a loop over the batch:
correct per-sample randomness, at Python speed (the project's overhead benchmark measures both).

Pixel scale: augmentation sees pixels before normalisation, as in torchvision pipelines that
normalise last (padding is black, brightness clamps at 1): a normalised batch is
de-normalised, augmented and normalised again. For uint8 data and the built-in image
scenarios, pixels are in [0, 1]; float arrays given as they are keep their own scale (then
`crop_flip_jitter` is refused unless the training pixels lie in [0, 1]).

Where it runs — the choice made for replay: `AugmentPlugin` (an Avalanche plugin the runner
adds for every scenario that augments) replaces the minibatch input `strategy.mbatch[0]` in
`before_training_iteration`, after the batch is on the device and before any plugin's
`before_forward`. So the minibatch the strategy trains on is augmented — new samples and, for
Replay-style strategies whose data loader mixes memory samples into the batch, replayed ones
too, as Avalanche (buffers keep the datasets' train transforms) and mammoth do — and losses,
distillation targets and every reader of `strategy.mb_x` see the same augmented images.
Strategies that draw buffer batches from their own `replay_loader` (Avalanche's DER and
ER-ACE) get that loader wrapped so those batches are augmented as well. After the update
(`after_update`) the un-augmented input is put back, so plugins that store the iteration's
samples in `after_training_iteration` keep the originals (mammoth's `not_aug_inputs`).
Evaluation, exemplar selection and feature extraction read the datasets, which carry no
augmentation; work a plugin does outside the strategy's iterations (e.g. FPF's fine-tuning) is
not augmented.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from avalanche.core import SupervisedPlugin

from cl.arrays import PRESET_BRIGHTNESS, PRESET_PADDING
from cl.errors import ConfigError

# ----------------------------------------------------------------------------- batched ops (per-sample params)


def _crop(x: torch.Tensor, size: Optional[tuple[int, int]], padding: int) -> torch.Tensor:
    """Zero-pad by `padding`, then crop each image at its own random offset to `size` (default H×W)."""
    b, _, h, w = x.shape
    out_h, out_w = size or (h, w)
    if padding:
        x = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    ph, pw = x.shape[-2:]
    if out_h > ph or out_w > pw:
        raise ValueError(f"RandomCrop size {(out_h, out_w)} is larger than the padded image {(ph, pw)}")
    top = torch.randint(0, ph - out_h + 1, (b, 1, 1), device=x.device)
    left = torch.randint(0, pw - out_w + 1, (b, 1, 1), device=x.device)
    rows = top + torch.arange(out_h, device=x.device).view(1, out_h, 1)          # (B, h, 1)
    cols = left + torch.arange(out_w, device=x.device).view(1, 1, out_w)         # (B, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def _flip(x: torch.Tensor, p: float, dim: int) -> torch.Tensor:
    mask = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(dim), x)


def _brightness(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """v2.ColorJitter(brightness) per image: pixels × U[low, high], clamped to [0, 1] (float images)."""
    factor = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).uniform_(low, high)
    return (x * factor).clamp_(0.0, 1.0)


class _PerSample:
    """v2 transforms applied image by image (each draws its own random parameters)."""

    def __init__(self, transforms: list):
        from torchvision.transforms import v2

        self.transform = transforms[0] if len(transforms) == 1 else v2.Compose(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(sample) for sample in x])


def _brightness_range(value) -> Optional[tuple[float, float]]:
    if isinstance(value, (int, float)) and value >= 0:
        return max(0.0, 1.0 - value), 1.0 + value
    if isinstance(value, (list, tuple)) and len(value) == 2 and 0 <= value[0] <= value[1]:
        return float(value[0]), float(value[1])
    return None


def _batched_step(name: str, kwargs: dict):
    """The vectorised equivalent of one v2 transform with these arguments, or None."""
    keys = set(kwargs)
    if name in ("RandomHorizontalFlip", "RandomVerticalFlip") and keys <= {"p"}:
        p, dim = float(kwargs.get("p", 0.5)), (-1 if name == "RandomHorizontalFlip" else -2)
        return lambda x: _flip(x, p, dim)
    if name == "RandomCrop" and keys <= {"size", "padding", "fill", "padding_mode", "pad_if_needed"}:
        size, padding = kwargs.get("size"), kwargs.get("padding") or 0
        if (kwargs.get("fill", 0) != 0 or kwargs.get("padding_mode", "constant") != "constant"
                or kwargs.get("pad_if_needed", False) or not isinstance(padding, int)):
            return None
        if isinstance(size, int):
            size = (size, size)
        elif isinstance(size, (list, tuple)) and len(size) == 1:
            size = (int(size[0]), int(size[0]))
        elif not (isinstance(size, (list, tuple)) and len(size) == 2):
            return None
        size = (int(size[0]), int(size[1]))
        return lambda x: _crop(x, size, padding)
    if name == "ColorJitter" and keys == {"brightness"}:
        bounds = _brightness_range(kwargs["brightness"])
        if bounds is not None:
            return lambda x: _brightness(x, *bounds)
    return None


def check_transforms(spec: Sequence[dict]) -> list:
    """The v2 transform objects a list `augment:` names; bad arguments → `ConfigError` naming the entry."""
    from torchvision.transforms import v2

    out = []
    for i, step in enumerate(spec):
        name, kwargs = step["name"], {k: v for k, v in step.items() if k != "name"}
        try:
            out.append(getattr(v2, name)(**kwargs))
        except Exception as exc:  # noqa: BLE001 - the constructor's own message says what is wrong
            raise ConfigError(f"scenario.augment entry {i} ({name}): {type(exc).__name__}: {exc}") from None
    return out


# ----------------------------------------------------------------------------- the augmenter


class BatchAugment:
    """Augments a (B, C, H, W) float batch; `mean`/`std` (per channel) undo and redo normalisation."""

    def __init__(self, spec: Any, *, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 batched: bool = True):
        """`batched=False` applies every list entry per sample (v2 itself): for benchmarks and cross-checks."""
        self.spec = spec
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.steps: list = []
        self.per_sample_steps = 0
        if spec == "none":
            return
        if spec in ("crop_flip", "crop_flip_jitter"):
            self.steps = [lambda x: _crop(x, None, PRESET_PADDING), lambda x: _flip(x, 0.5, -1)]
            if spec == "crop_flip_jitter":
                self.steps.append(lambda x: _brightness(x, 1 - PRESET_BRIGHTNESS, 1 + PRESET_BRIGHTNESS))
            return
        transforms = check_transforms(spec)
        pending: list = []
        for step, transform in zip(spec, transforms):
            kwargs = {k: v for k, v in step.items() if k != "name"}
            vectorised = _batched_step(step["name"], kwargs) if batched else None
            if vectorised is None:
                pending.append(transform)
                continue
            if pending:
                self.steps.append(_PerSample(pending))
                self.per_sample_steps += 1
                pending = []
            self.steps.append(vectorised)
        if pending:
            self.steps.append(_PerSample(pending))
            self.per_sample_steps += 1

    @property
    def active(self) -> bool:
        return bool(self.steps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.steps:
            return x
        normalised = self.mean is not None
        if normalised:
            mean, std = self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)
            x = x * std + mean
        for step in self.steps:
            x = step(x)
        return (x - mean) / std if normalised else x

    def check(self, sample: torch.Tensor) -> None:
        """Run once on two real samples: a transform that fails or changes the shape is a config error."""
        try:
            with torch.random.fork_rng(devices=[]):     # the trial must not shift the training seed's draws
                out = self(sample[:2])
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"scenario.augment: {self.spec!r} fails on samples of shape "
                              f"{tuple(sample.shape[1:])}: {type(exc).__name__}: {exc}") from None
        if out.shape != sample[:2].shape or not torch.is_floating_point(out):
            raise ConfigError(f"scenario.augment: {self.spec!r} turns samples of shape {tuple(sample.shape[1:])} "
                              f"({sample.dtype}) into {tuple(out.shape[1:])} ({out.dtype}); the model is built "
                              "for the input shape, so augmentation must keep it")


class AugmentPlugin(SupervisedPlugin):
    """Augments the training minibatch in place (see the module docstring for what and when)."""

    def __init__(self, augment: BatchAugment):
        super().__init__()
        self.augment = augment
        self._original: Optional[torch.Tensor] = None

    def before_training_exp(self, strategy, **kwargs):
        loader = getattr(strategy, "replay_loader", None)   # DER / ER-ACE draw buffer batches themselves
        if loader is not None and not isinstance(loader, _AugmentedLoader):
            strategy.replay_loader = _AugmentedLoader(loader, self.augment, strategy.device)

    def before_training_iteration(self, strategy, **kwargs):
        self._original = strategy.mbatch[0]
        strategy.mbatch[0] = self.augment(self._original)

    def after_update(self, strategy, **kwargs):
        if self._original is not None and len(strategy.mbatch[0]) == len(self._original):
            strategy.mbatch[0] = self._original      # buffers filled after the update keep the originals
        self._original = None

    # cl.checkpoint.Resumable: nothing to keep between experiences (its random draws come from torch's
    # global RNG, which the checkpoint restores)
    def checkpoint_state(self, ctx) -> dict:
        return {}

    def restore_checkpoint_state(self, state: dict, ctx) -> None:
        pass


class _AugmentedLoader:
    """An iterator of (x, y, ...) buffer batches whose x is augmented on `device`."""

    def __init__(self, loader, augment: BatchAugment, device):
        self.loader, self.augment, self.device = loader, augment, device

    def __iter__(self):
        return self

    def __next__(self):
        x, *rest = next(self.loader)
        return (self.augment(x.to(self.device)), *rest)
