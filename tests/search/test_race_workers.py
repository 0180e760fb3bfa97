"""Several workers in one race: each reads the same finished race, and the heartbeat thread is
heard and joined. Training is replaced by fixed rung results, so only the race's bookkeeping runs."""
from __future__ import annotations

import csv
import json
import logging
import threading
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest

from kdsearch.arch import Arch
from kdsearch.distill.config import TrainConfig
from kdsearch.rundir import WinnerRecord
from kdsearch.search import race as race_module
from kdsearch.search.config import SearchConfig
from kdsearch.search.race import plan_race, run_race
from kdsearch.search.summary import record_race

LOSS = {0: 3.0, 1: 1.0, 2: 2.0}  # per finalist: its training loss per step; finalist 1 wins


def _rows() -> list[dict]:
    rows = []
    for i in range(3):
        arch = Arch("resnet_cifar", {"block": "basic", "depths": [1 + i, 1, 1], "widths": [8 + 8 * i, 8, 8]})
        rows.append({"trial": i, "arch": json.dumps(arch.to_dict(), sort_keys=True, separators=(",", ":")),
                     "score_diswot": 1.0 - i / 10, "params": 1000 + i, "flops": 10, "feasible": True})
    return rows


def _search_dir(path: Path, rows: list[dict]) -> Path:
    """A search folder as the search leaves it: leaderboard.csv and winner.json."""
    path.mkdir(parents=True)
    with open(path / "leaderboard.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    first = rows[0]
    WinnerRecord(arch=json.loads(first["arch"]), rule="largest", proxy="diswot", score=first["score_diswot"],
                 params=first["params"], flops=first["flops"], latency_ms=None, trial=0, complete_trials=3,
                 unique_candidates=3, feasible_candidates=3, config={}).save(path / WinnerRecord.FILE)
    return path


def test_a_worker_that_does_not_own_the_winner_waits_for_its_owner(tmp_path, monkeypatch):
    """The top rung closes when every finalist has reported it; its owner records it complete a moment
    later. A worker that read the race in between saw no complete winner: record_race's StopIteration,
    and a race.json unlike the owner's. Here worker a owns every finalist and b joins the race late."""
    # heartbeats far apart: a loaded machine must not make the blocked owner look dead (it is re-queued then)
    config = SearchConfig(storage=f"sqlite:///{tmp_path / 'race.db'}", study_name="two", heartbeat_s=10, race=3,
                          race_eta=3, race_budget=1.25, proxy="diswot", pick="largest")
    train_config = TrainConfig(epochs=1, batch_size=16)
    dataset = SimpleNamespace(train=range(1600))  # 100 steps of one distillation
    top = plan_race(3, 3, 100, 1.25).rungs[-1]

    a_owns_every_finalist = threading.Event()  # b joins then: on SQLite two workers may pop one waiting trial

    def train_rung(self, arch, finalist, rung, before=0.0):
        if rung == len(self.plan.rungs) - 1:
            a_owns_every_finalist.set()
        steps = self.plan.rungs[rung] - (self.plan.rungs[rung - 1] if rung else 0)
        return {"step": self.plan.rungs[rung], "val_acc": 0.5, "train_loss_sum": LOSS[finalist] * steps}

    # The owner records a finalist complete only once the other worker has seen the top rung closed and
    # then either finished reading the race or gone back to waiting: the moment a worker used to read a
    # race that had no winner yet.
    saw_top_closed: set[int] = set()
    moved_on: set[int] = set()  # threads that, after that, finished or slept
    changed = threading.Condition()
    rung_closed = race_module._rung_closed

    def watched_rung_closed(study, step):
        closed = rung_closed(study, step)
        if closed and step == top:
            with changed:
                saw_top_closed.add(threading.get_ident())
        return closed

    def moved_on_now() -> None:
        with changed:
            if threading.get_ident() in saw_top_closed:
                moved_on.add(threading.get_ident())
                changed.notify_all()

    def watched_sleep(seconds: float) -> None:
        moved_on_now()
        time.sleep(seconds)

    import optuna

    tell = optuna.Study.tell

    def late_tell(self, trial, values=None, state=None, **kwargs):
        if values is not None and state is None:
            with changed:
                assert changed.wait_for(lambda: moved_on - {threading.get_ident()}, timeout=120)
        return tell(self, trial, values, state, **kwargs)

    monkeypatch.setattr(race_module._Race, "train_rung", train_rung)
    monkeypatch.setattr(race_module, "_rung_closed", watched_rung_closed)
    monkeypatch.setattr(race_module, "_POLL_S", 0.05)
    monkeypatch.setattr(race_module, "time", SimpleNamespace(sleep=watched_sleep, monotonic=time.monotonic))
    monkeypatch.setattr(optuna.Study, "tell", late_tell)
    rows = _rows()
    results, errors = {}, []

    def worker(name: str) -> None:
        try:
            if name == "b":
                assert a_owns_every_finalist.wait(120)
            try:
                result = run_race(rows, None, dataset, tmp_path / name, config, train_config, resume=True)
            finally:
                moved_on_now()
            results[name] = result.record()
            record_race(_search_dir(tmp_path / name / "search", rows), result.record())  # what the pipeline does next
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(f"{name}: {type(e).__name__}: {e}\n{traceback.format_exc()}")

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [], "\n".join(errors)
    a, b = results["a"], results["b"]
    assert a["winner"] == b["winner"] == rows[1]["arch"]
    assert a["finalists"] == b["finalists"]
    assert [f["state"] for f in a["finalists"]] == ["complete"] * 3  # one rung (3 finalists, eta 3): all finish it


class _Storage:
    """Heartbeats go nowhere; the beat thread's fail (``fail``) or wait for the test (``hold``)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.beats = fail, []
        self.beating, self.release = threading.Event(), threading.Event()
        self.beat_thread: threading.Thread | None = None

    def get_heartbeat_interval(self) -> float:
        return 0.01

    def record_heartbeat(self, trial_id: int) -> None:
        if threading.current_thread() is not self.beat_thread:
            return  # the first beat, taken by add() in the caller's thread
        self.beats.append(trial_id)
        self.beating.set()
        if self.fail:
            raise ConnectionError("the database went away")
        self.release.wait()


def test_a_failing_heartbeat_is_logged(caplog):
    storage = _Storage(fail=True)
    with caplog.at_level(logging.WARNING, logger="kdsearch.search.race"):
        with race_module._Heartbeat(storage) as beat:
            storage.beat_thread = beat.thread
            beat.add(7)
            assert storage.beating.wait(60)
    assert any("heartbeat of trial 7 failed" in r.getMessage() and "database went away" in r.getMessage()
               for r in caplog.records)


def test_leaving_the_race_joins_the_heartbeat_thread():
    """No beat outlives the race: the thread has ended when the ``with`` block is left."""
    storage = _Storage()
    with race_module._Heartbeat(storage) as beat:
        storage.beat_thread = beat.thread
        beat.add(7)
        assert storage.beating.wait(60)
        threading.Timer(0.2, storage.release.set).start()  # the beat in flight ends a moment after the race
    assert not beat.thread.is_alive()


def test_a_finished_trial_is_no_longer_beaten():
    storage = _Storage()
    storage.release.set()
    with race_module._Heartbeat(storage) as beat:
        beat.add(7)
        beat.discard(7)
        assert beat.trial_ids == set()
