"""CIFAR-style ResNets (He et al., 2016, sec. 4.2): three stages, a depth and width each."""
from __future__ import annotations

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
    """3×3 stem, three stages (strides 1, 2, 2), global average pool, linear classifier.

    ResNet-(6n+2) is ``depths=[n, n, n], widths=[16, 32, 64]`` with basic blocks.
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        block: str = "basic",
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        block_cls = BLOCKS[block]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        c_in = widths[0]
        stages = []
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                blocks.append(block_cls(c_in, width, stride=2 if (i > 0 and j == 0) else 1))
                c_in = width * block_cls.expansion
            stages.append(nn.Sequential(*blocks) if blocks else nn.Identity())
        self.layer1, self.layer2, self.layer3 = stages
        self.classifier = nn.Linear(c_in, num_classes)
        self.stage_paths = ("layer1", "layer2", "layer3")
        self.feature_path = "layer3"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, w1, H, W)
        x = self.layer1(x)  # (B, w1·e, H, W)
        x = self.layer2(x)  # (B, w2·e, H/2, W/2)
        return self.layer3(x)  # (B, w3·e, H/4, W/4)
