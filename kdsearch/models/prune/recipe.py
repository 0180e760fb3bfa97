"""A pruning of one teacher, as data: which channel groups keep what share, which residual blocks go, and
which teacher it was cut from."""
from __future__ import annotations

import hashlib
import math
import os
import string
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from kdsearch.errors import ConfigError, ModelError, UsageError
from kdsearch.models.prune import _blocks
from kdsearch.models.prune._depgraph import (IMPORTANCES, ChannelGroup, channel_groups, check_forward, cut_channels,
                                             dependency_graph, output_shapes, scratch_copy, working_groups)

__all__ = ["PruneRecipe", "prunable_groups", "removable_blocks", "apply_recipe", "teacher_digest", "kept_channels"]


def kept_channels(channels: int, keep: float) -> int:
    """The channels a group of ``channels`` keeps at ratio ``keep``: rounded, never below one."""
    return max(1, min(channels, math.floor(channels * keep + 0.5)))


@dataclass(frozen=True)
class PruneRecipe:
    """A structured pruning of one teacher (JSON round-trip through :meth:`to_dict` / :meth:`from_dict`).

    ``remove`` names residual blocks (see :func:`removable_blocks`) the student drops whole: each
    becomes the identity. ``keep`` maps a channel group (see :func:`prunable_groups`) to the share of
    its channels kept, in (0, 1]; groups it does not name keep all theirs, and groups inside a
    removed block are gone with it. Which channels stay is not recorded: the importance criterion
    picks them again from the same teacher, whose weights ``teacher_sha256`` pins.
    """

    teacher_sha256: str  # of the teacher's weights file(s), or of its state_dict (teacher_digest)
    keep: Mapping[str, float] = field(default_factory=dict)
    importance: str = "magnitude"  # "magnitude": group L2 norm of the weights; "bn_scale": |gamma| of its BNs
    remove: tuple[str, ...] = ()  # module paths of the residual blocks dropped

    def __post_init__(self) -> None:
        digest = self.teacher_sha256
        if not isinstance(digest, str) or len(digest) != 64 or not all(c in string.hexdigits for c in digest):
            raise ConfigError(f"a pruning recipe's teacher_sha256 must be a 64-hex-digit SHA-256, got {self.teacher_sha256!r}")
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"unknown pruning importance {self.importance!r}; use one of {', '.join(IMPORTANCES)}")
        if not isinstance(self.keep, Mapping):
            raise ConfigError("a pruning recipe's keep must map group names to kept shares")
        for name, share in self.keep.items():
            if (not isinstance(name, str) or isinstance(share, bool) or not isinstance(share, (int, float))
                    or not 0 < share <= 1):
                raise ConfigError(f"pruning recipe: group {name!r} keeps {share!r}; a kept share is a number in (0, 1]")
        object.__setattr__(self, "keep", {name: float(share) for name, share in self.keep.items()})
        if isinstance(self.remove, str) or not all(isinstance(path, str) and path for path in self.remove):
            raise ConfigError(f"a pruning recipe's remove_blocks must be a list of module paths, got {self.remove!r}")
        if len(set(self.remove)) != len(self.remove):
            raise ConfigError("a pruning recipe removes the same block twice; list each once")
        object.__setattr__(self, "remove", tuple(self.remove))

    def to_dict(self) -> dict[str, Any]:
        return {"teacher_sha256": self.teacher_sha256, "importance": self.importance, "keep": dict(self.keep),
                "remove_blocks": list(self.remove)}

    @classmethod
    def from_dict(cls, data: Any) -> PruneRecipe:
        if not isinstance(data, dict):
            raise ConfigError("a pruning recipe must be a JSON object")
        unknown = set(data) - {"teacher_sha256", "importance", "keep", "remove_blocks"}
        if unknown:
            raise ConfigError(f"pruning recipe has unknown key(s) {', '.join(sorted(unknown))}; remove them")
        if "teacher_sha256" not in data:
            raise ConfigError("pruning recipe needs 'teacher_sha256', the digest of the teacher it was cut from")
        remove = data.get("remove_blocks", [])
        if not isinstance(remove, list):
            raise ConfigError(f"a pruning recipe's remove_blocks must be a list of module paths, got {remove!r}")
        return cls(data["teacher_sha256"], data.get("keep", {}), data.get("importance", "magnitude"), tuple(remove))


def teacher_digest(teacher: nn.Module, files: Sequence[str | os.PathLike[str]] = ()) -> str:
    """SHA-256 of the teacher's weights: of ``files`` (its weights files, in order) when given, else of its
    state_dict (every tensor's name, dtype, shape and bytes, in key order) for a teacher with no file."""
    digest = hashlib.sha256()
    if files:
        for path in files:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()
    for name, tensor in sorted(teacher.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def prunable_groups(teacher: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """The channel groups of ``teacher`` a recipe can cut, each checked by cutting one channel of a copy.

    Groups whose cut changes the network's output (its classes) or breaks its forward are left out.
    ``teacher`` is not changed.

    Raises:
        ModelError: Torch-Pruning cannot trace the teacher, or finds no group it can cut.
    """
    if not any(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) for m in teacher.modules()):
        raise ModelError("the teacher has no nn.Conv2d or nn.Linear layers for Torch-Pruning to follow (a .pt2 or "
                         "converted TorchScript graph calls its layers as functions until lift_layers makes them "
                         "modules); give it as a model directory or a zoo model")
    groups, problems = working_groups(teacher, example_input)
    if not groups:
        why = f" (e.g. {next(iter(problems.values()))})" if problems else ""
        raise ModelError("Torch-Pruning finds no channel group it can cut in this teacher: only convolution and linear "
                         f"layers whose outputs do not reach the logits can be pruned{why}")
    return groups


def removable_blocks(teacher: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Module paths of the residual blocks a recipe can remove from ``teacher`` (``y = x + f(x)`` and its kin,
    the innermost only: a ResNet's blocks, not its stages), each checked by removing it from a copy."""
    return _blocks.removable_blocks(teacher, example_input)


def _inside(name: str, blocks: tuple[str, ...]) -> bool:
    return any(name == block or name.startswith(block + ".") for block in blocks)


def _remove_blocks(student: nn.Module, paths: tuple[str, ...], example_input: torch.Tensor) -> None:
    if not paths:
        return
    blocks = _blocks.residual_blocks(student, example_input)
    unknown = [path for path in paths if path not in blocks]
    if unknown:
        raise UsageError(f"the pruning recipe removes {', '.join(unknown)}, not residual block(s) of this teacher "
                         f"(its blocks: {', '.join(blocks) or 'none'})")
    shapes = output_shapes(student, example_input)
    _blocks.remove_blocks(student, list(paths))
    check_forward(student, example_input, shapes, f"removing block(s) {', '.join(paths)}", "; keep them")


def apply_recipe(teacher: nn.Module, recipe: PruneRecipe, example_input: torch.Tensor) -> nn.Module:
    """A pruned copy of ``teacher`` cut as ``recipe`` says, its kept channels the most important by
    ``recipe.importance``; ``teacher`` is not changed, and the copy is in ``teacher``'s mode.

    Raises:
        UsageError: the recipe names a group or residual block the teacher does not have.
        ModelError: Torch-Pruning cannot trace the teacher, or a cut breaks its forward (naming the layer).
    """
    was_training = teacher.training
    student = scratch_copy(teacher)
    _remove_blocks(student, recipe.remove, example_input)
    graph = dependency_graph(student, example_input)
    groups = {g.name: g for g in channel_groups(student, graph)}
    unknown = [name for name in recipe.keep if name not in groups and not _inside(name, recipe.remove)]
    if unknown:
        raise UsageError(f"the pruning recipe names group(s) {', '.join(unknown)} this teacher does not have "
                         f"(its groups: {', '.join(groups) or 'none'})")
    keep = {name: kept_channels(g.channels, recipe.keep[name]) for name, g in groups.items() if name in recipe.keep}
    try:
        cut_channels(student, graph, keep, recipe.importance, example_input)
    except ModelError as whole:
        student = scratch_copy(teacher)  # cut again one group at a time, to name the layer that breaks it
        _remove_blocks(student, recipe.remove, example_input)
        cut_channels(student, dependency_graph(student, example_input), keep, recipe.importance, example_input,
                     check_each=True)
        raise whole from None
    return student.train(was_training)
