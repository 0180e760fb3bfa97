"""Scoring a trial: build the candidate, measure its costs, score it with the proxies, and tell
Optuna its objective values and budget constraints."""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from kdsearch.arch import Arch
from kdsearch.data import Dataset
from kdsearch.errors import BudgetError
from kdsearch.search.config import COST_OBJECTIVES, SearchConfig
from kdsearch.search.speed import SpeedModel, fastest_words, speed_violations
from kdsearch.search.storage import StaleTrials

__all__ = ["TrialObjective", "CandidateShape", "objective_directions", "feasible_samples"]


@dataclass(frozen=True)
class CandidateShape:
    """What candidates are built for: all a worker process needs of the dataset."""

    num_classes: int
    in_channels: int
    image_size: tuple[int, int]


def objective_directions(config: SearchConfig) -> list[str]:
    """Proxies are maximised, costs minimised; except params under ``--pick largest``, which is
    maximised (within the budget): that rule takes the largest feasible candidate, so evolution
    should press towards the budget's edge, not away from it."""
    return ["maximize" if o not in COST_OBJECTIVES or (o == "params" and config.pick == "largest") else "minimize"
            for o in config.objectives]


def _cost_of(space, arch: Arch, dataset: Dataset | CandidateShape) -> dict[str, float]:
    """Params and FLOPs of a candidate."""
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
    out.update(speed_violations(config, costs))
    return out


_FEASIBLE: dict[tuple, tuple[list[Arch], float]] = {}  # per process: the input checks' sampling, reused by the search


def feasible_samples(space, dataset: Dataset, config: SearchConfig, wanted: int, samples: int = 400,
                     speed: SpeedModel | None = None) -> tuple[list[Arch], float]:
    """Sample the space before searching: up to ``wanted`` distinct archs within the params, FLOPs
    and (with ``speed``, predicted) speed budgets, and the fraction of samples that met them.

    Fails at once (a :class:`BudgetError`, before any scoring) when no sample meets the budgets.
    The result is remembered for the same space, data shape, budgets and seed: the input checks
    and the search ask the same question (at 224 px, half of a search's set-up).
    """
    genes = space.genes_for(space.form_for(dataset.image_size))  # the ranges sampled at this size
    key = (type(space).__name__, space.name, repr(genes), dataset.num_classes, dataset.in_channels,
           tuple(dataset.image_size), config.seed, config.max_params, config.max_flops, wanted, samples,
           config.speedup, config.max_latency_ms, id(speed) if speed is not None else None)
    if key not in _FEASIBLE:
        _FEASIBLE[key] = _feasible_samples(space, dataset, config, wanted, samples, speed)
    found, fraction = _FEASIBLE[key]
    return list(found), fraction


_SHRINK = (0.5, 0.34, 0.2, 0.0)  # the share of each gene's choices (smallest first) a shrunk draw takes from
_SHRINK_DRAWS = 50  # draws at each share
# a space timed whole (not block by block) exports and times every sample under a speed budget: fewer of them
_WHOLE_SAMPLES, _WHOLE_SHRINK_DRAWS = 64, 8


def _sample_small(space, rng: random.Random, image_size, fraction: float) -> Arch:
    """An arch whose every searched gene takes one of its smallest ``fraction`` of choices (at least one)."""
    form = space.form_for(image_size)
    genes: dict[str, Any] = {}
    for gene in space.genes_for(form).values():
        if gene.fixed:
            genes[gene.name] = gene.value
            continue
        choices = list(gene.choices)
        if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices):
            choices.sort()
        choices = choices[:max(1, math.ceil(fraction * len(choices)))]
        values = [rng.choice(choices) for _ in range(gene.length or 1)]
        genes[gene.name] = values if gene.length is not None else values[0]
    return Arch(space.name, genes, form)


def _feasible_samples(space, dataset: Dataset, config: SearchConfig, wanted: int, samples: int,
                      speed: SpeedModel | None) -> tuple[list[Arch], float]:
    rng = random.Random(config.seed)
    smallest: dict[str, float] = {}
    fastest: dict[int, float] = {}  # the best predicted speed-up at each batch, of the sample fastest at its worst batch
    found: list[Arch] = []
    seen: set[str] = set()
    ok = 0
    # Uniform draws first; under a speed budget, then draws from the smaller end of every gene's
    # choices, since the fast members of a space are few (depth 1 everywhere is 1 in 729 draws of
    # resnet_cifar) and a uniform sample can miss them all.
    draws = _SHRINK_DRAWS
    if speed is not None and not space.timed_by_parts:
        samples, draws = min(samples, _WHOLE_SAMPLES), _WHOLE_SHRINK_DRAWS
    fractions = [1.0] * samples + ([f for f in _SHRINK for _ in range(draws)] if speed is not None else [])
    for i, fraction in enumerate(fractions):
        if i >= samples and len(found) >= wanted:
            break
        arch = space.sample(rng, dataset.image_size) if fraction == 1.0 else \
            _sample_small(space, rng, dataset.image_size, fraction)
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
        if speed is not None:
            costs.update(speed.predict(arch))
            costs["latency"] = costs["pred_ms_b1"]
            smallest["latency"] = min(smallest.get("latency", math.inf), costs["latency"])
            ups = {b: costs[f"pred_speedup_b{b}"] for b in config.latency_batches}
            if min(ups.values()) > min(fastest.values(), default=-math.inf):
                fastest = ups
        if all(v <= 0 for v in _violations(config, costs).values()):
            ok += 1
            if len(found) < wanted:
                found.append(arch)
    if ok == 0:
        parts = []
        if config.max_params is not None:
            parts.append(f"--max-params {config.max_params:,} (smallest sampled: {int(smallest['params']):,})")
        if config.max_flops is not None and "flops" in smallest:
            parts.append(f"--max-flops {config.max_flops:,} (smallest sampled: {int(smallest['flops']):,})")
        if config.speedup is not None and fastest:
            parts.append(f"--speedup {config.speedup:g} (fastest sampled: {fastest_words(fastest)}, predicted)")
        if config.max_latency_ms is not None and "latency" in smallest:
            parts.append(f"--max-latency-ms {config.max_latency_ms:g} (fastest sampled: "
                         f"{smallest['latency']:.3g} ms at batch 1, predicted)")
        raise BudgetError(
            f"no candidate of space {space.name} meets {' and '.join(parts)} in {len(seen)} samples; "
            "raise the budget or use a space with smaller members"
        )
    return found, ok / max(1, len(seen))


class TrialObjective:
    """Builds, measures and scores one trial's candidate; reuses scores of archs seen before.

    Before any work a trial must be *admitted*: the COMPLETE trials plus the RUNNING trials
    numbered before it must be fewer than ``config.trials``. Trial numbers order trials across
    every worker, so the admitted trials never exceed the request: with N workers the study ends
    with exactly ``trials`` COMPLETE trials (a surplus trial is PRUNED, not scored).
    """

    poll_s = 0.5  # how often a trial waiting on earlier running trials looks again

    def __init__(self, space, dataset: Dataset | CandidateShape, config: SearchConfig, proxies, stats, batch, study,
                 speed: SpeedModel | None = None) -> None:
        self.space, self.dataset, self.config, self.speed = space, dataset, config, speed
        self.proxies, self.stats, self.batch, self.study = proxies, stats, batch, study
        self.seen: dict[str, dict[str, Any]] = {}
        self.stale = StaleTrials()

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
            self.stale.fail(self.study)
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
        arch = self.space.suggest(trial, self.dataset.image_size)
        key = arch.key
        if key not in self.seen:
            self._refresh_seen()
        attrs = self.seen.get(key)
        if attrs is None:
            costs = _cost_of(self.space, arch, self.dataset)
            if self.speed is not None:  # predicted by the latency model: no export per candidate
                costs.update(self.speed.predict(arch))
                costs["latency"] = costs["pred_ms_b1"]
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
