"""The Pareto front of scored candidates: a pure function the search, the report and the
teacher-assistant choice all use, kept outside every stage so none imports another for it."""
from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["pareto_front"]


def pareto_front(rows: Sequence[dict[str, Any]], score: str, cost: str) -> list[dict[str, Any]]:
    """Rows not dominated in (maximise ``score``, minimise ``cost``), sorted by cost."""
    ordered = sorted(rows, key=lambda r: (r[cost], -r[score]))
    front, best = [], -math.inf
    for r in ordered:
        if r[score] > best:
            front.append(r)
            best = r[score]
    return front
