"""Parallel workers stop at exactly the requested COMPLETE count; storage URLs fail clearly; latency probe."""
from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch

from kdsearch.data import load_dataset
from kdsearch.errors import BudgetError, UsageError
from kdsearch.spaces.model_files import load_teacher
from kdsearch.search import SearchConfig, run_search
from kdsearch.search.objective import TrialObjective
from kdsearch.search.storage import get_storage

COMPLETE = optuna.trial.TrialState.COMPLETE


def _threaded_study(trials: int, admit: bool, seed: int) -> list[optuna.trial.FrozenTrial]:
    """4 threads on one study, each trial slow and of random length: the setting that overshoots."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    gate = TrialObjective(None, None, SearchConfig(trials=trials), None, None, None, study)
    gate.poll_s = 0.01
    rng = random.Random(seed)
    lock = threading.Lock()

    def objective(trial):
        if admit:
            gate._admit(trial)
        with lock:
            pause = rng.uniform(0.01, 0.05)
        time.sleep(pause)
        return trial.suggest_float("x", 0, 1)

    study.optimize(objective, n_jobs=4, n_trials=None,
                   callbacks=[optuna.study.MaxTrialsCallback(trials, states=(COMPLETE,))])
    return study.get_trials(deepcopy=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_admission_gives_exactly_the_requested_complete_trials(seed):
    trials = _threaded_study(10, admit=True, seed=seed)
    complete = [t for t in trials if t.state == COMPLETE]
    assert len(complete) == 10
    assert len({t.number for t in trials}) == len(trials)
    assert all(t.state in (COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)


def test_without_admission_threads_overshoot():
    """The control: MaxTrialsCallback alone lets running trials finish past the target."""
    overshoot = [sum(t.state == COMPLETE for t in _threaded_study(10, admit=False, seed=s)) for s in range(3)]
    assert max(overshoot) > 10


def test_a_trial_that_never_beat_is_failed_and_does_not_stall_the_study(tmp_path):
    """A worker killed between creating a trial and its first heartbeat leaves a RUNNING trial that
    Optuna never fails; the trials numbered after it waited on it for ever."""
    storage = get_storage(f"sqlite:///{tmp_path / 'orphan.db'}", heartbeat_s=1)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    orphan = study.ask()  # RUNNING, and no heartbeat thread: as if its worker died right here
    gate = TrialObjective(None, None, SearchConfig(trials=2), None, None, None, study)
    gate.poll_s = 0.05

    def objective(trial):
        gate._admit(trial)
        return trial.suggest_float("x", 0, 1)

    def optimize():
        study.optimize(objective, n_trials=None, callbacks=[optuna.study.MaxTrialsCallback(2, states=(COMPLETE,))])

    worker = threading.Thread(target=optimize, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the study stalled behind a trial that never recorded a heartbeat"
    trials = study.get_trials(deepcopy=False)
    assert trials[orphan.number].state == optuna.trial.TrialState.FAIL
    assert sum(t.state == COMPLETE for t in trials) == 2
    assert any(t.system_attrs.get("failed_trial") == orphan.number for t in trials)  # re-queued


def test_malformed_storage_url_is_a_usage_error():
    with pytest.raises(UsageError, match="not a database URL"):
        get_storage("study.db")
    with pytest.raises(UsageError, match="cannot open storage") as info:
        get_storage("postgresql+psycopg2://postgres@127.0.0.1:notaport/db")
    assert "\n" not in str(info.value)


def test_unreachable_server_is_a_usage_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UsageError, match="server runs") as info:
        get_storage(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/kd")
    assert "\n" not in str(info.value)


def test_workers_opening_a_fresh_study_together_all_get_it(tmp_path, open_storage_together):
    """Optuna creates its schema on first open without a lock; workers started together on a fresh
    database used to lose that race ('UNIQUE constraint failed: alembic_version')."""
    for round_ in range(3):
        outcomes = open_storage_together(f"sqlite:///{tmp_path / f'fresh{round_}.db'}")
        assert outcomes == ["ok"] * len(outcomes)


def test_heartbeat_storage_opens_without_experimental_warnings(tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_storage(f"sqlite:///{tmp_path / 'beat.db'}", heartbeat_s=5)
    assert [str(w.message) for w in caught] == []


TINY_SPACE = """\
name: tiny_resnet
family: resnet_cifar
description: a tiny corner of resnet_cifar for tests
genes:
  depths: {choices: [1, 2], length: 3}
  widths: {choices: [8, 12], length: 3}
  block: {choices: [basic]}
teacher: {depths: [2, 2, 2], widths: [12, 12, 12], block: basic}
"""


@pytest.fixture(scope="module")
def tiny(fashion_npz, tmp_path_factory):
    space = tmp_path_factory.mktemp("space") / "tiny.yaml"
    space.write_text(TINY_SPACE)
    data = load_dataset(f"npz:{fashion_npz}", subset=128, seed=0)
    torch.manual_seed(0)
    teacher = load_teacher("resnet8", num_classes=data.num_classes, in_channels=data.in_channels)
    return space, data, teacher


@pytest.mark.slow
def test_latency_objective_and_budget(tiny, tmp_path):
    space_file, data, teacher = tiny
    base = dict(space=str(space_file), trials=4, population=2, proxy_batch=16, seed=0)
    result = run_search(teacher, data, tmp_path / "a", SearchConfig(objectives=("diswot", "latency"), **base))
    assert all(r["latency_ms"] is not None and r["latency_ms"] > 0 for r in result.rows)
    with pytest.raises(BudgetError, match=r"meets --max-latency-ms 1e-06 \(fastest sampled: .* ms at batch 1"):
        run_search(teacher, data, tmp_path / "b", SearchConfig(max_latency_ms=1e-6, **base))
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_two_local_workers_on_sqlite(tiny, tmp_path):
    space_file, data, teacher = tiny
    config = SearchConfig(space=str(space_file), trials=6, population=2, proxy_batch=16, workers=2, seed=0)
    result = run_search(teacher, data, tmp_path, config)
    study = optuna.load_study(study_name="kdsearch", storage=f"sqlite:///{Path(tmp_path) / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    assert sum(t.state == COMPLETE for t in trials) == 6 == len(result.rows)
    assert len({t.number for t in trials}) == len(trials)
