"""The export stage's memory guard: accuracy, calibration and reference batches sized to ``max_memory``."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import kdsearch.export.stage as stage
from kdsearch.errors import KdsearchWarning, MemoryBudgetError, UsageError
from kdsearch.export import ExportConfig, export_model

from conftest import tiny_resnet


def _export_recording(monkeypatch, tmp_path: Path, images: torch.Tensor, labels: torch.Tensor, max_memory: str):
    """Export with PTQ under ``max_memory``; returns the report, the progress lines and every batch each pass used."""
    batches: dict[str, list[int]] = {"onnx": [], "calib": [], "eager": []}
    real_accuracy, real_ptq, real_logits = stage.onnx_accuracy, stage.quantize_ptq, stage.torch_logits

    def accuracy(session, x, y, *, batch_size=256):
        batches["onnx"].append(batch_size)
        return real_accuracy(session, x, y, batch_size=batch_size)

    def ptq(fp32_path, out_path, calibration, **kwargs):
        batches["calib"].append(kwargs.get("batch_size", 32))
        return real_ptq(fp32_path, out_path, calibration, **kwargs)

    def logits(model, x, batch_size):
        if len(x) == len(images):  # the eager accuracy pass, not a parity check
            batches["eager"].append(batch_size)
        return real_logits(model, x, batch_size)

    monkeypatch.setattr(stage, "onnx_accuracy", accuracy)
    monkeypatch.setattr(stage, "quantize_ptq", ptq)
    monkeypatch.setattr(stage, "torch_logits", logits)
    said: list[str] = []
    calib = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KdsearchWarning)  # int8 may be slower than fp32 on this machine
        report = export_model(tiny_resnet(), val_images=images, val_labels=labels, calib_images=calib,
                              out_dir=tmp_path, int8="ptq", latency_runs=1, parity_batch=2, parity_images=8, latency_batch=2,
                              max_memory=max_memory, progress=said.append)
    return report, said, batches


def test_a_tight_budget_lowers_the_accuracy_and_calibration_batch(monkeypatch, tmp_path: Path,
                                                                   images: torch.Tensor, labels: torch.Tensor) -> None:
    held = 10**9  # what the process holds before the batches: taken off the budget
    monkeypatch.setattr(stage, "resident_memory", lambda: held)
    budget = held + stage.forward_memory(tiny_resnet().eval(), images).at(5) + 1  # room for 5 images, not 6
    report, said, batches = _export_recording(monkeypatch, tmp_path / "tight", images, labels, str(budget))
    batch, calib = report["memory"]["accuracy_batch"], report["memory"]["calib_batch"]
    assert 1 <= batch < len(images)  # the whole validation set (24) would be one batch of the default 256
    # calibration keeps every tensor of a pass alive: fewer images fit than in the accuracy pass
    assert 1 <= calib <= batch and calib < 10
    assert batches == {"onnx": [batch, batch], "calib": [calib], "eager": [batch]}
    assert report["memory"]["budget_bytes"] == budget and report["memory"]["held_bytes"] == held
    lines = [line for line in said if "at a time" in line]
    assert len(lines) == 2 and "--max-memory" in lines[0]
    assert f"measuring {batch} images at a time" in lines[0] and f"calibrating {calib} images at a time" in lines[1]

    roomy, said, batches = _export_recording(monkeypatch, tmp_path / "roomy", images, labels, "100GB")
    assert roomy["memory"]["accuracy_batch"] == stage.ACCURACY_BATCH and roomy["memory"]["calib_batch"] == 32
    assert batches == {"onnx": [256, 256], "calib": [32], "eager": [256]}
    assert not [line for line in said if "at a time" in line]
    for kind in ("fp32", "ptq"):  # smaller batches, the same accuracy
        assert report["files"][kind]["accuracy"] == pytest.approx(roomy["files"][kind]["accuracy"])
    assert report["pytorch_eager"]["accuracy"] == pytest.approx(roomy["pytorch_eager"]["accuracy"])


def test_without_max_memory_what_the_process_holds_is_not_taken_off_twice(monkeypatch, tmp_path: Path,
                                                                         images: torch.Tensor,
                                                                         labels: torch.Tensor) -> None:
    monkeypatch.setattr(stage, "resident_memory", lambda: 10**15)  # the default budget is of what is free now
    report = export_model(tiny_resnet(), val_images=images, val_labels=labels, out_dir=tmp_path, latency_runs=1,
                          parity_batch=2)
    assert report["memory"]["held_bytes"] == 0 and report["memory"]["accuracy_batch"] == stage.ACCURACY_BATCH


def test_not_one_image_fits_is_refused_before_anything_is_written(tmp_path: Path, images: torch.Tensor,
                                                                   labels: torch.Tensor) -> None:
    with pytest.raises(MemoryBudgetError) as caught:
        export_model(tiny_resnet(), val_images=images, val_labels=labels, out_dir=tmp_path / "export",
                     max_memory="1kB")
    message = str(caught.value)
    assert "\n" not in message and "raise --max-memory" in message and "what the export holds already" in message
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("text", ["lots", "0GB", "-1MB", "6 parsecs"])
def test_config_refuses_what_is_not_an_amount_of_memory(text: str) -> None:
    with pytest.raises(UsageError, match="--max-memory"):
        ExportConfig(max_memory=text)
    assert ExportConfig(max_memory="4GB").max_memory == "4GB"
