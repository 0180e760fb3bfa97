"""The export stage's configuration (torch-free: the CLI imports it)."""
from __future__ import annotations

from dataclasses import dataclass

from kdsearch.errors import UsageError

__all__ = ["ExportConfig", "parse_int8"]


def parse_int8(value: str) -> tuple[str, ...]:
    """``"ptq,qat"`` -> ``("ptq", "qat")``; ``"none"`` -> ``()``."""
    modes = tuple(dict.fromkeys(m.strip() for m in value.split(",") if m.strip()))
    if modes == ("none",):
        return ()
    if not modes or any(m not in ("ptq", "qat") for m in modes):
        raise UsageError(f"unknown --int8 {value!r}; use none, ptq, qat or ptq,qat")
    return modes


@dataclass(frozen=True)
class ExportConfig:
    int8: str = "none"  # none | ptq | qat | ptq,qat: int8 files made beside the fp32 one
    opset: int = 18
    provider: str = "cpu"  # cpu | cuda | tensorrt
    calib_images: int = 256  # training images that calibrate post-training quantization
    latency_runs: int = 100  # interleaved rounds per batch size: each times the teacher and every file once
    teacher_latency: bool = True  # also export the teacher (export/teacher.onnx) and time it in the same loop
    latency_batch: int | None = None  # the throughput batch timed beside batch 1 (None: the search's, default 32)
    latency_threads: int | None = None  # ONNX Runtime threads when timing (None: the search's, default 1)
    max_memory: str | None = None  # what the export may hold (e.g. "4GB"), batches sized to it; None: 70 % of what is free

    def __post_init__(self) -> None:
        parse_int8(self.int8)
        if self.opset < 18:
            raise UsageError(f"--opset must be 18 or more (got {self.opset})")
        if self.provider not in {"cpu", "cuda", "tensorrt"}:
            raise UsageError(f"unknown --provider {self.provider!r}; use cpu, cuda or tensorrt")
        if self.calib_images <= 0 or self.latency_runs <= 0:
            raise UsageError("--calib-images and --latency-runs must be positive")
        for flag, value in (("--latency-batch", self.latency_batch), ("--latency-threads", self.latency_threads)):
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be at least 1 (got {value})")
        if self.max_memory is not None:
            from kdsearch.memory import parse_memory

            parse_memory(self.max_memory)

    @property
    def int8_modes(self) -> tuple[str, ...]:
        return parse_int8(self.int8)
