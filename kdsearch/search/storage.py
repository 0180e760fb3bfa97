"""Where a study lives: opening an Optuna storage from a URL, surviving the schema race between
workers that open a fresh database together, and heart-beating running trials."""
from __future__ import annotations

import copy
import random
import time
import warnings
from pathlib import Path
from typing import Any

from kdsearch.errors import UsageError
from kdsearch.search.config import SearchConfig

__all__ = ["storage_url", "get_storage", "StaleTrials"]

_SCHEMA_RACE_TRIES = 8
_JITTER = random.Random()  # its own stream: seeded searches must not see the retries


def storage_url(config: SearchConfig, out_dir: Path) -> str:
    """``--storage`` or SQLite in the run directory."""
    return config.storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"


def _lost_schema_race(error: Exception) -> bool:
    """Optuna creates its tables and version row on first open without a lock, so workers opening
    a fresh database together collide ("table ... already exists", a duplicate version row);
    the loser only has to open again."""
    text = str(error)
    return "already exists" in text or ("alembic_version" in text and ("UNIQUE" in text or "duplicate key" in text))


def get_storage(url: str, heartbeat_s: int | None = None):
    """Optuna storage for ``url``; a malformed URL or an unreachable server is one clear UsageError.

    With ``heartbeat_s`` every running trial records a heartbeat; a trial silent for three
    heartbeats (its worker was killed) is failed and re-queued with the same parameters.
    """

    import optuna

    if "://" not in url:
        raise UsageError(f"--storage {url!r} is not a database URL; use e.g. sqlite:///study.db or postgresql+psycopg2://...")
    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": 60}}  # several local workers wait for the file lock instead of failing
    elif url.startswith("postgresql"):
        engine = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    for attempt in range(_SCHEMA_RACE_TRIES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the heartbeat API is "experimental" in Optuna 5
                beat: dict[str, Any] = {}
                if heartbeat_s is not None:
                    beat = {"heartbeat_interval": heartbeat_s, "grace_period": 3 * heartbeat_s,
                            "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)}
                return optuna.storages.get_storage(optuna.storages.RDBStorage(url, engine_kwargs=engine, **beat))
        except Exception as e:  # noqa: BLE001 - a malformed URL or an unreachable server
            if _lost_schema_race(e) and attempt + 1 < _SCHEMA_RACE_TRIES:
                time.sleep(_JITTER.uniform(0.05, 0.3) * (attempt + 1))
                continue
            error = e
            break
    first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
    raise UsageError(f"cannot open storage {url!r} ({type(error).__name__}: {first}); check the URL "
                     "(e.g. postgresql+psycopg2://user@host:5432/db) and that the server runs and accepts you") from None


class StaleTrials:
    """Fails (and so re-queues) the running trials whose worker died.

    Optuna fails a trial whose heartbeat went stale, but never one that has no heartbeat at all:
    a worker killed between creating a trial and its first heartbeat leaves it RUNNING for ever,
    and the workers waiting on it with it. So a trial this object has seen running without a
    heartbeat for the grace period (timed here, so clocks of other machines do not matter) is
    failed too.
    """

    def __init__(self) -> None:
        self._silent_since: dict[int, float] = {}  # trial id -> when first seen without a heartbeat

    def fail(self, study) -> None:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" in Optuna 5
            optuna.storages.fail_stale_trials(study)
        storage = study._storage
        interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        if interval is None:
            return
        now = time.monotonic()
        silent = _never_beat(study)
        self._silent_since = {t: self._silent_since.get(t, now) for t in silent}
        dead = [t for t, since in self._silent_since.items() if now - since > 3 * interval]
        failed = []
        for trial_id in dead:
            try:
                if storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
                    failed.append(trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # it finished after all, or another worker failed it first
            del self._silent_since[trial_id]
        callback = storage.get_heartbeat_stale_trial_callback()
        for trial_id in failed if callback is not None else []:
            callback(study, copy.deepcopy(storage.get_trial(trial_id)))


def _never_beat(study) -> set[int]:
    """Ids of the study's RUNNING trials with no heartbeat recorded (RDB storages only)."""
    import optuna
    import sqlalchemy
    from optuna.storages._rdb import models

    backend = getattr(study._storage, "_backend", study._storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        return set()
    with sqlalchemy.orm.Session(backend.engine) as session:
        rows = (session.query(models.TrialModel.trial_id)
                .outerjoin(models.TrialHeartbeatModel, models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study._study_id,
                        models.TrialModel.state == optuna.trial.TrialState.RUNNING,
                        models.TrialHeartbeatModel.trial_id.is_(None))
                .all())
    return {row[0] for row in rows}
