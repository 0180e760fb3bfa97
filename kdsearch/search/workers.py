"""Worker processes: several processes on this machine fill one study through its storage.

Each worker opens the study by URL, with its own sampler seed, and runs trials until the study
holds ``config.trials`` COMPLETE ones (:class:`~kdsearch.search.objective.TrialObjective`
admits no more than that, whoever runs them).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from kdsearch.search.config import SearchConfig
from kdsearch.search.objective import CandidateShape, TrialObjective
from kdsearch.search.sampler import create_sampler
from kdsearch.search.storage import get_storage

__all__ = ["WorkerJob", "start_workers", "stop_workers", "optimize_until_full", "count_complete"]


def count_complete(study) -> int:
    """COMPLETE trials in the study, every worker's."""
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def optimize_until_full(study, objective: TrialObjective, config: SearchConfig, callbacks: list) -> None:
    """Run trials until the study holds ``config.trials`` COMPLETE ones (whoever ran them)."""
    import optuna

    stop = optuna.study.MaxTrialsCallback(config.trials, states=(optuna.trial.TrialState.COMPLETE,))
    if count_complete(study) < config.trials:
        study.optimize(objective, callbacks=[stop, *callbacks], n_trials=None, catch=())


@dataclass(frozen=True)
class WorkerJob:
    """Everything a spawned worker needs: picklable, no teacher (its statistics are enough)."""

    config: SearchConfig
    url: str
    shape: CandidateShape
    proxy_names: list[str]
    stats: dict[str, Any]
    batch: tuple[torch.Tensor, torch.Tensor]
    speed: Any = None  # the SpeedModel without its teacher: candidates' latencies are predicted, not timed


def _worker_main(job: WorkerJob, index: int) -> None:
    """A spawned worker: open the study by URL and run trials until it is full."""
    import os

    import optuna

    from kdsearch.proxies import create_proxy
    from kdsearch.spaces import load_space

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // job.config.workers))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = job.config
    # A different sampler seed per worker: the same seed everywhere would propose the same candidates.
    sampler = create_sampler(replace(config, seed=config.seed + 7919 * index))
    storage = get_storage(job.url, config.heartbeat_s)
    study = optuna.load_study(study_name=config.study_name, storage=storage, sampler=sampler)
    proxies = {name: create_proxy(name) for name in job.proxy_names}
    objective = TrialObjective(load_space(config.space), job.shape, config, proxies, job.stats, job.batch, study,
                               job.speed)
    optimize_until_full(study, objective, config, [])


def start_workers(job: WorkerJob, count: int) -> list:
    """Start ``count`` worker processes (spawn: safe with threads and CUDA) beside this one."""
    if count <= 0:
        return []
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker_main, args=(job, i + 1), daemon=True) for i in range(count)]
    for p in workers:
        p.start()
    return workers


def stop_workers(workers: list, *, terminate: bool) -> int:
    """Join (or terminate, then join) the worker processes; the number that failed."""
    for p in workers:
        if terminate and p.is_alive():
            p.terminate()
        p.join()
    return sum(p.exitcode != 0 for p in workers)
