"""Find search spaces: built-in YAMLs by name, user YAMLs by path, the space of an arch; build a described network."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdsearch.arch import Arch
from kdsearch.errors import ConfigError, SpaceError
from kdsearch.spaces.base import SearchSpace, space_from_config

__all__ = ["builtin_space_dir", "builtin_space_names", "load_space", "space_for_arch", "family_space",
           "build_from_description"]

_HERE = Path(__file__).resolve().parent
# An installed wheel ships them as package data (kdsearch/search_spaces); a checkout keeps
# them at the repository root.
_CANDIDATE_DIRS = (_HERE.parent / "search_spaces", _HERE.parent.parent / "search_spaces")


def builtin_space_dir() -> Path:
    """The folder holding the built-in space YAMLs."""
    for folder in _CANDIDATE_DIRS:
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return folder
    raise SpaceError(
        f"no built-in search spaces found (looked in {', '.join(map(str, _CANDIDATE_DIRS))}); "
        "reinstall kdsearch or pass a space YAML path"
    )


def builtin_space_names() -> list[str]:
    """Names of the built-in spaces (``search_spaces/<name>.yaml``), sorted."""
    return sorted(p.stem for p in builtin_space_dir().glob("*.yaml"))


def _read_yaml(path: Path) -> object:
    from kdsearch.config_files import load_yaml
    from kdsearch.errors import ConfigError

    try:
        return load_yaml(path, "search space file")
    except ConfigError as e:
        raise SpaceError(str(e)) from None


def load_space(spec: str | Path) -> SearchSpace:
    """Load a built-in space by name, or a user YAML by path.

    A spec that names an existing file, contains a path separator, or ends in ``.yaml`` /
    ``.yml`` is a path; anything else is a built-in name.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file() or "/" in text or "\\" in text or path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise SpaceError(f"search space file {text} does not exist; give a YAML path or one of "
                             f"{', '.join(builtin_space_names())}")
        return space_from_config(_read_yaml(path), str(path))  # type: ignore[arg-type]
    names = builtin_space_names()
    if text == "pruned":  # kdsearch.spaces.pruned.PRUNED_SPACE, which imports this module
        raise SpaceError("the pruned space is made from a teacher when a search starts: use --space pruned with "
                         "`kdsearch search` or `kdsearch run` (and --teacher), or give a run's search/space.yaml")
    if text not in names:
        raise SpaceError(f"unknown search space {text!r}; built-in spaces are {', '.join(names)}, "
                         "or give the path of a space YAML")
    path = builtin_space_dir() / f"{text}.yaml"
    return space_from_config(_read_yaml(path), path.name)  # type: ignore[arg-type]


def space_for_arch(arch: Arch, spec: str | Path | None = None) -> SearchSpace:
    """The space that builds ``arch``: ``spec`` if given, else the built-in space named ``arch.space``.

    Falls back to the built-in space whose family is ``arch.space``. An arch from a user YAML
    needs that YAML as ``spec``.
    """
    if spec is not None:
        space = load_space(spec)
        if space.name != arch.space:
            raise SpaceError(f"arch belongs to space {arch.space!r} but {spec} defines {space.name!r}; "
                             "give the space YAML the arch came from")
        return space
    names = builtin_space_names()
    if arch.space in names:
        return load_space(arch.space)
    for name in names:
        space = load_space(name)
        if space.family == arch.space:
            return space
    raise SpaceError(f"arch space {arch.space!r} is not a built-in space ({', '.join(names)}); "
                     "pass the YAML file of the space it came from (--space FILE)")


def family_space(arch: Arch, family: str | None = None) -> SearchSpace:
    """A space able to build ``arch``: its own built-in space, else (given the arch's ``family``)
    that family's built-in ranges under the arch's space name.

    Building checks only the family's rules, not a YAML's ranges, so an arch of a user's
    space rebuilds from its family alone; files kdsearch writes keep the whole space
    definition instead (see :func:`build_from_description`).
    """
    try:
        return space_for_arch(arch)
    except SpaceError:
        if family is None:
            raise
        for name in builtin_space_names():
            space = load_space(name)
            if space.family == family:
                return space_from_config({**space.definition, "name": arch.space},
                                         f"{space.source} (the {family} family, for {arch.space!r})")
        raise


def build_from_description(desc: dict[str, Any], num_classes: int, in_channels: int) -> nn.Module:
    """Build a network from model.json's keys: ``{"arch": {...}, "space": {...}, "family": ...}`` or ``{"model": "resnet20"}``.

    ``space`` is the definition of the arch's space (:attr:`SearchSpace.definition`), so an arch
    of a user's YAML builds without that file; records without it fall back to ``family``.
    """
    if desc.get("arch"):
        arch = Arch.from_dict(desc["arch"])
        if desc.get("space"):
            space = space_from_config(desc["space"], "(the space definition saved with the model)")
        else:
            space = family_space(arch, desc.get("family"))
        return space.build(arch, num_classes=num_classes, in_channels=in_channels)
    if desc.get("model"):
        from kdsearch.models.zoo import create_model

        return create_model(desc["model"], num_classes=num_classes, in_channels=in_channels)
    raise ConfigError("model.json needs an 'arch' or a 'model' entry")
