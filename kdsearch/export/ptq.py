"""Post-training static int8 quantization of an fp32 ONNX model (the baseline QAT must beat)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from kdsearch.errors import ExportError, UsageError
from kdsearch.export._capture import captured_output
from kdsearch.export.onnx_export import read_metadata, set_metadata
from kdsearch.files import atomic_path

__all__ = ["quantize_ptq", "CALIB_BATCH"]

CALIB_BATCH = 32  # images per calibration forward; MinMax calibration does not depend on it


def _batches(calibration: Iterable[np.ndarray] | np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    if isinstance(calibration, np.ndarray):
        for i in range(0, len(calibration), batch_size):
            yield np.ascontiguousarray(calibration[i : i + batch_size], dtype=np.float32)
    else:
        for batch in calibration:
            batch = np.asarray(batch, dtype=np.float32)
            yield np.ascontiguousarray(batch if batch.ndim == 4 else batch[None])


def quantize_ptq(
    fp32_path: Path,
    out_path: Path,
    calibration: Iterable[np.ndarray] | np.ndarray,
    *,
    per_channel: bool = True,
    activations: str = "uint8",
    batch_size: int = CALIB_BATCH,
    on_log: Callable[[str], None] | None = None,
) -> Path:
    """Quantize ``fp32_path`` to int8 QDQ with ONNX Runtime static quantization.

    ``quant_pre_process`` (shape inference + graph optimisation) first, then ``quantize_static``
    with MinMax calibration over ``calibration`` (normalised float images, an ``(N, C, H, W)``
    array or an iterable of such batches). Weights are per-channel symmetric ``QInt8``;
    activations are ``QUInt8`` (asymmetric, uses the ReLU outputs' full range): ONNX Runtime's CPU
    kernels run U8S8 2-3x faster than S8S8 on CPUs without VNNI (benchmarks/deploy.py);
    ``activations="int8"`` gives S8S8 instead. The fp32 file's ``metadata_props`` are copied,
    plus ``quantization=ptq``. ``batch_size``: images per calibration forward when ``calibration``
    is an array (the ranges do not depend on it; its memory does).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    act_types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if activations not in act_types:
        raise UsageError(f"unknown activation type {activations!r}; use uint8 or int8")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise UsageError(f"fp32 ONNX file {fp32_path} does not exist; export it first")
    if isinstance(calibration, np.ndarray) and (calibration.ndim != 4 or len(calibration) == 0):
        raise UsageError(f"calibration images must be a non-empty (N, C, H, W) array, got {calibration.shape}")
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    if batch_size < 1:
        raise UsageError(f"the calibration batch must be at least 1 image (got {batch_size})")
    batches = _batches(calibration, batch_size)

    class _Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(batches, None)
            return None if batch is None else {input_name: batch}

    error: Exception | None = None
    with tempfile.TemporaryDirectory() as tmp, captured_output() as log:
        try:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fp32_path), str(pre))
            quantized = Path(tmp) / "int8.onnx"
            quantize_static(
                str(pre),
                str(quantized),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=act_types[activations],
                weight_type=QuantType.QInt8,
                extra_options={"WeightSymmetric": True},
            )
            proto = onnx.load(str(quantized))
        except Exception as e:  # noqa: BLE001 - calibration and quantizer errors alike
            error = e
    if on_log is not None:
        on_log(log.text)
    if error is not None:
        raise ExportError(
            f"int8 post-training quantization of {fp32_path} failed: {type(error).__name__}: {error}; "
            "check the calibration images have the model's input shape, or export with --int8 none"
        ) from error
    if not any(n.op_type == "QuantizeLinear" for n in proto.graph.node):
        raise ExportError(
            f"quantize_static left {fp32_path} without any int8 op; the model has no Conv/Gemm/MatMul to quantize"
        )
    set_metadata(proto, {**read_metadata(fp32_path), "quantization": "ptq"})
    with atomic_path(out_path) as tmp_path:
        onnx.save(proto, str(tmp_path))
    return out_path
