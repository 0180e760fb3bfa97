"""The search stage: Optuna over a search space, scored by training-free proxies.

Importing this package (or :mod:`kdsearch.search.config`) imports neither torch nor Optuna;
what needs them is loaded on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from kdsearch.search.config import COST_OBJECTIVES, PICK_RULES, CorrelateConfig, SearchConfig
from kdsearch.search.winner import explain_winner, pareto_front, pick_winner, rank_by_rule

__all__ = ["SearchConfig", "CorrelateConfig", "COST_OBJECTIVES", "PICK_RULES", "SearchResult", "run_search",
           "pick_winner", "rank_by_rule", "explain_winner", "pareto_front"]

_LAZY = {  # name -> module: these import torch and Optuna
    "run_search": "kdsearch.search.study",
    "SearchResult": "kdsearch.search.summary",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdsearch.search' has no attribute {name!r}")
