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
from kdsearch.rundir import STUDY_DB
from kdsearch.search.config import SearchConfig

__all__ = ["storage_url", "get_storage", "StaleTrials", "GRACE_BEATS"]

GRACE_BEATS = 3  # a trial silent for this many heartbeats is taken for dead

_SCHEMA_RACE_TRIES = 8
_JITTER = random.Random()  # its own stream: seeded searches must not see the retries


def storage_url(config: SearchConfig, out_dir: Path) -> str:
    """``--storage`` or SQLite in the run directory."""
    return config.storage or f"sqlite:///{(out_dir / STUDY_DB).resolve()}"


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
                    beat = {"heartbeat_interval": heartbeat_s, "grace_period": GRACE_BEATS * heartbeat_s,
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
    heartbeat for the storage's grace period (timed here, so clocks of other machines do not
    matter) is failed too.
    """

    def __init__(self) -> None:
        self._silent_since: dict[int, float] = {}  # trial id -> when first seen without a heartbeat

    def fail(self, study) -> None:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" in Optuna 5
            optuna.storages.fail_stale_trials(study)
        storage = study._storage
        backend = getattr(storage, "_backend", storage)
        if not isinstance(backend, optuna.storages.RDBStorage) or backend.heartbeat_interval is None:
            return
        grace = backend.grace_period or 2 * backend.heartbeat_interval  # Optuna's own default when unset
        now = time.monotonic()
        self._silent_since = {t: self._silent_since.get(t, now) for t in _never_beat(backend, study._study_id)}
        dead = [t for t, since in self._silent_since.items() if now - since > grace]
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


def _never_beat(backend, study_id: int) -> set[int]:
    """Ids of the study's RUNNING trials with no heartbeat recorded, from an RDB storage."""
    import optuna
    import sqlalchemy
    from optuna.storages._rdb import models

    with sqlalchemy.orm.Session(backend.engine) as session:
        rows = (session.query(models.TrialModel.trial_id)
                .outerjoin(models.TrialHeartbeatModel, models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study_id,
                        models.TrialModel.state == optuna.trial.TrialState.RUNNING,
                        models.TrialHeartbeatModel.trial_id.is_(None))
                .all())
    return {row[0] for row in rows}
