"""Arch: a frozen, JSON-serialisable description of one network."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from kdsearch.errors import ConfigError
from kdsearch.files import read_json, write_json

__all__ = ["Arch", "FORMS", "IMAGENET_MIN_SIDE", "form_for_image_size"]

FORMS: tuple[str, ...] = ("cifar", "imagenet")
"""How a family lays out its resolution: ``cifar`` keeps small inputs' resolution in the stem;
``imagenet`` has a strided stem and ends at a total stride of 32 (224 px -> 7x7)."""

IMAGENET_MIN_SIDE = 64  # inputs whose shorter side is at least this build the ImageNet form


def form_for_image_size(image_size: int | tuple[int, int]) -> str:
    """The form a family builds for inputs of ``image_size`` (a side or ``(H, W)``)."""
    side = min(image_size) if isinstance(image_size, (tuple, list)) else image_size
    return "imagenet" if side >= IMAGENET_MIN_SIDE else "cifar"


def _plain(value: Any, where: str) -> Any:
    """Deep-copy ``value`` into plain JSON types (tuples become lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int, float)):
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise ConfigError(f"arch gene {where} has a non-JSON value {value!r}")


@dataclass(frozen=True, eq=False)
class Arch:
    """One network of a search space: ``{"space": "resnet_cifar", "genes": {...}, "form": "imagenet"}``.

    ``Arch -> dict -> Arch`` round-trips exactly; two archs are equal when their canonical
    JSON is equal, which is also what :attr:`key` returns (used to deduplicate candidates).
    ``form`` (one of :data:`FORMS`) is written only when it is not ``cifar``: archs saved
    before forms existed load as ``cifar``, and a CIFAR-form arch keeps the key (and so the
    seeded initial weights) it always had.
    """

    space: str
    genes: Mapping[str, Any] = field(default_factory=dict)
    form: str = "cifar"

    def __post_init__(self) -> None:
        if not isinstance(self.space, str) or not self.space:
            raise ConfigError("arch 'space' must be a non-empty string")
        if not isinstance(self.genes, Mapping):
            raise ConfigError("arch 'genes' must be a JSON object")
        if self.form not in FORMS:
            raise ConfigError(f"unknown arch form {self.form!r}; write one of {', '.join(FORMS)}")
        object.__setattr__(self, "genes", _plain(self.genes, "genes"))

    @property
    def key(self) -> str:
        """Canonical JSON: equal archs have equal keys."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Arch) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"space": self.space, "genes": _plain(self.genes, "genes")}
        if self.form != "cifar":
            data["form"] = self.form
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> "Arch":
        """Build from a dict, refusing unknown keys and wrong types."""
        if not isinstance(data, Mapping):
            raise ConfigError('an arch must be a JSON object {"space": ..., "genes": {...}}')
        unknown = set(data) - {"space", "genes", "form"}
        if unknown:
            raise ConfigError(
                f"unknown arch key(s) {', '.join(sorted(unknown))}; an arch has only 'space', 'genes' and 'form'"
            )
        if "space" not in data or "genes" not in data:
            raise ConfigError("an arch needs both 'space' and 'genes'")
        return cls(space=data["space"], genes=data["genes"], form=data.get("form", "cifar"))

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"arch JSON is not valid ({e})") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Arch":
        """Read an arch file (``winner.json``, ``student.json``...)."""
        data = read_json(path, "arch file")
        if isinstance(data, Mapping) and isinstance(data.get("arch"), Mapping):
            data = data["arch"]  # model.json / winner.json / student.json wrap the arch with metadata
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_dict())

    def __repr__(self) -> str:
        return f"Arch({self.space}, {self.key})"

    def with_form(self, form: str) -> "Arch":
        """The same genes in ``form``."""
        return Arch(self.space, self.genes, form)
