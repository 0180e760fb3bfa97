"""Where a study lives: opening an Optuna storage from a URL, surviving the schema race between
workers that open a fresh database together, and heart-beating running trials."""
from __future__ import annotations

import random
import time
import warnings
from pathlib import Path
from typing import Any

from kdsearch.errors import UsageError
from kdsearch.search.config import SearchConfig

__all__ = ["storage_url", "get_storage", "fail_stale_trials"]

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


def fail_stale_trials(study) -> None:
    """Fail (and so re-queue) the running trials whose worker stopped heart-beating."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental" in Optuna 5
        optuna.storages.fail_stale_trials(study)
