"""Backbones: an MLP, a small CNN, and the CIFAR ResNet-32 exactly as PyCIL builds it.

Every classifier is a `ClassifierNet` = feature extractor + linear head, because strategies
need the two halves apart (iCaRL's nearest-mean classifier, MEMO's expanding heads).
ResNet-32's stages are addressable by name so methods can split the backbone where their
paper does (MEMO: generalized blocks = stem + stage_1 + stage_2, specialized = stage_3).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn


class ClassifierNet(nn.Module):
    """feature_extractor (input -> flat feature) followed by a linear head."""

    def __init__(self, feature_extractor: nn.Module, feature_dim: int, n_classes: int):
        super().__init__()
        self.feature_extractor = feature_extractor
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_extractor(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature_extractor(x))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _flat_size(input_shape: Sequence[int]) -> int:
    size = 1
    for dim in input_shape:
        size *= int(dim)
    return size


# --------------------------------------------------------------------------- MLP, CNN


def build_mlp(*, input_shape: Sequence[int], n_classes: int, hidden: Sequence[int] = (256, 256),
              dropout: float = 0.0) -> ClassifierNet:
    layers: list[nn.Module] = [nn.Flatten()]
    width = _flat_size(input_shape)
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    return ClassifierNet(nn.Sequential(*layers), width, n_classes)


def build_cnn(*, input_shape: Sequence[int], n_classes: int, channels: Sequence[int] = (32, 64),
              hidden: int = 128, dropout: float = 0.0) -> ClassifierNet:
    """Per entry of `channels`: 3×3 conv (pad 1) + ReLU + 2×2 max-pool (while the map is > 1 px)."""
    in_channels, height, width = (int(d) for d in input_shape)
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)]
        if height > 1 and width > 1:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        in_channels = out_channels
    layers += [nn.Flatten(), nn.Linear(in_channels * height * width, hidden), nn.ReLU(inplace=True)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return ClassifierNet(nn.Sequential(*layers), hidden, n_classes)


# --------------------------------------------------------------------------- ResNet-32 (PyCIL)


class _DownsampleA(nn.Module):
    """Parameter-free shortcut: stride-2 subsampling, then zero channels appended (PyCIL's DownsampleA)."""

    def __init__(self, stride: int):
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        return torch.cat((x, torch.zeros_like(x)), dim=1)


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv_a = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(out_channels)
        self.conv_b = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(out_channels)
        self.downsample = _DownsampleA(stride) if stride != 1 or in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn_a(self.conv_a(x)))
        out = self.bn_b(self.conv_b(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(shortcut + out)


class CifarResNet(nn.Module):
    """ResNet-32 for 32×32 inputs: stem (16) + 3 stages × 5 basic blocks (16/32/64) + global pool.

    463,504 parameters for 3-channel input, no head. Stages: stem, stage_1, stage_2,
    stage_3, pool; `split(at)` returns the stages up to `at` and the rest as two modules.
    """

    out_dim = 64

    def __init__(self, in_channels: int = 3, blocks_per_stage: int = 5):
        super().__init__()
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        stages["stem"] = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        width = 16
        for index, (out_channels, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = [_BasicBlock(width, out_channels, stride)]
            blocks += [_BasicBlock(out_channels, out_channels, 1) for _ in range(blocks_per_stage - 1)]
            stages[f"stage_{index}"] = nn.Sequential(*blocks)
            width = out_channels
        stages["pool"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.stages = nn.ModuleDict(stages)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def named_stages(self) -> "OrderedDict[str, nn.Module]":
        return OrderedDict(self.stages.items())

    def stage(self, name: str) -> nn.Module:
        if name not in self.stages:
            raise KeyError(f"no stage {name!r}; stages are {', '.join(self.stages)}")
        return self.stages[name]

    def split(self, at: str) -> tuple[nn.Sequential, nn.Sequential]:
        """(stages up to and including `at`, the remaining stages), sharing these modules."""
        self.stage(at)
        names = list(self.stages)
        cut = names.index(at) + 1
        return (nn.Sequential(OrderedDict((n, self.stages[n]) for n in names[:cut])),
                nn.Sequential(OrderedDict((n, self.stages[n]) for n in names[cut:])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages.values():
            x = stage(x)
        return x


def resnet32(*, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(in_channels=in_channels)


def build_resnet32(*, input_shape: Sequence[int], n_classes: int) -> ClassifierNet:
    return ClassifierNet(resnet32(in_channels=int(input_shape[0])), CifarResNet.out_dim, n_classes)


# --------------------------------------------------------------------------- ResNet-18 (mammoth)


class _PreShortcutBlock(nn.Module):
    """ResNet basic block with a 1×1 conv + BN shortcut when the shape changes (He et al. option B)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small images as mammoth (and FPF's paper) uses it: 3×3 stem, no max-pool.

    `width` = channels of the first stage (64: 11,168,832 parameters without the head for
    3-channel input; 20 is the "reduced ResNet-18" of GEM and A-GEM). Module names follow
    mammoth (conv1, bn1, layer1–4), so FPF's patterns read as in the paper.
    """

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, channels = [], width
        for index, (multiplier, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2)), start=1):
            out_channels = width * multiplier
            layers.append((f"layer{index}", nn.Sequential(_PreShortcutBlock(channels, out_channels, stride),
                                                         _PreShortcutBlock(out_channels, out_channels, 1))))
            channels = out_channels
        for name, layer in layers:
            self.add_module(name, layer)
        self.out_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def build_resnet18(*, input_shape: Sequence[int], n_classes: int, width: int = 64) -> ClassifierNet:
    backbone = ResNet18(in_channels=int(input_shape[0]), width=width)
    return ClassifierNet(backbone, backbone.out_dim, n_classes)
