"""The search stage's orchestration: open the study, seed its first generation, run trials here
and in worker processes until it is full, then summarise it.

Where the rest lives (the split follows Optuna's own ``storages/`` vs ``samplers/``):

- :mod:`kdsearch.search.config`: :class:`SearchConfig` and the names it accepts (torch-free);
- :mod:`kdsearch.search.storage`: opening a storage from a URL, the schema-race retry, heartbeats;
- :mod:`kdsearch.search.sampler`: the Optuna sampler named by ``--sampler``;
- :mod:`kdsearch.search.objective`: scoring one trial, budgets, the objective directions;
- :mod:`kdsearch.search.workers`: the worker processes that share the study;
- :mod:`kdsearch.search.winner`: the winner rule, the leaderboard order and the reason;
- :mod:`kdsearch.search.summary`: leaderboard.csv, winner.json, pareto.png, :class:`SearchResult`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

from kdsearch.arch import Arch
from kdsearch.data import Dataset, fixed_batch
from kdsearch.errors import SearchError, UsageError
from kdsearch.models.teacher import Teacher
from kdsearch.progress import NULL_PROGRESS, Progress
from kdsearch.search.config import COST_OBJECTIVES, SearchConfig
from kdsearch.search.objective import CandidateShape, TrialObjective, feasible_samples, objective_directions
from kdsearch.search.sampler import create_sampler
from kdsearch.search.speed import SpeedModel
from kdsearch.search.storage import get_storage, storage_url
from kdsearch.search.summary import SearchResult, summarise_study
from kdsearch.search.workers import WorkerJob, count_complete, optimize_until_full, start_workers, stop_workers

__all__ = ["run_search", "open_study", "measure_speed", "COST_OBJECTIVES", "objective_directions"]


def open_study(config: SearchConfig, out_dir: Path, *, resume: bool):
    """Create the study, or load it with ``resume``; an existing study without ``resume`` is refused."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(config, out_dir)
    storage = get_storage(url, config.heartbeat_s)
    directions = objective_directions(config)
    existing = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if config.study_name in existing and not resume:
        raise UsageError(
            f"study {config.study_name!r} already exists in {url}; add --resume to continue it or --force to start over"
        )
    return optuna.create_study(
        study_name=config.study_name,
        storage=storage,
        sampler=create_sampler(config),
        directions=directions,
        load_if_exists=True,
    )


def run_search(
    teacher: Teacher,
    dataset: Dataset,
    out_dir: Path,
    config: SearchConfig,
    *,
    resume: bool = False,
    seed_archs: list[Arch] | None = None,
    progress: Progress = NULL_PROGRESS,
) -> SearchResult:
    """Search ``config.space`` for the student that scores best against ``teacher``.

    Writes ``study.db`` (unless ``--storage``), ``leaderboard.csv``, ``winner.json`` and
    ``pareto.png`` to ``out_dir``. Trials already complete count toward ``config.trials``.
    """
    from kdsearch.models.features import locate_parts
    from kdsearch.proxies import create_proxy, teacher_stats
    from kdsearch.proxies.scoring import largest_candidate, proxy_batch_that_fits
    from kdsearch.spaces import load_space
    from kdsearch.spaces.candidates import build_candidate

    space = load_space(config.space)
    proxy_names = list(dict.fromkeys(o for o in config.objectives if o not in COST_OBJECTIVES))
    proxies = {name: create_proxy(name) for name in proxy_names}
    speed = measure_speed(teacher.exportable() if config.timed else teacher.module, space, dataset, config, progress)
    # The first generation is drawn from inside the budget, so evolution starts where the winner must be.
    initial, feasible_fraction = feasible_samples(space, dataset, config, wanted=config.population, speed=speed)
    if config.max_params is not None or config.max_flops is not None or speed is not None:
        progress.note(f"{feasible_fraction:.0%} of sampled {space.name} candidates meet the budget")

    teacher_module = teacher.module if config.teacher_init == "pretrained" else teacher.fresh_copy(config.seed)
    # the proxy batch must fit in memory for the teacher and the first generation's largest candidate,
    # in each of the --workers processes that score at once
    largest = build_candidate(space, largest_candidate(space, initial, dataset), dataset.num_classes,
                              dataset.in_channels, config.seed)
    proxy_batch = proxy_batch_that_fits([teacher_module, largest], dataset, config.proxy_batch, config.seed,
                                        processes=config.workers, progress=progress)
    batch = fixed_batch(dataset, proxy_batch, config.seed)
    parts = locate_parts(teacher_module, batch[0], feature=config.teacher_feature, classifier=config.teacher_classifier)
    stats = teacher_stats(proxies, teacher_module, batch, parts)

    out_dir.mkdir(parents=True, exist_ok=True)  # after the checks above: a refused search leaves nothing
    study = open_study(config, out_dir, resume=resume)
    fresh = not study.trials  # not a resumed study, not another worker's
    for arch in seed_archs or []:
        space.validate(arch, dataset.image_size)
        study.enqueue_trial(space.params(arch), user_attrs={"seeded": True}, skip_if_exists=True)
    if fresh:
        for arch in initial[: max(0, config.population - len(seed_archs or []))]:
            study.enqueue_trial(space.params(arch), skip_if_exists=True)
    done = count_complete(study)
    progress.start("search", f"search {space.name}", config.trials)
    progress.advance("search", done)
    shape = CandidateShape(dataset.num_classes, dataset.in_channels, tuple(dataset.image_size))
    objective = TrialObjective(space, shape, config, proxies, stats, batch, study, speed)
    if done < config.trials:
        job = WorkerJob(config, storage_url(config, out_dir), shape, proxy_names, stats, batch,
                        replace(speed, teacher_module=None) if speed is not None else None)
        workers = start_workers(job, config.workers - 1)
        ctrl_c = _CtrlC()
        try:
            with ctrl_c:
                optimize_until_full(study, objective, config, [_ProgressCallback(progress, config, done), ctrl_c])
            if ctrl_c.pressed:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            from kdsearch.errors import Interrupted

            stop_workers(workers, terminate=True)
            raise Interrupted(
                f"search stopped by Ctrl-C after {count_complete(study)} trials; run the same command with --resume"
            ) from None
        except BaseException:
            stop_workers(workers, terminate=True)
            raise
        failed = stop_workers(workers, terminate=False)
        if failed and count_complete(study) < config.trials:
            raise SearchError(f"{failed} search worker(s) failed and the study has {count_complete(study)} of "
                              f"{config.trials} trials; run the same command with --resume")
    progress.finish("search")
    return summarise_study(study, config, out_dir, speed=speed, space=space, shape=shape, note=progress.note)


def measure_speed(teacher_module, space, dataset: Dataset, config: SearchConfig,
                  progress: Progress = NULL_PROGRESS) -> SpeedModel | None:
    """The teacher's timing and the space's latency model when the budgets need latencies, else None."""
    if not config.timed:
        return None
    speed = SpeedModel.measure(teacher_module, space, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                               image_size=tuple(dataset.image_size), config=config)
    progress.note(speed.describe())
    return speed


class _CtrlC:
    """Turn Ctrl-C into a clean stop after the running trial: a KeyboardInterrupt raised inside
    Optuna's trial bookkeeping can leave it in a broken state, so the signal only sets a flag
    and this callback calls ``study.stop()``."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous = None

    def __enter__(self) -> "_CtrlC":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        self.pressed = True

    def __exit__(self, *exc: object) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def __call__(self, study, trial) -> None:
        if self.pressed:
            study.stop()


class _ProgressCallback:
    """Reports the study's COMPLETE count (every worker's trials) and the best feasible score."""

    def __init__(self, progress: Progress, config: SearchConfig, done: int) -> None:
        self.progress, self.config, self.reported, self.best = progress, config, done, -math.inf

    def __call__(self, study, trial) -> None:
        import optuna

        if trial.state == optuna.trial.TrialState.COMPLETE and "scores" in trial.user_attrs:
            if all(v <= 0 for v in (trial.constraints or {}).values()):
                self.best = max(self.best, trial.user_attrs["scores"][self.config.proxy])
        done = min(count_complete(study), self.config.trials)
        self.progress.advance("search", max(0, done - self.reported), best=self.best)
        self.reported = max(self.reported, done)


logging.getLogger("optuna").setLevel(logging.WARNING)
