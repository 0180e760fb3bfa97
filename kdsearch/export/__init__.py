"""Export stage: ONNX export, ONNX Runtime verification, int8 (PTQ/QAT), latency and accuracy.

Only the configuration is imported eagerly; the rest (torch, onnx, onnxruntime) on first use.
"""
from __future__ import annotations

from kdsearch.export.config import ExportConfig
from kdsearch.lazy import lazy_attributes

__all__ = [
    "ExportConfig",
    "LatencyModel",
    "MIN_OPSET",
    "PARITY_MIN_AGREEMENT",
    "PARITY_RTOL",
    "PROVIDERS",
    "check_onnxruntime_install",
    "export_model",
    "export_onnx",
    "interleaved_latency_ms",
    "latency_ms",
    "onnx_accuracy",
    "ort_session",
    "parity",
    "parity_tolerance",
    "probe_session",
    "quantize_ptq",
    "read_metadata",
    "session_options",
    "speed_text",
    "speedup",
    "time_models",
    "torch_latency_ms",
]

__getattr__ = lazy_attributes(__name__, {
    "MIN_OPSET": "onnx_export", "export_onnx": "onnx_export", "read_metadata": "onnx_export",
    "quantize_ptq": "ptq",
    "PARITY_RTOL": "runtime", "PROVIDERS": "runtime", "check_onnxruntime_install": "runtime", "latency_ms": "runtime",
    "onnx_accuracy": "runtime", "ort_session": "runtime", "parity": "runtime", "parity_tolerance": "runtime",
    "torch_latency_ms": "runtime",
    "LatencyModel": "latency_model",
    "interleaved_latency_ms": "timing", "probe_session": "timing", "session_options": "timing",
    "speed_text": "timing", "speedup": "timing", "time_models": "timing",
    "PARITY_MIN_AGREEMENT": "stage", "export_model": "stage",
})
