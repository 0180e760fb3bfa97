"""The inheritance extension point: one :class:`Inheritor` per student family, in :data:`INHERITORS`."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from kdsearch.models.base import ImageClassifier
from kdsearch.models.inherit._copy import WeightCopier
from kdsearch.registry import Registry

__all__ = ["INHERITORS", "Inheritor", "Inheritance", "inheritance_problem", "inherit_weights"]

INHERITORS: Registry[type["Inheritor"]] = Registry("inheritance family")


class Inheritor(ABC):
    """Cuts a student of one family out of a trained teacher.

    :meth:`problem` is called first, with a teacher of class :attr:`network` and a freshly built
    student (possibly on the ``meta`` device: it must look at types and shapes only); :meth:`copy`
    is called only when it returned None.
    """

    family: ClassVar[str]  # the student family (a name in kdsearch.spaces.SPACES)
    network: ClassVar[type[nn.Module]]  # the class of the family's networks, teacher and student alike
    teachers: ClassVar[str]  # the teachers it takes, in words: "a zoo resnet or a model directory of ..."

    @abstractmethod
    def problem(self, teacher: nn.Module, student: nn.Module) -> str | None:
        """Why ``student`` cannot take ``teacher``'s weights (a phrase for the user), or None."""

    @abstractmethod
    def copy(self, teacher: nn.Module, student: nn.Module, copier: WeightCopier) -> None:
        """Copy the teacher's slices into ``student`` through ``copier``; what is not copied stays fresh."""


@dataclass(frozen=True)
class Inheritance:
    """What a student took from its teacher."""

    family: str
    parameters: tuple[str, ...]  # the student's parameters that hold teacher values, in module order
    inherited: int  # parameter values taken from the teacher
    total: int  # the student's parameter values

    @property
    def fraction(self) -> float:
        """The share of the student's parameter values that came from the teacher."""
        return self.inherited / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "fraction": self.fraction, "inherited": self.inherited, "total": self.total,
                "parameters": list(self.parameters)}


def inheritance_problem(family: str, teacher: nn.Module, student: nn.Module) -> str | None:
    """Why a ``family`` student cannot inherit from ``teacher`` (one phrase), or None when it can."""
    if family not in INHERITORS:
        return f"students of the {family} family cannot inherit weights (families that can: {', '.join(INHERITORS)})"
    if not isinstance(teacher, ImageClassifier):
        return "the teacher is not a network kdsearch builds (a .pt2 or TorchScript file cannot be cut into a student)"
    inheritor = INHERITORS.get(family)()
    if not isinstance(teacher, inheritor.network):
        return f"the teacher is a {type(teacher).__name__}, not a {inheritor.network.__name__} ({inheritor.teachers})"
    problem = inheritor.problem(teacher, student)
    if problem is not None:
        return problem
    t_in, s_in = _first_conv(teacher).in_channels, _first_conv(student).in_channels
    if t_in != s_in:
        return f"the teacher takes {t_in}-channel images and the student {s_in}-channel ones"
    t_out, s_out = teacher.classifier.out_features, student.classifier.out_features
    if t_out != s_out:
        return f"the teacher predicts {t_out} classes and the student {s_out}"
    return None


def _first_conv(model: nn.Module) -> nn.Conv2d:
    """The layer that reads the image (every family of the zoo starts with a convolution)."""
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def inherit_weights(family: str, teacher: nn.Module, student: nn.Module) -> Inheritance:
    """Copy ``teacher``'s most important channels and blocks into ``student`` in place.

    ``student`` is a normal member of its family (built by its space), so everything downstream
    (export, QAT) sees an ordinary network; positions the teacher has no values for (a wider or
    deeper student) keep their fresh initialisation.

    Raises:
        ValueError: :func:`inheritance_problem` is not None (check it first).
    """
    problem = inheritance_problem(family, teacher, student)
    if problem is not None:
        raise ValueError(problem)
    copier = WeightCopier(teacher, student)
    INHERITORS.get(family)().copy(teacher, student, copier)
    student.load_state_dict(copier.target)
    taken = [name for name in copier.parameters if copier.copied.get(name)]
    return Inheritance(family, tuple(taken), sum(copier.copied[name] for name in taken),
                       sum(copier.parameters.values()))
