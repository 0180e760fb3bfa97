"""The ``resnet_cifar`` family: three stages of basic or bottleneck residual blocks."""
from __future__ import annotations

from typing import Any, Mapping

from kdsearch.models.resnet_cifar import BLOCKS, ResNetCifar
from kdsearch.spaces.base import SPACES, GeneSpec, SearchSpace

__all__ = ["ResNetCifarSpace"]


@SPACES.register("resnet_cifar")
class ResNetCifarSpace(SearchSpace):
    """Genes ``depths`` (blocks per stage), ``widths`` (stage widths), ``block`` (basic|bottleneck).

    A bottleneck stage outputs 4x its width. ResNet-(6n+2) is depths [n, n, n], widths
    [16, 32, 64], block basic.
    """

    family = "resnet_cifar"
    gene_specs = {
        "depths": GeneSpec(int, is_list=True, length=3, minimum=1),
        "widths": GeneSpec(int, is_list=True, length=3, minimum=1),
        "block": GeneSpec(str, allowed=tuple(BLOCKS)),
    }

    def build_model(self, genes: Mapping[str, Any], num_classes: int, in_channels: int) -> ResNetCifar:
        return ResNetCifar(**genes, num_classes=num_classes, in_channels=in_channels)
