"""The search stage: score candidates against the teacher and evolve them with Optuna."""
from __future__ import annotations

import csv
import io
import logging
import math
import random
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdsearch.arch import Arch
from kdsearch.data import Dataset, fixed_batch
from kdsearch.errors import BudgetError, SearchError, UsageError
from kdsearch.files import write_json, write_text
from kdsearch.models.teacher import Teacher
from kdsearch.progress import NULL_PROGRESS, Progress
from kdsearch.search.winner import pick_winner

__all__ = ["SearchConfig", "SearchResult", "run_search", "create_sampler", "COST_OBJECTIVES"]

COST_OBJECTIVES = ("params", "flops", "latency")  # minimised; every other objective is a proxy, maximised
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
    teacher_init: str = "pretrained"  # pretrained | random (DisWOT's reference procedure)
    pick: str = "best"  # best | knee
    seed: int = 0
    storage: str | None = None  # None: SQLite in the run directory
    study_name: str = "kdsearch"
    workers: int = 1

    def __post_init__(self) -> None:
        if self.trials <= 0:
            raise UsageError(f"--trials must be positive (got {self.trials})")
        if self.proxy_batch < 2:
            raise UsageError(f"--proxy-batch must be at least 2 (got {self.proxy_batch})")
        if self.population < 2:
            raise UsageError(f"--population must be at least 2 (got {self.population})")
        if self.workers <= 0:
            raise UsageError(f"--workers must be positive (got {self.workers})")
        for name, value in (("--max-params", self.max_params), ("--max-flops", self.max_flops),
                            ("--max-latency-ms", self.max_latency_ms)):
            if value is not None and value <= 0:
                raise UsageError(f"{name} must be positive (got {value})")
        if self.sampler not in SAMPLERS:
            raise UsageError(f"unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}")
        if self.pick not in {"best", "knee"}:
            raise UsageError(f"unknown --pick {self.pick!r}; use best or knee")
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


class _Objective:
    """Builds, measures and scores one trial's candidate; reuses scores of archs seen before."""

    def __init__(self, space, teacher_module, dataset: Dataset, config: SearchConfig, proxies, stats, batch, study,
                 progress: Progress) -> None:
        self.space, self.teacher, self.dataset, self.config = space, teacher_module, dataset, config
        self.proxies, self.stats, self.batch, self.study, self.progress = proxies, stats, batch, study, progress
        self.seen: dict[str, dict[str, Any]] = {}
        self.best = -math.inf

    def _refresh_seen(self) -> None:
        import optuna

        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            key = t.user_attrs.get("arch_key")
            if key and key not in self.seen:
                self.seen[key] = t.user_attrs

    def __call__(self, trial) -> tuple[float, ...]:
        from kdsearch.proxies import score_candidate

        arch = self.space.suggest(trial)
        key = arch.key
        if key not in self.seen:
            self._refresh_seen()
        attrs = self.seen.get(key)
        if attrs is None:
            costs = _cost_of(self.space, arch, self.dataset)
            if self.config.max_latency_ms is not None or "latency" in self.config.objectives:
                costs["latency"] = _latency_ms(self.space, arch, self.dataset)
            with torch.random.fork_rng(devices=[]):  # the same arch always gets the same initial weights
                torch.manual_seed(self.config.seed * 1_000_003 + zlib.crc32(key.encode()))
                student = self.space.build(arch, num_classes=self.dataset.num_classes, in_channels=self.dataset.in_channels)
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
        feasible = all(v <= 0 for v in violations.values())
        proxy_value = attrs["scores"][self.config.proxy]
        if feasible and proxy_value > self.best:
            self.best = proxy_value
        self.progress.advance("search", best=self.best)
        values = []
        for objective in self.config.objectives:
            values.append(float(attrs[objective]) if objective in COST_OBJECTIVES else float(attrs["scores"][objective]))
        return tuple(values) if len(values) > 1 else values[0]


def _latency_ms(space, arch: Arch, dataset: Dataset) -> float:
    """Median ONNX Runtime latency at batch 1 on this machine (cached per arch by the caller)."""
    import tempfile

    from kdsearch.export import export_onnx, latency_ms, ort_session

    model = space.build(arch, num_classes=dataset.num_classes, in_channels=dataset.in_channels).eval()
    h, w = dataset.image_size
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, torch.zeros(1, dataset.in_channels, h, w), Path(tmp) / "candidate.onnx")
        session, _ = ort_session(path, "cpu")
        return float(latency_ms(session, (1, dataset.in_channels, h, w), runs=30, warmup=5)["p50"])


def storage_url(config: SearchConfig, out_dir: Path) -> str:
    """``--storage`` or SQLite in the run directory."""
    return config.storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"


def open_study(config: SearchConfig, out_dir: Path, *, resume: bool):
    """Create the study, or load it with ``resume``; an existing study without ``resume`` is refused."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(config, out_dir)
    try:
        storage = optuna.storages.get_storage(url) if "://" in url else None
    except Exception as e:  # noqa: BLE001 - a malformed URL or an unreachable server
        raise UsageError(f"cannot open storage {url!r} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                         "check the URL (e.g. postgresql+psycopg2://user@host:5432/db) and that the server runs") from None
    if storage is None:
        raise UsageError(f"--storage {url!r} is not a database URL; use e.g. sqlite:///study.db or postgresql+psycopg2://...")
    directions = ["minimize" if o in COST_OBJECTIVES else "maximize" for o in config.objectives]
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
    parts = locate_parts(teacher_module, batch[0])
    stats = teacher_stats(proxies, teacher_module, batch, parts)

    study = open_study(config, out_dir, resume=resume)
    for arch in seed_archs or []:
        space.validate(arch)
        study.enqueue_trial(space.params(arch), user_attrs={"seeded": True}, skip_if_exists=True)
    if not study.trials:  # a fresh study (not a resumed one, not another worker's)
        for arch in initial[: max(0, config.population - len(seed_archs or []))]:
            study.enqueue_trial(space.params(arch), skip_if_exists=True)
    done = _count_complete(study)
    remaining = max(0, config.trials - done)
    progress.start("search", f"search {space.name}", config.trials)
    progress.advance("search", done)
    objective = _Objective(space, teacher_module, dataset, config, proxies, stats, batch, study, progress)
    if remaining:
        try:
            study.optimize(
                objective,
                callbacks=[optuna.study.MaxTrialsCallback(config.trials, states=(optuna.trial.TrialState.COMPLETE,))],
                n_trials=remaining if config.workers == 1 else None,
                catch=(),
            )
        except KeyboardInterrupt:
            from kdsearch.errors import Interrupted

            raise Interrupted(
                f"search stopped by Ctrl-C after {_count_complete(study)} trials; run the same command with --resume"
            ) from None
    progress.finish("search")
    return summarise_study(study, config, out_dir)


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
