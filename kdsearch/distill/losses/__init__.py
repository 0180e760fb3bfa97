"""Distillation losses, combined by name and weight (``"kd:1,ce:1,fitnet:0.5"``).

Importing this package registers every built-in loss in :data:`LOSSES`:

- on logits: ``kd``, ``dkd``, ``dist``, ``ce`` (no teacher needed),
- on paired stage features: ``fitnet``, ``at``, ``sp`` (all pairs), ``rkd`` (last pair),
- DisWOT's measures: ``diswot_relation`` (last pair), ``diswot_semantic`` (logits), ``diswot`` (both).
"""
from __future__ import annotations

from kdsearch.distill.losses import diswot, feature, logit  # noqa: F401  (register the built-ins)
from kdsearch.distill.losses.base import LOSSES, DistillLoss, LossInputs, register_loss
from kdsearch.distill.losses.combined import CombinedLoss, parse_loss_spec

__all__ = ["LOSSES", "LossInputs", "DistillLoss", "register_loss", "parse_loss_spec", "CombinedLoss"]
