"""Teacher training and distillation: the box of :mod:`kdsearch.distill.engine` for a plain ``nn.Module``.

``train(student, dataset, out_dir, config, teacher=...)``: without a teacher it is plain
supervised training (``--loss ce``); with one, the losses of :mod:`kdsearch.distill.losses`
combine by name and weight, and feature losses read the last stages of both networks, paired
by module path. The loop itself (batches, step, checkpoint and resume, NaN and Ctrl-C) is
:func:`kdsearch.distill.engine.fit`; QAT-KD (:mod:`kdsearch.quant.qat`) runs through it too.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsearch.data import Dataset, normalize
from kdsearch.devices import resolve_device
from kdsearch.distill.config import TrainConfig, loss_options_for, parse_loss_options
from kdsearch.distill.distributed import DistributedContext
from kdsearch.distill.engine import build_criterion, dts_temperature, fit
from kdsearch.distill.losses import CombinedLoss
from kdsearch.models.features import FeatureTap, locate_parts
from kdsearch.progress import NULL_PROGRESS, Progress

# TrainConfig, parse_loss_options, loss_options_for and dts_temperature live in config/engine;
# re-exported here for callers written before the split
__all__ = ["TrainConfig", "train", "feature_pairs", "parse_loss_options", "loss_options_for", "dts_temperature"]


def feature_pairs(student: nn.Module, teacher: nn.Module, sample: torch.Tensor) -> tuple[list[str], list[str]]:
    """Pair the last stages of student and teacher by module path (as many as both have)."""
    s_paths = list(getattr(student, "stage_paths", ()) or [locate_parts(student, sample).feature])
    t_paths = list(getattr(teacher, "stage_paths", ()) or [locate_parts(teacher, sample).feature])
    n = min(len(s_paths), len(t_paths))
    return s_paths[-n:], t_paths[-n:]


def train(
    student: nn.Module,
    dataset: Dataset,
    out_dir: Path,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    resume: bool = False,
    criterion_state: dict[str, Any] | None = None,
    stop_step: int | None = None,
    progress: Progress = NULL_PROGRESS,
) -> dict[str, Any]:
    """Train ``student`` on ``dataset`` (distilling from ``teacher`` when given).

    Writes ``out_dir/last.ckpt`` after every epoch and returns the final metrics with the
    per-epoch ``history``. ``student`` holds the final weights on return (on the CPU).
    ``criterion_state`` (a checkpoint's ``criterion``) starts the loss's own weights (feature
    adapters) where an earlier training left them, as ``student``'s weights do.
    ``stop_step`` stops the run after that many optimizer steps, inside an epoch if need be, with
    the schedule still planned for every epoch; ``resume`` goes on from there (:func:`~kdsearch.distill.engine.fit`).
    Under ``torchrun`` every rank trains on its shard of each epoch; rank 0 alone evaluates
    and writes, and every rank returns rank 0's metrics.
    """
    device = resolve_device(config.device)
    dist = DistributedContext.from_env(device)
    ok = False
    try:
        criterion = build_criterion(config)
        paths = _setup_feature_losses(criterion, student, teacher, dataset)
        if criterion_state:
            criterion.load_state_dict(criterion_state)
        result = fit(student, criterion, dataset, out_dir, config, teacher=teacher, feature_paths=paths,
                     settings=asdict(config), resume=resume, stop_step=stop_step, progress=progress, device=device,
                     dist=dist)
        ok = True
        return result
    finally:
        dist.close(wait=ok)  # after a failure the other ranks may never reach a barrier


def _setup_feature_losses(
    criterion: CombinedLoss, student: nn.Module, teacher: nn.Module | None, dataset: Dataset
) -> tuple[list[str], list[str]]:
    """Pair the feature maps a feature loss compares and size its adapters, from one forward on two images."""
    if not criterion.uses_features or teacher is None:  # no teacher: fit() says the loss needs one
        return [], []
    sample = normalize(dataset.train.images[:2], dataset.mean, dataset.std)  # (2, C, H, W)
    s_paths, t_paths = feature_pairs(student, teacher, sample)
    with torch.no_grad(), FeatureTap(student, s_paths) as s_tap, FeatureTap(teacher, t_paths) as t_tap:
        student.eval(), teacher.eval()
        student(sample), teacher(sample)
    student.train()
    criterion.setup([s_tap[p].shape[1] for p in s_paths], [t_tap[p].shape[1] for p in t_paths])
    return s_paths, t_paths
