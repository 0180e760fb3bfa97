"""The speed-up budget: predicted per candidate, judged on real timings against the teacher."""
from __future__ import annotations

import json
import random

import pytest

from kdsearch.arch import Arch
from kdsearch.errors import BudgetError, UsageError
from kdsearch.search import speed as speed_module
from kdsearch.search.config import SearchConfig
from kdsearch.search.objective import CandidateShape, feasible_samples
from kdsearch.search.speed import SpeedModel, confirm_fastest, speed_violations
from kdsearch.spaces import load_space


class _Table:
    """A latency model that predicts from the arch's total depth: enough to test the rules."""

    path = None

    def __init__(self, ms_per_block: float) -> None:
        self.ms_per_block = ms_per_block

    def predict_ms(self, arch: Arch) -> float:
        return self.ms_per_block * sum(arch.genes["depths"])


def _speed(teacher_ms: float = 9.0) -> SpeedModel:
    return SpeedModel({1: teacher_ms, 32: 32 * teacher_ms}, {1: _Table(1.0), 32: _Table(32.0)}, teacher_module=None)


def _row(trial: int, depths: list[int], params: int) -> dict:
    arch = Arch("resnet_cifar", {"block": "basic", "depths": depths, "widths": [8, 8, 8]}, "cifar")
    return {"trial": trial, "arch": json.dumps(arch.to_dict(), sort_keys=True, separators=(",", ":")),
            "params": params, "flops": params * 100, "score_diswot": -1.0, "feasible": True}


def test_speed_violations_are_per_batch_and_relative():
    config = SearchConfig(speedup=4.0)
    costs = {"pred_speedup_b1": 2.0, "pred_speedup_b32": 8.0}
    assert speed_violations(config, costs) == {"speedup_b1": pytest.approx(1.0), "speedup_b32": pytest.approx(-0.5)}
    assert speed_violations(SearchConfig(), costs) == {}


def test_predictions_give_speedups_over_the_teacher():
    arch = Arch("resnet_cifar", {"block": "basic", "depths": [1, 1, 1], "widths": [8, 8, 8]}, "cifar")
    predicted = _speed(9.0).predict(arch)
    assert predicted["pred_ms_b1"] == 3.0 and predicted["pred_speedup_b1"] == pytest.approx(3.0)
    assert predicted["pred_ms_b32"] == 96.0 and predicted["pred_speedup_b32"] == pytest.approx(3.0)


def _fake_timing(monkeypatch, measured: dict[int, float]) -> None:
    """Real timings, faked: trial -> speed-up over the teacher at every batch."""

    def fake(rows, space, speed, config, **_):
        out = []
        for row in rows:
            up = measured[row["trial"]]
            out.append({**row, "ms_b1": 1 / up, "ms_b32": 32 / up, "speedup_b1": up, "speedup_b32": up,
                        "teacher_ms": {"1": 1.0, "32": 32.0}, "meets_budget": up >= config.speedup})
        return out

    monkeypatch.setattr(speed_module, "time_candidates", fake)


def test_a_leader_that_misses_the_budget_when_timed_is_passed_over_in_one_line(monkeypatch):
    _fake_timing(monkeypatch, {0: 3.5, 1: 4.5, 2: 5.0})
    ranked = [_row(0, [3, 3, 3], 900), _row(1, [2, 2, 2], 800), _row(2, [1, 1, 1], 700)]
    notes = []
    timed, replaced = confirm_fastest(ranked, None, _speed(), SearchConfig(speedup=4.0), num_classes=10,
                                      in_channels=1, image_size=(28, 28), note=notes.append)
    assert [r["trial"] for r in timed] == [0, 1]  # stops at the first that meets the budget
    assert [r["meets_budget"] for r in timed] == [False, True]
    assert len(replaced) == 1 and "trial 0" in replaced[0] and "3.5× faster at batch 1" in replaced[0]
    assert "--speedup 4" in replaced[0] and replaced[0] in notes


def test_no_leader_meeting_the_budget_is_refused_naming_the_fastest(monkeypatch):
    _fake_timing(monkeypatch, {0: 1.5, 1: 2.5})
    ranked = [_row(0, [3, 3, 3], 900), _row(1, [2, 2, 2], 800)]
    with pytest.raises(BudgetError, match=r"fastest timed was 2\.5× faster at batch 1"):
        confirm_fastest(ranked, None, _speed(), SearchConfig(speedup=4.0), num_classes=10, in_channels=1,
                        image_size=(28, 28))


def test_a_speed_budget_no_sample_meets_is_refused_before_the_search_naming_the_fastest():
    space = load_space("resnet_cifar")
    shape = CandidateShape(10, 1, (28, 28))
    with pytest.raises(BudgetError, match=r"--speedup 50 \(fastest sampled: .*× (faster|slower) at batch 1"):
        feasible_samples(space, shape, SearchConfig(speedup=50.0, seed=11), wanted=4,
                         samples=40, speed=_speed(9.0))


def test_feasible_samples_meet_the_predicted_speed_budget():
    space = load_space("resnet_cifar")
    shape = CandidateShape(10, 1, (28, 28))
    speed = _speed(9.0)
    found, fraction = feasible_samples(space, shape, SearchConfig(speedup=2.0, seed=12), wanted=4,
                                       samples=40, speed=speed)
    assert found and 0 < fraction < 1
    for arch in found:
        assert sum(arch.genes["depths"]) <= 4.5  # 9 ms teacher / 1 ms a block / 2x


@pytest.mark.parametrize("bad", [{"speedup": 0.5}, {"latency_batch": 0}, {"latency_threads": 0},
                                 {"latency_provider": "npu"}])
def test_bad_speed_settings_are_refused(bad):
    with pytest.raises(UsageError):
        SearchConfig(**bad)


def test_interleaved_timing_gives_every_model_its_median(tiny_models):
    from kdsearch.export.timing import time_models

    timed = time_models(tiny_models, (1, 28, 28), batches=(1, 4), runs=5, warmup=2)
    assert set(timed) == set(tiny_models)
    assert all(set(t) == {1, 4} and all(v > 0 for v in t.values()) for t in timed.values())


@pytest.fixture
def tiny_models():
    space = load_space("resnet_cifar")
    rng = random.Random(0)
    return {f"m{i}": space.build(space.sample(rng, (28, 28)), num_classes=10, in_channels=1) for i in range(2)}


def test_a_pt2_teachers_program_module_is_timed_as_it_is(tmp_path):
    """A .pt2 teacher's module refuses eval()/train(); timing must not ask for them."""
    import torch

    from kdsearch.export.timing import time_models

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.zeros(2, 1, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "t.pt2")
    module = torch.export.load(tmp_path / "t.pt2").module()
    timed = time_models({"teacher": module}, (1, 16, 16), batches=(1, 4), runs=3, warmup=1)
    assert set(timed["teacher"]) == {1, 4} and all(v > 0 for v in timed["teacher"].values())
