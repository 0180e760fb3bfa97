"""The ``mbconv`` family: MobileNetV2/V3-style stages of inverted residual blocks."""
from __future__ import annotations

from typing import Any, Mapping

from kdsearch.models.mbconv import MBConvNet
from kdsearch.spaces.base import SPACES, GeneSpec, SearchSpace

__all__ = ["MBConvSpace"]


@SPACES.register("mbconv")
class MBConvSpace(SearchSpace):
    """Per-stage genes (equal lengths: one entry per stage) plus stem and head widths.

    ``depths`` blocks per stage, ``widths`` output channels, ``kernels`` depthwise kernel
    (3/5/7), ``expansions`` inverted-bottleneck ratio (1/3/4/6), ``se`` squeeze-excitation,
    ``strides`` of each stage's first block (usually fixed per form with ``{value: {cifar: [...],
    imagenet: [...]}}``); ``head_width`` 0 drops the final 1x1 conv. The ``imagenet`` form adds
    a stride-2 stem (timm's MobileNetV2/V3 and EfficientNet tables).
    """

    family = "mbconv"
    gene_specs = {
        "stem_width": GeneSpec(int, minimum=1),
        "depths": GeneSpec(int, is_list=True, minimum=1),
        "widths": GeneSpec(int, is_list=True, minimum=1),
        "kernels": GeneSpec(int, is_list=True, allowed=(3, 5, 7)),
        "expansions": GeneSpec(int, is_list=True, allowed=(1, 3, 4, 6)),
        "se": GeneSpec(bool, is_list=True),
        "strides": GeneSpec(int, is_list=True, allowed=(1, 2)),
        "head_width": GeneSpec(int, minimum=0),
    }

    def build_model(self, genes: Mapping[str, Any], num_classes: int, in_channels: int, form: str) -> MBConvNet:
        return MBConvNet(**genes, num_classes=num_classes, in_channels=in_channels, form=form)
