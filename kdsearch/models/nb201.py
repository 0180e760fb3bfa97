"""NAS-Bench-201 cell networks (Dong & Yang, "NAS-Bench-201", ICLR 2020).

A cell is a DAG of 4 nodes; node ``j`` sums one operation applied to every earlier node ``i``,
so there are 6 edges. The arch string lists, node by node, ``op~i`` for each input ``i``::

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|

Edges are numbered in that order: (1<-0), (2<-0), (2<-1), (3<-0), (3<-1), (3<-2).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kdsearch.errors import SpaceError
from kdsearch.models.base import ImageClassifier

__all__ = [
    "NB201_OPS",
    "NB201_EDGES",
    "parse_cell",
    "format_cell",
    "NB201Cell",
    "NB201Net",
    "ReLUConvBN",
    "ResidualReduction",
]

NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NB201_EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from)

_EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def parse_cell(text: str) -> list[str]:
    """Parse an NB201 arch string into its 6 edge ops, in :data:`NB201_EDGES` order."""

    def bad(why: str) -> SpaceError:
        return SpaceError(f"bad NAS-Bench-201 cell string {text!r}: {why}; write it like {_EXAMPLE}")

    if not isinstance(text, str):
        raise bad("not a string")
    nodes = text.strip().split("+")
    if len(nodes) != 3:
        raise bad(f"expected 3 node groups joined by '+', found {len(nodes)}")
    ops: list[str] = []
    for j, node in enumerate(nodes, start=1):
        if not (node.startswith("|") and node.endswith("|")) or len(node) < 2:
            raise bad(f"node {j} group {node!r} must start and end with '|'")
        items = node[1:-1].split("|")
        if len(items) != j:
            raise bad(f"node {j} needs {j} input(s), found {len(items)}")
        for i, item in enumerate(items):
            op, sep, src = item.partition("~")
            if not sep or src != str(i):
                raise bad(f"node {j} input {i} must be written 'op~{i}', found {item!r}")
            if op not in NB201_OPS:
                raise bad(f"unknown op {op!r}; ops are {', '.join(NB201_OPS)}")
            ops.append(op)
    return ops


def format_cell(ops: Sequence[str]) -> str:
    """Format 6 edge ops (in :data:`NB201_EDGES` order) as an NB201 arch string."""
    if len(ops) != len(NB201_EDGES):
        raise SpaceError(f"an NB201 cell has {len(NB201_EDGES)} edge ops, got {len(ops)}: {list(ops)}")
    unknown = [op for op in ops if op not in NB201_OPS]
    if unknown:
        raise SpaceError(f"unknown NB201 op(s) {unknown}; ops are {', '.join(NB201_OPS)}")
    groups, k = [], 0
    for j in (1, 2, 3):
        groups.append("|" + "|".join(f"{ops[k + i]}~{i}" for i in range(j)) + "|")
        k += j
    return "+".join(groups)


class ReLUConvBN(nn.Sequential):
    """The NB201 convolution: ReLU, then conv, then BatchNorm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
        )


class _Zero(nn.Module):
    """The ``none`` op: no information flows along this edge."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)  # (B, C, H, W)


def _make_op(name: str, channels: int) -> nn.Module:
    if name == "none":
        return _Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1, 1)
    if name == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise SpaceError(f"unknown NB201 op {name!r}; ops are {', '.join(NB201_OPS)}")


class NB201Cell(nn.Module):
    """One searched cell; channels and resolution are kept. An all-``none`` path gives zeros."""

    def __init__(self, ops: Sequence[str], channels: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(_make_op(op, channels) for op in ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]  # each (B, C, H, W)
        for j in (1, 2, 3):
            nodes.append(sum(self.edges[k](nodes[i]) for k, (to, i) in enumerate(NB201_EDGES) if to == j))
        return nodes[3]


class ResidualReduction(nn.Module):
    """NB201's reduction: two ReLU-Conv-BN 3x3 (the first with stride 2) + avgpool-1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1)
        self.shortcut = nn.Sequential(
            # ceil_mode: on odd sizes the pool must round up like the stride-2 conv (15 -> 8)
            nn.AvgPool2d(2, stride=2, ceil_mode=True),
            nn.Conv2d(c_in, c_out, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))  # (B, c_out, ceil(H/2), ceil(W/2))


class NB201Net(ImageClassifier):
    """NB201 macro skeleton: stem, N cells, reduction, N cells, reduction, N cells, BN-ReLU, pool, linear.

    Args:
        ops: the 6 edge ops of the cell (:data:`NB201_EDGES` order), or an NB201 arch string.
        cells: N, cells per stage (NB201 uses 5).
        channels: C, the first stage's width (NB201 uses 16); stages have C, 2C, 4C.
        form: ``cifar``: NB201's 3x3 stride-1 stem (total stride 4, 32 px -> 8x8);
            ``imagenet``: three 3x3 stride-2 convs, so the cells see a 224 px image at 28x28 as
            NB201's see CIFAR at 32x32 (total stride 32, 224 px -> 7x7).
    """

    def __init__(
        self,
        ops: Sequence[str] | str,
        cells: int = 5,
        channels: int = 16,
        num_classes: int = 10,
        in_channels: int = 3,
        form: str = "cifar",
    ) -> None:
        super().__init__()
        if isinstance(ops, str):
            ops = parse_cell(ops)
        format_cell(ops)  # validates count and names
        c = channels
        if form == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                nn.Conv2d(c, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                nn.Conv2d(c, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c),  # cells start with ReLU
            )
            self.feature_stride = 32
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
            self.feature_stride = 4
        self.stage1 = nn.Sequential(*[NB201Cell(ops, c) for _ in range(cells)])
        self.stage2 = nn.Sequential(ResidualReduction(c, 2 * c), *[NB201Cell(ops, 2 * c) for _ in range(cells)])
        self.stage3 = nn.Sequential(ResidualReduction(2 * c, 4 * c), *[NB201Cell(ops, 4 * c) for _ in range(cells)])
        self.lastact = nn.Sequential(nn.BatchNorm2d(4 * c), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(4 * c, num_classes)
        self.stage_paths = ("stage1", "stage2", "stage3")
        self.feature_path = "lastact"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, C, H/s, W/s), s = 1 (cifar) or 8 (imagenet)
        x = self.stage1(x)  # (B, C, H/s, W/s)
        x = self.stage2(x)  # (B, 2C, H/2s, W/2s)
        x = self.stage3(x)  # (B, 4C, H/4s, W/4s)
        return self.lastact(x)  # (B, 4C, H/4s, W/4s)
