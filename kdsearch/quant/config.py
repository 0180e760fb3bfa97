"""The configuration of a QAT-KD run (:class:`QatConfig`); torch-free, so the CLI can read it cheaply."""
from __future__ import annotations

from dataclasses import dataclass

from kdsearch.distill.config import check_shared_settings
from kdsearch.errors import UsageError

__all__ = ["QatConfig"]


@dataclass(frozen=True)
class QatConfig:
    """Everything that decides a QAT run; saved in every checkpoint."""

    epochs: int = 2
    lr: float = 5e-3  # ~1/20 of distillation's peak: QAT fine-tunes; large steps undo the fp32 solution
    batch_size: int = 128
    loss: str = "kd:1,ce:1"  # the distillation loss registry; logit losses only (the graph has no module hooks)
    temperature: float = 4.0
    freeze_bn_after: int = 1  # epochs on batch statistics; then running ones, as the folded int8 model computes
    freeze_observers_after: int = 1  # epochs the quantization ranges follow the data; then they are fixed
    momentum: float = 0.9
    weight_decay: float = 1e-4  # never applied to norms and biases
    grad_clip: float | None = 5.0
    augment: bool = True
    recipe: str = "onnx"  # see kdsearch.quant.recipes.QUANTIZERS; "onnx": every conv runs as QLinearConv in ONNX Runtime
    eval_batch_size: int = 512
    max_memory: str | None = None  # one training step's memory budget (e.g. "6GB"); None: 70 % of what is free
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_shared_settings(self.epochs, self.batch_size, self.lr, self.temperature)
        for name in ("freeze_bn_after", "freeze_observers_after"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be 0 or more epochs (got {getattr(self, name)})")
        if self.max_memory is not None:
            from kdsearch.memory import parse_memory

            parse_memory(self.max_memory)
