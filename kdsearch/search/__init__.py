"""The search stage: Optuna over a search space, scored by training-free proxies."""
from __future__ import annotations

from kdsearch.search.study import SearchConfig, SearchResult, run_search
from kdsearch.search.winner import pareto_front, pick_winner

__all__ = ["SearchConfig", "SearchResult", "run_search", "pick_winner", "pareto_front"]
