"""The race: after the training-free search, distil a few diverse finalists for real and let
successive halving decide; the winner's run goes on into its distillation (DESIGN.md, "Search =
training-free scores, then (optionally) a short-distillation race").

The rules, in the order they apply:

- **Filter, not ranker.** A candidate is *degenerate* when any of its proxy scores is not finite
  or its synflow score is 0 (no gradient path from input to output); it never reaches the race.
- **Finalists at the budget's edge.** Candidates within the budget are taken nearest the edge
  first, each measured in its budget's own unit (:func:`edge_share`: parameters, FLOPs, latency,
  or speed-up, measured where the search timed the candidate): size was the best single
  predictor of the distilled accuracy on the race benchmark (benchmarks/race_truth). A candidate
  whose genes differ from an already-taken finalist in fewer than ``MIN_GENE_DISTANCE`` genes
  (Hamming distance over the flattened genes) is skipped, so the race is not K near-copies of
  one shape; skipped candidates fill the field only when too few diverse ones exist.
- **Synchronous successive halving, counted in optimizer steps.** Rung ``k`` ends at
  ``r0 · eta**k`` steps; after every finalist still in the race has reached a rung, the best
  ``n // eta`` go on (ties: the earlier finalist), and the best at the top rung wins. No rung
  trains a single survivor: the halving stops while two or more are left.
- **The winner keeps training.** Every finalist trains the distillation's own recipe, its
  optimizer and learning-rate schedule planned for the whole distillation from step 0; a rung
  is where that run stops (:func:`kdsearch.distill.engine.fit`'s ``stop_step``). The winner's
  checkpoint is then the first ``r_top`` steps of its distillation, which goes on from there
  (``continuation`` in race.json), so what the race costs is every *other* finalist's steps.
  ``--race-budget`` is the whole of it, race and distillation together, in distillations
  (default 1.25); ``r0`` is the largest step count that keeps the total within it.
- **A seed no ground truth uses.** Finalists train with ``seed + RACE_SEED_OFFSET``, never one of
  the seeds ``kdsearch correlate`` judges students by, and they start as the distillation would
  (``--init``: from the teacher's weights where the family allows).
- **Ranked by training loss.** "Best" is, by default, the lowest sum of training losses over
  every step so far (TSE, Ru et al. 2021; White et al., NeurIPS 2021); ``--race-rank val`` ranks
  by validation top-1 instead.
- **Optuna's machinery.** The race is an Optuna study (``race/race.db``, or ``--storage`` with the
  study name ``<study_name>-race``); each finalist is an enqueued trial; each rung is a
  ``trial.report(score, steps)`` (:func:`rung_score`, higher is better) and ``trial.should_prune()``. The pruner is
  :class:`SynchronousHalvingPruner`: Optuna's ``SuccessiveHalvingPruner`` is asynchronous (it
  judges a trial against those that reported before it, so the first finalist run always
  reaches the top rung), which would break the budget when finalists train one after another.
- **One engine, resumable.** A finalist trains in ``race/finalist-<i>/``, each rung one call of
  :func:`kdsearch.distill.trainer.train` that resumes its checkpoint and stops at the rung's step.
  A rung's result is kept in the trial's user attributes, so a resumed race never trains a
  finished rung again; a worker that dies (its trial stops heart-beating) has its trial
  re-queued with those attributes, like the search.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from kdsearch.arch import Arch
from kdsearch.errors import SearchError, UsageError
from kdsearch.progress import NULL_PROGRESS, Progress
from kdsearch.rundir import CHECKPOINT
from kdsearch.search.config import RACE_RANKS, SearchConfig
from kdsearch.search.storage import GRACE_BEATS, StaleTrials, get_storage

__all__ = [
    "MIN_GENE_DISTANCE",
    "RACE_SEED_OFFSET",
    "RacePlan",
    "RaceResult",
    "SynchronousHalvingPruner",
    "edge_share",
    "gene_distance",
    "is_degenerate",
    "pick_finalists",
    "plan_race",
    "rung_score",
    "run_race",
    "training_loss_sum",
]

_log = logging.getLogger(__name__)

MIN_GENE_DISTANCE = 2  # finalists differ in at least this many genes: one changed gene is a near-copy
RACE_SEED_OFFSET = 1000  # finalists train with seed + this: kdsearch correlate's ground truth uses seed .. seed + repeats - 1
_POLL_S = 0.5  # how often a worker waiting on a rung looks at the study again


# ---- who races --------------------------------------------------------------------------------


def is_degenerate(row: dict[str, Any]) -> bool:
    """Whether a leaderboard row's scores show no gradient path: a non-finite score or synflow == 0."""
    scores = {k: v for k, v in row.items() if k.startswith("score_")}
    if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in scores.values()):
        return True
    return scores.get("score_synflow", 1.0) == 0


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key in sorted(value) for k, v in _leaves(value[key], f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _leaves(item, f"{prefix}{i}.").items()}
    return {prefix: value}


def gene_distance(a: Arch, b: Arch) -> int:
    """Hamming distance between the flattened genes of ``a`` and ``b`` (a missing gene differs)."""
    la, lb = _leaves(dict(a.genes)), _leaves(dict(b.genes))
    return sum(la.get(k) != lb.get(k) for k in set(la) | set(lb))


def _measured(row: dict[str, Any], measured: str, predicted: str) -> float:
    value = row.get(measured)
    return float(value if isinstance(value, (int, float)) and math.isfinite(value) else row[predicted])


def edge_share(row: dict[str, Any], config: SearchConfig) -> float:
    """How much of its tightest budget ``row`` uses (1.0: on the edge), each budget in its own unit:
    parameters, FLOPs, latency at batch 1, or speed-up at each timed batch (the target over the
    speed-up: a student twice as fast as asked uses half). Measured latency where the search timed
    the row, else predicted. Without a budget: the parameter count."""
    shares = []
    if config.max_params is not None:
        shares.append(row["params"] / config.max_params)
    if config.max_flops is not None:
        shares.append(row["flops"] / config.max_flops)
    if config.max_latency_ms is not None:
        shares.append(_measured(row, "ms_b1", "latency_ms") / config.max_latency_ms)
    if config.speedup is not None:
        shares += [config.speedup / _measured(row, f"speedup_b{b}", f"pred_speedup_b{b}")
                   for b in config.latency_batches]
    return max(shares) if shares else float(row["params"])


def pick_finalists(rows: Sequence[dict[str, Any]], config: SearchConfig, k: int,
                   min_distance: int = MIN_GENE_DISTANCE) -> list[dict[str, Any]]:
    """Up to ``k`` diverse, non-degenerate rows within the budget, nearest its edge first (see the module doc)."""
    unique = {r["arch"]: r for r in rows if r.get("feasible", True) and not is_degenerate(r)}
    ranked = sorted(unique.values(), key=lambda r: (-edge_share(r, config), -r["params"]))
    taken: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for row in ranked:
        if len(taken) == k:
            break
        arch = Arch.from_json(row["arch"])
        if all(gene_distance(arch, Arch.from_json(t["arch"])) >= min_distance for t in taken):
            taken.append(row)
        else:
            skipped.append(row)
    taken += skipped[: k - len(taken)]
    order = {r["arch"]: i for i, r in enumerate(ranked)}
    return sorted(taken, key=lambda r: order[r["arch"]])


# ---- what the race costs ----------------------------------------------------------------------


@dataclass(frozen=True)
class RacePlan:
    """The rungs of a race and what it may cost, in optimizer steps."""

    finalists: int
    eta: int
    rungs: tuple[int, ...]  # cumulative optimizer steps at the end of each rung: r0 · eta**k
    survivors: tuple[int, ...]  # finalists that train each rung: two or more in every one
    full_steps: int  # optimizer steps of one full distillation: the budget's unit
    budget: float  # race_budget: race and the winner's distillation together, in full distillations
    rank: str = "tse"  # what a rung ranks by (RACE_RANKS): rung_score

    @property
    def planned_steps(self) -> int:
        """Optimizer steps the whole race costs when every rung is run."""
        previous = (0, *self.rungs[:-1])
        return sum(n * (r - p) for n, r, p in zip(self.survivors, self.rungs, previous))

    @property
    def total_steps(self) -> int:
        """The race and the rest of the winner's distillation, which goes on from its top rung."""
        return self.planned_steps + self.full_steps - self.rungs[-1]


def plan_race(finalists: int, eta: int, full_steps: int, budget: float, rank: str = "tse") -> RacePlan:
    """The largest rungs ``r0 · eta**k`` for which the race plus the rest of the winner's
    distillation cost at most ``budget · full_steps`` steps; the halving stops while two are left."""
    survivors = [finalists]
    while survivors[-1] // eta >= 2:
        survivors.append(survivors[-1] // eta)
    top = len(survivors) - 1
    # what the race adds to one distillation: r0 · (sum_k n_k · (eta**k - eta**(k-1)) - eta**top), eta**-1 read as 0
    unit = sum(n * (eta**k - (eta ** (k - 1) if k else 0)) for k, n in enumerate(survivors)) - eta**top
    r0 = min(int((budget - 1) * full_steps // unit), full_steps // eta**top)
    if r0 < 1:
        need = 1 + unit / full_steps
        raise UsageError(
            f"a race of {finalists} finalists (eta {eta}) adds at least {unit} optimizer steps to the winner's "
            f"distillation of {full_steps}, so --race-budget (race and distillation together, in distillations) must "
            f"be at least {need:.3g}, not {budget:g}; raise --race-budget, lower --race, or distil longer"
        )
    return RacePlan(finalists, eta, tuple(r0 * eta**k for k in range(len(survivors))), tuple(survivors),
                    full_steps, budget, rank)


def training_loss_sum(rungs: Sequence[dict[str, float]]) -> float:
    """The sum of training losses over every step of ``rungs`` (a finalist's rungs so far): its TSE."""
    return float(sum(r["train_loss_sum"] for r in rungs))


def rung_score(rungs: Sequence[dict[str, float]], rank: str) -> float:
    """What a finalist is ranked by after the rungs it has trained, ``rungs`` (higher is better):
    minus its sum of training losses over every step so far (``tse``), or its validation top-1 at
    the last of them (``val``)."""
    if rank == "val":
        return float(rungs[-1]["val_acc"])
    return -training_loss_sum(rungs)


# ---- the pruner -------------------------------------------------------------------------------


def _halving_pruner_base():
    import optuna

    return optuna.pruners.BasePruner


class SynchronousHalvingPruner(_halving_pruner_base()):
    """Successive halving judged once a rung is closed: keep the best ``max(1, n // eta)`` of the
    ``n`` trials that reported at that rung's step (higher is better; ties keep the earlier
    finalist). Idempotent, so every worker may ask for every trial in any order.

    Call ``should_prune`` only after every trial still in the race has reported the rung
    (:func:`run_race` waits for that); at a step that is not a rung nothing is pruned.
    """

    def __init__(self, rungs: Sequence[int], eta: int) -> None:
        self.rungs, self.eta = tuple(rungs), eta

    def prune(self, study, trial) -> bool:
        import optuna

        step = trial.last_step
        if step is None or step not in self.rungs[:-1]:  # the top rung ends the race: nothing to prune
            return False
        reported = [t for t in study.get_trials(deepcopy=False)
                    if step in t.intermediate_values and t.state != optuna.trial.TrialState.FAIL]
        ranked = sorted(reported, key=lambda t: (-t.intermediate_values[step], t.user_attrs.get("finalist", t.number)))
        keep = {t.user_attrs.get("finalist", t.number) for t in ranked[: max(1, len(ranked) // self.eta)]}
        return trial.user_attrs.get("finalist", trial.number) not in keep


# ---- one rung of one finalist -----------------------------------------------------------------


def finalist_dir(race_dir: Path, finalist: int) -> Path:
    """Where finalist ``finalist`` trains: its checkpoint is where its last rung stopped."""
    return race_dir / f"finalist-{finalist}"


def train_to_step(arch: Arch, teacher, dataset, directory: Path, config, step: int,
                  space_spec: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train ``arch``'s run in ``directory`` on to optimizer step ``step``: the student is built and
    started as ``config.init`` says, then the run resumes from its checkpoint (if any) and stops there.
    The trainer's result, and what the student started from."""
    from kdsearch.distill.stage import build_student, start_student, student_space
    from kdsearch.distill.trainer import train

    student = build_student(arch, dataset, config.seed, space_spec)
    init = start_student(student, student_space(arch, space_spec), teacher, config.init, seed=config.seed)
    result = train(student, dataset, directory, config, teacher=teacher.module, resume=True, stop_step=step)
    return result, init


@dataclass
class _Race:
    """What every rung of every finalist needs; built once per process."""

    plan: RacePlan
    teacher: Any  # a kdsearch Teacher
    dataset: Any
    train_config: Any  # the distill TrainConfig, with the race's seed; a rung stops its run at the rung's step
    space_spec: str | None
    race_dir: Path
    progress: Progress
    stale: StaleTrials = field(default_factory=StaleTrials)  # fails a dead worker's trials

    def train_rung(self, arch: Arch, finalist: int, rung: int, before: float = 0.0) -> dict[str, Any]:
        """Distil ``arch`` on to the end of rung ``rung`` (from where its checkpoint stopped: the
        end of rung ``rung - 1``, whose training losses summed to ``before``); its val top-1 there,
        the sum of its training losses over the rung's steps, and what it started from (``init``)."""
        result, init = train_to_step(arch, self.teacher, self.dataset, finalist_dir(self.race_dir, finalist),
                                     self.train_config, self.plan.rungs[rung], self.space_spec)
        # the checkpoint keeps the run's summed loss: right after a kill between checkpoint and record, and
        # on a machine without the checkpoint (the run is trained again from step 0, the same seeded steps)
        return {"step": self.plan.rungs[rung], "val_acc": float(result["val_acc"]),
                "train_loss_sum": float(result["train_loss_total"]) - before, "init": init}


# ---- the study --------------------------------------------------------------------------------


@dataclass
class RaceResult:
    """What a finished race decided."""

    winner: dict[str, Any]  # the winning finalist's leaderboard row
    finalists: list[dict[str, Any]]  # per finalist: arch, finalist, rung_reached, rungs (val_acc, train_loss_sum)
    plan: RacePlan
    spent_steps: int
    storage: str = ""
    study_name: str = ""
    skipped: list[str] = field(default_factory=list)
    seed: int | None = None  # the seed the finalists trained with
    settings: dict[str, Any] = field(default_factory=dict)  # the finalists' TrainConfig: what a continuation must match

    def record(self) -> dict[str, Any]:
        """The race as winner.json and race.json record it."""
        won = next(f for f in self.finalists if f["state"] == "complete" and f["arch"] == self.winner["arch"])
        total = self.spent_steps + self.plan.full_steps - self.plan.rungs[-1]
        return {
            "rule": (f"successive halving (eta {self.plan.eta}) of {self.plan.finalists} diverse finalists nearest the "
                     f"budget's edge by {RACE_RANKS[self.plan.rank]} at each rung; rungs in optimizer steps; the "
                     "winner's run goes on into its distillation"),
            "rank": self.plan.rank,
            "eta": self.plan.eta,
            "rungs": list(self.plan.rungs),
            "survivors": list(self.plan.survivors),
            "full_steps": self.plan.full_steps,
            "budget": self.plan.budget,
            "planned_steps": self.plan.planned_steps,
            "spent_steps": self.spent_steps,
            "spent_distillations": self.spent_steps / self.plan.full_steps,
            "total_distillations": total / self.plan.full_steps,
            "seed": self.seed,
            "continuation": {"checkpoint": (finalist_dir(Path(), won["finalist"]) / CHECKPOINT).as_posix(),
                             "step": self.plan.rungs[-1], "settings": self.settings},
            "finalists": self.finalists,
            "winner": self.winner["arch"],
            "storage": self.storage,
            "study_name": self.study_name,
        }


def _race_states():
    import optuna

    S = optuna.trial.TrialState
    return S.RUNNING, S.WAITING, S.PRUNED, S.COMPLETE, S.FAIL


class _Heartbeat:
    """Records a heartbeat for the trials this worker owns, so a killed worker's trials go stale.

    A beat that fails (a lost connection) is logged and retried at the next beat; leaving the
    ``with`` block stops the thread and waits for it, so no beat outlives the race.
    """

    def __init__(self, storage) -> None:
        self.storage = storage
        self.trial_ids: set[int] = set()  # the trials this worker owns now (add / discard)
        interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="race-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            for trial_id in list(self.trial_ids):
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as e:  # noqa: BLE001 - a lost connection: the next beat retries
                    _log.warning("race: the heartbeat of trial %s failed (%s: %s); retrying at the next beat",
                                 trial_id, type(e).__name__, e)

    def add(self, trial_id: int) -> None:
        """Beat for ``trial_id`` from now on; the first beat at once, so a kill right after leaves it stale."""
        self.trial_ids.add(trial_id)
        if self.interval:
            self.storage.record_heartbeat(trial_id)

    def discard(self, trial_id: int) -> None:
        """Stop beating for ``trial_id`` (finished, or no longer this worker's)."""
        self.trial_ids.discard(trial_id)

    def __enter__(self) -> _Heartbeat:
        if self.interval:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def open_race_study(config: SearchConfig, race_dir: Path, plan: RacePlan, finalists: Sequence[dict[str, Any]], *,
                    resume: bool):
    """Create the race study with one waiting trial per finalist (or join it with ``resume``); a
    study raced with another plan is refused.

    Workers that reach the race together must not each enqueue the finalists: creating the study
    is atomic (its name is unique), so its creator alone enqueues them, then records the plan;
    the plan is the sign, for the others, that the finalists are in. A creator killed in between
    leaves a study without a plan: after ``GRACE_BEATS × heartbeat_s`` a resuming worker enqueues instead.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    race_dir.mkdir(parents=True, exist_ok=True)
    url = config.storage or f"sqlite:///{(race_dir / 'race.db').resolve()}"
    name = f"{config.study_name}-race"
    storage = get_storage(url, config.heartbeat_s)
    existing = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if name in existing and not resume:
        raise UsageError(f"race study {name!r} already exists in {url}; add --resume to continue it or --force to start over")
    pruner = SynchronousHalvingPruner(plan.rungs, plan.eta)
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", pruner=pruner)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
        created = False
    deadline = time.monotonic() + GRACE_BEATS * config.heartbeat_s
    while not created and "plan" not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(_POLL_S)  # its creator is enqueueing the finalists
    saved = study.user_attrs.get("plan")
    if saved is None:
        if not study.trials:
            for i, row in enumerate(finalists):
                study.enqueue_trial({}, user_attrs={"finalist": i, "arch": row["arch"], "params": row["params"]})
        study.set_user_attr("plan", asdict(plan))
    elif saved != _plain(asdict(plan)):
        raise UsageError(f"the race in {url} was planned differently ({saved['rungs']} steps, ranked by "
                         f"{saved.get('rank', 'val')}); start over with --force")
    return study, url


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def run_race(rows: Sequence[dict[str, Any]], teacher, dataset, race_dir: Path, config: SearchConfig, train_config, *,
             space_spec: str | None = None, resume: bool = False, progress: Progress = NULL_PROGRESS) -> RaceResult:
    """Race ``config.race`` diverse finalists of the leaderboard ``rows`` (see the module doc).

    Several processes may run it against one ``--storage`` at once; each takes waiting finalists
    and trains them, and all wait for a rung to close before anyone is pruned.
    """
    finalists = pick_finalists(rows, config, config.race)
    degenerate = [r["arch"] for r in rows if is_degenerate(r)]
    if degenerate:
        progress.note(f"race: {len(set(degenerate))} degenerate candidate(s) (no gradient path) kept out")
    if not finalists:
        raise SearchError("no candidate within the budget has usable scores to race; search longer (--trials)")
    full_steps = train_config.epochs * (len(dataset.train) // train_config.batch_size)
    plan = plan_race(len(finalists), config.race_eta, full_steps, config.race_budget, config.race_rank)
    study, url = open_race_study(config, race_dir, plan, finalists, resume=resume)
    train_config = replace(train_config, seed=train_config.seed + RACE_SEED_OFFSET)
    race = _Race(plan, teacher, dataset, train_config, space_spec, race_dir, progress)
    progress.note(f"race: {len(finalists)} finalists, rungs at {', '.join(map(str, plan.rungs))} of {full_steps} "
                  f"optimizer steps (eta {plan.eta}, seed {train_config.seed}); with the winner's distillation "
                  f"{plan.total_steps} steps = {plan.total_steps / full_steps:.2f} distillations "
                  f"(budget {plan.budget:g})")
    owned: dict[int, Any] = {}  # trial number -> Trial this worker trains
    top = len(plan.rungs) - 1
    with _Heartbeat(study._storage) as beat:
        for k in range(len(plan.rungs)):
            progress.start("race", f"race rung {k + 1}/{len(plan.rungs)} ({plan.rungs[k]} steps)",
                           plan.survivors[k])
            while True:
                _claim_and_train(study, race, owned, beat, k)
                if _rung_closed(study, plan.rungs[k]):
                    break
                time.sleep(_POLL_S)
            _decide(study, owned, beat, plan, k)
            # The top rung closes when every finalist has reported it, but a finalist is complete only once
            # its owner records it: until then another worker would read a race without a winner.
            while k == top and not _race_finished(study):
                time.sleep(_POLL_S)
                _claim_and_train(study, race, owned, beat, k)  # a dead owner's finalist comes back: finish it
                _decide(study, owned, beat, plan, k)
            progress.finish("race")
            progress.note(_rung_line(study, plan, k))
    return _result(study, plan, finalists, url, train_config)


def _claim_and_train(study, race: _Race, owned: dict[int, Any], beat: _Heartbeat, k: int) -> None:
    """Take waiting finalists (a re-queued one catches up), then bring this worker's live trials to rung ``k``."""
    import optuna

    running, waiting = _race_states()[:2]
    race.stale.fail(study)  # a dead worker's trials come back as waiting copies
    while study.get_trials(deepcopy=False, states=(waiting,)):
        with warnings.catch_warnings():  # the race beats for its trials itself (_Heartbeat), not through optimize()
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = study.ask()
        if "finalist" not in trial.user_attrs:  # another worker took the last waiting finalist first
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            break
        owned[trial.number] = trial
        beat.add(trial._trial_id)
        _advance(study, race, trial, k)
    for number, trial in list(owned.items()):
        if study._storage.get_trial(trial._trial_id).state == running:
            _advance(study, race, trial, k)


def _advance(study, race: _Race, trial, k: int) -> None:
    """Train ``trial``'s missing rungs up to ``k``; a rung already recorded is only re-reported."""
    import optuna

    finalist, arch = trial.user_attrs["finalist"], Arch.from_json(trial.user_attrs["arch"])
    results: list[dict[str, float]] = []
    for j in range(k + 1):
        attrs = study._storage.get_trial(trial._trial_id)
        if f"rung_{j}" not in attrs.user_attrs:
            result = race.train_rung(arch, finalist, j, training_loss_sum(results))
            trial.set_user_attr(f"rung_{j}", result)
            steps = race.plan.rungs[j] - (race.plan.rungs[j - 1] if j else 0)
            race.progress.advance("race", train_loss=result["train_loss_sum"] / steps, val_acc=result["val_acc"])
        else:
            result = attrs.user_attrs[f"rung_{j}"]
        results.append(result)
        if race.plan.rungs[j] not in attrs.intermediate_values:
            trial.report(rung_score(results, race.plan.rank), race.plan.rungs[j])
        if j < k and trial.should_prune():  # a catching-up trial eliminated at a closed rung
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return


def _rung_closed(study, step: int) -> bool:
    """Every finalist still in the race has reported ``step``."""
    running, waiting, pruned, complete, fail = _race_states()
    live = study.get_trials(deepcopy=False, states=(running, waiting))
    return all(step in t.intermediate_values for t in live if "finalist" in t.user_attrs)


def _race_finished(study) -> bool:
    """No finalist is running or waiting: every owner has recorded its finalists' fate."""
    running, waiting = _race_states()[:2]
    return not any("finalist" in t.user_attrs for t in study.get_trials(deepcopy=False, states=(running, waiting)))


def _decide(study, owned: dict[int, Any], beat: _Heartbeat, plan: RacePlan, k: int) -> None:
    """After rung ``k`` closed: prune this worker's eliminated trials; at the top rung, complete the rest."""
    import optuna

    running = _race_states()[0]
    for number, trial in list(owned.items()):
        frozen = study._storage.get_trial(trial._trial_id)
        if frozen.state == running:
            if k == len(plan.rungs) - 1:
                study.tell(trial, frozen.intermediate_values[plan.rungs[k]])
            elif trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                continue
        owned.pop(number)
        beat.discard(trial._trial_id)


def _finalist_records(study, plan: RacePlan) -> dict[int, dict[str, Any]]:
    """Per finalist, its latest non-failed trial's rungs."""
    fail = _race_states()[4]
    out: dict[int, dict[str, Any]] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if "finalist" not in t.user_attrs or t.state == fail and t.user_attrs["finalist"] in out:
            continue
        rungs = [dict(t.user_attrs[f"rung_{j}"]) for j in range(len(plan.rungs)) if f"rung_{j}" in t.user_attrs]
        init = [r.pop("init", None) for r in rungs][:1]
        out[t.user_attrs["finalist"]] = {
            "finalist": t.user_attrs["finalist"], "arch": t.user_attrs["arch"], "params": t.user_attrs["params"],
            "trial": t.number, "state": t.state.name.lower(), "rung_reached": len(rungs) - 1, "rungs": rungs,
            "init": init[0] if init else None,
        }
    return out


def _rung_line(study, plan: RacePlan, k: int) -> str:
    records = _finalist_records(study, plan).values()
    at = sorted((r for r in records if r["rung_reached"] >= k), key=lambda r: -rung_score(r["rungs"][: k + 1], plan.rank))
    parts = []
    for r in at:
        fate = "won" if r["state"] == "complete" else ("out" if r["state"] == "pruned" and r["rung_reached"] == k else "on")
        loss = training_loss_sum(r["rungs"][: k + 1])
        parts.append(f"#{r['finalist']} loss {loss:.4g} val {r['rungs'][k]['val_acc']:.3f} ({fate})")
    return (f"race rung {k + 1}/{len(plan.rungs)} at {plan.rungs[k]} steps, ranked by {plan.rank}: "
            + ", ".join(parts))


def _result(study, plan: RacePlan, finalists: list[dict[str, Any]], url: str, train_config) -> RaceResult:
    records = sorted(_finalist_records(study, plan).values(), key=lambda r: r["finalist"])
    top = [r for r in records if r["rung_reached"] == len(plan.rungs) - 1]
    if not top:
        raise SearchError("the race ended with no finalist at the top rung; see the run log")
    best = max(top, key=lambda r: (rung_score(r["rungs"], plan.rank), -r["finalist"]))
    spent = sum(r["rungs"][-1]["step"] for r in records if r["rungs"])
    return RaceResult(finalists[best["finalist"]], records, plan, spent, url, study.study_name,
                      seed=train_config.seed, settings=asdict(train_config))
