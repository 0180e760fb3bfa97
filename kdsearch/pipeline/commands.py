"""One library call per command: check the inputs, open the run directory, run the stage(s).

The CLI parses flags into a :class:`~kdsearch.pipeline.config.RunConfig`, calls one function
here and renders what it returns. Every input is checked before the run directory is touched,
and a command that fails before any stage wrote a result leaves no directory behind.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from kdsearch.arch import Arch
from kdsearch.devices import resolve_device
from kdsearch.distill.distributed import DistributedContext, is_main_process
from kdsearch.errors import KdsearchError, SpaceError, UsageError
from kdsearch.files import write_text
from kdsearch.logs import capture_library_noise
from kdsearch.pipeline.config import RunConfig, save_run_config
from kdsearch.pipeline.stages import (
    check_inputs,
    distill_stage,
    export_stage,
    load_run_dataset,
    qat_stage,
    resolve_teacher,
    race_stage,
    search_config_for,
    search_stage,
    searched_space,
    summary_for,
    teach_stage,
)
from kdsearch.pipeline.workspace import holds_results, opened_run_dir, prepare_run_dir
from kdsearch.progress import NULL_PROGRESS, Progress
from kdsearch.report.html import write_report
from kdsearch.rundir import ExportRecord, QatMetrics, RunDir, TrainMetrics, WinnerRecord, read_leaderboard
from kdsearch.search.storage import storage_url
from kdsearch.search.study import run_search
from kdsearch.spaces import PRUNED_SPACE, SearchSpace, load_space

__all__ = [
    "SearchOutcome",
    "teach_command",
    "search_command",
    "distill_command",
    "quantize_command",
    "export_command",
    "run_pipeline",
]


def _with_searched_space(config: RunConfig, run_dir: Path) -> RunConfig:
    """``config`` reading the space ``run_dir`` was searched in, from its own copy (``search/space.yaml``),
    so later stages, ``--resume`` and a copy of the run on another machine never need the YAML it came from.

    Asking such a run for another space is refused; a YAML that is gone is not asked for.
    """
    saved = RunDir(run_dir).searched_space
    if not saved.is_file():
        return config
    kept = load_space(saved).name
    try:
        asked = PRUNED_SPACE if config.search.space == PRUNED_SPACE else load_space(config.search.space).name
    except SpaceError:  # the YAML moved, was deleted, or stayed on another machine: the copy stands in
        asked = kept
    if asked != kept:
        raise UsageError(f"{run_dir} was searched in space {kept!r} (kept in {saved}), not {asked!r}; give the same "
                         "--space, or a new --out")
    return replace(config, search=replace(config.search, space=str(saved)))


def _keep_searched_space(run: RunDir, config: RunConfig, space: SearchSpace | None = None) -> RunConfig:
    """Copy the definition of the space about to be searched (``space``, else the one ``config`` names)
    into the run directory; returns ``config`` reading it from there when ``space`` was made for this run
    (``--space pruned``), so every later reader, worker processes included, finds it."""
    import yaml

    if not run.searched_space.is_file():
        definition = (space or load_space(config.search.space)).definition
        write_text(run.searched_space, yaml.safe_dump(definition, sort_keys=False))
    if space is None:
        return config
    return replace(config, search=replace(config.search, space=str(run.searched_space)))


def _made_space(config: RunConfig, dataset) -> SearchSpace | None:
    """The space made for this run from its teacher (``--space pruned``); None for a space read by name or path.

    A run that trains its teacher first checks its inputs against the pruned space of an untrained
    ``config.teacher_model``: the same layers cut the same way, so the same budgets fit (latency does not
    depend on the weights). The space it searches is cut from the trained teacher (:func:`_cut_trained_teacher`).
    """
    if config.search.space != PRUNED_SPACE:
        return None
    return searched_space(config, dataset, teacher=None if config.teacher else config.teacher_model)


def _cut_trained_teacher(run: RunDir, config: RunConfig, dataset) -> RunConfig:
    """``config`` searching the pruned space cut from the teacher ``kdsearch run`` trained into ``run.teacher``
    (kept in the run like any made space); ``config`` itself for any other space, or a teacher given."""
    if config.search.space != PRUNED_SPACE or config.teacher is not None:
        return config
    return _keep_searched_space(run, config, searched_space(config, dataset, teacher=str(run.teacher)))


@contextlib.contextmanager
def _logged(run_dir: Path) -> Iterator[None]:

    with capture_library_noise(RunDir(run_dir).log):  # library chatter goes to the log, not the terminal
        yield


def teach_command(out: Path, config: RunConfig, *, resume: bool = False, force: bool = False,
                  progress: Progress = NULL_PROGRESS) -> TrainMetrics:
    """``kdsearch teach``: train ``config.teacher_model`` into the model directory ``out``."""
    dataset = load_run_dataset(config)
    check_inputs(config, dataset, search=False, train=("teach",))
    with opened_run_dir(out, resume=resume, force=force):
        save_run_config(out, config)
        with _logged(out):
            return teach_stage(out, config, dataset, resume=resume, progress=progress)


@dataclass(frozen=True)
class SearchOutcome:
    """What ``kdsearch search`` shows: every scored row, the winner and where the study lives."""

    winner: WinnerRecord
    rows: list[dict[str, Any]]
    winner_row: dict[str, Any]
    feasible: int
    storage_url: str
    study_name: str


def search_command(out: Path, config: RunConfig, *, seed_archs: list[Arch] | None = None, resume: bool = False,
                   force: bool = False, progress: Progress = NULL_PROGRESS) -> SearchOutcome:
    """``kdsearch search``: a training-free search into ``out/search``."""

    if not config.teacher:
        raise UsageError("no teacher: give --teacher (a zoo name, model directory, .pt or .pt2) or `teacher:` in --config")
    asked = config
    if resume:
        config = _with_searched_space(config, out)
    dataset = load_run_dataset(config)
    space = _made_space(config, dataset)
    teacher = check_inputs(config, dataset, space=space) or resolve_teacher(out, config, dataset)  # loaded once
    run = RunDir(out)
    with opened_run_dir(out, resume=resume, force=force):
        save_run_config(out, asked)
        config = _keep_searched_space(run, config, space)
        with _logged(out):
            result = run_search(teacher, dataset, run.search, search_config_for(config, teacher), resume=resume,
                                seed_archs=seed_archs or [], progress=progress)
            winner = race_stage(run, config, dataset, teacher, resume=resume, progress=progress)
    rows, winner_row = result.rows, result.winner_row
    if winner.race is not None:  # the race chose: its rewritten leaderboard, the race's winner first
        rows = read_leaderboard(run.leaderboard)
        winner_row = {**rows[0], "rule": result.winner_row["rule"], "reason": winner.reason}
    return SearchOutcome(winner, rows, winner_row, result.feasible, storage_url(config.search, run.search),
                         config.search.study_name)


def _prepare_distill_dir(out: Path, run_dir: Path | None, *, resume: bool, force: bool) -> None:
    """A new run directory, or ``RUN_DIR/distill`` kept (``resume``) or cleared (``force``)."""

    distill = RunDir(out).distill
    if run_dir is None or out != run_dir:
        prepare_run_dir(out, resume=resume, force=force)
    elif distill.exists() and not (resume or force):
        raise UsageError(f"{distill} already exists; add --resume to continue it or --force to start over")
    elif force and distill.exists() and not resume:
        shutil.rmtree(distill)


def distill_command(out: Path, config: RunConfig, arch: Arch, *, run_dir: Path | None = None,
                    assistant: str | None = None, resume: bool = False, force: bool = False,
                    progress: Progress = NULL_PROGRESS) -> TrainMetrics | None:
    """``kdsearch distill``: distil ``arch`` into ``out/distill``.

    Under ``torchrun`` one process group spans the command: rank 0 alone checks and prepares
    the directory (else the ranks race it), its refusal reaches every rank, and only rank 0
    returns the metrics (the others return None).
    """

    asked = config
    if run_dir is not None:
        config = _with_searched_space(config, run_dir)
    dataset = load_run_dataset(config)
    teacher = check_inputs(config, dataset, search=False, student=arch, train=("distill",)) or resolve_teacher(
        out, config, dataset)  # loaded once
    main = is_main_process()
    group = DistributedContext.from_env(resolve_device(config.distill.device))
    ours = not out.exists()
    ok = False
    try:
        failure = None
        if main:
            try:
                _prepare_distill_dir(out, run_dir, resume=resume, force=force)
                save_run_config(out, asked)
            except KdsearchError as e:
                failure = e
        failure = group.broadcast(failure)
        if failure is not None:
            if main:
                raise failure
            raise SystemExit(failure.exit_code)  # rank 0 prints the error, once
        with _logged(out):
            metrics = distill_stage(RunDir(out), config, dataset, teacher, arch, resume=resume, progress=progress,
                                    assistant=assistant, search_dir=run_dir)
        ok = True
    except BaseException:

        if main and ours and out.is_dir() and not holds_results(out):
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        group.close(wait=ok)
    return metrics if main else None


def quantize_command(run_dir: Path, config: RunConfig, *, resume: bool = False, force: bool = False,
                     progress: Progress = NULL_PROGRESS) -> QatMetrics:
    """``kdsearch quantize``: QAT-KD of ``run_dir``'s distilled student into ``run_dir/qat``."""
    run = RunDir(run_dir)
    if not run.student_json.exists():
        raise UsageError(f"{run_dir} has no distilled student (distill/student.json); run `kdsearch distill` first")
    asked, config = config, _with_searched_space(config, run_dir)
    dataset = load_run_dataset(config)
    check_inputs(config, dataset, search=False, train=("quantize",))
    if run.qat.exists() and any(run.qat.iterdir()):
        if force and not resume:
            shutil.rmtree(run.qat)
        elif not resume:
            raise UsageError(f"{run.qat} already exists; add --resume to continue it or --force to start over")
    save_run_config(run_dir, asked)
    with _logged(run_dir):  # torchao logs kernel-load failures at import
        return qat_stage(run, config, dataset, resume=resume, progress=progress)


def export_command(run_dir: Path, config: RunConfig, *, progress: Progress = NULL_PROGRESS) -> ExportRecord:
    """``kdsearch export``: ONNX files of ``run_dir``'s student, verified and measured."""
    dataset = load_run_dataset(config)
    with _logged(run_dir):
        record = export_stage(RunDir(run_dir), config, dataset, progress=progress)
    save_run_config(run_dir, config)
    return record


def run_pipeline(config: RunConfig, run_dir: Path, *, resume: bool = False, force: bool = False,
                 progress: Progress = NULL_PROGRESS) -> dict[str, Any]:
    """``kdsearch run``: every stage into ``run_dir``; returns the summary (also ``summary.json``).

    Every input is checked before the run directory is touched, so a typo leaves nothing behind.
    """
    timings: dict[str, float] = {}
    asked = config
    if resume:
        config = _with_searched_space(config, run_dir)
    t = time.perf_counter()
    dataset = load_run_dataset(config)
    timings["data"] = time.perf_counter() - t
    train = ("distill", "quantize") if config.qat else ("distill",)
    space = _made_space(config, dataset)
    check_inputs(config, dataset, train=(("teach",) if config.teacher is None else ()) + train, space=space)
    with opened_run_dir(run_dir, resume=resume, force=force):
        save_run_config(run_dir, asked)
        if config.teacher is not None or space is None:  # else it is cut from the teacher once trained
            config = _keep_searched_space(RunDir(run_dir), config, space)
        with _logged(run_dir):
            return _run_stages(config, RunDir(run_dir), dataset, timings, resume=resume, progress=progress)


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t


def _run_stages(config: RunConfig, run: RunDir, dataset, timings: dict[str, float], *, resume: bool,
                progress: Progress) -> dict[str, Any]:

    teacher_metrics = None
    if config.teacher is None:
        progress.note(f"stage teach: training {config.teacher_model} on {dataset.name}")
        with _timed(timings, "teach"):
            teacher_metrics = teach_stage(run.teacher, config, dataset, resume=resume, progress=progress)
        config = _cut_trained_teacher(run, config, dataset)
    teacher = resolve_teacher(run.root, config, dataset)
    progress.note("stage search")
    with _timed(timings, "search"):
        _, winner = search_stage(run, config, dataset, teacher, resume=resume, progress=progress)
    if config.search.race:
        progress.note(f"stage race: {config.search.race} finalists")
        with _timed(timings, "race"):
            winner = race_stage(run, config, dataset, teacher, resume=resume, progress=progress)
    arch = Arch.from_dict(winner.arch)
    progress.note(f"stage distill: {arch.space} {json.dumps(arch.genes, separators=(',', ':'))}")
    with _timed(timings, "distill"):
        student_metrics = distill_stage(run, config, dataset, teacher, arch, resume=resume, progress=progress)
    if config.qat:
        progress.note("stage quantize (QAT with KD)")
        with _timed(timings, "qat"):
            qat_stage(run, config, dataset, resume=resume, progress=progress)
        config = replace(config, export=replace(config.export, int8="ptq,qat"))
    progress.note("stage export")
    with _timed(timings, "export"):
        export = export_stage(run, config, dataset, progress=progress)
    summary = summary_for(run, dataset, teacher, teacher_metrics, winner, student_metrics, export, timings)
    summary.save(run.summary)

    write_report(run.root)  # after summary.json: the page reads it (teacher FLOPs, timings)
    return summary.to_dict()
