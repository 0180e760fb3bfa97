"""ort_session, install check, parity, accuracy and latency against independent computations."""
from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdsearch.errors import UsageError
from kdsearch.export import check_onnxruntime_install, latency_ms, onnx_accuracy, ort_session, parity
from kdsearch.export import runtime
from kdsearch.export.runtime import compare_logits

from conftest import tiny_resnet


def test_cpu_session_has_no_warning(fp32_onnx: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session, used = ort_session(fp32_onnx, "cpu")
    assert used == "cpu" and session.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without a GPU")
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_provider_falls_back_to_cpu_with_warning(fp32_onnx: Path, provider: str, capfd) -> None:
    with pytest.warns(UserWarning, match=f"provider '{provider}' was asked but 'cpu' is used"):
        session, used = ort_session(fp32_onnx, provider)
    assert used == "cpu" and session.get_providers() == ["CPUExecutionProvider"]
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # ORT's own error lines are captured, only our warning remains


def test_unknown_provider_and_missing_file(fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cpu, cuda, tensorrt"):
        ort_session(fp32_onnx, "rocm")
    with pytest.raises(UsageError, match="does not exist"):
        ort_session(tmp_path / "none.onnx")


class _Dist:
    def __init__(self, name: str) -> None:
        self.metadata = {"Name": name}


@pytest.mark.parametrize(
    ("names", "system", "machine", "keep"),
    [
        (["onnxruntime", "onnxruntime_gpu", "numpy"], "Linux", "x86_64", "onnxruntime-gpu"),
        (["onnxruntime-gpu", "onnxruntime"], "Darwin", "arm64", "onnxruntime"),
        (["onnxruntime-gpu", "numpy"], "Linux", "x86_64", None),
        (["onnxruntime"], "Linux", "aarch64", None),
    ],
)
def test_check_onnxruntime_install(monkeypatch, names, system, machine, keep) -> None:
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [_Dist(n) for n in names])
    monkeypatch.setattr(runtime.platform, "system", lambda: system)
    monkeypatch.setattr(runtime.platform, "machine", lambda: machine)
    text = check_onnxruntime_install()
    if keep is None:
        assert text is None
    else:
        assert f"keep {keep} " in text and f"pip install {keep}" in text


def test_parity_values(fp32_onnx: Path, model: nn.Module, images: torch.Tensor) -> None:
    session, _ = ort_session(fp32_onnx)
    result = parity(session, model, images, batch_sizes=(1, 8))
    assert set(result) == {"batch_1", "batch_8"}
    for stats in result.values():
        assert stats["top1_agreement"] == 1.0
        assert stats["max_abs_diff"] < 1e-4
        assert stats["cosine"] == pytest.approx(1.0, abs=1e-6)


def test_parity_detects_a_different_model(fp32_onnx: Path, images: torch.Tensor) -> None:
    session, _ = ort_session(fp32_onnx)
    other = tiny_resnet(seed=7)
    stats = parity(session, other, images, batch_sizes=(8,))["batch_8"]
    with torch.no_grad():
        ref = other(images).numpy()
    out = session.run(None, {"input": images.numpy()})[0]
    assert stats["max_abs_diff"] == pytest.approx(np.abs(ref - out).max(), rel=1e-5)
    assert stats["max_abs_diff"] > 1e-2


def test_compare_logits_against_hand_computation() -> None:
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 1.9995]], dtype=np.float32)
    out = np.array([[0.0, 1.0, 0.0], [0.0, 1.9990, 2.0]], dtype=np.float32)
    stats = compare_logits(ref, out)
    assert stats["top1_agreement"] == 0.0
    # row 2 is a near-tie (margin 5e-4 <= 2 * tol with tol = 1e-3 * max(1, 2) = 2e-3): excused
    assert stats["tolerance"] == pytest.approx(2e-3)
    assert stats["decisive_top1_agreement"] == 0.5
    assert stats["max_abs_diff"] == pytest.approx(1.0)
    cos_row2 = (1.999 * 2 + 2 * 1.9995) / (np.hypot(2, 1.9995) * np.hypot(1.999, 2))
    assert stats["cosine"] == pytest.approx((0.0 + cos_row2) / 2, rel=1e-5)


def test_onnx_accuracy_tensor_and_batches(fp32_onnx: Path, model: nn.Module, images: torch.Tensor) -> None:
    session, _ = ort_session(fp32_onnx)
    with torch.no_grad():
        pred = model(images).argmax(1)
    labels = pred.clone()
    labels[:6] = (labels[:6] + 1) % 10  # exactly 6 of 24 wrong
    assert onnx_accuracy(session, images, labels, batch_size=5) == pytest.approx(18 / 24)
    batches = [(images[i : i + 10], labels[i : i + 10]) for i in range(0, 24, 10)]
    assert onnx_accuracy(session, batches) == pytest.approx(18 / 24)
    with pytest.raises(UsageError, match="one label per image"):
        onnx_accuracy(session, images, labels[:3])


def test_latency_keys_and_order(fp32_onnx: Path) -> None:
    session, _ = ort_session(fp32_onnx)
    stats = latency_ms(session, (2, 3, 32, 32), runs=12, warmup=2)
    assert stats["runs"] == 12
    assert 0 < stats["p50"] <= stats["p90"]
    assert stats["mean"] > 0


def test_accuracy_over_uint8_images_normalised_one_batch_at_a_time(fp32_onnx: Path) -> None:
    from kdsearch.data import NormalizedImages, normalize

    raw = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    labels = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(5))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    lazy = NormalizedImages(raw, mean, std)
    assert len(lazy) == 40 and lazy.shape == raw.shape
    torch.testing.assert_close(lazy[3:9], normalize(raw[3:9], mean, std))
    session, _ = ort_session(fp32_onnx)
    assert onnx_accuracy(session, lazy, labels, batch_size=16) == onnx_accuracy(session, normalize(raw, mean, std), labels)
