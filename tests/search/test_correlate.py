"""Correlate: its statistics against independent computations, stratified sampling, resume."""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from kdsearch.data import load_dataset
from kdsearch.errors import UsageError
from kdsearch.spaces.model_files import load_teacher
from kdsearch.search.config import CorrelateConfig
from kdsearch.search.correlate import (
    proxy_metrics,
    regret_under_budget,
    run_correlate,
    seed_reliability,
    size_controlled_tau,
    stratified_archs,
    top_k_hit_rate,
    train_and_record,
    with_train,
)


def test_size_controlled_tau_matches_polyfit_residuals():
    rng = np.random.default_rng(0)
    params = rng.integers(1_000, 1_000_000, 40).astype(float)
    acc = 0.05 * np.log(params) + rng.normal(0, 0.02, 40)
    score = 2.0 * np.log(params) + rng.normal(0, 1, 40)
    logp = np.log(params)
    res = lambda v: v - np.polyval(np.polyfit(logp, v, 1), logp)  # noqa: E731 - an independent fit
    expected = stats.kendalltau(res(score), res(acc)).statistic
    assert size_controlled_tau(list(score), list(acc), list(params)) == pytest.approx(expected)


def test_size_controlled_tau_sees_through_size():
    """A proxy that only knows size ranks well raw and at chance once size is controlled."""
    rng = np.random.default_rng(1)
    params = np.exp(rng.uniform(7, 14, 200))
    skill = rng.normal(0, 1, 200)  # what the size does not explain
    acc = 0.03 * np.log(params) + 0.01 * skill
    only_size = np.log(params) * 3 + 1
    knows_skill = np.log(params) + 5 * skill
    assert stats.kendalltau(only_size, acc).statistic > 0.5
    assert math.isnan(size_controlled_tau(list(only_size), list(acc), list(params)))
    assert size_controlled_tau(list(knows_skill), list(acc), list(params)) > 0.9


def test_regret_and_top_k_by_hand():
    acc = [0.50, 0.60, 0.70, 0.80]
    params = [10, 20, 30, 40]
    scores = [4, 3, 2, 1]  # picks the smallest, always wrong
    assert regret_under_budget(scores, acc, params, [20, 40]) == pytest.approx([0.10, 0.30])
    assert regret_under_budget([1, 2, 3, 4], acc, params, [20, 40]) == [0, 0]
    assert regret_under_budget(scores, acc, params, [5]) != regret_under_budget(scores, acc, params, [5])  # nan: none fit
    assert top_k_hit_rate([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], k=2) == 0
    assert top_k_hit_rate([1, 2, 3, 9, 8, 7], [1, 2, 3, 4, 5, 6], k=3) == 1


def test_proxy_metrics_rank_correlations_follow_scipy():
    rng = np.random.default_rng(2)
    acc, score, params = rng.random(12), rng.random(12), rng.integers(100, 10_000, 12)
    m = proxy_metrics(list(score), list(acc), list(params), [5_000, 10_000])
    assert m["kendall_tau"] == pytest.approx(stats.kendalltau(score, acc).statistic)
    assert m["spearman_rho"] == pytest.approx(stats.spearmanr(score, acc).statistic)


def test_seed_reliability_is_the_agreement_between_seeds():
    params = [10, 20, 30, 40, 50]
    agree = [[0.5, 0.51], [0.6, 0.62], [0.7, 0.69], [0.8, 0.8], [0.9, 0.91]]
    r = seed_reliability(agree, params, [30, 50])
    assert r["seeds"] == 2 and r["kendall_tau"] == pytest.approx(1.0) and r["mean_regret"] == 0
    assert r["acc_sd_within_arch"] == pytest.approx(np.mean([np.std(a, ddof=1) for a in agree]))
    # seed 1 reverses seed 0's order: picking by one seed is judged badly by the other
    flip = [[0.5, 0.9], [0.6, 0.8], [0.7, 0.7], [0.8, 0.6], [0.9, 0.5]]
    r = seed_reliability(flip, params, [50])
    assert r["kendall_tau"] == pytest.approx(-1.0) and r["mean_regret"] == pytest.approx(0.4)
    assert seed_reliability([[0.5], [0.6]], [1, 2], [2]) == {}  # one seed: no ceiling to report


@pytest.fixture(scope="module")
def data(fashion_npz):
    return load_dataset(f"npz:{fashion_npz}", subset=160, seed=0)


def test_stratified_archs_span_the_size_range(data):
    from kdsearch.spaces import load_space

    space = load_space("resnet_cifar")
    archs = stratified_archs(space, data, 8, seed=0, pool=60, max_params=200_000)
    sizes = []
    for a in archs:
        with torch.device("meta"):
            sizes.append(sum(p.numel() for p in space.build(a, num_classes=10, in_channels=1).parameters()))
    assert sizes == sorted(sizes) and len({a.key for a in archs}) == 8
    assert max(sizes) <= 200_000 and max(sizes) / min(sizes) > 5  # spread, not clustered
    steps = np.diff(np.log(sizes))
    assert steps.max() < 4 * np.log(max(sizes) / min(sizes)) / 7  # no gap far wider than an even step
    with pytest.raises(UsageError, match="--archs"):
        stratified_archs(space, data, 8, seed=0, pool=60, max_params=4_000)


def test_edges_put_most_archs_near_the_budget_edges(data):
    from kdsearch.proxies import count_flops
    from kdsearch.spaces import load_space

    space = load_space("resnet_cifar")
    edges = (("params", 60_000.0), ("flops", 20e6))
    archs = stratified_archs(space, data, 12, seed=0, pool=500, max_params=120_000, edges=edges)
    assert len({a.key for a in archs}) == 12
    costs = []
    for a in archs:
        model = space.build(a, num_classes=10, in_channels=1)
        costs.append((sum(p.numel() for p in model.parameters()), count_flops(model, (1, 28, 28))))
    near = [sum(0.7 * e <= c[0 if r == "params" else 1] <= 1.1 * e for c in costs) for r, e in edges]
    assert all(n >= 4 for n in near)  # 8 of 12 drawn near the two edges, 4 each (the rest may land there too)
    plain = stratified_archs(space, data, 12, seed=0, pool=500, max_params=120_000)
    assert {a.key for a in plain} != {a.key for a in archs}
    with pytest.raises(UsageError, match="near the params edge"):
        stratified_archs(space, data, 12, seed=0, pool=300, max_params=120_000, edges=(("params", 500.0),))


@pytest.mark.parametrize("edge", ["latency=3", "params=", "params=-5", "flops=abc"])
def test_a_malformed_edge_is_refused(edge):
    with pytest.raises(UsageError, match="budget edge"):
        CorrelateConfig(edges=(edge,))


def test_bad_correlate_config():
    with pytest.raises(UsageError):
        CorrelateConfig(archs=3)
    with pytest.raises(UsageError):
        CorrelateConfig(teacher_inits=("imagenet",))
    with pytest.raises(UsageError, match="--repeats"):
        CorrelateConfig(repeats=0)


TINY_SPACE = """\
name: tiny_resnet
family: resnet_cifar
description: a tiny corner of resnet_cifar for tests
genes:
  depths: {choices: [1, 2], length: 3}
  widths: {choices: [8, 12, 16], length: 3}
  block: {choices: [basic]}
teacher: {depths: [2, 2, 2], widths: [12, 12, 12], block: basic}
"""


@pytest.mark.slow
def test_run_correlate_resumes_without_retraining(data, tmp_path, monkeypatch):
    import kdsearch.distill.stage as stage

    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    torch.manual_seed(0)
    teacher = load_teacher("resnet8", num_classes=data.num_classes, in_channels=data.in_channels)
    config = with_train(CorrelateConfig(space=str(space), archs=5, pool=60, proxy_batch=16, extra_batches=(8,),
                                        proxies=("diswot", "nwot")), epochs=1, batch_size=32, device="cpu")
    calls = []
    real = stage.distill_student
    monkeypatch.setattr(stage, "distill_student", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    first = run_correlate(teacher, data, tmp_path, config)
    assert len(calls) == 5 and first.trained_now == 5
    lines = (tmp_path / "students.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(0 <= json.loads(x)["val_acc"] <= 1 for x in lines)
    with open(tmp_path / "students.jsonl", "a") as f:
        f.write('{"key": "torn')  # a crash mid-write leaves a torn last line
    second = run_correlate(teacher, data, tmp_path, config)
    assert len(calls) == 5 and second.trained_now == 0
    names = {m["proxy"] for m in second.metrics}
    assert {"diswot", "nwot", "params", "flops", "diswot@pretrained", "diswot@b8", "diswot[w_rel=10]"} <= names
    assert (tmp_path / "scatter.png").stat().st_size > 1000 and (tmp_path / "correlate.csv").exists()
    params = next(m for m in second.metrics if m["proxy"] == "params")
    assert math.isnan(params["size_controlled_tau"])  # params has nothing beyond params
    assert second.reliability == {}

    # a second training seed: rows written before seeds were recorded count as the first seed,
    # so only the five new students train, and accuracy becomes the mean of the two
    lines = (tmp_path / "students.jsonl").read_text().splitlines()[:5]
    (tmp_path / "students.jsonl").write_text("".join(
        json.dumps({k: v for k, v in json.loads(x).items() if k != "seed"}) + "\n" for x in lines))
    third = run_correlate(teacher, data, tmp_path, replace(config, repeats=2))
    assert len(calls) == 10 and third.trained_now == 5
    assert all(len(s["accs"]) == 2 and s["acc"] == pytest.approx(sum(s["accs"]) / 2) for s in third.students)
    assert any(s["accs"][0] != s["accs"][1] for s in third.students)  # the seed reaches the training
    assert third.reliability["seeds"] == 2 and -1 <= third.reliability["kendall_tau"] <= 1
    assert json.loads((tmp_path / "correlate.json").read_text())["reliability"] == third.reliability
    rows = [json.loads(x) for x in (tmp_path / "students.jsonl").read_text().splitlines()]
    assert sorted(r.get("seed", 0) for r in rows) == [0] * 5 + [1] * 5


def _curve_study(data, tmp_path):
    """A tiny space, a resnet8 teacher and a 5-arch study that logs learning curves every 2 steps."""
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    torch.manual_seed(0)
    teacher = load_teacher("resnet8", num_classes=data.num_classes, in_channels=data.in_channels)
    config = with_train(CorrelateConfig(space=str(space), archs=5, pool=60, proxy_batch=16, extra_batches=(),
                                        proxies=("diswot",), teacher_inits=("random",)),
                        epochs=1, batch_size=32, device="cpu", curve_every=2)
    return teacher, config


def test_run_correlate_keeps_each_students_learning_curve(data, tmp_path):
    teacher, config = _curve_study(data, tmp_path)
    run_correlate(teacher, data, tmp_path, config)
    students = [json.loads(x) for x in (tmp_path / "students.jsonl").read_text().splitlines()]
    curves = [json.loads(x) for x in (tmp_path / "curves.jsonl").read_text().splitlines()]
    assert [(c["key"], c["seed"]) for c in curves] == [(s["key"], s["seed"]) for s in students]
    for c in curves:
        steps = [p["step"] for p in c["steps"]]
        assert steps == list(range(1, len(steps) + 1)) and c["curve_every"] == 2
        assert [p["step"] for p in c["steps"] if "val_acc" in p] == steps[1::2]


def test_a_student_trained_by_its_caller_joins_the_study_and_is_not_trained_again(data, tmp_path, monkeypatch):
    import kdsearch.distill.stage as stage
    from kdsearch.spaces import load_space

    teacher, config = _curve_study(data, tmp_path)
    space = load_space(config.space)
    chosen = stratified_archs(space, data, 5, seed=config.seed, pool=60)[2]
    row = train_and_record(chosen, 0, space, teacher, data, tmp_path, config)
    assert (tmp_path / "students" / f"{zlib.crc32(chosen.key.encode()):08x}").is_dir()
    assert [json.loads(x) for x in (tmp_path / "students.jsonl").read_text().splitlines()] == [row]
    assert [json.loads(x)["key"] for x in (tmp_path / "curves.jsonl").read_text().splitlines()] == [chosen.key]
    calls = []
    real = stage.distill_student
    monkeypatch.setattr(stage, "distill_student", lambda *a, **k: calls.append(a[0].key) or real(*a, **k))
    result = run_correlate(teacher, data, tmp_path, config)
    assert result.trained_now == 4 and chosen.key not in calls and len(calls) == 4
    assert next(s for s in result.students if s["key"] == chosen.key)["test_acc"] == row["test_acc"]
