"""The winner rule: explicit, recorded in winner.json with a one-line reason.

The default, ``largest``, takes the most parameters the budgets allow and lets the proxy break
ties: in both ``kdsearch correlate`` studies (benchmarks/RESULTS.md) parameter count picked
better within a budget than any proxy, so trusting the proxy (``best``) is opt-in. It counts
parameters under a FLOPs budget too: taking the most FLOPs within a FLOPs budget picked worse
(benchmarks/race_proof.py, "Largest by what?" in RESULTS.md). And under a speed-up or latency
budget: among the students fast enough, the most parameters picked better than the most FLOPs,
the slowest, the fastest or the best proxy score (benchmarks/speed_rules.py, "Largest by what,
under a speed-up budget?" in RESULTS.md), so the measure stays :data:`LARGEST_COST` whatever the
budget.

:func:`rank_by_rule` orders candidates the way the rule judges them, so the leaderboard's first
row is always the winner; :func:`pick_winner` is that first row and :func:`explain_winner` says
why in words.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

from kdsearch.pareto import pareto_front
from kdsearch.search.config import PICK_RULES

__all__ = ["pick_winner", "rank_by_rule", "explain_winner", "pareto_front", "PICK_RULES", "LARGEST_COST"]

Row = dict[str, Any]

# What ``largest`` counts under every kind of budget (params, FLOPs, latency, speed-up): the
# measure that picked best on the race benchmark's ground truth (see the module docstring).
LARGEST_COST = "params"


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


def rank_by_rule(rows: Sequence[Row], score: str, rule: str, cost: str = LARGEST_COST) -> list[Row]:
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


def pick_winner(rows: Sequence[Row], score: str, rule: str, cost: str = LARGEST_COST) -> Row:
    """The candidate ``rule`` chooses among ``rows`` (which should all be within budget)."""
    if not rows:
        raise ValueError("no candidates to choose from")
    return rank_by_rule(rows, score, rule, cost)[0]


_ROW_KEY = {"params": "params", "flops": "flops", "latency": "latency_ms"}  # budget name -> leaderboard column
_MEASURE = {"params": "params", "flops": "FLOPs"}  # cost column -> how a reason names it


def _budget_text(name: str, limit: float, row: Row) -> str | None:
    """How ``row`` stands against the budget ``name`` (None: the row lacks the measure)."""
    if name == "speedup":
        # rows carry speedup_b1, speedup_b32...: the ratio to the teacher timed in one loop per batch
        batches = sorted(int(k.removeprefix("speedup_b")) for k in row
                         if k.startswith("speedup_b") and k.removeprefix("speedup_b").isdigit() and row[k] is not None)
        measured = ", ".join(f"{row[f'speedup_b{b}']:.1f}× at batch {b}" for b in batches)
        return f"≥ {limit:.1f}× faster than the teacher" + (f": {measured}" if measured else "")
    used = row.get(_ROW_KEY.get(name, name))
    if used is None:
        return None
    if name == "latency":
        return f"{used:.3g} of {limit:.3g} ms"
    return f"{int(used):,} of {int(limit):,} {_MEASURE.get(name, name)}"


def explain_winner(winner: Row, rows: Sequence[Row], score: str, rule: str, *, cost: str = LARGEST_COST,
                   budgets: Mapping[str, float | None] | None = None) -> str:
    """One line saying why ``winner`` won among ``rows`` (the candidates within budget) under ``rule``.

    ``budgets`` maps ``params``/``flops``/``latency``/``speedup`` to the search's limits (None: not
    set). A speed-up budget is reported with the winner's measured speed-ups, read from its
    ``speedup_b<batch>`` keys: ``≥ 4.0× faster than the teacher: 5.2× at batch 1, 4.3× at batch 32``.
    """
    proxy = score.removeprefix("score_")
    measure = _MEASURE.get(cost, cost)
    limits = {k: v for k, v in (budgets or {}).items() if v is not None}
    n = len({r.get("arch", id(r)) for r in rows})
    if rule == "largest":
        ties = len({r.get("arch", id(r)) for r in rows if r[cost] == winner[cost]})
        tie_text = f"{proxy} broke a tie of {ties}" if ties > 1 else f"{proxy} breaks ties"
        size = _budget_text(cost, limits[cost], winner) if cost in limits else f"{int(winner[cost]):,} {measure}"
        others = [t for t in (_budget_text(k, v, winner) for k, v in limits.items() if k != cost) if t]
        if others:
            return f"largest within the budget ({'; '.join(others)}): {size}; {tie_text}"
        if cost in limits:
            return f"largest within the budget: {size}; {tie_text}"
        return f"largest of {n} candidates (no budget set): {size}; {tie_text}"
    if rule == "best":
        where = "within the budget" if limits else "searched"
        return f"highest {proxy} score ({winner[score]:.5g}) of {n} candidates {where}"
    front = len(pareto_front(rows, score, cost))
    return (f"knee of the {proxy}-vs-{measure} Pareto front ({front} points): {int(winner[cost]):,} {measure} at "
            f"{proxy} {winner[score]:.5g}; past it, more {measure} buy the least extra {proxy}")
