"""The QAT path: a converted PT2E model exports to a QDQ graph without re-quantization."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from kdsearch.export import export_model, export_onnx

pytest.importorskip("torchao")
pytestmark = pytest.mark.slow  # PT2E prepare + convert alone take 10-30 s on two shared cores


class ConvBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # (B, 8, H, W)
        x = torch.relu(self.bn2(self.conv2(x)))  # (B, 8, H/2, W/2)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))  # (B, 10)


def qat_convert(x: torch.Tensor) -> nn.Module:
    """torch.export -> prepare_qat_pt2e (X86, per-channel symmetric) -> 2 SGD steps -> convert_pt2e."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    torch.manual_seed(0)
    shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},)  # export_onnx needs a symbolic batch
    captured = torch.export.export(ConvBNNet().train(), (x,), dynamic_shapes=shapes).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
    prepared = prepare_qat_pt2e(captured, quantizer)
    opt = torch.optim.SGD(prepared.parameters(), lr=0.05)
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(3))
    for _ in range(2):
        loss = nn.functional.cross_entropy(prepared(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return convert_pt2e(prepared)


@pytest.fixture(scope="module")
def qat_images() -> torch.Tensor:
    return torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(4))  # (N, C, H, W)


@pytest.fixture(scope="module")
def qat_model(qat_images: torch.Tensor) -> nn.Module:
    return qat_convert(qat_images[:8])


def test_qat_export_is_qdq_and_agrees(qat_model: nn.Module, qat_images: torch.Tensor, tmp_path: Path) -> None:
    path = export_onnx(qat_model, qat_images[:2], tmp_path / "s.qat.onnx", metadata={"quantization": "qat"})
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # Weights were quantized by convert_pt2e: int8 initialisers for both convs, no fresh re-quantization.
    int8_w = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_w) == 2
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 5):
        out = session.run(None, {"input": qat_images[:b].numpy()})[0]
        with torch.no_grad():
            ref = qat_model(qat_images[:b]).numpy()
        assert out.shape == (b, 10)
        assert (out.argmax(1) == ref.argmax(1)).mean() == 1.0
        assert np.abs(out - ref).max() < 1e-3


def test_export_model_qat(qat_model: nn.Module, qat_images: torch.Tensor, tmp_path: Path) -> None:
    fp32 = ConvBNNet().eval()
    labels = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(6))
    report = export_model(fp32, val_images=qat_images, val_labels=labels, out_dir=tmp_path, int8="qat",
                          qat_model=qat_model, latency_runs=3, parity_images=8)
    assert (tmp_path / "student.qat.onnx").is_file() and not (tmp_path / "student.ptq.onnx").exists()
    entry = json.loads((tmp_path / "export.json").read_text())["files"]["qat"]
    assert entry == report["files"]["qat"]
    assert entry["parity"]["reference"] == "pytorch_qat"
    assert entry["parity"]["batch_8"]["top1_agreement"] == 1.0
    with torch.no_grad():
        expected = float((qat_model(qat_images).argmax(1) == labels).float().mean())
    assert entry["accuracy"] == pytest.approx(expected)


def _ops_onnx_runtime_runs(path: Path, tmp_path: Path) -> list[str]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.opt.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


@pytest.mark.parametrize("recipe", ["onnx", "x86"])
def test_recipes_on_a_residual_net_export_and_the_onnx_recipe_runs_convs_and_adds_in_int8(recipe: str, tmp_path: Path) -> None:
    from kdsearch.models.resnet_cifar import ResNetCifar
    from kdsearch.quant.pt2e import convert, prepare_for_qat

    torch.manual_seed(0)
    images = torch.randn(32, 3, 16, 16)
    prepared = prepare_for_qat(ResNetCifar([2, 1, 1], [8, 16, 16]).train(), images[:2], recipe)
    with torch.no_grad():
        prepared(images)  # observers see data
    model = convert(prepared)
    path = export_onnx(model, images[:2], tmp_path / f"{recipe}.onnx")
    ops = _ops_onnx_runtime_runs(path, tmp_path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(images).numpy()
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9
    n_conv = sum(isinstance(m, nn.Conv2d) for m in ResNetCifar([2, 1, 1], [8, 16, 16]).modules())
    if recipe == "onnx":  # every conv in int8, and the residual adds too (the last one feeds the fp32 pooling)
        assert ops.count("QLinearConv") == n_conv and "FusedConv" not in ops and "Conv" not in ops
        assert ops.count("QLinearAdd") == 3 and ops.count("Add") == 1  # 4 residual blocks
    else:  # Inductor's conv+add fusion leaves the conv before each residual add in fp32 for ONNX Runtime
        assert ops.count("QLinearConv") < n_conv
