"""The distill and teach stages: train a network and leave a model directory behind."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsearch.arch import Arch
from kdsearch.data import Dataset
from kdsearch.distill.config import TrainConfig
from kdsearch.distill.curves import plot_curves
from kdsearch.distill.evaluate import predict_logits, topk_accuracy
from kdsearch.distill.trainer import train
from kdsearch.errors import UsageError
from kdsearch.distill.distributed import is_main_process
from kdsearch.files import write_json
from kdsearch.rundir import CURVE_LOG, CURVES_PLOT, TrainMetrics
from kdsearch.models.teacher import Teacher
from kdsearch.spaces.model_files import save_model_dir
from kdsearch.progress import NULL_PROGRESS, Progress
from kdsearch.spaces.base import SearchSpace

__all__ = ["distill_student", "train_teacher", "build_student", "inheritance_refusal", "start_student"]


def student_space(arch: Arch, space_spec: str | None = None) -> SearchSpace:
    """The space ``arch`` belongs to; ``space_spec`` (name or YAML) is needed for a user's space."""
    from kdsearch.spaces.catalog import family_space
    from kdsearch.spaces import load_space

    if space_spec:
        space = load_space(space_spec)
        if space.name == arch.space:
            return space
    return family_space(arch)


def build_student(arch: Arch, dataset: Dataset, seed: int, space_spec: str | None = None) -> nn.Module:
    """Build ``arch`` for ``dataset`` with a seeded initialisation."""
    space = student_space(arch, space_spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return space.build(arch, num_classes=dataset.num_classes, in_channels=dataset.in_channels)


def inheritance_refusal(family: str, problem: str, source: str) -> str:
    """The one line ``--init inherit`` stops with when a ``family`` student cannot inherit from
    teacher ``source`` for the reason ``problem`` (:func:`~kdsearch.models.inherit.inheritance_problem`)."""
    return (f"--init inherit: a {family} student cannot inherit from teacher {source}: {problem}; "
            "use --init auto (random weights where it cannot) or --init random")


def start_student(student: nn.Module, space: SearchSpace, teacher: Teacher, init: str,
                  progress: Progress = NULL_PROGRESS, seed: int = 0) -> dict[str, Any]:
    """Give ``student`` its starting weights as ``init`` says (random | inherit | auto); what
    metrics.json records under ``init``. ``random`` keeps the seeded initialisation it was built with.

    A student of a ``pruned`` space is its teacher cut down, weights and all (``auto``, ``inherit``),
    or the cut shape with fresh weights seeded by ``seed`` (``random``); the record names the
    teacher file and digest it was cut from.

    Raises:
        UsageError: ``init`` is ``inherit`` and the student cannot inherit from ``teacher``.
    """
    from kdsearch.models.inherit import inherit_weights, inheritance_problem
    from kdsearch.spaces.pruned import PrunedSpace

    family = space.family
    if isinstance(space, PrunedSpace):
        source = {"teacher": space.prune["teacher"], "teacher_sha256": space.prune["teacher_sha256"]}
        if init == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for module in student.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
            progress.note(f"init: the student is teacher {space.prune['teacher']} pruned, with fresh weights")
            return {"mode": "random", "pruned_from": source}
        progress.note(f"init: the student is teacher {space.prune['teacher']} pruned, its weights the teacher's")
        return {"mode": "pruned", **source}
    if init == "random":
        return {"mode": "random"}
    problem = inheritance_problem(family, teacher.module, student)
    if problem is not None:
        if init == "inherit":
            raise UsageError(inheritance_refusal(family, problem, teacher.source))
        progress.note(f"init: random weights, since a {family} student cannot inherit from teacher "
                      f"{teacher.source}: {problem}")
        return {"mode": "random", "reason": problem}
    inherited = inherit_weights(family, teacher.module, student)
    progress.note(f"init: {inherited.fraction:.1%} of the student's {inherited.total:,} parameters inherited from "
                  f"teacher {teacher.source} ({len(inherited.parameters)} tensors)")
    return {"mode": "inherit", "teacher": teacher.source, **inherited.to_dict()}


def _finish(
    model: nn.Module,
    dataset: Dataset,
    out_dir: Path,
    result: dict[str, Any],
    *,
    weights_name: str,
    arch: Arch | None,
    model_name: str | None,
    extra: dict[str, Any],
    space: SearchSpace | None = None,
) -> dict[str, Any]:
    from kdsearch.distill.distributed import is_main_process

    if not is_main_process():  # rank 0 evaluates on the test set and writes the files
        return {"val_acc": result.get("val_acc"), "val_top5": result.get("val_top5"), "test_acc": None,
                "params": sum(p.numel() for p in model.parameters()), **extra, "history": result.get("history", [])}
    test_acc = None
    if dataset.test is not None:
        history = result.get("history") or [{}]
        batch = history[-1].get("eval_batch", 512)  # the evaluation batch the engine sized to the budget
        logits = predict_logits(model, dataset.test.images, dataset.mean, dataset.std, batch_size=batch)
        test_acc = topk_accuracy(logits, dataset.test.labels)
    metrics = {
        "val_acc": result.get("val_acc"),
        "val_top5": result.get("val_top5"),
        "test_acc": test_acc,
        "params": sum(p.numel() for p in model.parameters()),
        **extra,
        "history": result.get("history", []),
    }
    save_model_dir(
        out_dir,
        model,
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
        arch=arch,
        model_name=model_name,
        trained=True,
        space=space,
        extra={
            "val_acc": metrics["val_acc"],
            "test_acc": test_acc,
            "dataset": dataset.name,
            "normalization": {"mean": list(dataset.mean), "std": list(dataset.std)},
            "epochs": len(metrics["history"]),
            **({"init": metrics["init"]} if metrics.get("init") else {}),  # what the student took from its teacher
        },
        weights_name=weights_name,
    )
    TrainMetrics.from_dict(metrics).save(out_dir / TrainMetrics.FILE)
    plot_curves(metrics["history"], out_dir / CURVES_PLOT)
    return metrics


def distill_student(
    arch: Arch,
    teacher: Teacher,
    dataset: Dataset,
    out_dir: Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    space_spec: str | None = None,
    progress: Progress = NULL_PROGRESS,
    weights_name: str = "student",
    extra: dict[str, Any] | None = None,
    keep_module: bool = False,
) -> dict[str, Any]:
    """Distil ``arch`` from ``teacher``; writes student.safetensors/json, metrics.json, curves.png.

    The student starts as ``config.init`` says (:func:`start_student`); metrics.json records how.
    Under ``config.curve_every`` the learning curve (every step's loss terms, validation top-1 every
    N steps) goes to curve.json.

    ``weights_name="model"`` writes a model directory usable as ``--teacher`` (an assistant);
    ``extra`` adds entries to metrics.json; ``keep_module`` returns the trained network
    under ``"module"``. Under ``torchrun`` only rank 0 writes files.
    """
    space = student_space(arch, space_spec)
    student = build_student(arch, dataset, config.seed, space_spec)
    init = start_student(student, space, teacher, config.init, progress, seed=config.seed)
    result = train(student, dataset, out_dir, config, teacher=teacher.module, resume=resume, progress=progress)
    info = {
        "init": init,
        "teacher": teacher.source,
        "teacher_val_acc": result.get("teacher_val_acc"),
        "agreement": result.get("agreement"),
        "loss": config.loss,
        **(extra or {}),
    }
    metrics = _finish(student, dataset, out_dir, result, weights_name=weights_name, arch=arch, model_name=None,
                      extra=info, space=space)
    if result.get("curve") and is_main_process():
        write_json(out_dir / CURVE_LOG, {"curve_every": config.curve_every, "batch_size": config.batch_size,
                                         "seed": config.seed, "init": init.get("mode"), "steps": result["curve"]})
    if keep_module:
        metrics["module"] = student
    return metrics


def train_teacher(
    model: nn.Module,
    dataset: Dataset,
    out_dir: Path,
    config: TrainConfig,
    *,
    arch: Arch | None,
    model_name: str | None,
    resume: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> dict[str, Any]:
    """Train a teacher with cross-entropy; writes model.json + model.safetensors + metrics.json."""
    result = train(model, dataset, out_dir, config, teacher=None, resume=resume, progress=progress)
    return _finish(model, dataset, out_dir, result, weights_name="model", arch=arch, model_name=model_name, extra={})
