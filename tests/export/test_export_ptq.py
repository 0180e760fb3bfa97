"""quantize_ptq: a QDQ int8 graph that ONNX Runtime runs and that stays close to fp32."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from kdsearch.errors import UsageError
from kdsearch.export import quantize_ptq, read_metadata


@pytest.fixture(scope="module")
def ptq_onnx(tmp_path_factory: pytest.TempPathFactory, fp32_onnx: Path, images: torch.Tensor) -> Path:
    calib = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(5)).numpy()
    return quantize_ptq(fp32_onnx, tmp_path_factory.mktemp("ptq") / "student.ptq.onnx", calib)


def test_ptq_graph_is_qdq_with_int8_weights(ptq_onnx: Path) -> None:
    proto = onnx.load(str(ptq_onnx))
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    int8_weights = [a for a in inits.values() if a.dtype == np.int8 and a.ndim == 4]
    assert len(int8_weights) == 9  # every Conv weight is stored as int8
    # per-channel: each Conv weight DequantizeLinear has one scale per output channel
    conv_w_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                 and inits[n.input[0]].ndim == 4]
    assert conv_w_dq and all(inits[n.input[1]].shape == (inits[n.input[0]].shape[0],) for n in conv_w_dq)
    # activations are uint8 (U8S8)
    act_zero_points = [inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert all(z.dtype == np.uint8 for z in act_zero_points)


def test_ptq_runs_close_to_fp32(ptq_onnx: Path, fp32_onnx: Path, model: nn.Module, images: torch.Tensor) -> None:
    q = ort.InferenceSession(str(ptq_onnx), providers=["CPUExecutionProvider"])
    out = q.run(None, {"input": images[:5].numpy()})[0]
    with torch.no_grad():
        ref = model(images[:5]).numpy()
    assert out.shape == (5, 10)
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.98
    assert np.abs(out - ref).max() > 0  # it really is a different (quantized) computation


def test_ptq_keeps_metadata(ptq_onnx: Path, fp32_onnx: Path) -> None:
    fp32_meta, int8_meta = read_metadata(fp32_onnx), read_metadata(ptq_onnx)
    assert int8_meta["quantization"] == "ptq"
    assert fp32_meta.items() <= int8_meta.items()


def test_ptq_rejects_bad_inputs(fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        quantize_ptq(tmp_path / "none.onnx", tmp_path / "q.onnx", np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(UsageError, match="uint8 or int8"):
        quantize_ptq(fp32_onnx, tmp_path / "q.onnx", np.zeros((2, 3, 32, 32), np.float32), activations="fp8")
    with pytest.raises(UsageError, match="non-empty"):
        quantize_ptq(fp32_onnx, tmp_path / "q.onnx", np.zeros((0, 3, 32, 32), np.float32))
