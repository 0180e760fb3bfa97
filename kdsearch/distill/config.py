"""The configuration of a training run (:class:`TrainConfig`) and its loss options.

Torch-free, so the CLI can read and validate options without importing torch; the losses
are imported only inside :meth:`TrainConfig.__post_init__`, to check their names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kdsearch.errors import UsageError

__all__ = ["INIT_MODES", "TrainConfig", "check_shared_settings", "parse_loss_options", "loss_options_for"]

INIT_MODES = ("random", "inherit", "auto")  # how a distilled student starts (TrainConfig.init)


def check_shared_settings(epochs: int, batch_size: int, lr: float | None, temperature: float) -> None:
    """The checks every training configuration shares (distillation and QAT); ``lr`` None: chosen later."""
    if epochs <= 0:
        raise UsageError(f"--epochs must be positive (got {epochs})")
    if batch_size <= 0:
        raise UsageError(f"--batch-size must be positive (got {batch_size})")
    if lr is not None and not (lr > 0 and math.isfinite(lr)):
        raise UsageError(f"--lr must be a positive number (got {lr})")
    if temperature <= 0:
        raise UsageError(f"--temperature must be positive (got {temperature})")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved in every checkpoint."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adamw
    lr: float | None = None  # None: 0.1·batch/128 for SGD, 2e-3 for AdamW
    momentum: float = 0.9
    weight_decay: float = 5e-4  # never applied to norms and biases
    schedule: str = "cosine"  # cosine | onecycle
    warmup_epochs: float = 0.3  # linear warm-up before the cosine decay
    grad_clip: float | None = 5.0  # max global grad norm; None: no clipping
    loss: str = "kd:1,ce:1"
    loss_options: tuple[str, ...] = ()  # "name.key=value" items, e.g. "dkd.beta=2" (--loss-option)
    label_smoothing: float = 0.0  # ε of the ce term (0: plain cross entropy)
    temperature: float = 4.0  # KD temperature (the start value under --temperature-schedule dts)
    temperature_schedule: str = "fixed"  # fixed | dts
    augment: bool = True  # the dataset's standard augmentation (crop + flip)
    cache_teacher: bool = False  # teacher outputs computed once; needs augment=False
    amp: bool = True  # CUDA only: bf16 where supported, else fp16 with a scaler
    channels_last: bool = True  # CUDA only
    compile: bool = False
    eval_batch_size: int = 512
    seed: int = 0
    # how a distilled student starts: random (fresh weights), inherit (cut from the teacher's weights,
    # refused for a student the teacher's family cannot give weights to) or auto (inherit when it can)
    init: str = "random"
    # learning curves: keep every step's loss terms and evaluate validation top-1 every N optimizer
    # steps (fit's ``curve``; a distillation writes it to curve.json); 0: per epoch only
    curve_every: int = 0
    device: str = "auto"
    # what one training step may use, e.g. "6GB"; None: 70% of the memory free when training
    # starts. Past it the batch is split into micro-batches with gradient accumulation.
    max_memory: str | None = None

    def __post_init__(self) -> None:
        check_shared_settings(self.epochs, self.batch_size, self.lr, self.temperature)
        if self.optimizer not in {"sgd", "adamw"}:
            raise UsageError(f"unknown optimizer {self.optimizer!r}; use sgd or adamw")
        if self.schedule not in {"cosine", "onecycle"}:
            raise UsageError(f"unknown schedule {self.schedule!r}; use cosine or onecycle")
        if self.temperature_schedule not in {"fixed", "dts"}:
            raise UsageError(f"unknown temperature schedule {self.temperature_schedule!r}; use fixed or dts")
        if self.curve_every < 0:
            raise UsageError(f"curve_every must be 0 (off) or a number of optimizer steps (got {self.curve_every})")
        if self.init not in INIT_MODES:
            raise UsageError(f"unknown --init {self.init!r}; use {', '.join(INIT_MODES)}")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise UsageError("--weight-decay and --warmup-epochs must be >= 0")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise UsageError(f"--grad-clip must be >= 0 (0 turns clipping off; got {self.grad_clip})")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.max_memory is not None:
            from kdsearch.memory import parse_memory

            parse_memory(self.max_memory)
        # build the losses once so unknown names and bad options fail before any work; imported
        # here, not at the top, so that reading a configuration does not import torch
        from kdsearch.distill.losses import CombinedLoss, parse_loss_spec

        CombinedLoss(self.loss, loss_options_for(self, [name for name, _ in parse_loss_spec(self.loss)]))

    @property
    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.1 * self.batch_size / 128 if self.optimizer == "sgd" else 2e-3


def parse_loss_options(items: tuple[str, ...] | list[str]) -> dict[str, dict[str, str]]:
    """``["dkd.beta=2", "kd.temperature=3"]`` -> ``{"dkd": {"beta": "2"}, "kd": {"temperature": "3"}}``.

    Values stay strings; each loss converts and checks its own options.
    """
    options: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        name, dot, option = key.strip().partition(".")
        if not (sep and dot and name and option.strip() and value.strip()):
            raise UsageError(f"--loss-option {item!r} is not NAME.KEY=VALUE; write it like 'dkd.beta=2'")
        options.setdefault(name, {})[option.strip()] = value.strip()
    return options


def loss_options_for(config: TrainConfig, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per-loss options: --temperature for kd/dkd, --label-smoothing for ce, then --loss-option items."""
    options: dict[str, dict[str, Any]] = {n: {"temperature": config.temperature} for n in names if n in ("kd", "dkd")}
    if config.label_smoothing:
        if "ce" not in names:
            raise UsageError(f"--label-smoothing applies to the ce loss, which is not in --loss {config.loss}; add ce:1")
        options["ce"] = {"label_smoothing": config.label_smoothing}
    for name, values in parse_loss_options(config.loss_options).items():
        if name not in names:
            raise UsageError(f"--loss-option names loss {name!r}, which is not in --loss {config.loss}; add it or drop the option")
        options.setdefault(name, {}).update(values)
    return options
