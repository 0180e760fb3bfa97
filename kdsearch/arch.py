"""Arch: a frozen, JSON-serialisable description of one network."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from kdsearch.errors import ConfigError
from kdsearch.files import read_json, write_json

__all__ = ["Arch"]


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
    """One network of a search space: ``{"space": "resnet_cifar", "genes": {...}}``.

    ``Arch -> dict -> Arch`` round-trips exactly; two archs are equal when their canonical
    JSON is equal, which is also what :attr:`key` returns (used to deduplicate candidates).
    """

    space: str
    genes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.space, str) or not self.space:
            raise ConfigError("arch 'space' must be a non-empty string")
        if not isinstance(self.genes, Mapping):
            raise ConfigError("arch 'genes' must be a JSON object")
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
        return {"space": self.space, "genes": _plain(self.genes, "genes")}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> "Arch":
        """Build from a dict, refusing unknown keys and wrong types."""
        if not isinstance(data, Mapping):
            raise ConfigError('an arch must be a JSON object {"space": ..., "genes": {...}}')
        unknown = set(data) - {"space", "genes"}
        if unknown:
            raise ConfigError(
                f"unknown arch key(s) {', '.join(sorted(unknown))}; an arch has only 'space' and 'genes'"
            )
        if "space" not in data or "genes" not in data:
            raise ConfigError("an arch needs both 'space' and 'genes'")
        return cls(space=data["space"], genes=data["genes"])

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
        if isinstance(data, Mapping) and "arch" in data and "space" not in data:
            data = data["arch"]  # model.json / winner.json wrap the arch with metadata
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_dict())

    def __repr__(self) -> str:
        return f"Arch({self.space}, {self.key})"
