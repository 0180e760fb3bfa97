"""The winner rule: explicit, recorded in winner.json with a one-line reason.

The default, ``largest``, takes the most parameters the budgets allow and lets the proxy break
ties: in both ``kdsearch correlate`` studies (benchmarks/RESULTS.md) parameter count picked
better within a budget than any proxy, so trusting the proxy (``best``) is opt-in. It counts
parameters under a FLOPs budget too: taking the most FLOPs within a FLOPs budget picked worse
(benchmarks/race_proof.py, "Largest by what?" in RESULTS.md).

:func:`rank_by_rule` orders candidates the way the rule judges them, so the leaderboard's first
row is always the winner; :func:`pick_winner` is that first row and :func:`explain_winner` says
why in words.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

from kdsearch.pareto import pareto_front
from kdsearch.search.config import PICK_RULES

__all__ = ["pick_winner", "rank_by_rule", "explain_winner", "pareto_front", "PICK_RULES"]

Row = dict[str, Any]


def _knee(rows: Sequence[Row], score: str, cost: str) -> tuple[Row, Callable[[Row], tuple[float, float]]]:
    """The knee of the front and the min-max normalised (log-cost, score) place of any row.

    The knee is the front point farthest from the line joining the front's two ends: where
    paying more buys the least extra score. A front of one or two points has no bend; its
    highest-scoring end is taken.
    """
    front = pareto_front(rows, score, cost)
    xs = [math.log(max(r[cost], 1)) for r in front]
    ys = [r[score] for r in front]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)

    def place(r: Row) -> tuple[float, float]:
        return (math.log(max(r[cost], 1)) - x0) / ((x1 - x0) or 1), (r[score] - y0) / ((y1 - y0) or 1)

    if len(front) <= 2:
        return front[-1], place
    points = [place(r) for r in front]
    (ax, ay), (bx, by) = points[0], points[-1]
    norm = math.hypot(bx - ax, by - ay) or 1.0
    # signed distance to the chord from the first to the last point; points above it are knees
    dist = [((bx - ax) * (ay - y) - (ax - x) * (by - ay)) / norm for x, y in points]
    return front[max(range(len(front)), key=lambda i: -dist[i])], place


def rank_by_rule(rows: Sequence[Row], score: str, rule: str, cost: str = "params") -> list[Row]:
    """``rows`` best first as ``rule`` judges them; the first is :func:`pick_winner`'s choice.

    ``largest``: by ``cost`` descending, higher score breaking ties. ``best``: by score
    descending, lower cost breaking ties. ``knee``: the knee first, then by distance to it in
    the normalised (log-cost, score) plane. Ties keep the rows' order.
    """
    if rule not in PICK_RULES:
        raise ValueError(f"unknown winner rule {rule!r}; use one of {', '.join(PICK_RULES)}")
    if rule == "largest":
        return sorted(rows, key=lambda r: (-r[cost], -r[score]))
    if rule == "best":
        return sorted(rows, key=lambda r: (-r[score], r[cost]))
    if not rows:
        return []
    knee, place = _knee(rows, score, cost)
    kx, ky = place(knee)
    return sorted(rows, key=lambda r: (r is not knee, math.hypot(place(r)[0] - kx, place(r)[1] - ky)))


def pick_winner(rows: Sequence[Row], score: str, rule: str, cost: str = "params") -> Row:
    """The candidate ``rule`` chooses among ``rows`` (which should all be within budget)."""
    if not rows:
        raise ValueError("no candidates to choose from")
    return rank_by_rule(rows, score, rule, cost)[0]


_ROW_KEY = {"params": "params", "flops": "flops", "latency": "latency_ms"}  # budget name -> leaderboard column


def _budget_text(name: str, used: float, limit: float) -> str:
    if name == "latency":
        return f"{used:.3g} of {limit:.3g} ms"
    return f"{int(used):,} of {int(limit):,} {'params' if name == 'params' else 'FLOPs'}"


def explain_winner(winner: Row, rows: Sequence[Row], score: str, rule: str, *, cost: str = "params",
                   budgets: Mapping[str, float | None] | None = None) -> str:
    """One line saying why ``winner`` won among ``rows`` (the candidates within budget) under ``rule``.

    ``budgets`` maps ``params``/``flops``/``latency`` to the search's limits (None: not set).
    """
    proxy = score.removeprefix("score_")
    limits = {k: v for k, v in (budgets or {}).items() if v is not None}
    n = len({r.get("arch", id(r)) for r in rows})
    if rule == "largest":
        ties = len({r.get("arch", id(r)) for r in rows if r[cost] == winner[cost]})
        tie_text = f"{proxy} broke a tie of {ties}" if ties > 1 else f"{proxy} breaks ties"
        if cost in limits:
            return f"largest within the budget: {_budget_text(cost, winner[cost], limits[cost])}; {tie_text}"
        if limits:
            within = ", ".join(_budget_text(k, winner[_ROW_KEY[k]], v) for k, v in limits.items()
                               if winner.get(_ROW_KEY[k]) is not None)
            return f"largest within the budget ({within}): {int(winner[cost]):,} {cost}; {tie_text}"
        return f"largest of {n} candidates (no budget set): {int(winner[cost]):,} {cost}; {tie_text}"
    if rule == "best":
        where = "within the budget" if limits else "searched"
        return f"highest {proxy} score ({winner[score]:.5g}) of {n} candidates {where}"
    front = len(pareto_front(rows, score, cost))
    return (f"knee of the {proxy}-vs-{cost} Pareto front ({front} points): {int(winner[cost]):,} {cost} at "
            f"{proxy} {winner[score]:.5g}; past it, more {cost} buy the least extra {proxy}")
