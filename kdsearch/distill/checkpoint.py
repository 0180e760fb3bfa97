"""Training checkpoints: atomic writes, and loading that never unpickles code."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from kdsearch.errors import TrainingError
from kdsearch.files import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint", "load_module_state"]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file, so a kill never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: tensors and plain containers only."""
    if not path.exists():
        raise TrainingError(f"no checkpoint at {path}; run without --resume to start afresh")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated or a pickle with code
        raise TrainingError(
            f"{path} is not a loadable kdsearch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "delete it and run without --resume"
        ) from None


def load_module_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``load_state_dict`` (strict) for a plain mapping: a checkpoint's ``"model"``, a safetensors file.

    A plain dict has lost the per-module versions of ``state_dict()``, and some modules read a
    missing version as an old format (torchao observers then reset ``eps`` to float32 eps, where
    the X86 recipe uses 2**-12), so the versions of ``model`` itself are put back first.
    """
    full = OrderedDict(state)
    full._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(full, strict=True)
