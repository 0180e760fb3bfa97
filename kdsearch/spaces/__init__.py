"""Search spaces: code families (resnet_cifar, mbconv, nb201, vit) with ranges from YAML files, and ``pruned``,
made from a teacher."""
from __future__ import annotations

from kdsearch.spaces.base import SPACES, Gene, GeneSpec, SearchSpace, space_from_config
from kdsearch.spaces.catalog import builtin_space_dir, builtin_space_names, load_space, space_for_arch

# Importing the families fills SPACES (each registers itself where it is defined).
from kdsearch.spaces.mbconv import MBConvSpace
from kdsearch.spaces.nb201 import NB201Space
from kdsearch.spaces.pruned import PRUNED_SPACE, PrunedSpace, pruned_space
from kdsearch.spaces.resnet_cifar import ResNetCifarSpace
from kdsearch.spaces.vit import VitSpace

__all__ = [
    "SPACES",
    "SearchSpace",
    "Gene",
    "GeneSpec",
    "space_from_config",
    "load_space",
    "builtin_space_names",
    "builtin_space_dir",
    "space_for_arch",
    "ResNetCifarSpace",
    "MBConvSpace",
    "NB201Space",
    "VitSpace",
    "PrunedSpace",
    "PRUNED_SPACE",
    "pruned_space",
]
