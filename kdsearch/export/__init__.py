"""Export stage: ONNX export, ONNX Runtime verification, int8 (PTQ/QAT), latency and accuracy.

Only the configuration is imported eagerly; the rest (torch, onnx, onnxruntime) on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from kdsearch.export.config import ExportConfig

__all__ = [
    "ExportConfig",
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

_WHERE = {
    "MIN_OPSET": "onnx_export", "export_onnx": "onnx_export", "read_metadata": "onnx_export",
    "quantize_ptq": "ptq",
    "PARITY_RTOL": "runtime", "PROVIDERS": "runtime", "check_onnxruntime_install": "runtime", "latency_ms": "runtime",
    "onnx_accuracy": "runtime", "ort_session": "runtime", "parity": "runtime", "parity_tolerance": "runtime",
    "torch_latency_ms": "runtime",
    "PARITY_MIN_AGREEMENT": "stage", "export_model": "stage",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"kdsearch.export.{_WHERE[name]}"), name)
    raise AttributeError(name)
