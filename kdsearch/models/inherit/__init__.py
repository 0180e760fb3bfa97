"""Students born from their teacher: a student of the teacher's family starts from its weights.

``inherit_weights(family, teacher, student)`` copies the teacher's most important blocks and
channels into a freshly built student (kept or dropped by BN-scale importance, the same channel
subset across each residual stream); ``inheritance_problem`` says first why it cannot. One
:class:`Inheritor` per student family, registered in :data:`INHERITORS`.
"""
from __future__ import annotations

from kdsearch.models.inherit._base import INHERITORS, Inheritance, Inheritor, inherit_weights, inheritance_problem

# Importing the families fills INHERITORS (each registers itself where it is defined).
from kdsearch.models.inherit.mbconv import MBConvInheritor
from kdsearch.models.inherit.resnet_cifar import ResNetInheritor
from kdsearch.models.inherit.vit import VitInheritor

__all__ = ["INHERITORS", "Inheritor", "Inheritance", "inherit_weights", "inheritance_problem", "ResNetInheritor", "MBConvInheritor", "VitInheritor"]
