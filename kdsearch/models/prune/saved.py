"""A pruned student on disk: ``<name>.json`` (its recipe) + ``<name>.safetensors`` (its weights).

Nothing is unpickled on the way back: the pruned shapes are cut again from the teacher by the
recipe, then the weights are loaded into them. The recipe pins the teacher by digest, so a
teacher that has changed since is refused rather than cut differently.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from kdsearch.errors import ConfigError, ModelError
from kdsearch.files import atomic_path, read_json, write_json
from kdsearch.models.prune.recipe import PruneRecipe, apply_recipe, teacher_digest

__all__ = ["save_pruned", "load_pruned", "PRUNED_FORMAT"]

PRUNED_FORMAT = 1  # the layout of <name>.json; a reader refuses others
_KEYS = {"format", "recipe", "input_shape", "kdsearch_version"}


def save_pruned(directory: str | os.PathLike[str], student: nn.Module, recipe: PruneRecipe,
                example_input: torch.Tensor, *, name: str = "pruned") -> None:
    """Write ``student`` (cut from its teacher by :func:`apply_recipe` with ``recipe``) to ``directory``.

    ``example_input``'s shape is kept: the teacher is traced on zeros of that shape when loading.
    """
    from safetensors.torch import save_file

    from kdsearch import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    with atomic_path(directory / f"{name}.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(directory / f"{name}.json", {"format": PRUNED_FORMAT, "recipe": recipe.to_dict(),
                                            "input_shape": list(example_input.shape), "kdsearch_version": __version__})


def _read_meta(path: Path) -> dict[str, Any]:
    meta = read_json(path, path.name)
    if not isinstance(meta, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    unknown = set(meta) - _KEYS
    if unknown:
        raise ConfigError(f"{path} has unknown key(s) {', '.join(sorted(unknown))}; remove them")
    if meta.get("format") != PRUNED_FORMAT:
        raise ConfigError(f"{path} is in format {meta.get('format')!r}; this kdsearch reads pruned students of format "
                          f"{PRUNED_FORMAT}")
    shape = meta.get("input_shape")
    if (not isinstance(shape, list) or len(shape) < 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise ConfigError(f"{path} needs 'input_shape', a list of positive sizes such as [1, 3, 32, 32]")
    return meta


def load_pruned(directory: str | os.PathLike[str], teacher: nn.Module, *,
                teacher_files: Sequence[str | os.PathLike[str]] = (), name: str = "pruned") -> nn.Module:
    """Rebuild the student :func:`save_pruned` wrote, from the ``teacher`` it was cut from.

    ``teacher_files``: the teacher's weights files, when its recipe's digest was taken of them (see
    :func:`teacher_digest`). The student comes back in eval mode.

    Raises:
        ModelError: the teacher is not the one the student was cut from, or the weights do not fit.
        ConfigError: the recipe file is malformed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = _read_meta(directory / f"{name}.json")
    recipe = PruneRecipe.from_dict(meta["recipe"])
    digest = teacher_digest(teacher, teacher_files)
    if digest != recipe.teacher_sha256:
        raise ModelError(f"the teacher file has changed since the student in {directory} was pruned from it (sha256 "
                         f"{recipe.teacher_sha256[:12]}... then, {digest[:12]}... now); prune the new teacher again")
    weights = directory / f"{name}.safetensors"
    if not weights.exists():
        raise ModelError(f"{weights} is missing; a pruned student needs {name}.json and {name}.safetensors")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{weights} is not a readable safetensors file ({e}); save the student again") from None
    device = next((t.device for t in teacher.state_dict().values()), torch.device("cpu"))
    student = apply_recipe(teacher, recipe, torch.zeros(meta["input_shape"], device=device))
    try:
        student.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelError(f"{weights} does not fit the student its recipe cuts from this teacher ({first})") from None
    return student.eval()
