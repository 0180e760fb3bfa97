"""The ``nb201`` family: NAS-Bench-201 cells (6 edge ops) in the NB201 macro skeleton."""
from __future__ import annotations

from typing import Any, Mapping

from kdsearch.models.nb201 import NB201_OPS, NB201Net, format_cell
from kdsearch.spaces.base import SPACES, GeneSpec, SearchSpace

__all__ = ["NB201Space"]


@SPACES.register("nb201")
class NB201Space(SearchSpace):
    """Genes ``ops`` (6 edge ops, see :data:`~kdsearch.models.nb201.NB201_EDGES`), ``cells`` (N per
    stage) and ``channels`` (C of the first stage). All-``none`` cells are legal (they output zeros).
    The ``imagenet`` form has a stride-8 stem (see :class:`~kdsearch.models.nb201.NB201Net`).
    """

    family = "nb201"
    gene_specs = {
        "ops": GeneSpec(str, is_list=True, length=6, allowed=NB201_OPS),
        "cells": GeneSpec(int, minimum=1),
        "channels": GeneSpec(int, minimum=1),
    }

    def build_model(self, genes: Mapping[str, Any], num_classes: int, in_channels: int, form: str) -> NB201Net:
        return NB201Net(**genes, num_classes=num_classes, in_channels=in_channels, form=form)

    @staticmethod
    def cell_string(genes: Mapping[str, Any]) -> str:
        """The NB201 arch string of an arch's cell (for NAS-Bench-201 look-ups)."""
        return format_cell(genes["ops"])
