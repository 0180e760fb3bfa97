"""The pipeline: teach → search → distill → (quantize) → export over one run directory.

- :mod:`~kdsearch.pipeline.config`: the run's configuration (``run.yaml``), presets, YAML overlay;
- :mod:`~kdsearch.pipeline.workspace`: opening a run directory safely;
- :mod:`~kdsearch.pipeline.stages`: each stage over a :class:`~kdsearch.rundir.RunDir`;
- :mod:`~kdsearch.pipeline.commands`: one call per CLI command, and ``run_pipeline``.

Only the configuration is imported eagerly (the CLI needs it for ``--help`` without torch).
"""
from __future__ import annotations

from kdsearch.lazy import lazy_attributes
from kdsearch.pipeline.config import (
    PRESETS,
    DataConfig,
    ExportConfig,
    RunConfig,
    config_from_dict,
    load_run_config,
    preset,
    save_run_config,
)

__all__ = [
    "PRESETS",
    "DataConfig",
    "ExportConfig",
    "RunConfig",
    "config_from_dict",
    "load_run_config",
    "preset",
    "save_run_config",
    "prepare_run_dir",
    "load_run_dataset",
    "check_inputs",
    "resolve_teacher",
    "search_config_for",
    "teach_command",
    "search_command",
    "distill_command",
    "quantize_command",
    "export_command",
    "run_pipeline",
]

__getattr__ = lazy_attributes(__name__, {
    "prepare_run_dir": "workspace",
    "load_run_dataset": "stages", "check_inputs": "stages", "resolve_teacher": "stages",
    "search_config_for": "stages",
    "teach_command": "commands", "search_command": "commands", "distill_command": "commands",
    "quantize_command": "commands", "export_command": "commands", "run_pipeline": "commands",
})
