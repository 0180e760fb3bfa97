"""Losses combined by name and weight: ``"kd:1,ce:1,fitnet:0.5"``."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from kdsearch.distill.losses.base import LOSSES, LossInputs
from kdsearch.errors import UsageError

__all__ = ["parse_loss_spec", "CombinedLoss"]

_EXAMPLE = "write it like 'kd:1,ce:1,fitnet:0.5'"


def parse_loss_spec(spec: str) -> list[tuple[str, float]]:
    """Parse ``"name:weight,name,..."`` into ``[(name, weight), ...]``; a bare name weighs 1.

    Weights must be finite and >= 0, not all 0; names must be registered and appear once.

    Raises:
        UsageError: for an empty spec, an empty item, a bad weight, an unknown or repeated name.
    """
    if not spec or not spec.strip():
        raise UsageError(f"the loss spec is empty; {_EXAMPLE} (known losses: {', '.join(LOSSES.names())})")
    terms: list[tuple[str, float]] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise UsageError(f"the loss spec {spec!r} has an empty item; {_EXAMPLE}")
        name, sep, weight_text = item.partition(":")
        name = name.strip()
        if not name:
            raise UsageError(f"the loss spec item {item!r} has no loss name; {_EXAMPLE}")
        LOSSES.get(name)  # unknown names fail here, listing the known ones
        weight = 1.0
        if sep:
            try:
                weight = float(weight_text.strip())
            except ValueError:
                raise UsageError(
                    f"the weight of loss {name!r} in {spec!r} is {weight_text.strip()!r}, not a number; "
                    f"{_EXAMPLE}"
                ) from None
            if not math.isfinite(weight) or weight < 0:
                raise UsageError(
                    f"the weight of loss {name!r} in {spec!r} is {weight_text.strip()}; "
                    "weights must be finite numbers >= 0"
                )
        terms.append((name, weight))
    _check_terms(terms, spec)
    return terms


def _check_terms(terms: Sequence[tuple[str, float]], spec: object) -> None:
    """Reject repeated names and all-zero weights."""
    seen: set[str] = set()
    for name, _ in terms:
        if name in seen:
            raise UsageError(f"loss {name!r} appears twice in {spec!r}; give each loss once with one weight")
        seen.add(name)
    if all(weight == 0 for _, weight in terms):
        raise UsageError(f"every weight in the loss spec {spec!r} is 0; give at least one loss a weight > 0")


class CombinedLoss(nn.Module):
    """Weighted sum of registered losses: ``total = Σ_i w_i · loss_i(inputs)``.

    Holds each term as a submodule (in ``terms``, keyed by name), so learned connectors
    train with the student: call :meth:`setup`, then move this module to the device and
    give its parameters to the optimizer with the student's. They are not part of the
    student and are not saved with it.

    Args:
        spec: ``"kd:1,ce:1"`` or ``[("kd", 1.0), ("ce", 1.0)]``.
        options: per-loss options, ``{"kd": {"temperature": 2}}``; each key must be a loss
            of the spec.

    Attributes:
        weights: name -> weight.
        uses_teacher: some term needs the teacher.
        uses_features: some term needs paired stage features.
    """

    def __init__(
        self,
        spec: str | Sequence[tuple[str, float]],
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(spec, str):
            pairs = parse_loss_spec(spec)
        else:
            pairs = [(str(name), float(weight)) for name, weight in spec]
            if not pairs:
                raise UsageError(f"no losses were given; {_EXAMPLE}")
            for name, weight in pairs:
                LOSSES.get(name)
                if not math.isfinite(weight) or weight < 0:
                    raise UsageError(f"the weight of loss {name!r} is {weight}; weights must be finite numbers >= 0")
            _check_terms(pairs, spec)
        options = dict(options or {})
        names = [name for name, _ in pairs]
        stray = sorted(set(options) - set(names))
        if stray:
            raise UsageError(
                f"options were given for loss {', '.join(map(repr, stray))}, which is not in the loss spec "
                f"({', '.join(names)}); add it to the spec or remove its options"
            )
        self.weights: dict[str, float] = dict(pairs)
        self.terms = nn.ModuleDict(
            {name: LOSSES.get(name)(**dict(options.get(name, {}))) for name in names}
        )
        self.uses_teacher = any(term.uses_teacher for term in self.terms.values())
        self.uses_features = any(term.uses_features for term in self.terms.values())

    def setup(self, student_channels: list[int], teacher_channels: list[int]) -> None:
        """Call every term's :meth:`DistillLoss.setup` (once, before training)."""
        for term in self.terms.values():
            term.setup(list(student_channels), list(teacher_channels))

    def forward(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        """Return the weighted total (a scalar) and each term's weighted value as a float."""
        total: Tensor | None = None
        parts: dict[str, float] = {}
        for name, term in self.terms.items():
            value = self.weights[name] * term(inputs)
            parts[name] = float(value.detach())
            total = value if total is None else total + value
        assert total is not None  # the spec is never empty
        return total, parts
