"""Pick the compute device: CUDA when present, CPU otherwise."""
from __future__ import annotations

import torch

from kdsearch.errors import UsageError

__all__ = ["resolve_device"]


def resolve_device(name: str = "auto") -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N`` to a device, failing clearly if CUDA is asked but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked but no CUDA device is available; use --device cpu or auto")
        return torch.device(name)
    raise UsageError(f"unknown device {name!r}; use auto, cpu or cuda")
