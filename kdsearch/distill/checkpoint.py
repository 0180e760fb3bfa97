"""Training checkpoints: atomic writes, and loading that never unpickles code."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdsearch.errors import TrainingError
from kdsearch.files import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint"]


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
