"""One exception hierarchy for every error a user can cause or fix.

The CLI turns a :class:`KdsearchError` into one red line on stderr and exits with
``exit_code``: 2 for usage errors (bad options, bad files), 1 for runtime failures.
"""
from __future__ import annotations

__all__ = [
    "KdsearchError",
    "UsageError",
    "ConfigError",
    "DataError",
    "ModelError",
    "SpaceError",
    "ProxyError",
    "SearchError",
    "BudgetError",
    "TrainingError",
    "MemoryBudgetError",
    "ExportError",
    "Interrupted",
    "KdsearchWarning",
]


class KdsearchError(Exception):
    """Base class: the message says what was wrong and how to fix it."""

    exit_code = 1


class UsageError(KdsearchError):
    """The user asked for something impossible: a bad option, path or file."""

    exit_code = 2


class ConfigError(UsageError):
    """A YAML/JSON configuration or arch file is malformed."""


class SpaceError(UsageError):
    """A search space definition or an arch outside its space."""


class DataError(KdsearchError):
    """A dataset could not be found, downloaded, verified or read."""


class ModelError(KdsearchError):
    """A model or teacher could not be built or loaded."""


class ProxyError(KdsearchError):
    """A proxy could not score a candidate."""


class SearchError(KdsearchError):
    """The search could not run or finish."""


class BudgetError(UsageError):
    """A budget no candidate of the space can meet."""


class TrainingError(KdsearchError):
    """Training diverged or could not continue."""


class MemoryBudgetError(UsageError):
    """A step would need more memory than ``--max-memory`` (or the free memory) allows."""


class ExportError(KdsearchError):
    """ONNX export or its verification failed."""


class Interrupted(KdsearchError):
    """The user pressed Ctrl-C; state was saved and the run can resume."""

    exit_code = 130


class KdsearchWarning(UserWarning):
    """A problem of the user's that does not stop the run; always shown on the terminal."""
