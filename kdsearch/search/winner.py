"""The winner rule: explicit, recorded in winner.json.

The default, ``largest``, takes the most parameters the budgets allow and lets the proxy break
ties: in both ``kdsearch correlate`` studies (benchmarks/RESULTS.md) parameter count picked
better within a budget than any proxy, so trusting the proxy (``best``) is opt-in.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["pick_winner", "pareto_front", "PICK_RULES"]

PICK_RULES = {  # name -> what it takes, as the search prints it
    "largest": "the most parameters within the budgets; the proxy breaks ties",
    "best": "the highest proxy score",
    "knee": "the knee of the proxy-vs-params Pareto front",
}


def pareto_front(rows: Sequence[dict[str, Any]], score: str, cost: str) -> list[dict[str, Any]]:
    """Rows not dominated in (maximise ``score``, minimise ``cost``), sorted by cost."""
    ordered = sorted(rows, key=lambda r: (r[cost], -r[score]))
    front, best = [], -math.inf
    for r in ordered:
        if r[score] > best:
            front.append(r)
            best = r[score]
    return front


def pick_winner(rows: Sequence[dict[str, Any]], score: str, rule: str, cost: str = "params") -> dict[str, Any]:
    """``largest``: the highest cost — the most the budgets allow (ties: higher score).
    ``best``: highest score (ties: cheaper). ``knee``: the Pareto point farthest from the
    line joining the front's two ends, in min-max normalised (log-cost, score) coordinates —
    where paying more buys the least extra score."""
    if rule == "largest":
        return max(rows, key=lambda r: (r[cost], r[score]))
    if rule == "best":
        return max(rows, key=lambda r: (r[score], -r[cost]))
    front = pareto_front(rows, score, cost)
    if len(front) <= 2:
        return front[-1]
    xs = [math.log(max(r[cost], 1)) for r in front]
    ys = [r[score] for r in front]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    nx = [(x - x0) / ((x1 - x0) or 1) for x in xs]
    ny = [(y - y0) / ((y1 - y0) or 1) for y in ys]
    # distance to the chord from (nx[0], ny[0]) to (nx[-1], ny[-1]); points above it are knees
    ax, ay, bx, by = nx[0], ny[0], nx[-1], ny[-1]
    norm = math.hypot(bx - ax, by - ay) or 1.0
    dist = [((bx - ax) * (ay - y) - (ax - x) * (by - ay)) / norm for x, y in zip(nx, ny)]
    return front[max(range(len(front)), key=lambda i: -dist[i])]
