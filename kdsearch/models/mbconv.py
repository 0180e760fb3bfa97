"""MobileNetV2/V3-style networks: stages of inverted residual (MBConv) blocks.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR 2018);
squeeze-excitation as in Howard et al., "Searching for MobileNetV3" (ICCV 2019).
The ``cifar`` form has a stride-1 stem, so small inputs keep their resolution for the first
stage; the ``imagenet`` form has MobileNet's 3x3 stride-2 stem. Stage strides are genes.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from kdsearch.models.base import ImageClassifier

__all__ = ["MBConvNet", "InvertedResidual", "SqueezeExcite", "MOBILENETV2", "MOBILENETV2_CIFAR", "mobilenetv2_genes"]

# MobileNetV2 (ImageNet form): stem 3x3/2, then these stages; total stride 32, 224 px -> 7x7.
MOBILENETV2: tuple[tuple[int, int, int, int], ...] = (
    # t, c, n, s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

# MobileNetV2 for 32x32 inputs: the table above with the second stage's stride set to 1 (and a
# stride-1 stem), so a 32 px image ends on a 4x4 map instead of 1x1.
MOBILENETV2_CIFAR: tuple[tuple[int, int, int, int], ...] = tuple(
    (t, c, n, 1 if i == 1 else s) for i, (t, c, n, s) in enumerate(MOBILENETV2)
)


def mobilenetv2_genes(form: str = "cifar") -> dict[str, object]:
    """The genes of MobileNetV2 in the ``mbconv`` family (stem 32, head 1280): the table of
    :data:`MOBILENETV2_CIFAR` or, for the ``imagenet`` form, :data:`MOBILENETV2`."""
    table = MOBILENETV2 if form == "imagenet" else MOBILENETV2_CIFAR
    return {
        "stem_width": 32,
        "depths": [n for _, _, n, _ in table],
        "widths": [c for _, c, _, _ in table],
        "kernels": [3] * len(table),
        "expansions": [t for t, _, _, _ in table],
        "se": [False] * len(table),
        "strides": [s for _, _, _, s in table],
        "head_width": 1280,
    }


def _conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class SqueezeExcite(nn.Module):
    """Channel gating from globally pooled features (reduction 4, as in MobileNetV3)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(8, channels // 4)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1)
        s = self.expand(self.act(self.reduce(s)))  # (B, C, 1, 1)
        return x * torch.sigmoid(s)  # (B, C, H, W)


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when ``expansion == 1``), kxk depthwise, optional SE, linear 1x1 project.

    The residual is used when the block keeps the shape (stride 1, ``c_in == c_out``).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int, expansion: int, se: bool) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn_act(c_in, hidden, 1))
        layers.append(_conv_bn_act(hidden, hidden, kernel, stride, groups=hidden))
        if se:
            layers.append(SqueezeExcite(hidden))
        layers += [nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)  # (B, c_out, H/s, W/s)
        return x + out if self.use_residual else out


class MBConvNet(ImageClassifier):
    """Stem, stages of inverted residual blocks, optional 1x1 head conv, pool, linear.

    The constructor's arguments are the genes of the ``mbconv`` search space family; the
    per-stage lists must all have the same length. ``head_width=0`` drops the head conv.
    Only the first block of a stage has the stage's stride. ``form="imagenet"`` gives the stem
    stride 2 (``cifar``: 1).
    """

    def __init__(
        self,
        stem_width: int,
        depths: Sequence[int],
        widths: Sequence[int],
        kernels: Sequence[int],
        expansions: Sequence[int],
        se: Sequence[bool],
        strides: Sequence[int],
        head_width: int = 0,
        num_classes: int = 10,
        in_channels: int = 3,
        form: str = "cifar",
    ) -> None:
        super().__init__()
        lengths = {len(depths), len(widths), len(kernels), len(expansions), len(se), len(strides)}
        assert len(lengths) == 1, "per-stage genes must have equal lengths"  # checked by the space
        stem_stride = 2 if form == "imagenet" else 1
        self.stem = _conv_bn_act(in_channels, stem_width, 3, stem_stride)
        self.feature_stride = stem_stride * math.prod(strides)
        c_in = stem_width
        stages = []
        for depth, width, kernel, expansion, use_se, stride in zip(depths, widths, kernels, expansions, se, strides):
            blocks = []
            for j in range(depth):
                blocks.append(InvertedResidual(c_in, width, stride if j == 0 else 1, kernel, expansion, use_se))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.stage_paths = tuple(f"stages.{i}" for i in range(len(stages)))
        if head_width > 0:
            self.head = _conv_bn_act(c_in, head_width, 1)
            c_in = head_width
            self.feature_path = "head"
        else:
            self.head = nn.Identity()
            self.feature_path = self.stage_paths[-1]
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, stem_width, H/s0, W/s0), s0 = 1 (cifar) or 2 (imagenet)
        x = self.stages(x)  # (B, widths[-1], H/S, W/S), S = feature_stride = s0 * product of strides
        return self.head(x)  # (B, head_width or widths[-1], H/S, W/S)
