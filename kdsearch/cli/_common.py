"""Turning flags into configurations: a flag left unset never overrides the config file."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from kdsearch.pipeline.config import RunConfig, config_from_dict, preset

__all__ = ["base_config", "data_flags", "override", "require_teacher", "run_config", "section"]


def base_config(config_file: Path | None, preset_name: str | None = None) -> RunConfig:
    """The preset (if any), then the YAML config file on top."""
    from kdsearch.config_files import load_yaml

    config = preset(preset_name) if preset_name else RunConfig()
    if config_file is not None:
        config = config_from_dict(load_yaml(config_file, "config file") or {}, config)
    return config


def run_config(run_dir: Path, config_file: Path | None, **sections: dict[str, Any]) -> RunConfig:
    """A run directory's ``run.yaml``, then the YAML config file, then the flags given."""
    from kdsearch.config_files import load_yaml
    from kdsearch.pipeline.config import load_run_config

    config = load_run_config(run_dir)
    if config_file is not None:
        config = config_from_dict(load_yaml(config_file, "config file") or {}, config)
    return override(config, **sections)


def section(obj: Any, **flags: Any) -> Any:
    """``replace(obj, **flags)`` for the flags that were given (not None)."""
    given = {k: v for k, v in flags.items() if v is not None}
    return replace(obj, **given) if given else obj


def override(config: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """Apply flags per section: ``override(cfg, search={"trials": 10}, top={"teacher": "x"})``."""
    top = sections.pop("top", {})
    changes = {name: section(getattr(config, name), **flags) for name, flags in sections.items()}
    changes.update({k: v for k, v in top.items() if v is not None})
    return replace(config, **changes)


def data_flags(data: str | None, data_dir: Path | None, subset: int | None,
               image_size: int | None = None) -> dict[str, Any]:
    """The ``data`` section's flags.

    ``--seed`` is not among them: the train/val split and the subset follow ``data.seed`` (the config
    file's), so a teacher, a search and a student trained with different seeds share one validation set.
    """
    return {"spec": data, "data_dir": str(data_dir) if data_dir else None, "subset": subset, "image_size": image_size}


def require_teacher(config: RunConfig) -> str:
    """The teacher spec, from ``--teacher`` or the config file's ``teacher:``."""
    from kdsearch.errors import UsageError

    if not config.teacher:
        raise UsageError("no teacher: give --teacher (a zoo name, model directory, .pt or .pt2) or `teacher:` in --config")
    return config.teacher
