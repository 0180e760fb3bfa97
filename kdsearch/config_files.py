"""Read YAML safely: ``yaml.safe_load`` only, with one-line errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kdsearch.errors import ConfigError

__all__ = ["load_yaml"]


def load_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """Parse ``path`` with ``yaml.safe_load`` (no tags that build Python objects)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist; check the path")
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give a .yaml file")
    try:
        text = path.read_text(encoding="utf-8")
    except PermissionError:
        raise ConfigError(f"{what} {path} is not readable; fix its permissions") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a text file; give a YAML file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what} {path} is not valid YAML{where}: {problem}") from None
