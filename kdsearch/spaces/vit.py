"""The ``vit`` family: small Vision Transformers with a convolutional patch embedding."""
from __future__ import annotations

import math
from typing import Any, Mapping

from kdsearch.models.vit import ViT
from kdsearch.spaces.base import SPACES, Gene, GeneSpec, SearchSpace

__all__ = ["VitSpace"]


@SPACES.register("vit")
class VitSpace(SearchSpace):
    """Genes ``patch_size`` (at most 32, as ViT-B/32; the YAML sets small patches for the
    ``cifar`` form and 16-32 px ones for ``imagenet``, 14x14 tokens at 224 px with 16), ``depth``,
    ``heads``, ``embed_dim`` and ``mlp_ratio``.

    ``embed_dim`` must be divisible by ``heads``: a YAML is rejected at load unless every
    ``embed_dim`` choice is divisible by every ``heads`` choice, so sampling stays uniform
    and fixed-length (no resampling, no invalid trials).
    """

    family = "vit"
    gene_specs = {
        "patch_size": GeneSpec(int, minimum=1, maximum=32),
        "depth": GeneSpec(int, minimum=1),
        "heads": GeneSpec(int, minimum=1),
        "embed_dim": GeneSpec(int, minimum=1),
        "mlp_ratio": GeneSpec(float, minimum=0.25, maximum=16),
    }

    def build_model(self, genes: Mapping[str, Any], num_classes: int, in_channels: int, form: str) -> ViT:
        return ViT(**genes, num_classes=num_classes, in_channels=in_channels, form=form)

    def combination_problem(self, genes: Mapping[str, Any]) -> str | None:
        if genes["embed_dim"] % genes["heads"]:
            return (
                f"embed_dim {genes['embed_dim']} is not divisible by heads {genes['heads']}; "
                f"pick an embed_dim that is a multiple of heads"
            )
        return None

    def space_problem(self, genes: Mapping[str, Gene]) -> str | None:
        dims = _values(genes["embed_dim"])
        heads = _values(genes["heads"])
        clashes = [(d, h) for d in dims for h in heads if d % h]
        if clashes:
            d, h = clashes[0]
            return (
                f"embed_dim {d} is not divisible by heads {h} ({len(clashes)} such pair(s)); make every "
                f"embed_dim choice a multiple of every heads choice (of {math.lcm(*heads)})"
            )
        return None


def _values(gene: Gene) -> list[Any]:
    return [gene.value] if gene.fixed else list(gene.choices)
