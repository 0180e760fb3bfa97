"""Teacher-assistant distillation (Mirzadeh et al., "Improved Knowledge Distillation via
Teacher Assistant", AAAI 2020).

When the teacher is much larger than the student, distilling through a network of
intermediate size narrows the gap: teacher → assistant, then assistant → student. With
``--assistant auto`` the assistant comes from the search's own Pareto front.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from kdsearch.arch import Arch
from kdsearch.data import Dataset
from kdsearch.distill.config import TrainConfig
from kdsearch.errors import UsageError
from kdsearch.models.teacher import Teacher
from kdsearch.pareto import pareto_front
from kdsearch.progress import NULL_PROGRESS, Progress
from kdsearch.rundir import TrainMetrics

__all__ = ["Candidate", "choose_assistant", "resolve_assistant", "distill_with_assistant", "assistant_stage"]


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class Candidate:
    """A searched architecture as the assistant choice sees it: its size and its proxy score."""

    arch: Arch
    params: int
    score: float  # higher is better


def choose_assistant(candidates: Sequence[Candidate], teacher_params: int, student_params: int) -> Candidate:
    """The Pareto-front candidate whose size is closest (in log params) to √(teacher · student).

    The front maximises score and minimises params over every candidate given, over-budget ones
    too: the assistant may exceed the student's budget. Only candidates strictly between student
    and teacher size qualify.

    Raises:
        UsageError: no front candidate of intermediate size.
    """
    rows = [{"params": c.params, "score": c.score, "candidate": c} for c in candidates]
    between = [r["candidate"] for r in pareto_front(rows, "score", "params")
               if student_params < r["params"] < teacher_params]
    if not between:
        raise UsageError(
            f"the search front has no arch between the student ({student_params:,} params) and the "
            f"teacher ({teacher_params:,}); give --assistant ARCH.json"
        )
    target = math.log(math.sqrt(teacher_params * student_params))
    return min(between, key=lambda c: abs(math.log(c.params) - target))


def resolve_assistant(spec: str, candidates: Sequence[Candidate] | None, teacher: Teacher, student_params: int) -> Arch:
    """``--assistant ARCH.json``, or ``auto``: chosen among the search's ``candidates``."""
    if spec != "auto":
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"--assistant {spec}: no such file; give an Arch JSON file or 'auto'")
        return Arch.load(path)
    if not candidates:
        raise UsageError("--assistant auto needs a RUN_DIR with a finished search; give --assistant ARCH.json instead")
    return choose_assistant(candidates, _count(teacher.module), student_params).arch


def distill_with_assistant(
    arch: Arch,
    assistant: Arch,
    teacher: Teacher,
    dataset: Dataset,
    out_dir: Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    space_spec: str | None = None,
    progress: Progress = NULL_PROGRESS,
) -> dict[str, Any]:
    """Distil teacher → ``assistant`` (into ``out_dir/assistant``), then assistant → ``arch`` (into ``out_dir``).

    Both legs use ``config``; the student's metrics.json records the assistant and its accuracy.
    """
    from kdsearch.distill.stage import distill_student, student_space
    from kdsearch.spaces.model_files import load_model_dir

    progress.note(f"teacher assistant: {assistant.space} {assistant.key}")
    ta_dir = out_dir / "assistant"
    if resume and (ta_dir / "model.safetensors").exists():
        progress.note(f"assistant already distilled in {ta_dir}")
        ta_module, _ = load_model_dir(ta_dir)
        ta_metrics = TrainMetrics.load(ta_dir / TrainMetrics.FILE).to_dict()
    else:
        ta_metrics = distill_student(assistant, teacher, dataset, ta_dir, config, resume=resume, space_spec=space_spec,
                                     progress=progress, weights_name="model", keep_module=True)
        ta_module = ta_metrics.pop("module")
    ta_space = student_space(assistant, space_spec)
    ta_teacher = Teacher(ta_module, str(ta_dir), True, assistant, None,
                         {"num_classes": dataset.num_classes, "in_channels": dataset.in_channels,
                          "family": ta_space.family, "space": ta_space.definition})
    metrics = distill_student(arch, ta_teacher, dataset, out_dir, config, resume=resume, space_spec=space_spec,
                              progress=progress,
                              extra={"assistant": {"arch": assistant.to_dict(), "params": _count(ta_module),
                                                   "val_acc": ta_metrics.get("val_acc"), "teacher": teacher.source}})
    return metrics


def assistant_stage(
    out_dir: Path,
    arch: Arch,
    spec: str,
    teacher: Teacher,
    dataset: Dataset,
    config: TrainConfig,
    *,
    candidates: Sequence[Candidate] | None = None,
    space_spec: str | None = None,
    resume: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> dict[str, Any]:
    """``kdsearch distill --assistant SPEC``: resolve the assistant, distil through it into ``out_dir``.

    ``candidates`` are the searched archs ``auto`` chooses from.
    """
    from kdsearch.distill.stage import build_student

    student_params = _count(build_student(arch, dataset, config.seed, space_spec))
    ta = resolve_assistant(spec, candidates, teacher, student_params)
    return distill_with_assistant(arch, ta, teacher, dataset, out_dir, config, resume=resume, space_spec=space_spec,
                                  progress=progress)
