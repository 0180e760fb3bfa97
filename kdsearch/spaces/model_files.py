"""Networks on disk, rebuilt through their search space: model directories and ``--teacher`` specs.

A model directory is ``model.json`` (the arch or zoo name, and metadata) plus ``model.safetensors``;
nothing is ever unpickled. Building a described arch needs its space, so these readers sit
above :mod:`kdsearch.models`; files kdsearch cannot rebuild (``.pt2``, TorchScript) are read by
:func:`kdsearch.models.teacher.load_teacher_file`.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsearch.arch import Arch
from kdsearch.errors import ConfigError, ModelError, UsageError
from kdsearch.files import atomic_path, read_json, write_json
from kdsearch.models.teacher import TORCHSCRIPT_SUFFIXES, Teacher, check_io, load_teacher_file
from kdsearch.spaces.base import SearchSpace
from kdsearch.spaces.catalog import build_from_description, family_space

__all__ = ["load_teacher", "save_model_dir", "load_model_dir"]


_MODEL_JSON_KEYS = {"family", "space", "arch", "model", "num_classes", "in_channels", "trained", "val_acc", "test_acc", "dataset",
                    "kdsearch_version", "normalization", "epochs", "init"}


def save_model_dir(
    directory: Path,
    model: nn.Module,
    *,
    num_classes: int,
    in_channels: int,
    arch: Arch | None = None,
    model_name: str | None = None,
    trained: bool = True,
    extra: dict[str, Any] | None = None,
    weights_name: str = "model",
    space: SearchSpace | None = None,
) -> None:
    """Write ``<weights_name>.json`` (architecture + metadata) and ``<weights_name>.safetensors``.

    ``space``, the space ``arch`` comes from, is saved whole (its definition), so the arch
    rebuilds without the space's YAML; left out, the arch's built-in space is looked up.
    """
    from safetensors.torch import save_file

    from kdsearch import __version__

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / f"{weights_name}.safetensors") as tmp:
        save_file(state, str(tmp))
    meta: dict[str, Any] = {
        "arch": arch.to_dict() if arch else None,
        "space": space.definition if space is not None else None,
        "family": (space or family_space(arch)).family if arch else None,
        "model": model_name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "trained": trained,
        "kdsearch_version": __version__,
    }
    meta.update(extra or {})
    write_json(directory / f"{weights_name}.json", meta)


def load_model_dir(directory: Path, weights_name: str = "model") -> tuple[nn.Module, dict[str, Any]]:
    """Read a model directory written by :func:`save_model_dir`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_json(directory / f"{weights_name}.json", f"{weights_name}.json")
    if not isinstance(meta, dict):
        raise ConfigError(f"{directory / (weights_name + '.json')} must hold a JSON object")
    unknown = set(meta) - _MODEL_JSON_KEYS
    if unknown:
        raise ConfigError(f"{weights_name}.json has unknown key(s) {', '.join(sorted(unknown))}; remove them")
    for key in ("num_classes", "in_channels"):
        if not isinstance(meta.get(key), int) or meta[key] <= 0:
            raise ConfigError(f"{weights_name}.json needs a positive integer {key!r}")
    model = build_from_description(meta, meta["num_classes"], meta["in_channels"])
    weights = directory / f"{weights_name}.safetensors"
    if not weights.exists():
        raise ModelError(f"{weights} is missing; a model directory needs {weights_name}.json and {weights_name}.safetensors")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{weights} is not a readable safetensors file ({e}); re-create it") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelError(f"{weights} does not match the architecture in {weights_name}.json ({first})") from None
    return model, meta


def load_teacher(spec: str, *, num_classes: int, in_channels: int, image_size: tuple[int, int] = (32, 32)) -> Teacher:
    """Resolve ``--teacher SPEC`` into a :class:`Teacher` on the CPU, checked on inputs of ``image_size``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model.json").exists():
            raise UsageError(f"teacher directory {path} has no model.json; give a kdsearch model directory (from `kdsearch teach`)")
        module, meta = load_model_dir(path)
        arch = Arch.from_dict(meta["arch"]) if meta.get("arch") else None
        description = {key: meta.get(key) for key in ("arch", "space", "model", "family")}
        teacher = Teacher(module, spec, bool(meta.get("trained", True)), arch, meta.get("model"), meta,
                          rebuild=functools.partial(build_from_description, description, meta["num_classes"],
                                                    meta["in_channels"]))
    elif path.suffix in (".pt2", *TORCHSCRIPT_SUFFIXES) and path.is_file():
        teacher = load_teacher_file(path, spec, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    elif path.exists():
        raise UsageError(
            f"cannot read a teacher from {path}: use a zoo name, a kdsearch model directory, a TorchScript file "
            "(.pt/.ts) or a torch.export file (.pt2)"
        )
    else:
        from kdsearch.models.zoo import MODELS, create_model, model_arch

        if spec not in MODELS:
            if "/" in spec or "." in spec:
                raise UsageError(f"teacher {spec} does not exist; check the path")
            MODELS.get(spec)  # raises the registry's "unknown model" error listing known names
        with torch.random.fork_rng(devices=[]):  # the same name gives the same teacher in every process
            torch.manual_seed(0)
            module = create_model(spec, num_classes=num_classes, in_channels=in_channels)
        teacher = Teacher(module, spec, False, model_arch(spec), spec, {},
                          rebuild=functools.partial(create_model, spec, num_classes=num_classes, in_channels=in_channels))
    teacher.info.setdefault("num_classes", num_classes)
    teacher.info.setdefault("in_channels", in_channels)
    teacher.info.setdefault("image_size", list(image_size))
    check_io(teacher.module, num_classes=num_classes, in_channels=in_channels, what=f"teacher {spec}", size=image_size)
    return teacher
