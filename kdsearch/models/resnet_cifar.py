"""ResNets (He et al., 2016): CIFAR-style (sec. 4.2) and ImageNet-style (sec. 3.4) forms, a depth and width per stage."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from kdsearch.models.base import ImageClassifier

__all__ = ["ResNetCifar", "BasicBlock", "Bottleneck"]


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual; a 1×1 projection when shape changes."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3, 1×1 expand (×4) with a residual."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetCifar(ImageClassifier):
    """Stem, stages of residual blocks (``layer1``, ``layer2``...), global average pool, linear.

    ``form="cifar"`` (He et al. 2016, sec. 4.2): a 3x3 stride-1 stem, stage strides 1, 2, 2...;
    ResNet-(6n+2) is ``depths=[n, n, n], widths=[16, 32, 64]`` with basic blocks.
    ``form="imagenet"`` (sec. 3.4, Table 1): a 7x7 stride-2 stem and a 3x3 stride-2 max-pool,
    then the last three stages have stride 2 and any earlier one stride 1, so the map always
    ends at stride 32 (224 px -> 7x7); ResNet-18 is ``depths=[2, 2, 2, 2],
    widths=[64, 128, 256, 512]`` (stage strides 1, 2, 2, 2).
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        block: str = "basic",
        num_classes: int = 10,
        in_channels: int = 3,
        form: str = "cifar",
    ) -> None:
        super().__init__()
        block_cls = BLOCKS[block]
        n = len(depths)
        if form == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
            strides = [2 if i >= n - 3 else 1 for i in range(n)]
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
            )
            strides = [1] + [2] * (n - 1)
        self.feature_stride = (4 if form == "imagenet" else 1) * math.prod(strides)
        c_in = widths[0]
        stages = []
        for depth, width, stride in zip(depths, widths, strides):
            blocks = []
            for j in range(depth):
                blocks.append(block_cls(c_in, width, stride=stride if j == 0 else 1))
                c_in = width * block_cls.expansion
            stages.append(nn.Sequential(*blocks) if blocks else nn.Identity())
        self.stage_paths = tuple(f"layer{i + 1}" for i in range(n))
        for path, stage in zip(self.stage_paths, stages):
            self.add_module(path, stage)
        self.classifier = nn.Linear(c_in, num_classes)
        self.feature_path = self.stage_paths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, w1, H/s, W/s), s = 1 (cifar) or 4 (imagenet)
        for path in self.stage_paths:
            x = getattr(self, path)(x)  # each stage of stride 2 halves H and W
        return x  # (B, w_last·e, H/S, W/S), S = feature_stride
