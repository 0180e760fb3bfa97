"""The winner rule, the leaderboard order it implies and the reason it records; all pure, no torch."""
from __future__ import annotations

import json

import pytest

from kdsearch.search.summary import rank_leaderboard
from kdsearch.search.winner import LARGEST_COST, explain_winner, pick_winner, rank_by_rule

FRONT = [
    {"arch": "a", "score": 1.0, "params": 10},
    {"arch": "b", "score": 5.0, "params": 100},  # the knee: most of the gain for a tenth of the cost
    {"arch": "c", "score": 5.5, "params": 1000},
    {"arch": "d", "score": 5.6, "params": 10000},
    {"arch": "e", "score": 0.5, "params": 500},  # dominated
]


@pytest.mark.parametrize("rule", ["largest", "best", "knee"])
def test_the_ranking_starts_with_the_winner(rule):
    ranked = rank_by_rule(FRONT, "score", rule)
    assert ranked[0] is pick_winner(FRONT, "score", rule)
    assert sorted(r["arch"] for r in ranked) == sorted(r["arch"] for r in FRONT)  # a permutation, nothing lost


def test_each_rule_orders_by_what_it_judges():
    assert [r["arch"] for r in rank_by_rule(FRONT, "score", "largest")] == ["d", "c", "e", "b", "a"]
    assert [r["arch"] for r in rank_by_rule(FRONT, "score", "best")] == ["d", "c", "b", "a", "e"]
    # knee first, then by distance to it in the normalised (log-params, score) plane: the front's
    # neighbour c (one decade right, a little higher) before the far ends
    assert [r["arch"] for r in rank_by_rule(FRONT, "score", "knee")][:2] == ["b", "c"]
    tied = [{"arch": "x", "score": 1.0, "params": 80}, {"arch": "y", "score": 2.0, "params": 80},
            {"arch": "z", "score": 9.0, "params": 50}]
    assert [r["arch"] for r in rank_by_rule(tied, "score", "largest")] == ["y", "x", "z"]  # the proxy breaks the tie


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="largest"):
        rank_by_rule(FRONT, "score", "smallest")


def _row(arch, params, score, feasible=True):
    return {"arch": arch, "params": params, "score_diswot": score, "feasible": feasible}


def test_leaderboard_under_largest_puts_the_winner_first_even_with_the_lowest_proxy():
    # the winner fills the budget but scores worst: ordered by proxy it would be last of 16
    rows = [_row(f"s{i}", 1_000 + i, 10.0 + i) for i in range(15)] + [_row("big", 29_370, 0.1),
                                                                       _row("over", 90_000, 99.0, False)]
    winner = pick_winner([r for r in rows if r["feasible"]], "score_diswot", "largest")
    ranked = rank_leaderboard(rows, winner, "score_diswot", "largest")
    assert winner["arch"] == "big" and ranked[0]["arch"] == "big"
    assert [r["params"] for r in ranked[:16]] == sorted((r["params"] for r in rows if r["feasible"]), reverse=True)
    assert ranked[-1]["arch"] == "over"  # over budget: listed last, it cannot win


def test_repeated_trials_of_the_winner_come_right_after_it():
    rows = [_row("w", 500, 1.0), _row("v", 500, 1.0), _row("w", 500, 1.0), _row("u", 100, 5.0)]
    ranked = rank_leaderboard(rows, rows[0], "score_diswot", "largest")
    assert [r["arch"] for r in ranked] == ["w", "w", "v", "u"]


def test_reasons_say_why_in_numbers():
    rows = [_row("a", 12_000, 3.0), _row("b", 29_370, 1.0)]
    largest = explain_winner(rows[1], rows, "score_diswot", "largest", budgets={"params": 34_000, "flops": None})
    assert largest == "largest within the budget: 29,370 of 34,000 params; diswot breaks ties"
    tie = [_row("a", 29_370, 3.0), _row("b", 29_370, 1.0)]
    assert "diswot broke a tie of 2" in explain_winner(tie[0], tie, "score_diswot", "largest", budgets={"params": 34_000})
    assert "no budget set" in explain_winner(rows[1], rows, "score_diswot", "largest")
    best = explain_winner(rows[0], rows, "score_diswot", "best", budgets={"params": 34_000})
    assert best == "highest diswot score (3) of 2 candidates within the budget"
    front = [{**r, "arch": r["arch"], "score_diswot": r["score"]} for r in FRONT]
    assert explain_winner(front[1], front, "score_diswot", "knee").startswith("knee of the diswot-vs-params Pareto front (4 points): 100 params")


def _timed(arch, params, flops, b1, b32):
    return {**_row(arch, params, 1.0), "flops": flops, "speedup_b1": b1, "speedup_b32": b32}


def test_largest_counts_parameters_under_a_speed_up_budget():
    # the measure that picked best on the race benchmark's ground truth (benchmarks/speed_rules.py)
    assert LARGEST_COST == "params"
    fast_enough = [_timed("deep", 30_000, 19_000_000, 4.4, 4.1), _timed("wide", 36_000, 9_000_000, 5.2, 4.3)]
    assert pick_winner(fast_enough, "score_diswot", "largest")["arch"] == "wide"


def test_a_speed_up_budget_reads_with_the_measured_speed_ups_and_the_measure():
    rows = [_timed("deep", 30_000, 19_000_000, 4.4, 4.1), _timed("wide", 36_000, 9_000_000, 5.2, 4.3)]
    reason = explain_winner(rows[1], rows, "score_diswot", "largest", budgets={"speedup": 4.0, "params": None})
    assert reason == ("largest within the budget (≥ 4.0× faster than the teacher: 5.2× at batch 1, 4.3× at batch 32): "
                      "36,000 params; diswot breaks ties")
    both = explain_winner(rows[1], rows, "score_diswot", "largest", budgets={"params": 40_000, "speedup": 4.0})
    assert both == ("largest within the budget (≥ 4.0× faster than the teacher: 5.2× at batch 1, 4.3× at batch 32): "
                    "36,000 of 40,000 params; diswot breaks ties")
    by_flops = explain_winner(rows[0], rows, "score_diswot", "largest", cost="flops", budgets={"speedup": 4.0})
    assert by_flops.endswith("): 19,000,000 FLOPs; diswot breaks ties")
    # not yet timed: the budget is still named, without figures
    untimed = {k: v for k, v in rows[1].items() if not k.startswith("speedup_b")}
    assert explain_winner(untimed, [untimed], "score_diswot", "largest", budgets={"speedup": 4.0}).startswith(
        "largest within the budget (≥ 4.0× faster than the teacher): 36,000 params")


def test_every_budget_set_is_named_in_the_reason():
    row = {**_row("a", 29_370, 1.0), "flops": 9_500_000, "latency_ms": 0.21}
    reason = explain_winner(row, [row], "score_diswot", "largest",
                            budgets={"params": 34_000, "flops": 10_000_000, "latency": 0.25})
    assert reason == ("largest within the budget (9,500,000 of 10,000,000 FLOPs; 0.21 of 0.25 ms): "
                      "29,370 of 34,000 params; diswot breaks ties")


def test_the_terminal_leaderboard_follows_the_rule_and_stars_the_winner():
    from rich.console import Console

    from kdsearch.report.tables import leaderboard_table

    arch = lambda i: json.dumps({"space": "resnet_cifar", "genes": {"w": i}}, sort_keys=True, separators=(",", ":"))  # noqa: E731
    rows = [{"arch": arch(i), "score_diswot": 10.0 + i, "params": 1_000 + i, "flops": 1, "feasible": True}
            for i in range(15)] + [{"arch": arch(99), "score_diswot": 0.1, "params": 29_370, "flops": 1, "feasible": True}]
    winner = pick_winner(rows, "score_diswot", "largest")
    ranked = rank_leaderboard(rows, winner, "score_diswot", "largest")
    table = leaderboard_table(ranked, "diswot", {**winner, "rule": "largest", "reason": "why"})
    console = Console(width=200, record=True)
    console.print(table)
    lines = [line for line in console.export_text().splitlines() if '"w":' in line]
    assert len(lines) == 10 and lines[0].strip("│ ").startswith("★") and '"w":99' in lines[0]
    assert "--pick largest" in table.title
