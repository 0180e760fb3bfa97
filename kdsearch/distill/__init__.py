"""Distillation: the loss registry (:mod:`kdsearch.distill.losses`), the training engine and the stages.

Names are resolved on first use, so ``import kdsearch.distill.config`` (and the CLI reading a
:class:`TrainConfig`) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TrainConfig", "train", "distill_student", "train_teacher", "build_student", "distill_with_assistant"]

_WHERE = {
    "TrainConfig": "kdsearch.distill.config",
    "train": "kdsearch.distill.trainer",
    "distill_student": "kdsearch.distill.stage",
    "train_teacher": "kdsearch.distill.stage",
    "build_student": "kdsearch.distill.stage",
    "distill_with_assistant": "kdsearch.distill.assistant",
}


def __getattr__(name: str) -> Any:  # lazy, so `kdsearch.distill.losses` and `.config` import nothing heavy
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
