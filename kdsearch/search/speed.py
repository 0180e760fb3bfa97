"""The speed-up budget: the teacher timed once, every candidate's latency predicted, the winner timed.

A student exists to be faster than its teacher on the user's runtime. The search judges that in
three steps, all in ONNX Runtime on this machine, with the same provider, threads and batches:

1. :meth:`SpeedModel.measure` times the teacher once when the search starts (at batch 1 and at
   the throughput batch) and loads or builds the latency model of the space
   (:class:`kdsearch.export.latency_model.LatencyModel`, cached on disk per machine and setting);
2. every trial predicts its candidate's latency from that model (microseconds, no export), and a
   candidate whose predicted speed-up misses ``--speedup`` is infeasible;
3. :func:`confirm_fastest` exports the leading candidates and times them for real, interleaved
   with the teacher; the budget is judged on those timings, and a winner that misses it is
   replaced by the next candidate, with one line saying so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from kdsearch.arch import Arch
from kdsearch.errors import BudgetError
from kdsearch.search.config import SearchConfig

__all__ = ["SpeedModel", "speed_violations", "time_candidates", "confirm_fastest", "passed_over", "CONFIRM_GROUP"]

CONFIRM_GROUP = 4  # candidates timed for real per interleaved loop with the teacher
_CONFIRM_LIMIT = 24  # candidates timed at most before the search gives up on the budget
_TEACHER_SECONDS = 3.0  # wall time spent timing the teacher per batch size (rounds adapt to it)
_SPEEDS: dict[tuple, "SpeedModel"] = {}  # per process: the input checks' measurement, reused by the search


@dataclass
class SpeedModel:
    """The teacher's measured latency and the space's latency model, per batch size."""

    teacher_ms: dict[int, float]  # batch -> p50 ms of the teacher, timed when the search started
    models: dict[int, Any] = field(repr=False)  # batch -> LatencyModel
    threads: int | None = 1
    provider: str = "cpu"
    teacher_module: Any = field(default=None, repr=False)  # what confirm_fastest times again (None in workers)

    @classmethod
    def measure(cls, teacher_module, space, *, num_classes: int, in_channels: int, image_size: tuple[int, int],
                config: SearchConfig) -> SpeedModel:
        """Time ``teacher_module`` and load (or build once) the space's latency model; remembered per process."""
        key = (type(teacher_module).__name__, sum(p.numel() for p in teacher_module.parameters()),
               space.name, repr(space.genes_for(space.form_for(image_size))),
               repr({k: space.definition[k] for k in space.family_keys}), num_classes, in_channels,
               tuple(image_size), config.latency_batches, config.latency_threads, config.latency_provider)
        if key not in _SPEEDS:
            _SPEEDS[key] = cls._measure(teacher_module, space, num_classes, in_channels, tuple(image_size), config)
        return _SPEEDS[key]

    @classmethod
    def _measure(cls, teacher_module, space, num_classes, in_channels, image_size, config) -> SpeedModel:
        import copy

        from kdsearch.export.latency_model import LatencyModel, clock_for
        from kdsearch.export.timing import time_models

        chw = (in_channels, *image_size)
        teacher = copy.deepcopy(teacher_module).float().cpu().eval()
        # on the clock the latency model predicts on, so predicted speed-ups compare like with like
        timed = time_models({"teacher": teacher}, chw, batches=config.latency_batches,
                            threads=config.latency_threads, provider=config.latency_provider,
                            seconds=_TEACHER_SECONDS, clock=clock_for(config.latency_threads,
                                                                     config.latency_provider))["teacher"]
        models = {}
        for b in config.latency_batches:
            models[b] = LatencyModel.for_space(space, num_classes=num_classes, in_channels=in_channels,
                                               image_size=image_size, batch=b, threads=config.latency_threads,
                                               provider=config.latency_provider)
        return cls(dict(timed), models, config.latency_threads, config.latency_provider, teacher)

    def describe(self) -> str:
        """One line: the teacher's timing every speed-up of this search is judged against."""
        return (f"teacher in ONNX Runtime ({_setting(self.provider, self.threads)}): "
                + ", ".join(f"{ms:.3g} ms at batch {b}" for b, ms in self.teacher_ms.items()))

    def predict(self, arch: Arch) -> dict[str, float]:
        """``pred_ms_b<B>`` and ``pred_speedup_b<B>`` of ``arch`` at every batch size."""
        out: dict[str, float] = {}
        for b, model in self.models.items():
            ms = float(model.predict_ms(arch))
            out[f"pred_ms_b{b}"] = ms
            out[f"pred_speedup_b{b}"] = self.teacher_ms[b] / max(ms, 1e-12)
        return out

    def table_paths(self) -> dict[str, str | None]:
        return {str(b): (str(m.path) if getattr(m, "path", None) else None) for b, m in self.models.items()}


def _setting(provider: str, threads: int | None) -> str:
    """``cpu, 1 thread``: where and how latencies are timed, as the search's lines say it."""
    words = "default threads" if threads is None else f"{threads} thread{'s' if threads != 1 else ''}"
    return f"{provider}, {words}"


def speed_violations(config: SearchConfig, costs: dict[str, float], prefix: str = "pred_") -> dict[str, float]:
    """Constraint values of the speed-up budget (feasible when <= 0), one per batch size."""
    if config.speedup is None:
        return {}
    out = {}
    for b in config.latency_batches:
        value = costs.get(f"{prefix}speedup_b{b}")
        if value is not None:
            out[f"speedup_b{b}"] = config.speedup / max(value, 1e-12) - 1.0
    return out


def _meets(config: SearchConfig, ms: dict[int, float], teacher_ms: dict[int, float]) -> bool:
    if config.speedup is not None and any(teacher_ms[b] / ms[b] < config.speedup for b in ms):
        return False
    return config.max_latency_ms is None or ms[1] <= config.max_latency_ms


def _speed_words(speedups: dict[int, float]) -> str:
    from kdsearch.export.timing import speed_text

    return ", ".join(f"{speed_text(v)} at batch {b}" for b, v in speedups.items())


def time_candidates(rows: Sequence[dict[str, Any]], space, speed: SpeedModel, config: SearchConfig, *,
                    num_classes: int, in_channels: int, image_size: tuple[int, int],
                    note: Callable[[str], None] = lambda _m: None) -> list[dict[str, Any]]:
    """Export ``rows`` (leaderboard rows) and time each, in one interleaved loop with the teacher.

    Returns:
        The rows with ``ms_b<B>``, ``speedup_b<B>``, ``teacher_ms`` and ``meets_budget`` added.
    """
    from kdsearch.export.timing import time_models
    from kdsearch.spaces.candidates import build_candidate

    models = {"teacher": speed.teacher_module}
    for i, row in enumerate(rows):
        models[f"c{i}"] = build_candidate(space, Arch.from_json(row["arch"]), num_classes, in_channels, config.seed)
    setting = _setting(config.latency_provider, config.latency_threads)
    note(f"timing {len(rows)} candidate(s) against the teacher in ONNX Runtime ({setting})")
    ms = time_models(models, (in_channels, *image_size), batches=config.latency_batches,
                     threads=config.latency_threads, provider=config.latency_provider, seconds=_TEACHER_SECONDS)
    teacher_ms = ms.pop("teacher")
    out = []
    for i, row in enumerate(rows):
        mine = ms[f"c{i}"]
        out.append({**row, **{f"ms_b{b}": v for b, v in mine.items()},
                    **{f"speedup_b{b}": teacher_ms[b] / max(v, 1e-12) for b, v in mine.items()},
                    "teacher_ms": {str(b): v for b, v in teacher_ms.items()},
                    "meets_budget": _meets(config, mine, teacher_ms)})
    return out


def confirm_fastest(ranked: Sequence[dict[str, Any]], space, speed: SpeedModel, config: SearchConfig, *,
                    num_classes: int, in_channels: int, image_size: tuple[int, int],
                    note: Callable[[str], None] = lambda _m: None) -> tuple[list[dict[str, Any]], list[str]]:
    """Time the leading candidates for real, interleaved with the teacher, until one meets the budget.

    ``ranked`` are leaderboard rows in the winner rule's order. Candidates are timed in groups
    of :data:`CONFIRM_GROUP`, each group in one loop with the teacher (:func:`time_candidates`),
    so every speed-up is a ratio of two medians measured side by side.

    Returns:
        Every timed row (rank order), and one line per leading candidate passed over because it
        missed the budget when timed.

    Raises:
        BudgetError: none of the first candidates meets the budget when timed.
    """
    timed: list[dict[str, Any]] = []
    replaced: list[str] = []
    for start in range(0, min(len(ranked), _CONFIRM_LIMIT), CONFIRM_GROUP):
        group = time_candidates(ranked[start:start + CONFIRM_GROUP], space, speed, config, num_classes=num_classes,
                                in_channels=in_channels, image_size=image_size, note=note)
        for row in group:
            timed.append(row)
            if row["meets_budget"]:
                return timed, replaced
            replaced.append(passed_over(row, config))
            note(replaced[-1])
    fastest = max(timed, key=lambda r: min(r[f"speedup_b{b}"] for b in config.latency_batches), default=None)
    detail = f"; the fastest timed was {_speed_words({b: fastest[f'speedup_b{b}'] for b in config.latency_batches})}" \
        if fastest else ""
    raise BudgetError(f"none of the {len(timed)} leading candidates meets the budget when timed for real"
                      f"{_budget_words(config)}{detail}; lower --speedup or use a space with smaller members")


def passed_over(row: dict[str, Any], config: SearchConfig) -> str:
    """One line: why a timed candidate that led by the rule cannot be the winner."""
    measured = {b: row[f"speedup_b{b}"] for b in config.latency_batches}
    predicted = [row.get(f"pred_speedup_b{b}") for b in config.latency_batches]
    line = f"passed over trial {row['trial']} ({int(row['params']):,} params): measured {_speed_words(measured)}"
    if all(v is not None for v in predicted):
        line += f" (predicted {', '.join(f'{v:.2f}×' for v in predicted)})"
    return line + _budget_words(config)


def _budget_words(config: SearchConfig) -> str:
    parts = []
    if config.speedup is not None:
        parts.append(f"--speedup {config.speedup:g}")
    if config.max_latency_ms is not None:
        parts.append(f"--max-latency-ms {config.max_latency_ms:g}")
    return f", under {' and '.join(parts)}" if parts else ""


def fastest_words(speedups: dict[int, float]) -> str:
    """How a refused budget names the fastest sampled candidate."""
    return _speed_words(speedups) if speedups and all(math.isfinite(v) for v in speedups.values()) else "unknown"
