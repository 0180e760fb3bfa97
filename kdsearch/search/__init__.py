"""The search stage: Optuna over a search space, scored by training-free proxies.

Importing this package (or :mod:`kdsearch.search.config`) imports neither torch nor Optuna;
what needs them is loaded on first use.
"""
from __future__ import annotations

from kdsearch.lazy import lazy_attributes
from kdsearch.search.config import COST_OBJECTIVES, PICK_RULES, CorrelateConfig, SearchConfig
from kdsearch.search.winner import explain_winner, pareto_front, pick_winner, rank_by_rule

__all__ = ["SearchConfig", "CorrelateConfig", "COST_OBJECTIVES", "PICK_RULES", "SearchResult", "run_search",
           "pick_winner", "rank_by_rule", "explain_winner", "pareto_front"]

__getattr__ = lazy_attributes(__name__, {
    "run_search": "study",
    "SearchResult": "summary",
})
