"""Distillation: the loss registry (:mod:`kdsearch.distill.losses`), the training engine and the stages.

Names are resolved on first use, so ``import kdsearch.distill.config`` (and the CLI reading a
:class:`TrainConfig`) does not import torch.
"""
from __future__ import annotations

from kdsearch.lazy import lazy_attributes

__all__ = ["TrainConfig", "train", "distill_student", "train_teacher", "build_student", "distill_with_assistant"]

__getattr__ = lazy_attributes(__name__, {
    "TrainConfig": "config",
    "train": "trainer",
    "distill_student": "stage",
    "train_teacher": "stage",
    "build_student": "stage",
    "distill_with_assistant": "assistant",
})
