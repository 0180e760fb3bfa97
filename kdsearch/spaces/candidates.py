"""Build a candidate with initial weights that depend only on its arch and a seed."""
from __future__ import annotations

import zlib

import torch

from kdsearch.arch import Arch
from kdsearch.models.base import ImageClassifier

__all__ = ["build_candidate"]


def build_candidate(space, arch: Arch, num_classes: int, in_channels: int, seed: int) -> ImageClassifier:
    """``space.build(arch)`` under a seed derived from ``arch.key``: the same arch always gets the
    same initial weights, whatever order candidates are scored in, and the global RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(arch.key.encode()))
        return space.build(arch, num_classes=num_classes, in_channels=in_channels)
