"""Range checks for loss options (private); they raise ValueError, which the base turns into UsageError."""
from __future__ import annotations

__all__ = ["require_positive", "require_non_negative"]


def require_positive(**values: float) -> None:
    """Fail unless every value is > 0."""
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"{key} must be > 0, got {value}")


def require_non_negative(**values: float) -> None:
    """Fail unless every value is >= 0."""
    for key, value in values.items():
        if not value >= 0:
            raise ValueError(f"{key} must be >= 0, got {value}")
