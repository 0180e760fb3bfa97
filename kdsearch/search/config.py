"""What a search and a correlation study ask for: frozen configs and the names they accept.

Torch-free and Optuna-free, so the CLI can read and validate ``run.yaml`` without importing
either; the modules that run a search import those where they use them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from kdsearch.distill.config import TrainConfig
from kdsearch.errors import UsageError

__all__ = ["SearchConfig", "CorrelateConfig", "COST_OBJECTIVES", "SAMPLERS", "PICK_RULES", "RACE_RANKS"]

COST_OBJECTIVES = ("params", "flops", "latency")  # minimised (see objective_directions); every other objective is a proxy, maximised
SAMPLERS = ("evolution", "nsga3", "tpe", "random")

PICK_RULES = {  # name -> what it takes, as the search prints it
    "largest": "the most parameters within the budgets; the proxy breaks ties",
    "best": "the highest proxy score",
    "knee": "the knee of the proxy-vs-params Pareto front",
}

RACE_RANKS = {  # name -> what a race rung ranks finalists by, as the race records it
    "tse": "the lowest sum of training losses over every step so far (TSE)",
    "val": "validation top-1",
}


@dataclass(frozen=True)
class SearchConfig:
    """What one search asks for; saved as ``run.yaml``'s ``search`` section."""

    space: str = "resnet_cifar"
    proxy: str = "diswot"  # the proxy that picks the winner
    objectives: tuple[str, ...] = ("diswot", "params")  # a proxy, then optional costs: a Pareto search
    trials: int = 60
    sampler: str = "evolution"
    population: int = 16  # NSGA-II/III population size
    mutation_prob: float | None = None  # NSGA-II only; None: Optuna's default, 1/number of genes
    crossover_prob: float | None = None  # NSGA-II only; None: Optuna's default, 0.9
    max_params: int | None = None
    max_flops: int | None = None
    max_latency_ms: float | None = None  # ONNX Runtime latency at batch 1, predicted by the latency model
    speedup: float | None = None  # the student must be at least this many times faster than the teacher at batch 1
    #   and at latency_batch, in ONNX Runtime on this machine (predicted per candidate, measured for the winner)
    latency_batch: int = 32  # the throughput batch a speed-up (and --max-latency-ms's table) is also judged at
    latency_threads: int | None = 1  # ONNX Runtime intra-op threads when timing: one core of an edge CPU
    latency_provider: str = "cpu"  # ONNX Runtime provider the latencies are measured on: cpu | cuda | tensorrt
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
    race: int = 0  # finalists distilled in a successive-halving race after the search (0: no race)
    race_budget: float = 1.25  # race plus the winner's distillation (which goes on from its race run), in distillations
    race_eta: int = 3  # successive halving keeps the best 1/eta of each rung
    race_rank: str = "tse"  # what a rung ranks finalists by: tse (sum of training losses so far) | val (val top-1)

    @property
    def timed(self) -> bool:
        """Whether candidates need latencies: a speed-up or latency budget, or latency as an objective."""
        return self.speedup is not None or self.max_latency_ms is not None or "latency" in self.objectives

    @property
    def latency_batches(self) -> tuple[int, ...]:
        """The batch sizes latencies are predicted and measured at: 1, and the throughput batch under a speed-up budget."""
        return tuple(dict.fromkeys((1, self.latency_batch))) if self.speedup is not None else (1,)

    def __post_init__(self) -> None:
        if self.trials <= 0:
            raise UsageError(f"--trials must be positive (got {self.trials})")
        if self.proxy_batch < 2:
            raise UsageError(f"--proxy-batch must be at least 2 (got {self.proxy_batch})")
        if self.population < 2:
            raise UsageError(f"--population must be at least 2 (got {self.population})")
        if self.workers <= 0:
            raise UsageError(f"--workers must be positive (got {self.workers})")
        if self.race < 0 or self.race == 1:
            raise UsageError(f"--race takes 0 (no race) or at least 2 finalists (got {self.race})")
        if self.race and not self.race_budget > 1:  # without a race it is never read (old run.yaml files say 1.0)
            raise UsageError(f"--race-budget counts the race and the winner's distillation together, in distillations: "
                             f"it must be more than 1 (got {self.race_budget:g}; the default is 1.25)")
        if self.race_rank not in RACE_RANKS:
            raise UsageError(f"unknown --race-rank {self.race_rank!r}; use {', '.join(RACE_RANKS)}")
        if self.race_eta < 2:
            raise UsageError(f"race_eta must be at least 2 (got {self.race_eta})")
        if self.heartbeat_s <= 0:
            raise UsageError(f"heartbeat_s must be a positive number of seconds (got {self.heartbeat_s})")
        for name, value in (("--max-params", self.max_params), ("--max-flops", self.max_flops),
                            ("--max-latency-ms", self.max_latency_ms)):
            if value is not None and value <= 0:
                raise UsageError(f"{name} must be positive (got {value})")
        if self.speedup is not None and not self.speedup >= 1:
            raise UsageError(f"--speedup must be at least 1: the student must not be slower than its teacher "
                             f"(got {self.speedup})")
        if self.latency_batch < 1:
            raise UsageError(f"--latency-batch must be at least 1 (got {self.latency_batch})")
        if self.latency_threads is not None and self.latency_threads < 1:
            raise UsageError(f"--latency-threads must be at least 1 (got {self.latency_threads})")
        if self.latency_provider not in ("cpu", "cuda", "tensorrt"):
            raise UsageError(f"unknown --latency-provider {self.latency_provider!r}; use cpu, cuda or tensorrt")
        if self.sampler not in SAMPLERS:
            raise UsageError(f"unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}")
        for name, value in (("--mutation-prob", self.mutation_prob), ("--crossover-prob", self.crossover_prob)):
            if value is not None and self.sampler != "evolution":
                raise UsageError(f"{name} applies to --sampler evolution (NSGA-II) only, not {self.sampler}; "
                                 f"drop it or use --sampler evolution")
            if value is not None and not 0 <= value <= 1:
                raise UsageError(f"{name} is a probability in [0, 1] (got {value})")
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


@dataclass(frozen=True)
class CorrelateConfig:
    """What one correlation study asks for; saved in ``correlate.json``."""

    space: str = "resnet_cifar"
    archs: int = 30
    proxies: tuple[str, ...] | None = None  # None: every registered proxy
    proxy_batch: int = 64  # the main variant's batch; the one the search uses by default
    extra_batches: tuple[int, ...] = (16, 256)  # teacher-aware proxies are also scored at these
    teacher_inits: tuple[str, ...] = ("random", "pretrained")  # the first is the main variant: the search's default
    max_params: int | None = None  # sample only archs this small
    pool: int = 600  # archs sampled before stratifying
    edges: tuple[str, ...] = ()  # budget edges ("params=34000", "flops=2e7"): most archs are drawn near them
    budgets: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # params-quantiles of the sample used as budgets
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=2, batch_size=64, augment=False, cache_teacher=True,  # no augmentation in 1-2 epochs: cache the teacher
        schedule="onecycle", lr=0.1))
    seed: int = 0
    repeats: int = 1  # training seeds per arch: train.seed, train.seed + 1, ...

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise UsageError(f"--repeats must be at least 1 (got {self.repeats})")
        if self.archs < 5:
            raise UsageError(f"--archs must be at least 5 for rank statistics to mean anything (got {self.archs})")
        if self.proxy_batch < 2 or any(b < 2 for b in self.extra_batches):
            raise UsageError("proxy batch sizes must be at least 2")
        if not self.teacher_inits or any(t not in {"pretrained", "random"} for t in self.teacher_inits):
            raise UsageError(f"--teacher-init values are pretrained and random (got {','.join(self.teacher_inits)})")
        if any(not 0 < b <= 1 for b in self.budgets):
            raise UsageError("budgets are params-quantiles in (0, 1]")
        if self.max_params is not None and self.max_params <= 0:
            raise UsageError(f"--max-params must be positive (got {self.max_params})")
        parse_edges(self.edges)


def parse_edges(texts: Sequence[str]) -> tuple[tuple[str, float], ...]:
    """``("params=34000", "flops=2e7")`` → ``(("params", 34000.0), ("flops", 2e7))``; a clear error otherwise."""
    out = []
    for text in texts:
        resource, _, value = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if resource not in ("params", "flops") or number <= 0:
            raise UsageError(f"budget edge {text!r} is not params=N or flops=N with N > 0")
        out.append((resource, number))
    return tuple(out)
