"""The search stage: score candidates against the teacher and evolve them with Optuna."""
from __future__ import annotations

import csv
import io
import logging
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from kdsearch.arch import Arch
from kdsearch.data import Dataset, fixed_batch
from kdsearch.errors import BudgetError, SearchError, UsageError
from kdsearch.files import write_json, write_text
from kdsearch.models.teacher import Teacher
from kdsearch.progress import NULL_PROGRESS, Progress
from kdsearch.search.winner import PICK_RULES, pick_winner

__all__ = [
    "SearchConfig",
    "SearchResult",
    "run_search",
    "create_sampler",
    "get_storage",
    "open_study",
    "storage_url",
    "candidate_latency_ms",
    "COST_OBJECTIVES",
]

COST_OBJECTIVES = ("params", "flops", "latency")  # minimised (see objective_directions); every other objective is a proxy, maximised
SAMPLERS = ("evolution", "nsga3", "tpe", "random")


@dataclass(frozen=True)
class SearchConfig:
    """What one search asks for; saved as ``run.yaml``'s ``search`` section."""

    space: str = "resnet_cifar"
    proxy: str = "diswot"  # the proxy that picks the winner
    objectives: tuple[str, ...] = ("diswot", "params")  # a proxy, then optional costs: a Pareto search
    trials: int = 60
    sampler: str = "evolution"
    population: int = 16  # NSGA-II/III population size
    mutation_prob: float | None = None  # None: Optuna's default, 1/number of genes
    crossover_prob: float = 0.9
    max_params: int | None = None
    max_flops: int | None = None
    max_latency_ms: float | None = None
    proxy_batch: int = 64  # images scored per candidate: one fixed, seeded batch of real data
    teacher_init: str = "random"  # random (DisWOT's reference procedure; won both correlate studies) | pretrained
    teacher_feature: str | None = None  # module path of the teacher's last 4-D map (None: found automatically)
    teacher_classifier: str | None = None  # module path of its final nn.Linear (None: found automatically)
    pick: str = "largest"  # largest (most params within budget, proxy breaks ties) | best (highest proxy) | knee
    seed: int = 0
    storage: str | None = None  # None: SQLite in the run directory
    study_name: str = "kdsearch"
    workers: int = 1  # processes on this machine sharing the storage (other machines: same --storage with --resume)
    heartbeat_s: int = 10  # RDB storages: a trial whose worker is silent for 3x this is failed and retried

    def __post_init__(self) -> None:
        if self.trials <= 0:
            raise UsageError(f"--trials must be positive (got {self.trials})")
        if self.proxy_batch < 2:
            raise UsageError(f"--proxy-batch must be at least 2 (got {self.proxy_batch})")
        if self.population < 2:
            raise UsageError(f"--population must be at least 2 (got {self.population})")
        if self.workers <= 0:
            raise UsageError(f"--workers must be positive (got {self.workers})")
        if self.heartbeat_s <= 0:
            raise UsageError(f"heartbeat_s must be a positive number of seconds (got {self.heartbeat_s})")
        for name, value in (("--max-params", self.max_params), ("--max-flops", self.max_flops),
                            ("--max-latency-ms", self.max_latency_ms)):
            if value is not None and value <= 0:
                raise UsageError(f"{name} must be positive (got {value})")
        if self.sampler not in SAMPLERS:
            raise UsageError(f"unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}")
        if self.pick not in PICK_RULES:
            raise UsageError(f"unknown --pick {self.pick!r}; use {', '.join(PICK_RULES)}")
        if self.teacher_init not in {"pretrained", "random"}:
            raise UsageError(f"unknown --teacher-init {self.teacher_init!r}; use pretrained or random")
        if not self.objectives or self.objectives[0] in COST_OBJECTIVES:
            raise UsageError("--objectives must start with a proxy, e.g. diswot or diswot,params")
        if any(o in COST_OBJECTIVES for o in self.objectives[:1]) or len(set(self.objectives)) != len(self.objectives):
            raise UsageError("--objectives lists each objective once, a proxy first")
        if self.proxy != self.objectives[0]:
            raise UsageError(f"--proxy {self.proxy} must be the first objective (got {','.join(self.objectives)})")


@dataclass
class SearchResult:
    winner: Arch
    winner_row: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    feasible: int = 0
    storage: str = ""
    study_name: str = ""


def create_sampler(config: SearchConfig):
    """The Optuna sampler named by ``--sampler``, seeded."""
    import optuna

    if config.sampler == "evolution":
        return optuna.samplers.NSGAIISampler(
            population_size=config.population,
            mutation_prob=config.mutation_prob,
            crossover_prob=config.crossover_prob,
            seed=config.seed,
        )
    if config.sampler == "nsga3":
        return optuna.samplers.NSGAIIISampler(population_size=config.population, seed=config.seed)
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=config.seed, multivariate=True)
    return optuna.samplers.RandomSampler(seed=config.seed)


def _cost_of(space, arch: Arch, dataset: Dataset) -> dict[str, float]:
    """Params and FLOPs of a candidate (built on the meta device for params: no memory, no init)."""
    from kdsearch.proxies import count_flops, count_params

    model = space.build(arch, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    h, w = dataset.image_size
    return {"params": count_params(model), "flops": count_flops(model, (dataset.in_channels, h, w))}


def _violations(config: SearchConfig, costs: dict[str, float]) -> dict[str, float]:
    """Constraint values, feasible when <= 0 (relative, so budgets of any scale weigh alike)."""
    out = {}
    if config.max_params is not None:
        out["params"] = costs["params"] / config.max_params - 1.0
    if config.max_flops is not None:
        out["flops"] = costs["flops"] / config.max_flops - 1.0
    if config.max_latency_ms is not None and "latency" in costs:
        out["latency"] = costs["latency"] / config.max_latency_ms - 1.0
    return out


def feasible_samples(space, dataset: Dataset, config: SearchConfig, wanted: int, samples: int = 400) -> tuple[list[Arch], float]:
    """Sample the space before searching: up to ``wanted`` distinct archs within the params and
    FLOPs budgets, and the fraction of samples that met them.

    Fails at once (a :class:`BudgetError`, before any scoring) when no sample meets the budgets.
    """
    rng = random.Random(config.seed)
    smallest: dict[str, float] = {}
    found: list[Arch] = []
    seen: set[str] = set()
    ok = 0
    for _ in range(samples):
        arch = space.sample(rng)
        if arch.key in seen:
            continue
        seen.add(arch.key)
        with torch.device("meta"):  # parameter count without allocating or initialising
            model = space.build(arch, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
        costs = {"params": sum(p.numel() for p in model.parameters())}
        if config.max_flops is not None:
            costs = _cost_of(space, arch, dataset)
        for k, v in costs.items():
            smallest[k] = min(smallest.get(k, math.inf), v)
        if all(v <= 0 for v in _violations(config, costs).values()):
            ok += 1
            if len(found) < wanted:
                found.append(arch)
        elif config.max_params is None and config.max_flops is None:
            break
    if ok == 0:
        parts = []
        if config.max_params is not None:
            parts.append(f"--max-params {config.max_params:,} (smallest sampled: {int(smallest['params']):,})")
        if config.max_flops is not None and "flops" in smallest:
            parts.append(f"--max-flops {config.max_flops:,} (smallest sampled: {int(smallest['flops']):,})")
        raise BudgetError(
            f"no candidate of space {space.name} meets {' and '.join(parts)} in {len(seen)} samples; "
            "raise the budget or use a space with smaller members"
        )
    return found, ok / max(1, len(seen))


@dataclass(frozen=True)
class _Shape:
    """What candidates are built for: all a worker process needs of the dataset."""

    num_classes: int
    in_channels: int
    image_size: tuple[int, int]


class _Objective:
    """Builds, measures and scores one trial's candidate; reuses scores of archs seen before.

    Before any work a trial must be *admitted*: the COMPLETE trials plus the RUNNING trials
    numbered before it must be fewer than ``config.trials``. Trial numbers order trials across
    every worker, so the admitted trials never exceed the request: with N workers the study ends
    with exactly ``trials`` COMPLETE trials (a surplus trial is PRUNED, not scored).
    """

    poll_s = 0.5  # how often a trial waiting on earlier running trials looks again

    def __init__(self, space, dataset: Dataset | _Shape, config: SearchConfig, proxies, stats, batch, study) -> None:
        self.space, self.dataset, self.config = space, dataset, config
        self.proxies, self.stats, self.batch, self.study = proxies, stats, batch, study
        self.seen: dict[str, dict[str, Any]] = {}

    def _admit(self, trial) -> None:
        """Return when ``trial`` may run; raise TrialPruned when the study already has enough."""
        import optuna

        complete_state, running = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING
        while True:
            trials = self.study.get_trials(deepcopy=False, states=(complete_state, running))
            complete = sum(t.state == complete_state for t in trials)
            ahead = complete + sum(t.state == running and t.number < trial.number for t in trials)
            if ahead < self.config.trials:
                return
            if complete >= self.config.trials:
                raise optuna.TrialPruned(f"the study already has {complete} complete trials")
            # Earlier trials are still running; one of them may yet fail (a killed worker's is
            # failed once its heartbeat is stale), and then this trial is needed.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" in Optuna 5
                optuna.storages.fail_stale_trials(self.study)
            time.sleep(self.poll_s)

    def _refresh_seen(self) -> None:
        import optuna

        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            key = t.user_attrs.get("arch_key")
            if key and key not in self.seen:
                self.seen[key] = t.user_attrs

    def __call__(self, trial) -> tuple[float, ...]:
        from kdsearch.proxies import score_candidate
        from kdsearch.spaces.candidates import build_candidate

        self._admit(trial)
        # Optuna asks the sampler for relative params lazily, and an enqueued trial (a seeded or
        # in-budget first-generation candidate: every param fixed) never asks, so NSGA-II/III
        # would give it no generation and it would never breed. Asking puts it in the population.
        trial.relative_params  # noqa: B018
        arch = self.space.suggest(trial)
        key = arch.key
        if key not in self.seen:
            self._refresh_seen()
        attrs = self.seen.get(key)
        if attrs is None:
            costs = _cost_of(self.space, arch, self.dataset)
            if self.config.max_latency_ms is not None or "latency" in self.config.objectives:
                costs["latency"] = candidate_latency_ms(self.space, arch, self.dataset)
            student = build_candidate(self.space, arch, self.dataset.num_classes, self.dataset.in_channels, self.config.seed)
            scores = score_candidate(student, self.batch, self.proxies, self.stats, seed=self.config.seed)
            attrs = {"arch": arch.to_dict(), "arch_key": key, "scores": scores, **costs, "reused": False}
            self.seen[key] = attrs
        else:
            attrs = {**attrs, "reused": True}
        for name, value in attrs.items():
            trial.set_user_attr(name, value)
        violations = _violations(self.config, attrs)
        for name, value in violations.items():
            trial.set_constraint(name, value)
        values = []
        for objective in self.config.objectives:
            values.append(float(attrs[objective]) if objective in COST_OBJECTIVES else float(attrs["scores"][objective]))
        return tuple(values) if len(values) > 1 else values[0]


_LATENCY_CACHE: dict[tuple[str, int, int, tuple[int, int]], float] = {}  # per process: (arch key, K, C, HW) -> ms


def candidate_latency_ms(space, arch: Arch, dataset: Dataset | _Shape, *, runs: int = 30, warmup: int = 5) -> float:
    """Median ONNX Runtime (CPU) latency of ``arch`` at batch 1 on this machine, in ms; cached per arch.

    A throwaway probe: the TorchScript exporter (``dynamo=False``) into memory takes a fraction of
    a second where the dynamo exporter of :func:`kdsearch.export.export_onnx` takes several.
    """
    from kdsearch.export import latency_ms

    h, w = dataset.image_size
    cache_key = (arch.key, dataset.num_classes, dataset.in_channels, (h, w))
    if cache_key in _LATENCY_CACHE:
        return _LATENCY_CACHE[cache_key]
    import onnxruntime as ort

    model = space.build(arch, num_classes=dataset.num_classes, in_channels=dataset.in_channels).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; fine for a probe
        torch.onnx.export(model, (torch.zeros(1, dataset.in_channels, h, w),), buffer, dynamo=False,
                          input_names=["images"], output_names=["logits"])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    value = float(latency_ms(session, (1, dataset.in_channels, h, w), runs=runs, warmup=warmup)["p50"])
    _LATENCY_CACHE[cache_key] = value
    return value


def storage_url(config: SearchConfig, out_dir: Path) -> str:
    """``--storage`` or SQLite in the run directory."""
    return config.storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"


_SCHEMA_RACE_TRIES = 8
_JITTER = random.Random()  # its own stream: seeded searches must not see the retries


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


def objective_directions(config: SearchConfig) -> list[str]:
    """Proxies are maximised, costs minimised; except params under ``--pick largest``, which is
    maximised (within the budget): that rule takes the largest feasible candidate, so evolution
    should press towards the budget's edge, not away from it."""
    return ["maximize" if o not in COST_OBJECTIVES or (o == "params" and config.pick == "largest") else "minimize"
            for o in config.objectives]


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
    import optuna

    from kdsearch.models.features import locate_parts
    from kdsearch.proxies import create_proxy, teacher_stats
    from kdsearch.spaces import load_space

    space = load_space(config.space)
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = [o for o in config.objectives if o not in COST_OBJECTIVES]
    proxy_names = list(dict.fromkeys(unknown))
    proxies = {name: create_proxy(name) for name in proxy_names}
    # The first generation is drawn from inside the budget, so evolution starts where the winner must be.
    initial, feasible_fraction = feasible_samples(space, dataset, config, wanted=config.population)
    if config.max_params is not None or config.max_flops is not None:
        progress.note(f"{feasible_fraction:.0%} of sampled {space.name} candidates meet the budget")

    batch = fixed_batch(dataset, config.proxy_batch, config.seed)
    teacher_module = teacher.module if config.teacher_init == "pretrained" else teacher.fresh_copy(config.seed)
    parts = locate_parts(teacher_module, batch[0], feature=config.teacher_feature, classifier=config.teacher_classifier)
    stats = teacher_stats(proxies, teacher_module, batch, parts)

    study = open_study(config, out_dir, resume=resume)
    fresh = not study.trials  # not a resumed study, not another worker's
    for arch in seed_archs or []:
        space.validate(arch)
        study.enqueue_trial(space.params(arch), user_attrs={"seeded": True}, skip_if_exists=True)
    if fresh:
        for arch in initial[: max(0, config.population - len(seed_archs or []))]:
            study.enqueue_trial(space.params(arch), skip_if_exists=True)
    done = _count_complete(study)
    progress.start("search", f"search {space.name}", config.trials)
    progress.advance("search", done)
    shape = _Shape(dataset.num_classes, dataset.in_channels, tuple(dataset.image_size))
    objective = _Objective(space, shape, config, proxies, stats, batch, study)
    if done < config.trials:
        job = _WorkerJob(config, storage_url(config, out_dir), shape, proxy_names, stats, batch)
        helpers = _start_helpers(job, config.workers - 1)
        ctrl_c = _CtrlC()
        try:
            with ctrl_c:
                _optimize(study, objective, config, [_ProgressCallback(progress, config, done), ctrl_c])
            if ctrl_c.pressed:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            from kdsearch.errors import Interrupted

            _stop_helpers(helpers, terminate=True)
            raise Interrupted(
                f"search stopped by Ctrl-C after {_count_complete(study)} trials; run the same command with --resume"
            ) from None
        except BaseException:
            _stop_helpers(helpers, terminate=True)
            raise
        failed = _stop_helpers(helpers, terminate=False)
        if failed and _count_complete(study) < config.trials:
            raise SearchError(f"{failed} search worker(s) failed and the study has {_count_complete(study)} of "
                              f"{config.trials} trials; run the same command with --resume")
    progress.finish("search")
    return summarise_study(study, config, out_dir)


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


def _optimize(study, objective: _Objective, config: SearchConfig, callbacks: list) -> None:
    """Run trials until the study holds ``config.trials`` COMPLETE ones (whoever ran them)."""
    import optuna

    stop = optuna.study.MaxTrialsCallback(config.trials, states=(optuna.trial.TrialState.COMPLETE,))
    if _count_complete(study) < config.trials:
        study.optimize(objective, callbacks=[stop, *callbacks], n_trials=None, catch=())


class _ProgressCallback:
    """Reports the study's COMPLETE count (every worker's trials) and the best feasible score."""

    def __init__(self, progress: Progress, config: SearchConfig, done: int) -> None:
        self.progress, self.config, self.reported, self.best = progress, config, done, -math.inf

    def __call__(self, study, trial) -> None:
        import optuna

        if trial.state == optuna.trial.TrialState.COMPLETE and "scores" in trial.user_attrs:
            if all(v <= 0 for v in (trial.constraints or {}).values()):
                self.best = max(self.best, trial.user_attrs["scores"][self.config.proxy])
        done = min(_count_complete(study), self.config.trials)
        self.progress.advance("search", max(0, done - self.reported), best=self.best)
        self.reported = max(self.reported, done)


@dataclass(frozen=True)
class _WorkerJob:
    """Everything a spawned worker needs: picklable, no teacher (its statistics are enough)."""

    config: SearchConfig
    url: str
    shape: _Shape
    proxy_names: list[str]
    stats: dict[str, Any]
    batch: tuple[torch.Tensor, torch.Tensor]


def _worker_main(job: _WorkerJob, index: int) -> None:
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
    objective = _Objective(load_space(config.space), job.shape, config, proxies, job.stats, job.batch, study)
    _optimize(study, objective, config, [])


def _start_helpers(job: _WorkerJob, count: int) -> list:
    """Start ``count`` worker processes (spawn: safe with threads and CUDA) beside this one."""
    if count <= 0:
        return []
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    helpers = [context.Process(target=_worker_main, args=(job, i + 1), daemon=True) for i in range(count)]
    for p in helpers:
        p.start()
    return helpers


def _stop_helpers(helpers: list, *, terminate: bool) -> int:
    """Join (or terminate, then join) the worker processes; the number that failed."""
    for p in helpers:
        if terminate and p.is_alive():
            p.terminate()
        p.join()
    return sum(p.exitcode != 0 for p in helpers)


def _count_complete(study) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def summarise_study(study, config: SearchConfig, out_dir: Path) -> SearchResult:
    """Write leaderboard.csv, winner.json and pareto.png from the study's complete trials."""
    import optuna

    from kdsearch.report.plots import plot_pareto

    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        row = {
            "trial": t.number,
            "arch": json_dumps(t.user_attrs["arch"]),
            **{f"score_{k}": v for k, v in t.user_attrs["scores"].items()},
            "params": t.user_attrs["params"],
            "flops": t.user_attrs["flops"],
            "latency_ms": t.user_attrs.get("latency"),
            "feasible": all(v <= 0 for v in t.constraints.values()) if t.constraints else True,
            "reused": t.user_attrs.get("reused", False),
        }
        rows.append(row)
    if not rows:
        raise SearchError("the search finished with no complete trial; see the run log")
    unique = {r["arch"]: r for r in rows}
    feasible = [r for r in unique.values() if r["feasible"]]
    if not feasible:
        raise BudgetError("no searched candidate met the budget; raise the budget or search longer (--trials)")
    winner_row = pick_winner(feasible, f"score_{config.proxy}", config.pick, cost="params")
    winner = Arch.from_json(winner_row["arch"])
    write_text(out_dir / "leaderboard.csv", _to_csv(sorted(rows, key=lambda r: -r[f"score_{config.proxy}"])))
    write_json(
        out_dir / "winner.json",
        {
            "arch": winner.to_dict(),
            "rule": config.pick,
            "proxy": config.proxy,
            "score": winner_row[f"score_{config.proxy}"],
            "params": winner_row["params"],
            "flops": winner_row["flops"],
            "latency_ms": winner_row["latency_ms"],
            "trial": winner_row["trial"],
            "complete_trials": len(rows),
            "unique_candidates": len(unique),
            "feasible_candidates": len(feasible),
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        },
    )
    plot_pareto(list(unique.values()), winner_row, f"score_{config.proxy}", out_dir / "pareto.png")
    return SearchResult(winner, winner_row, rows, len(feasible), str(study._storage), study.study_name)


def json_dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


logging.getLogger("optuna").setLevel(logging.WARNING)
