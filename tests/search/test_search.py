"""The search stage: budgets, winner rules, deduplication, resume, determinism."""
from __future__ import annotations

import csv
import json

import optuna
import pytest
import torch

from kdsearch.data import load_dataset
from kdsearch.errors import BudgetError, UsageError
from kdsearch.spaces.model_files import load_teacher
from kdsearch.search import SearchConfig, pareto_front, pick_winner, run_search


@pytest.fixture(scope="module")
def data(fashion_npz):
    return load_dataset(f"npz:{fashion_npz}", subset=256, seed=0)


@pytest.fixture(scope="module")
def teacher(data):
    torch.manual_seed(0)
    return load_teacher("resnet8", num_classes=data.num_classes, in_channels=data.in_channels)


def _config(**kw) -> SearchConfig:
    base = dict(trials=6, population=4, proxy_batch=16, max_params=40_000, seed=0)
    base.update(kw)
    return SearchConfig(**base)


def _complete(out):
    study = optuna.load_study(study_name="kdsearch", storage=f"sqlite:///{out / 'study.db'}")
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def test_search_writes_artifacts_and_respects_budget(data, teacher, tmp_path):
    result = run_search(teacher, data, tmp_path, _config())
    assert result.winner_row["params"] <= 40_000
    winner = json.loads((tmp_path / "winner.json").read_text())
    assert winner["rule"] == "largest" and winner["arch"] == result.winner.to_dict()
    # why it won, in words and numbers
    assert winner["reason"].startswith(f"largest within the budget: {winner['params']:,} of 40,000 params; diswot b")
    rows = list(csv.DictReader((tmp_path / "leaderboard.csv").open()))
    assert len(rows) == 6
    feasible = [r for r in rows if r["feasible"] == "True"]
    assert max(int(r["params"]) for r in feasible) == winner["params"]  # the default: the most the budget allows
    # the leaderboard ranks by the rule that chose the winner: within budget, largest first, the winner on top
    assert json.loads(rows[0]["arch"]) == winner["arch"]
    assert [int(r["params"]) for r in feasible] == sorted((int(r["params"]) for r in feasible), reverse=True)
    assert rows[: len(feasible)] == feasible  # over-budget rows, which cannot win, come last
    assert [r["arch"] for r in result.rows] == [r["arch"] for r in rows]
    assert any(int(r["params"]) > 40_000 for r in rows)  # so the budget, not the space, is what bounded it
    assert (tmp_path / "pareto.png").stat().st_size > 1000


def test_resume_counts_completed_trials(data, teacher, tmp_path):
    run_search(teacher, data, tmp_path, _config(trials=4))
    assert len(_complete(tmp_path)) == 4
    with pytest.raises(UsageError, match="--resume"):
        run_search(teacher, data, tmp_path, _config(trials=6))
    run_search(teacher, data, tmp_path, _config(trials=6), resume=True)
    trials = _complete(tmp_path)
    assert len(trials) == 6
    assert len({t.number for t in trials}) == 6


def test_same_seed_same_study(data, teacher, tmp_path):
    a = run_search(teacher, data, tmp_path / "a", _config())
    b = run_search(teacher, data, tmp_path / "b", _config())
    assert [r["arch"] for r in a.rows] == [r["arch"] for r in b.rows]
    assert [r["score_diswot"] for r in a.rows] == pytest.approx([r["score_diswot"] for r in b.rows])


def test_repeated_arch_is_not_scored_again(data, teacher, tmp_path, monkeypatch):
    import kdsearch.proxies as proxies

    calls = []
    real = proxies.score_candidate

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(proxies, "score_candidate", counting)
    result = run_search(teacher, data, tmp_path, _config(trials=10, population=2))
    unique = {r["arch"] for r in result.rows}
    assert len(calls) == len(unique)


@pytest.mark.parametrize("sampler", ["evolution", "nsga3"])
def test_in_budget_first_generation_is_the_population_that_breeds(data, teacher, tmp_path, sampler):
    """The --seed-arch and in-budget candidates enqueued first are generation 0, and generation 1 is bred from them.

    Optuna asks a sampler for relative params only when a trial needs them; a fully fixed
    (enqueued) trial never did, got no generation, and evolution started from random,
    mostly over-budget candidates instead.
    """
    seed = tmp_path / "seed.json"
    from kdsearch.arch import Arch

    Arch("resnet_cifar", {"block": "basic", "depths": [1, 1, 1], "widths": [8, 8, 8]}).save(seed)
    run_search(teacher, data, tmp_path / "s", _config(trials=8, population=4, sampler=sampler),
               seed_archs=[Arch.load(seed)])
    trials = sorted(_complete(tmp_path / "s"), key=lambda t: t.number)
    key = {"evolution": "NSGAIISampler:generation", "nsga3": "NSGAIIISampler:generation"}[sampler]
    assert trials[0].user_attrs.get("seeded") is True
    assert all("fixed_params" in t.system_attrs and t.user_attrs["params"] <= 40_000 for t in trials[:4])  # enqueued, in budget
    assert [t.system_attrs.get(key) for t in trials] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_params_is_pressed_towards_the_budget_only_when_the_largest_candidate_wins(data, teacher, tmp_path):
    from kdsearch.search.objective import objective_directions

    assert objective_directions(_config(pick="largest")) == ["maximize", "maximize"]
    assert objective_directions(_config(pick="best")) == ["maximize", "minimize"]
    assert objective_directions(_config(pick="largest", objectives=("diswot", "flops", "params"))) == [
        "maximize", "minimize", "maximize"]
    run_search(teacher, data, tmp_path, _config(trials=4))
    study = optuna.load_study(study_name="kdsearch", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    # the winner rule can still change on --resume: the study keeps its directions, the rule re-picks
    result = run_search(teacher, data, tmp_path, _config(trials=6, pick="best"), resume=True)
    feasible = [r for r in result.rows if r["feasible"]]
    assert result.winner_row["score_diswot"] == max(r["score_diswot"] for r in feasible)


def test_impossible_budget_fails_before_scoring(data, teacher, tmp_path):
    with pytest.raises(BudgetError, match="smallest sampled"):
        run_search(teacher, data, tmp_path, _config(max_params=10))
    assert not (tmp_path / "study.db").exists()


def test_winner_rules():
    rows = [
        {"score": 1.0, "params": 10},
        {"score": 5.0, "params": 100},  # the knee: most of the gain for a tenth of the cost
        {"score": 5.5, "params": 1000},
        {"score": 5.6, "params": 10000},
        {"score": 0.5, "params": 500},  # dominated
    ]
    assert pick_winner(rows, "score", "best")["params"] == 10000
    assert pick_winner(rows, "score", "knee")["params"] == 100
    sized = [{"score": 9.0, "params": 50}, {"score": 1.0, "params": 80}, {"score": 2.0, "params": 80}]
    assert pick_winner(sized, "score", "largest") == {"score": 2.0, "params": 80}  # most params; the score breaks the tie
    assert pick_winner(sized, "score", "best")["params"] == 50
    assert [r["params"] for r in pareto_front(rows, "score", "params")] == [10, 100, 1000, 10000]


@pytest.mark.parametrize("bad", [{"trials": 0}, {"sampler": "annealing"}, {"pick": "worst"},
                                 {"objectives": ("params",)}, {"max_params": -5}, {"teacher_init": "imagenet"}])
def test_bad_search_config(bad):
    with pytest.raises(UsageError):
        _config(**bad)


def test_the_budget_sampling_of_the_input_checks_is_reused_by_the_search(data, monkeypatch, tmp_path):
    """The input checks and the search ask the same question; the space was sampled twice (half of
    a 224-px search's set-up). The same space read again is reused; other genes are not."""
    from kdsearch.search.objective import feasible_samples
    from kdsearch.spaces import load_space

    calls = []
    space = load_space("resnet_cifar")
    real = type(space).sample
    monkeypatch.setattr(type(space), "sample", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    config = _config(max_params=33_333, seed=123)
    first, fraction = feasible_samples(space, data, config, wanted=4)
    sampled = len(calls)
    assert sampled > 0
    first.clear()  # the caller's list is its own
    again, same_fraction = feasible_samples(load_space("resnet_cifar"), data, config, wanted=4)
    assert len(calls) == sampled and len(again) == 4 and same_fraction == fraction
    narrow = tmp_path / "narrow.yaml"  # the same name, other genes
    narrow.write_text("name: resnet_cifar\nfamily: resnet_cifar\ngenes:\n  depths: {choices: [1, 2], length: 3}\n"
                      "  widths: {choices: [8, 12], length: 3}\n  block: {choices: [basic]}\n"
                      "teacher: {depths: [2, 2, 2], widths: [12, 12, 12], block: basic}\n")
    narrower = load_space(narrow)
    feasible_samples(narrower, data, config, wanted=4)
    assert len(calls) > sampled
