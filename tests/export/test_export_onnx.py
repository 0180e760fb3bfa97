"""export_onnx: checker, dynamic batch, metadata, silence, clear failures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from kdsearch.errors import ExportError, UsageError
from kdsearch.export import export_onnx, read_metadata

from conftest import NORMALIZATION, tiny_resnet


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_passes_full_check_with_opset_18(fp32_onnx: Path) -> None:
    proto = onnx.load(str(fp32_onnx))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]


@pytest.mark.parametrize("batch", [1, 5])
def test_dynamic_batch_matches_pytorch(fp32_onnx: Path, model: nn.Module, images: torch.Tensor, batch: int) -> None:
    dim0 = onnx.load(str(fp32_onnx)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    x = images[:batch]
    out = _session(fp32_onnx).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == (batch, 10)
    assert np.abs(out - ref).max() < 1e-4


def test_metadata_props(fp32_onnx: Path) -> None:
    meta = read_metadata(fp32_onnx)
    norm = json.loads(meta["normalization"])
    assert norm["mean"] == NORMALIZATION["mean"] and norm["std"] == NORMALIZATION["std"]
    assert json.loads(meta["arch"])["space"] == "resnet_cifar"
    assert meta["kdsearch_version"]
    # Independent reader: ONNX Runtime sees the same custom metadata.
    assert _session(fp32_onnx).get_modelmeta().custom_metadata_map["normalization"] == meta["normalization"]


def test_graph_is_optimised(fp32_onnx: Path) -> None:
    ops = [n.op_type for n in onnx.load(str(fp32_onnx)).graph.node]
    # BatchNorm folded into Conv and no Identity left behind: the optimizer ran.
    assert "BatchNormalization" not in ops and "Identity" not in ops
    assert ops.count("Conv") == 9  # stem + 2 per block x 3 + 2 projection shortcuts


def test_exporter_debug_metadata_is_stripped(fp32_onnx: Path) -> None:
    import onnx

    proto = onnx.load(str(fp32_onnx))
    assert proto.graph.node and not any(n.metadata_props for n in proto.graph.node)
    assert read_metadata(fp32_onnx)["normalization"]  # the model-level metadata stays


def test_export_keeps_training_flag_and_is_silent(tmp_path: Path, images: torch.Tensor, capfd) -> None:
    model = tiny_resnet(seed=3).train()
    logs: list[str] = []
    export_onnx(model, images[:1], tmp_path / "m.onnx", on_log=logs.append)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert model.training
    assert len(logs) == 1 and "[torch.onnx]" in logs[0]
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary left behind


class _DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # Python branch on a tensor value: torch.export cannot trace it
            return x.flatten(1)
        return -x.flatten(1)


def test_untraceable_model_raises_export_error(tmp_path: Path, images: torch.Tensor) -> None:
    with pytest.raises(ExportError, match="torch.onnx.export failed for _DataDependent.*traceable"):
        export_onnx(_DataDependent(), images[:2], tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_static_batch_graph_module_is_rejected(model: nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    # A torch.export module captured without dynamic_shapes (as a careless QAT stage would) has batch 3 baked in.
    static = torch.export.export(model, (images[:3],)).module()
    with pytest.raises(ExportError, match="fixed batch size 3.*dynamic_shapes"):
        export_onnx(static, images[:3], tmp_path / "s.onnx")
    assert not (tmp_path / "s.onnx").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"opset": 17}, "opset >= 18"),
        ({"metadata": {"val_acc": 0.9}}, "str to str"),
        ({"metadata": {"normalization": "[0.5]"}}, "mean"),
    ],
)
def test_bad_arguments_raise_usage_error(tmp_path: Path, images: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        export_onnx(nn.Identity(), images[:2], tmp_path / "x.onnx", **kwargs)
