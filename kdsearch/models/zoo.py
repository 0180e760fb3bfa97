"""Named networks built in-project: ``create_model("resnet20", num_classes=10, in_channels=3)``.

Every zoo model is a member of a search space family, defined by that family's genes, so
:func:`model_arch` can record a teacher built by name as an :class:`~kdsearch.arch.Arch`
(``arch.space`` is the built-in space of that family).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from kdsearch.arch import Arch
from kdsearch.errors import ModelError
from kdsearch.models.base import ImageClassifier
from kdsearch.models.mbconv import MBConvNet, mobilenetv2_genes
from kdsearch.models.nb201 import NB201Net, parse_cell
from kdsearch.models.resnet_cifar import ResNetCifar
from kdsearch.models.vit import ViT
from kdsearch.registry import Registry

__all__ = ["MODELS", "ModelBuilder", "create_model", "model_arch"]

ModelBuilder = Callable[[int, int], ImageClassifier]
"""``builder(num_classes, in_channels) -> ImageClassifier``."""

MODELS: Registry[ModelBuilder] = Registry("model")
_ARCHS: dict[str, Arch] = {}


def _register(name: str, space: str, model_cls: type[ImageClassifier], genes: Mapping[str, Any],
              form: str = "cifar") -> None:
    """Register ``name`` as ``model_cls(**genes, form=form)``, recording its arch in ``space``."""
    arch = Arch(space, genes, form)

    def build(num_classes: int = 10, in_channels: int = 3) -> ImageClassifier:
        return model_cls(**arch.genes, num_classes=num_classes, in_channels=in_channels, form=arch.form)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{name}: {model_cls.__name__} with genes {arch.key}."
    MODELS.register(name)(build)
    _ARCHS[name] = arch


# He et al. (2016) sec. 4.2: ResNet-(6n+2), n blocks per stage, widths 16/32/64.
for _depth in (8, 14, 20, 32, 44, 56, 110):
    _n = (_depth - 2) // 6
    _register(f"resnet{_depth}", "resnet_cifar", ResNetCifar,
              {"depths": [_n, _n, _n], "widths": [16, 32, 64], "block": "basic"})

# He et al. (2016) Table 1: ResNet-18 for ImageNet-sized inputs (11.69M parameters for 1000 classes).
_register("resnet18", "resnet_cifar", ResNetCifar,
          {"depths": [2, 2, 2, 2], "widths": [64, 128, 256, 512], "block": "basic"}, form="imagenet")

_register("mobilenetv2", "mbconv", MBConvNet, mobilenetv2_genes())

# A small MobileNetV2-style teacher in the mbconv space's own four-stage layout (221k parameters, 35M FLOPs
# at 28 px), so mbconv students can start from its weights (--init inherit); MobileNetV2 has seven stages.
_register("mbconv4", "mbconv", MBConvNet, {
    "stem_width": 16, "depths": [2, 2, 2, 2], "widths": [16, 32, 64, 96], "kernels": [3, 3, 3, 3],
    "expansions": [4, 4, 4, 4], "se": [False] * 4, "strides": [1, 2, 2, 1], "head_width": 256,
})

# NB201's macro skeleton (N=5, C=16) with its best CIFAR-10 cell (94.37% test accuracy, 200 epochs).
_register("nb201_default", "nb201", NB201Net, {
    "ops": parse_cell("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"),
    "cells": 5,
    "channels": 16,
})

# A ViT sized for 32 px inputs: 8x8 patches grid, ViT-Tiny's width and heads, half its depth and MLP.
_register("vit_tiny", "vit", ViT,
          {"patch_size": 4, "depth": 6, "heads": 3, "embed_dim": 192, "mlp_ratio": 2.0})


def create_model(name: str, num_classes: int = 10, in_channels: int = 3) -> ImageClassifier:
    """Build the zoo model ``name`` (freshly initialised); unknown names list the known ones."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ModelError(f"in_channels must be a positive integer (1 for grey, 3 for RGB), got {in_channels!r}")
    return MODELS.get(name)(num_classes, in_channels)


def model_arch(name: str) -> Arch | None:
    """The :class:`Arch` of zoo model ``name`` in its family's built-in space, or None."""
    MODELS.get(name)  # unknown names fail listing the known ones
    return _ARCHS.get(name)
