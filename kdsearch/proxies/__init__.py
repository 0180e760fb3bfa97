"""Training-free proxies: DisWOT (teacher-aware), classic zero-cost scores, and costs.

Importing this package registers every built-in proxy in :data:`PROXIES`.
"""
from __future__ import annotations

from kdsearch.proxies.base import PROXIES, Proxy, create_proxy, register_proxy, score_candidate, teacher_stats
from kdsearch.proxies.cost import count_flops, count_params
from kdsearch.proxies.diswot import DiswotLosses, classifier_weight_grad, diswot_reference
from kdsearch.proxies import zero_cost as _zero_cost  # noqa: F401  (registers the classic proxies)

__all__ = [
    "PROXIES",
    "Proxy",
    "register_proxy",
    "create_proxy",
    "teacher_stats",
    "score_candidate",
    "count_params",
    "count_flops",
    "DiswotLosses",
    "classifier_weight_grad",
    "diswot_reference",
]
