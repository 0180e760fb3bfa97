"""Distillation: the loss registry (:mod:`kdsearch.distill.losses`), the trainer and the stages."""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TrainConfig", "train", "distill_student", "train_teacher", "build_student", "distill_with_assistant"]

_WHERE = {
    "TrainConfig": "kdsearch.distill.trainer",
    "train": "kdsearch.distill.trainer",
    "distill_student": "kdsearch.distill.stage",
    "train_teacher": "kdsearch.distill.stage",
    "build_student": "kdsearch.distill.stage",
    "distill_with_assistant": "kdsearch.distill.assistant",
}


def __getattr__(name: str) -> Any:  # lazy, so `kdsearch.distill.losses` imports nothing heavy
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(name)
