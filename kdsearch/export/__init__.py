"""Export stage: ONNX export, ONNX Runtime verification, int8 (PTQ/QAT), latency and accuracy."""
from __future__ import annotations

from kdsearch.export.onnx_export import MIN_OPSET, export_onnx, read_metadata
from kdsearch.export.ptq import quantize_ptq
from kdsearch.export.runtime import (
    PARITY_RTOL,
    PROVIDERS,
    check_onnxruntime_install,
    latency_ms,
    onnx_accuracy,
    ort_session,
    parity,
    parity_tolerance,
    torch_latency_ms,
)
from kdsearch.export.stage import INT8_MODES, PARITY_MIN_AGREEMENT, export_model

__all__ = [
    "INT8_MODES",
    "MIN_OPSET",
    "PARITY_MIN_AGREEMENT",
    "PARITY_RTOL",
    "PROVIDERS",
    "check_onnxruntime_install",
    "export_model",
    "export_onnx",
    "latency_ms",
    "onnx_accuracy",
    "ort_session",
    "parity",
    "parity_tolerance",
    "quantize_ptq",
    "read_metadata",
    "torch_latency_ms",
]
