"""The distillation-loss extension point: what a step hands a loss, and what a loss must do.

A loss is an ``nn.Module`` so that the connectors some losses learn (FitNet's 1×1 conv + BN)
are trained with the student and move with it between devices. The trainer:

1. builds each loss from its name and options (``LOSSES.get(name)(**options)``),
2. calls :meth:`DistillLoss.setup` once with the channel counts of the paired stage
   features (student and teacher), before the optimizer is built,
3. calls :meth:`DistillLoss.forward` once per step with a :class:`LossInputs`.

Losses compute in float32 whatever autocast gives them, and never backpropagate into
the teacher (its tensors are detached).
"""
from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from kdsearch.errors import TrainingError, UsageError
from kdsearch.registry import Registry

__all__ = ["LOSSES", "LossInputs", "DistillLoss", "NoOptions", "option", "register_loss"]

LOSSES: Registry[type["DistillLoss"]] = Registry("loss")


@dataclass
class LossInputs:
    """Everything one training step hands every loss.

    Attributes:
        student_logits: ``(B, K)``.
        teacher_logits: ``(B, K)``; None when training without a teacher.
        labels: ``(B,)`` class indices.
        student_feats: paired stage features, each ``(B, Cs_i, Hs_i, Ws_i)``.
        teacher_feats: each ``(B, Ct_i, Ht_i, Wt_i)``, as many as ``student_feats``.
        temperature: overrides the temperature option of temperature-based losses when a
            schedule drives it (e.g. dynamic temperature); None keeps each loss's own.
    """

    student_logits: Tensor
    teacher_logits: Tensor | None
    labels: Tensor
    student_feats: list[Tensor] = dataclasses.field(default_factory=list)
    teacher_feats: list[Tensor] = dataclasses.field(default_factory=list)
    temperature: float | None = None


@dataclass(frozen=True)
class NoOptions:
    """Options of a loss that takes none."""


def option(default: Any, meaning: str) -> Any:
    """A field of a loss's ``Options``: its default and what it means (``kdsearch losses`` lists both)."""
    return dataclasses.field(default=default, metadata={"meaning": meaning})


def _coerce_option(value: Any, default: Any, field: str) -> Any:
    """Convert ``value`` to the type of ``default`` (numbers from YAML or the CLI)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"{field} must be true or false, got {value!r}")
    if isinstance(default, (int, float)):
        if isinstance(value, bool):
            raise ValueError(f"{field} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{field} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{field} must be finite, got {value!r}")
        if isinstance(default, int):
            if number != int(number):
                raise ValueError(f"{field} must be a whole number, got {value!r}")
            return int(number)
        return number
    return value


class DistillLoss(nn.Module, ABC):
    """Base class of every distillation loss; subclasses register with ``@register_loss(name)``.

    Subclasses cite their paper in ``paper`` and declare their options as a frozen dataclass
    ``Options`` (one :func:`option` per field: its default and meaning) whose
    ``__post_init__`` raises ``ValueError`` for values out of range; :meth:`__init__` turns
    unknown or bad options into a :class:`~kdsearch.errors.UsageError` that lists the valid ones.

    Attributes:
        name: the registry name, set by :func:`register_loss`.
        paper: the citation: authors, title, venue and year.
        uses_teacher: needs ``teacher_logits`` or teacher features.
        uses_features: needs ``student_feats`` / ``teacher_feats``.
        opts: the validated options, an instance of ``Options``.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    uses_teacher: ClassVar[bool] = True
    uses_features: ClassVar[bool] = False
    Options: ClassVar[type] = NoOptions

    def __init__(self, **options: Any) -> None:
        super().__init__()
        fields = {f.name: f for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise UsageError(
                f"loss {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"{self.describe_options()}"
            )
        try:
            values = {
                key: _coerce_option(value, fields[key].default, key) for key, value in options.items()
            }
            self.opts = self.Options(**values)
        except ValueError as exc:
            raise UsageError(f"loss {self.name!r}: {exc}; {self.describe_options()}") from None

    @classmethod
    def describe_options(cls) -> str:
        """One line naming every option and its default, for error messages and help."""
        fields = dataclasses.fields(cls.Options)
        if not fields:
            return "it takes no options"
        listed = ", ".join(f"{f.name} (default {f.default})" for f in fields)
        return f"its options are: {listed}"

    @classmethod
    def option_info(cls) -> list[dict[str, Any]]:
        """Each option's ``name``, ``default`` and ``meaning``, in declaration order."""
        return [
            {"name": f.name, "default": f.default, "meaning": f.metadata.get("meaning", "")}
            for f in dataclasses.fields(cls.Options)
        ]

    def setup(self, student_channels: list[int], teacher_channels: list[int]) -> None:
        """Build learned parts (connectors) for the paired feature channel counts.

        Called once, before training and before the optimizer is built. Default: no-op.
        """

    @abstractmethod
    def forward(self, inputs: LossInputs) -> Tensor:
        """Return the scalar loss for one step."""

    # -- helpers shared by subclasses -------------------------------------------------------

    def temperature(self, inputs: LossInputs, own: float) -> float:
        """The step's temperature: the schedule's when one drives it, else the option."""
        if inputs.temperature is None:
            return own
        if not inputs.temperature > 0:
            raise TrainingError(
                f"loss {self.name!r} got temperature {inputs.temperature}; a temperature "
                "schedule must give values > 0"
            )
        return float(inputs.temperature)

    def logits(self, inputs: LossInputs) -> tuple[Tensor, Tensor]:
        """Student logits (float32) and detached teacher logits, failing clearly without a teacher."""
        if inputs.teacher_logits is None:
            raise UsageError(
                f"loss {self.name!r} needs a teacher but none was given; give a teacher or "
                "use only teacher-free losses such as 'ce'"
            )
        s, t = inputs.student_logits.float(), inputs.teacher_logits.detach().float()  # (B, K)
        if s.shape != t.shape:
            raise TrainingError(
                f"loss {self.name!r}: student logits {tuple(s.shape)} and teacher logits "
                f"{tuple(t.shape)} differ; student and teacher must predict the same classes"
            )
        return s, t

    def feature_pairs(self, inputs: LossInputs) -> list[tuple[Tensor, Tensor]]:
        """Paired (student float32, detached teacher float32) features, validated."""
        if inputs.teacher_feats is None or not inputs.student_feats:
            raise UsageError(
                f"loss {self.name!r} needs paired student/teacher stage features but got none; "
                "give a teacher with stage feature paths or drop this loss"
            )
        if len(inputs.student_feats) != len(inputs.teacher_feats):
            raise TrainingError(
                f"loss {self.name!r}: {len(inputs.student_feats)} student features but "
                f"{len(inputs.teacher_feats)} teacher features; pair the same number of stages"
            )
        pairs = []
        for i, (fs, ft) in enumerate(zip(inputs.student_feats, inputs.teacher_feats)):
            if fs.dim() != 4 or ft.dim() != 4 or fs.shape[0] != ft.shape[0]:
                raise TrainingError(
                    f"loss {self.name!r}: feature pair {i} has shapes {tuple(fs.shape)} and "
                    f"{tuple(ft.shape)}; expected (B, C, H, W) maps with the same batch size"
                )
            pairs.append((fs.float(), ft.detach().float()))
        return pairs


def register_loss(name: str):
    """Register a :class:`DistillLoss` subclass under ``name`` and set its ``name``."""
    add = LOSSES.register(name)

    def decorate(cls: type[DistillLoss]) -> type[DistillLoss]:
        cls.name = name
        return add(cls)

    return decorate
