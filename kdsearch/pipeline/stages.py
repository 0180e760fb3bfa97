"""The stages over a run directory: the one place that maps a :class:`RunDir` onto stage inputs.

Each function reads what earlier stages left (through :mod:`kdsearch.rundir`), calls the
stage with objects and an output folder, and returns the stage's record. Resuming a finished
stage returns its record without running it again.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from kdsearch.arch import Arch
from kdsearch.data import NormalizedImages, load_dataset, normalize
from kdsearch.devices import resolve_device
from kdsearch.distill.assistant import Candidate, assistant_stage
from kdsearch.distill.config import TrainConfig
from kdsearch.distill.losses import CombinedLoss
from kdsearch.distill.stage import distill_student, inheritance_refusal, student_space, train_teacher
from kdsearch.errors import ConfigError, KdsearchError, ModelError, UsageError
from kdsearch.files import atomic_path
from kdsearch.export.stage import export_model, export_teacher
from kdsearch.models.inherit import inheritance_problem
from kdsearch.models.zoo import MODELS, create_model, model_arch
from kdsearch.pipeline.config import RunConfig
from kdsearch.progress import NULL_PROGRESS, Progress
from kdsearch.proxies import PROXIES, count_flops
from kdsearch.quant.qat import load_qat_model, quantize_student
from kdsearch.report.plots import plot_race_rungs
from kdsearch.rundir import (CHECKPOINT, ExportRecord, QatMetrics, RaceRecord, RunDir, RunSummary, TrainMetrics, WinnerRecord,
                             read_leaderboard)
from kdsearch.search.config import COST_OBJECTIVES, SearchConfig
from kdsearch.search.objective import feasible_samples
from kdsearch.search.race import run_race
from kdsearch.search.storage import get_storage
from kdsearch.search.study import measure_speed, run_search
from kdsearch.search.summary import record_race
from kdsearch.spaces import PRUNED_SPACE, PrunedSpace, SearchSpace, load_space, pruned_space
from kdsearch.spaces.model_files import load_model_dir, load_teacher

__all__ = [
    "load_run_dataset",
    "searched_space",
    "check_inputs",
    "resolve_teacher",
    "search_config_for",
    "teach_stage",
    "search_stage",
    "race_stage",
    "race_continuation",
    "distill_stage",
    "qat_stage",
    "export_stage",
]


def load_run_dataset(config: RunConfig):
    """The dataset the configuration names (split and subset seeded by ``data.seed``)."""

    d = config.data
    return load_dataset(d.spec, data_dir=Path(d.data_dir) if d.data_dir else None, subset=d.subset, seed=d.seed,
                        image_size=d.image_size)


def _check_batches(name: str, batch_size: int, dataset) -> None:
    if len(dataset.train) < batch_size:
        raise UsageError(
            f"the training set has {len(dataset.train)} images, fewer than one {name} batch of {batch_size}; "
            "lower --batch-size or use more data"
        )


def searched_space(config: RunConfig, dataset, teacher: str | None = None) -> SearchSpace:
    """The space ``config.search.space`` names; ``pruned`` is made from ``teacher`` (default: the
    configured one; ``kdsearch run`` without one passes the teacher it trained).

    Raises:
        UsageError: ``pruned`` with no teacher to cut.
        ModelError: Torch-Pruning cannot trace the teacher, or finds nothing in it to cut; the message
            names the way out, another space (the quick preset searches ``pruned`` unasked).
    """
    if config.search.space != PRUNED_SPACE:
        return load_space(config.search.space)
    spec = teacher or config.teacher
    if spec is None:
        raise UsageError("--space pruned cuts students from your teacher: give --teacher (a zoo name, a model "
                         "directory, a .pt2 or a TorchScript file)")
    loaded = load_teacher(spec, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                          image_size=dataset.image_size)
    try:
        return pruned_space(loaded, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                            image_size=tuple(dataset.image_size))
    except ModelError as e:
        raise ModelError(f"{e}; or search another space: --space resnet_cifar (pruned is the quick preset's)") from None


def check_inputs(config: RunConfig, dataset, *, search: bool = True, student: Arch | None = None,
                 train: tuple[str, ...] = (), space: SearchSpace | None = None):
    """Fail on a bad teacher, zoo model, space, budget, storage, device, student arch or batch
    size before anything is written.

    ``train`` names the training sections that will run (``teach``, ``distill``, ``quantize``):
    each must have at least one batch of data. ``space``: the space to search when it is not read
    from ``config.search.space`` (see :func:`searched_space`). Returns the loaded teacher (None when
    the run trains its own).
    """


    for device in {config.teach.device, config.distill.device, *(getattr(config, name).device for name in train)}:
        resolve_device(device)
    for name in train:
        _check_batches(name, getattr(config, name).batch_size, dataset)
    if "teach" in train and config.teach.init != "random":
        raise UsageError(f"teach.init is {config.teach.init!r}, but a teacher has no teacher to inherit from; "
                         "remove it (init belongs in the distill section)")
    if (train or (search and config.search.race)) and len(dataset.val) == 0:
        raise UsageError(
            f"the validation split is empty: {len(dataset.train)} training images of {dataset.num_classes} classes "
            "leave none out (each class gives 10% of its images, rounded, to validation); use more data"
        )
    if student is not None:
        of_student = student_space(student, config.search.space)
        of_student.validate(student)
        if isinstance(of_student, PrunedSpace):
            of_student.teacher_module()  # a teacher changed since the search is refused before anything is written


    space = space or load_space(config.search.space)
    if search:

        for name in config.search.objectives:
            if name not in COST_OBJECTIVES:
                PROXIES.get(name)
    teacher = None
    if config.teacher is not None:

        teacher = load_teacher(config.teacher, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                               image_size=dataset.image_size)
        module = teacher.module
    else:
        MODELS.get(config.teacher_model)
        with torch.device("meta"):
            module = create_model(config.teacher_model, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    # a pruned student starts as its teacher cut down: nothing to check
    if "distill" in train and config.distill.init == "inherit" and space.family != "pruned":
        _check_inheritance(config, dataset, module, student, teacher.source if teacher else config.teacher_model)
    if search:
        s = search_config_for(config, module)
        if s.timed and not any(p.device.type != "meta" for p in module.parameters()):
            # latency does not depend on the weights: time the architecture the teacher will have
            module = create_model(config.teacher_model, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
        speed = measure_speed(teacher.exportable() if teacher is not None else module, space, dataset, s)  # reused
        feasible_samples(space, dataset, s, wanted=s.population, speed=speed)  # remembered too
    if search and config.search.storage:

        get_storage(config.search.storage)
    return teacher


def _check_inheritance(config: RunConfig, dataset, teacher_module, student: Arch | None, source: str) -> None:
    """Refuse ``--init inherit`` for a student that cannot inherit from the teacher, before anything is
    written. Without the student's arch (``kdsearch run``: the search picks it) a member of the space
    stands for it: a space mixing families or block kinds can still refuse its winner after the search."""
    arch = student or load_space(config.search.space).sample(random.Random(0), dataset.image_size)
    space = student_space(arch, config.search.space)
    with torch.device("meta"):  # the check reads types and shapes only
        module = space.build(arch, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    problem = inheritance_problem(space.family, teacher_module, module)
    if problem is not None:
        raise UsageError(inheritance_refusal(space.family, problem, source))


def resolve_teacher(run_dir: Path, config: RunConfig, dataset):
    """The configured teacher, or the one ``kdsearch run`` trained into ``run_dir/teacher``."""

    spec = config.teacher or str(RunDir(run_dir).teacher)
    return load_teacher(spec, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                        image_size=dataset.image_size)


def search_config_for(config: RunConfig, teacher) -> SearchConfig:
    """The search configuration with ``--max-params`` defaulting to a fraction of the teacher's size
    when no speed-up budget is set (under one, speed is the budget)."""
    s = config.search
    if s.max_params is None and config.student_fraction and s.speedup is None:
        module = getattr(teacher, "module", teacher)
        teacher_params = sum(p.numel() for p in module.parameters())
        s = replace(s, max_params=int(teacher_params * config.student_fraction))
    return s


def teach_stage(out: Path, config: RunConfig, dataset, *, resume: bool, progress: Progress) -> TrainMetrics:
    """Train ``config.teacher_model`` with cross-entropy into the model directory ``out``."""


    if resume and (out / "model.safetensors").exists():
        progress.note(f"teacher already trained in {out}")
        return TrainMetrics.load(out / TrainMetrics.FILE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.teach.seed)
        model = create_model(config.teacher_model, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    train_teacher(model, dataset, out, config.teach, arch=model_arch(config.teacher_model),
                  model_name=config.teacher_model, resume=resume, progress=progress)
    return TrainMetrics.load(out / TrainMetrics.FILE)


def search_stage(run: RunDir, config: RunConfig, dataset, teacher, *, resume: bool, progress: Progress,
                 seed_archs: list[Arch] | None = None):
    """Search into ``run.search``; returns the search result (None when resumed after it finished)
    and the winner record."""

    if resume and run.winner.exists():
        progress.note(f"search already finished in {run.search}")
        return None, WinnerRecord.load(run.winner)
    result = run_search(teacher, dataset, run.search, search_config_for(config, teacher), resume=resume,
                        seed_archs=seed_archs or [], progress=progress)
    return result, record_winner_init(run, config, dataset, teacher)


def record_winner_init(run: RunDir, config: RunConfig, dataset, teacher) -> WinnerRecord:
    """winner.json with ``init``: what the winner takes from the teacher when distilled under ``distill.init``."""
    from kdsearch.distill.stage import build_student, start_student

    winner = WinnerRecord.load(run.winner)
    arch = Arch.from_dict(winner.arch)
    student = build_student(arch, dataset, config.distill.seed, config.search.space)
    try:
        init = start_student(student, student_space(arch, config.search.space), teacher, config.distill.init,
                             seed=config.distill.seed)
    except KdsearchError:  # e.g. --init inherit for a family that cannot: the distill stage says so in one line
        return winner
    winner = replace(winner, init=init)
    winner.save(run.winner)
    return winner


def race_stage(run: RunDir, config: RunConfig, dataset, teacher, *, resume: bool, progress: Progress) -> WinnerRecord:
    """Race the search's finalists into ``run.race`` when ``search.race`` asks for it; the winner record.

    Writes ``race/race.json`` and ``race/rungs.png``, the race columns of ``leaderboard.csv`` and
    the race in ``winner.json``. A finished race (recorded in winner.json) is not run again.
    """
    winner = WinnerRecord.load(run.winner)
    if not config.search.race or winner.race is not None:
        return winner if winner.init is not None else record_winner_init(run, config, dataset, teacher)

    result = run_race(read_leaderboard(run.leaderboard), teacher, dataset, run.race, search_config_for(config, teacher),
                      config.distill, space_spec=config.search.space, resume=resume, progress=progress)
    race = RaceRecord.from_dict(result.record(), "the race's record")
    race.save(run.race_record)
    plot_race_rungs(race.finalists, race.rungs, run.race_plot, race.rank)
    progress.note(f"race: spent {race.spent_steps} optimizer steps = {race.spent_distillations:.2f} of one "
                  f"distillation ({race.full_steps} steps); with the rest of the winner's distillation "
                  f"{race.total_distillations:.2f} (budget {race.budget:g})")
    record_race(run.search, race)
    return record_winner_init(run, config, dataset, teacher)


def race_continuation(race_run: RunDir, arch: Arch, config: TrainConfig, distill_dir: Path,
                      progress: Progress = NULL_PROGRESS) -> TrainConfig | None:
    """The distill settings under which ``arch``'s distillation goes on from its run in ``race_run``'s
    race, whose checkpoint is then in ``distill_dir``; None (a fresh distillation) when ``arch`` did
    not win a race there, or the race trained with other settings than ``config`` (a note says which)."""
    winner = WinnerRecord.load_optional(race_run.winner)
    race = winner.race if winner is not None else None
    if not race or not race.get("continuation") or race.get("winner") != arch.key:
        return None
    went_on = race["continuation"]
    wanted = replace(config, seed=race["seed"])
    ours = {k: v for k, v in asdict(wanted).items() if k != "max_memory"}
    theirs = {k: v for k, v in went_on["settings"].items() if k != "max_memory"}
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != _plain(theirs.get(k)))
    source = race_run.race / went_on["checkpoint"]
    if differ or not source.is_file():
        why = f"its distill settings differ from the race's ({', '.join(differ)})" if differ else f"{source} is gone"
        progress.note(f"distill: the race's winner starts afresh: {why}")
        return None
    target = distill_dir / CHECKPOINT
    if not target.exists():
        distill_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    progress.note(f"distill: goes on from the race's run of the winner at step {went_on['step']} "
                  f"(seed {race['seed']}); the race's steps are not trained again")
    return wanted


def _plain(value: Any) -> Any:
    """A JSON value as the settings dict holds it: lists back to tuples."""
    return tuple(_plain(v) for v in value) if isinstance(value, list) else value


def distill_stage(run: RunDir, config: RunConfig, dataset, teacher, arch: Arch, *, resume: bool,
                  progress: Progress, assistant: str | None = None, search_dir: Path | None = None) -> TrainMetrics:
    """Distil ``arch`` from ``teacher`` into ``run.distill`` (through an assistant when given); the
    winner of a race goes on from its race run (:func:`race_continuation`)."""
    if resume and run.student_weights.exists():
        progress.note(f"student already distilled in {run.distill}")
        return TrainMetrics.load(run.distill_metrics)
    if teacher.trained is not True:
        progress.note(f"warning: teacher {teacher.source} is not known to be trained; distilling from it may not help")
    if assistant:

        candidates = searched_candidates(RunDir(search_dir)) if search_dir is not None else None
        metrics = assistant_stage(run.distill, arch, assistant, teacher, dataset, config.distill, candidates=candidates,
                                  space_spec=config.search.space, resume=resume, progress=progress)
    else:
        going_on = race_continuation(RunDir(search_dir) if search_dir is not None else run, arch, config.distill,
                                     run.distill, progress)
        metrics = distill_student(arch, teacher, dataset, run.distill, going_on or config.distill,
                                  resume=resume or going_on is not None, space_spec=config.search.space,
                                  progress=progress)
    # under torchrun only rank 0 writes metrics.json; every rank gets the same figures back
    return TrainMetrics.from_dict({k: v for k, v in metrics.items() if k != "module"})


def searched_candidates(run: RunDir):
    """Every scored arch of ``run``'s search, scored by the proxy that chose its winner (for
    ``--assistant auto``); None when the run has no finished search."""

    if not run.leaderboard.is_file():
        return None
    winner = WinnerRecord.load_optional(run.winner)
    rows = read_leaderboard(run.leaderboard)
    scores = [k for k in (rows[0] if rows else {}) if k.startswith("score_")]
    score = f"score_{winner.proxy}" if winner and f"score_{winner.proxy}" in scores else (scores[0] if scores else None)
    if score is None:
        return None
    return [Candidate(Arch.from_json(r["arch"]), r["params"], r[score]) for r in rows
            if isinstance(r.get(score), float) and r[score] == r[score]]


def _require_student(run: RunDir) -> None:
    if not run.student_json.exists():
        raise UsageError(f"{run.root} has no distilled student (distill/student.json); run `kdsearch distill` first")


def qat_stage(run: RunDir, config: RunConfig, dataset, *, resume: bool, progress: Progress) -> QatMetrics:
    """Quantization-aware training with KD of ``run.distill``'s student into ``run.qat``."""

    _require_student(run)
    if resume and run.qat_metrics.exists():
        progress.note(f"student already quantized in {run.qat}")
        return QatMetrics.load(run.qat_metrics)
    q = config.quantize
    uses_teacher = CombinedLoss(q.loss, {}).uses_teacher
    student, student_meta = load_model_dir(run.distill, weights_name="student")
    teacher = resolve_teacher(run.root, config, dataset).module if uses_teacher else None
    quantize_student(student, student_meta, teacher, dataset, run.qat, q, resume=resume, progress=progress)
    return QatMetrics.load(run.qat_metrics)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_stage(run: RunDir, config: RunConfig, dataset, *, progress: Progress = NULL_PROGRESS) -> ExportRecord:
    """Export ``run.distill``'s student to ``run.export`` and verify it.

    int8 files of an earlier export of the same student (same weights digest) that this export
    does not remake are kept and listed again, so PTQ and QAT stand side by side.
    """

    _require_student(run)
    model, meta = load_model_dir(run.distill, weights_name="student")
    model.eval()
    e = config.export
    modes = e.int8_modes
    qat_model = None
    if "qat" in modes:

        progress.note(f"rebuilding the int8 QAT model from {run.qat}")
        qat_model = load_qat_model(run.qat)
    digest = _digest(run.student_weights)
    keep = {}
    previous = _previous_export(run)
    if previous is not None and previous.student_digest == digest:
        keep = {mode: entry for mode, entry in previous.files.items() if mode != "fp32" and mode not in modes}
    teacher_figures = None
    if e.teacher_latency:

        teacher = resolve_teacher(run.root, config, dataset)
        module = teacher.exportable()
        teacher_figures = export_teacher(module, (dataset.in_channels, *dataset.image_size), run.export,
                                         opset=e.opset, progress=progress.note)
    calib = dataset.train.images[: e.calib_images]
    metadata = {
        "arch": json.dumps(meta.get("arch")),
        "val_acc": str(meta.get("val_acc")),
        "dataset": dataset.name,
        "classes": json.dumps(list(dataset.classes)),
        "normalization": json.dumps({"mean": list(dataset.mean), "std": list(dataset.std)}),
    }
    export_model(
        model,
        val_images=NormalizedImages(dataset.val.images, dataset.mean, dataset.std),
        val_labels=dataset.val.labels,
        calib_images=normalize(calib, dataset.mean, dataset.std),
        num_calib=e.calib_images,
        out_dir=run.export,
        int8=modes,
        qat_model=qat_model,
        opset=e.opset,
        provider=e.provider,
        latency_runs=e.latency_runs,
        latency_batch=latency_batch(config),
        latency_threads=latency_threads(config),
        max_memory=e.max_memory,
        metadata=metadata,
        keep=keep,
        student_digest=digest,
        teacher=teacher_figures,
        progress=progress.note,
    )
    return ExportRecord.load(run.export_record)


def latency_batch(config: RunConfig) -> int:
    """The throughput batch the export times beside batch 1: ``export.latency_batch``, else the search's."""
    if config.export.latency_batch is not None:
        return config.export.latency_batch
    return config.search.latency_batch


def latency_threads(config: RunConfig) -> int | None:
    """ONNX Runtime threads the export times with: ``export.latency_threads``, else the search's."""
    if config.export.latency_threads is not None:
        return config.export.latency_threads
    return config.search.latency_threads


def _previous_export(run: RunDir) -> ExportRecord | None:

    try:
        return ExportRecord.load_optional(run.export_record)
    except ConfigError:  # an export.json of another version: its int8 files are remade on request
        return None


def summary_for(run: RunDir, dataset, teacher, teacher_metrics: TrainMetrics | None, winner: WinnerRecord,
                student_metrics: TrainMetrics, export: ExportRecord, timings: dict[str, float]) -> RunSummary:
    """``summary.json``: the headline figures of a finished run."""

    h, w = dataset.image_size
    teacher_params = sum(p.numel() for p in teacher.module.parameters())
    teacher_flops = count_flops(teacher.module, (dataset.in_channels, h, w))
    teacher_acc = (teacher_metrics.val_acc if teacher_metrics else None) or student_metrics.teacher_val_acc
    fp32, shipped = export.fp32, export.shipped
    batches = export.latency_batches
    return RunSummary(
        run_dir=str(run.root),
        dataset=dataset.name,
        teacher={"source": teacher.source, "val_acc": teacher_acc, "params": teacher_params, "flops": teacher_flops,
                 **{f"onnx_latency_ms_b{b}": export.teacher_p50(b) for b in batches}},
        student={
            "arch": winner.arch,
            "val_acc": student_metrics.val_acc,
            "test_acc": student_metrics.test_acc,
            "params": winner.params,
            "flops": winner.flops,
            "agreement": student_metrics.agreement,
        },
        reduction={"params": teacher_params / max(1, winner.params), "flops": teacher_flops / max(1, winner.flops)},
        onnx={
            "path": str(run.export / fp32.path),
            "val_acc": fp32.accuracy,
            "top1_agreement": fp32.min_top1_agreement,
            "latency_batch": batches[-1],
            **{f"latency_ms_b{b}": fp32.p50(b) for b in batches},
            **{f"speedup_b{b}": fp32.speedup_at(b) for b in batches},  # over the teacher, timed side by side
            "recommended": shipped.path,  # fp32 unless an int8 file is faster at every batch
            **{f"recommended_speedup_b{b}": shipped.speedup_at(b) for b in batches},
            "input_size": export.input_size,
            "pytorch_latency_ms_b1": export.pytorch_eager["latency_ms"]["batch_1"]["p50"],
        },
        timings_s=timings,
        report=str(run.report),
    )
