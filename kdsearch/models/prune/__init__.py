"""Students cut from their teacher by structured pruning, whatever the teacher's code.

Torch-Pruning's dependency graph (DepGraph, Fang et al., CVPR 2023) finds which channels must
go together (through BNs, residual adds, depthwise convs); a :class:`PruneRecipe` says what
share of each such group a student keeps, and which teacher it was cut from.

``prunable_groups(teacher, x)`` lists the channel groups a recipe can name and
``removable_blocks(teacher, x)`` the residual blocks it can drop whole; ``apply_recipe(teacher,
recipe, x)`` returns the cut copy (its kept channels the most important by weight magnitude or
BN scale); ``save_pruned`` / ``load_pruned`` store it as the recipe plus safetensors, rebuilt
from the teacher without unpickling anything. A ``.pt2`` teacher's graph calls its layers as
functions; ``lift_layers`` makes them modules again so the dependency graph can follow them, inside
the module hierarchy ``torch.export.unflatten`` restores (so its residual blocks can be removed too).
A TorchScript teacher is converted into such a program first (``torchscript_program``), the
submodule each of its calls ran in carried over, so it is pruned the same way.
"""
from __future__ import annotations

from kdsearch.models.prune._depgraph import IMPORTANCES, ChannelGroup
from kdsearch.models.prune.lift import lift_layers
from kdsearch.models.prune.recipe import (PruneRecipe, apply_recipe, kept_channels, prunable_groups, removable_blocks,
                                         teacher_digest)
from kdsearch.models.prune.saved import PRUNED_FORMAT, load_pruned, save_pruned
from kdsearch.models.prune.torchscript import torchscript_program, unflattened

__all__ = ["ChannelGroup", "IMPORTANCES", "PruneRecipe", "prunable_groups", "removable_blocks", "apply_recipe",
           "kept_channels", "teacher_digest", "save_pruned", "load_pruned", "PRUNED_FORMAT", "lift_layers",
           "torchscript_program", "unflattened"]
