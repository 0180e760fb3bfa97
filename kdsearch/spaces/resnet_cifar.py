"""The ``resnet_cifar`` family: stages of basic or bottleneck residual blocks, CIFAR or ImageNet stem.

The ImageNet ResNets (ResNet-18 is four stages) are the ``imagenet`` form of this family rather
than a sibling family: blocks, genes and checks are the same, only the stem and the stage
strides differ, which is what a form is (the name stays: saved archs name it).
"""
from __future__ import annotations

from typing import Any, Mapping

from kdsearch.models.resnet_cifar import BLOCKS, ResNetCifar
from kdsearch.spaces.base import SPACES, GeneSpec, SearchSpace

__all__ = ["ResNetCifarSpace"]


@SPACES.register("resnet_cifar")
class ResNetCifarSpace(SearchSpace):
    """Genes ``depths`` (blocks per stage), ``widths`` (stage widths), ``block`` (basic|bottleneck).

    A bottleneck stage outputs 4x its width; ``depths`` and ``widths`` have one entry per stage
    (any number of stages, the same for both). ResNet-(6n+2) is depths [n, n, n], widths
    [16, 32, 64], block basic; ResNet-18 is depths [2, 2, 2, 2], widths [64, 128, 256, 512],
    block basic, form imagenet (see :class:`~kdsearch.models.resnet_cifar.ResNetCifar`).
    """

    family = "resnet_cifar"
    gene_specs = {
        "depths": GeneSpec(int, is_list=True, minimum=1),
        "widths": GeneSpec(int, is_list=True, minimum=1),
        "block": GeneSpec(str, allowed=tuple(BLOCKS)),
    }

    def build_model(self, genes: Mapping[str, Any], num_classes: int, in_channels: int, form: str) -> ResNetCifar:
        return ResNetCifar(**genes, num_classes=num_classes, in_channels=in_channels, form=form)
