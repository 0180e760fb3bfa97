"""Distributed search on a real PostgreSQL: exact trial counts, no lost or duplicate trials, killed workers."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch
from pg_server import admin_connection

from kdsearch.data import load_dataset
from kdsearch.spaces.model_files import load_teacher
from kdsearch.search import SearchConfig, run_search

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

COMPLETE, PRUNED, FAIL, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                                   optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING)
SPACE = """\
name: tiny_resnet
family: resnet_cifar
description: a tiny corner of resnet_cifar for tests
genes:
  depths: {choices: [1, 2, 3], length: 3}
  widths: {choices: [8, 12, 16], length: 3}
  block: {choices: [basic]}
teacher: {depths: [2, 2, 2], widths: [12, 12, 12], block: basic}
"""


@pytest.fixture(scope="module")
def space_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(SPACE)
    return path


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, its connections closed on return: polled every 0.2 s, an undisposed storage per
    call holds its connection until garbage collection, and on a loaded machine ran the server out of them."""
    storage = optuna.storages.RDBStorage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()


def _connections(url: str) -> int:
    """Client connections open to the database of ``url``."""
    name = url.rsplit("/", 1)[1]
    conn = admin_connection(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,))
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_polling_a_study_leaves_no_connection_open(pg_url):
    """The killed-worker test polls the study hundreds of times beside three workers, on a server of
    100 connections."""
    storage = optuna.storages.RDBStorage(pg_url)
    optuna.create_study(study_name="polled", storage=storage)
    storage.engine.dispose()
    before = _connections(pg_url)
    for _ in range(30):
        _trials(pg_url, "polled")
    assert _connections(pg_url) <= before


def test_workers_opening_a_fresh_database_together_all_get_it(pg_url, open_storage_together):
    assert open_storage_together(pg_url) == ["ok"] * 6


def test_four_local_workers_complete_exactly_the_requested_trials(pg_url, fashion_npz, space_file, tmp_path):
    data = load_dataset(f"npz:{fashion_npz}", subset=128, seed=0)
    torch.manual_seed(0)
    teacher = load_teacher("resnet8", num_classes=data.num_classes, in_channels=data.in_channels)
    config = SearchConfig(space=str(space_file), trials=10, population=4, proxy_batch=16, workers=4, seed=0,
                          storage=pg_url, study_name="four")
    result = run_search(teacher, data, tmp_path, config)
    trials = _trials(pg_url, "four")
    assert sum(t.state == COMPLETE for t in trials) == 10 == len(result.rows)
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # none duplicated, none lost
    assert all(t.state in (COMPLETE, PRUNED) for t in trials)  # at most a surplus was pruned, nothing failed
    assert sum(t.state == PRUNED for t in trials) <= 3


WORKER = """\
import sys, torch
from pathlib import Path
from kdsearch.data import load_dataset
from kdsearch.spaces.model_files import load_teacher
from kdsearch.search import SearchConfig, run_search
data = load_dataset("npz:" + sys.argv[1], subset=128, seed=0)
torch.manual_seed(0)
teacher = load_teacher("resnet8", num_classes=data.num_classes, in_channels=data.in_channels)
config = SearchConfig(space=sys.argv[2], trials=int(sys.argv[3]), population=4, proxy_batch=32, seed=int(sys.argv[5]),
                      storage=sys.argv[4], study_name="killed", heartbeat_s=2)
if len(sys.argv) > 7:  # the victim: once it has scored a candidate, it holds its trial RUNNING until killed
    import time
    import kdsearch.proxies
    score = kdsearch.proxies.score_candidate

    def hold(*args, **kwargs):
        scores = score(*args, **kwargs)
        Path(sys.argv[7]).write_text("in a trial")
        time.sleep(3600)
        return scores

    kdsearch.proxies.score_candidate = hold
run_search(teacher, data, Path(sys.argv[6]), config, resume=True)
"""


def test_killed_worker_leaves_the_study_to_the_others(pg_url, fashion_npz, space_file, tmp_path):
    """Independent processes (as on several machines) join one study; SIGKILL one mid-search."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    trials = 12
    optuna.create_study(study_name="killed", storage=pg_url, directions=["maximize", "minimize"])

    marker = tmp_path / "victim-in-trial"

    def start(i: int, *hold: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), str(fashion_npz), str(space_file), str(trials), pg_url,
                                 str(i), str(tmp_path / f"w{i}"), *hold], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    # The victim holds its first scored trial RUNNING, so it is surely killed mid-trial. Polling the study for a
    # RUNNING trial instead missed the moment once on a loaded machine: the victim finished and exited 0.
    workers = [start(0, str(marker)), start(1), start(2)]
    victim = workers[0]
    deadline = time.monotonic() + 240
    while not marker.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the victim never reached a trial"
    victim.send_signal(signal.SIGKILL)
    outputs = [w.communicate(timeout=400)[0].decode() for w in workers[1:]]
    assert [w.returncode for w in workers[1:]] == [0, 0], outputs
    assert victim.wait(timeout=30) == -signal.SIGKILL
    final = _trials(pg_url, "killed")
    assert sum(t.state == COMPLETE for t in final) == trials
    assert not [t for t in final if t.state == RUNNING]
    assert sorted(t.number for t in final) == list(range(len(final)))
    retried = {t.system_attrs.get("failed_trial") for t in final}
    assert [t.state for t in final].count(FAIL) == 1  # the victim's held trial
    for t in final:
        if t.state == FAIL:  # the victim's stale trial: failed by heartbeat and re-queued
            assert t.number in retried
    winner = json.loads((tmp_path / "w1" / "winner.json").read_text())
    assert winner["complete_trials"] == trials


RACE_CONFIG = """\
search: {trials: 8, population: 4, proxy_batch: 16, heartbeat_s: 2, study_name: raced}
distill: {epochs: 1, batch_size: 16, augment: false}
"""


def test_two_workers_race_one_study(pg_url, fashion_npz, tmp_path):
    """Two `kdsearch search --race` processes (as on two machines: own run directories) join one
    PostgreSQL study: the finalists are enqueued once, every rung is trained once, both agree."""
    config = tmp_path / "run.yaml"
    config.write_text(RACE_CONFIG)

    def start(i: int) -> subprocess.Popen:
        args = ["search", "--teacher", "resnet8", "--data", f"npz:{fashion_npz}", "--subset", "1024", "--config",
                str(config), "--race", "3", "--storage", pg_url, "--resume", "--out", str(tmp_path / f"w{i}"), "--quiet"]
        return subprocess.Popen([sys.executable, "-m", "kdsearch", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    workers = [start(i) for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-2000:]
    race = optuna.load_study(study_name="raced-race", storage=pg_url).get_trials(deepcopy=False)
    finalists = [t for t in race if "finalist" in t.user_attrs]
    assert sorted(t.user_attrs["finalist"] for t in finalists) == [0, 1, 2]  # enqueued once, not once per worker
    # a worker that asked just after the other took the last waiting finalist got a fresh trial, pruned unused
    assert all(t.state == PRUNED and not t.user_attrs for t in race if t not in finalists)
    assert [t.state for t in race].count(COMPLETE) == 3  # three finalists, eta 3: one rung, all finish it
    trained = [p.parent.name for i in range(2) for p in (tmp_path / f"w{i}" / "race").glob("finalist-*/last.ckpt")]
    assert len(trained) == len(set(trained)) == 3  # each finalist trained by one worker only
    records = [json.loads((tmp_path / f"w{i}" / "search" / "winner.json").read_text()) for i in range(2)]
    assert records[0]["arch"] == records[1]["arch"]
    assert records[0]["race"]["finalists"] == records[1]["race"]["finalists"]
    assert records[0]["complete_trials"] == records[1]["complete_trials"] == 8
