"""export_model: files, export.json, the fp32 parity gate and provider fallback."""
from __future__ import annotations

import contextlib
import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import kdsearch.export.stage as stage
from kdsearch.errors import ExportError, KdsearchWarning, UsageError
from kdsearch.export import export_model, read_metadata
from kdsearch.rundir import ExportedFile, ExportRecord

from conftest import NORMALIZATION, tiny_resnet

FILE_KEYS = {"path", "size_bytes", "opset", "provider_used", "parity", "accuracy", "latency_ms"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    out_dir = tmp_path_factory.mktemp("export")
    messages: list[str] = []
    calib = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    meta = {"normalization": json.dumps(NORMALIZATION), "val_acc": "0.5"}
    # Asking for CUDA on a CPU-only machine must fall back with a warning, never fail.
    cpu_only = not torch.cuda.is_available()
    ctx = pytest.warns(UserWarning, match="'cuda' was asked") if cpu_only else contextlib.nullcontext()
    with ctx:
        report = export_model(model, val_images=images, val_labels=labels, calib_images=calib, out_dir=out_dir,
                              int8="ptq", provider="cuda", latency_runs=3, parity_batch=8, metadata=meta,
                              progress=messages.append)
    return out_dir, report, messages


def test_files_written(exported) -> None:
    out_dir, _, messages = exported
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["export.json", "export.log", "student.onnx", "student.ptq.onnx"]
    assert "torchvision is not installed" in (out_dir / "export.log").read_text()  # chatter kept, not printed
    assert messages and messages[-1].startswith("wrote ")


def test_export_json_is_complete(exported, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    out_dir, report, _ = exported
    data = json.loads((out_dir / "export.json").read_text())
    assert data == json.loads(json.dumps(report))
    assert set(data) >= {"kdsearch_version", "opset", "provider_requested", "parity_rule", "files", "pytorch_eager"}
    assert set(data["files"]) == {"fp32", "ptq"}
    expected_used = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.no_grad():
        torch_acc = float((model(images).argmax(1) == labels).float().mean())
    for kind, entry in data["files"].items():
        assert set(entry) == FILE_KEYS | ({"calib_images", "speedup_vs_fp32"} if kind == "ptq" else set()), kind
        assert entry["size_bytes"] == (out_dir / entry["path"]).stat().st_size
        assert entry["opset"] == 18 and entry["provider_used"] == expected_used
        assert set(entry["latency_ms"]) == {"batch_1", "batch_32"}
        for lat in entry["latency_ms"].values():
            assert lat["runs"] == 3 and 0 < lat["p50"] <= lat["p90"]
        assert 0.0 <= entry["accuracy"] <= 1.0
    fp32 = data["files"]["fp32"]
    assert fp32["accuracy"] == pytest.approx(torch_acc)
    assert data["pytorch_eager"]["accuracy"] == pytest.approx(torch_acc)
    for b in ("batch_1", "batch_8"):
        assert fp32["parity"][b]["top1_agreement"] == 1.0 and fp32["parity"][b]["max_abs_diff"] < 1e-4
    assert data["files"]["ptq"]["calib_images"] == 10 and data["input_size"] == [3, 32, 32]
    ptq = data["files"]["ptq"]["parity"]
    assert ptq["reference"] == "pytorch_fp32" and ptq["batch_8"]["cosine"] > 0.98
    assert set(data["pytorch_eager"]["latency_ms"]) == {"batch_1", "batch_32"}


def test_metadata_in_both_files(exported) -> None:
    out_dir, _, _ = exported
    for name in ("student.onnx", "student.ptq.onnx"):
        meta = read_metadata(out_dir / name)
        assert json.loads(meta["normalization"]) == NORMALIZATION
        assert meta["val_acc"] == "0.5" and meta["opset"] == "18"
        assert json.loads(meta["input_size"]) == [3, 32, 32]  # what a deployment must feed it


def test_teacher_is_timed_in_the_same_loop_as_every_file(monkeypatch, tmp_path: Path, images: torch.Tensor,
                                                          labels: torch.Tensor) -> None:
    """One interleaved loop per batch holds the teacher and every file; each speed-up is a ratio of that loop."""
    loops = []
    real = stage.interleaved_latency_ms

    def recorded(sessions, input_shape, **kwargs):
        loops.append((sorted(sessions), input_shape))
        return real(sessions, input_shape, **kwargs)

    monkeypatch.setattr(stage, "interleaved_latency_ms", recorded)
    teacher = stage.export_teacher(tiny_resnet(seed=3), (3, 32, 32), tmp_path)
    assert teacher == {"path": "teacher.onnx", "size_bytes": (tmp_path / "teacher.onnx").stat().st_size}
    calib = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KdsearchWarning)  # int8 may be slower than fp32 on this machine
        report = export_model(tiny_resnet(), val_images=images[:8], val_labels=labels[:8], calib_images=calib,
                              out_dir=tmp_path, int8="ptq", latency_runs=3, parity_batch=2, latency_batch=4,
                              latency_threads=1, teacher=teacher)
    assert loops == [(["fp32", "ptq", "teacher"], (1, 3, 32, 32)), (["fp32", "ptq", "teacher"], (4, 3, 32, 32))]
    record = ExportRecord.from_dict(report)
    assert record.timing == {"batches": [1, 4], "threads": 1, "runs": 3, "warmup": stage.LATENCY_WARMUP,
                             "interleaved": True}
    assert record.latency_batches == (1, 4) and record.teacher["provider_used"] == "cpu"
    assert all(lat["runs"] == 3 for f in record.files.values() for lat in f.latency_ms.values())
    for kind, f in record.files.items():
        for b in (1, 4):
            assert f.speedup_at(b) == pytest.approx(record.teacher_p50(b) / f.p50(b)), (kind, b)
    ptq = record.files["ptq"]
    assert ptq.speedup_vs_fp32 == {str(b): pytest.approx(record.fp32.p50(b) / ptq.p50(b)) for b in (1, 4)}
    assert record.fp32.speedup_vs_fp32 is None and record.recommended in ("fp32", "ptq")


def _fixed_latencies(p50: dict[str, float]):
    """A stand-in for interleaved_latency_ms: every session takes ``p50[name]`` ms at batch 1, 10× that at larger batches."""
    def timed(sessions, input_shape, **kwargs):
        scale = 1 if input_shape[0] == 1 else 10
        return {n: {"p50": p50[n] * scale, "p90": p50[n] * scale, "mean": p50[n] * scale, "runs": 1} for n in sessions}
    return timed


def test_int8_slower_than_fp32_is_said_and_fp32_recommended(monkeypatch, tmp_path: Path, images: torch.Tensor,
                                                             labels: torch.Tensor) -> None:
    p50 = {"teacher": 0.6, "fp32": 0.84, "ptq": 1.2}  # int8 slower than fp32, the student slower than its teacher
    monkeypatch.setattr(stage, "interleaved_latency_ms", _fixed_latencies(p50))
    teacher = stage.export_teacher(tiny_resnet(seed=3), (3, 32, 32), tmp_path)
    calib = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    said: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export_model(tiny_resnet(), val_images=images[:8], val_labels=labels[:8], calib_images=calib,
                              out_dir=tmp_path, int8="ptq", latency_runs=1, parity_batch=2, teacher=teacher,
                              progress=said.append)
    warned = [str(w.message) for w in caught if issubclass(w.category, KdsearchWarning)]
    assert len(warned) == 2 and all("\n" not in text and text not in said for text in warned)  # once, as a warning
    assert warned[0].startswith("student.ptq.onnx (int8, ptq) is 1.4× slower at batch 1 and 1.4× slower at batch 32 "
                                "than student.onnx (fp32)") and warned[0].endswith("ship student.onnx")
    assert warned[1].startswith("the student (student.onnx) is 1.4× slower at batch 1 and 1.4× slower at batch 32 "
                                "than its teacher")
    record = ExportRecord.from_dict(report)
    assert record.recommended == "fp32" and record.shipped.path == "student.onnx"
    ptq = record.files["ptq"]
    assert ptq.speedup_at(1) == pytest.approx(0.6 / 1.2) and ptq.speedup_vs_fp32_at(32) == pytest.approx(0.84 / 1.2)
    assert json.loads((tmp_path / "export.json").read_text())["recommended"] == "fp32"


def _file(accuracy: float, vs_fp32: dict[str, float] | None) -> ExportedFile:
    return ExportedFile(path="x.onnx", size_bytes=1, opset=18, provider_used="cpu", parity={}, accuracy=accuracy,
                        latency_ms={}, speedup_vs_fp32=vs_fp32)


@pytest.mark.parametrize(("ptq", "qat", "expected"), [
    ({"1": 0.7, "32": 1.5}, None, "fp32"),  # faster at one batch only: not recommended
    ({"1": 1.3, "32": 1.5}, None, "ptq"),
    ({"1": 1.3, "32": 1.5}, {"1": 1.1, "32": 1.2}, "qat"),  # both faster: the more accurate (QAT, here)
    ({"1": 0.9, "32": 0.8}, {"1": 0.5, "32": 0.9}, "fp32"),
])
def test_recommend_file_ships_int8_only_where_it_is_faster_at_every_batch(ptq, qat, expected) -> None:
    files = {"fp32": _file(0.90, None), "ptq": _file(0.85, ptq), "qat": _file(0.89, qat)}
    assert stage.recommend_file(files) == expected


def test_a_teacher_the_exporter_refuses_is_reported_not_fatal(tmp_path: Path) -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: the exporter cannot capture it
                return x.flatten(1)[:, :10]
            return -x.flatten(1)[:, :10]

    figures = stage.export_teacher(Branchy(), (3, 32, 32), tmp_path)
    assert set(figures) == {"error"} and "could not be exported" in figures["error"]
    assert not (tmp_path / "teacher.onnx").exists()


def test_parity_failure_renames_file(monkeypatch, tmp_path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    real_export = stage.export_onnx

    def export_other_weights(model: nn.Module, *args, **kwargs):
        other = copy.deepcopy(model)
        with torch.no_grad():
            other.classifier.bias.add_(0.5)  # the ONNX file no longer computes the PyTorch model
        return real_export(other, *args, **kwargs)

    monkeypatch.setattr(stage, "export_onnx", export_other_weights)
    (tmp_path / "export.json").write_text("{}")  # a stale report from an earlier run must not survive
    match = r"disagrees with PyTorch at batch 1: max \|logit diff\| 0\.5.*kept as student\.failed\.onnx"
    with pytest.raises(ExportError, match=match):
        export_model(tiny_resnet(), val_images=images[:8], val_labels=labels[:8], out_dir=tmp_path, latency_runs=1)
    assert (tmp_path / "student.failed.onnx").is_file()
    assert not (tmp_path / "student.onnx").exists() and not (tmp_path / "export.json").exists()


def test_model_is_not_modified(tmp_path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    model = tiny_resnet(seed=4).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for stale in ("student.ptq.onnx", "student.failed.onnx"):  # left by earlier runs; not this run's output
        (tmp_path / stale).write_bytes(b"old")
    export_model(model, val_images=images[:4], val_labels=labels[:4], out_dir=tmp_path, latency_runs=1,
                 parity_batch=2)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "export.log", "student.onnx"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"int8": "fp16"}, "none, ptq, qat"),
        ({"int8": "qat"}, "needs qat_model"),
        ({"int8": "ptq"}, "needs calib_images"),
        ({"val_labels": torch.zeros(3, dtype=torch.long)}, "one label each"),
        ({"device": "tpu"}, "unknown device"),
    ],
)
def test_bad_arguments(tmp_path: Path, images: torch.Tensor, labels: torch.Tensor, kwargs: dict, match: str) -> None:
    args = {"val_images": images[:4], "val_labels": labels[:4], "out_dir": tmp_path / "export", **kwargs}
    with pytest.raises(UsageError, match=match):
        export_model(nn.Identity(), **args)
    assert not any(tmp_path.iterdir())  # refused before the output directory is made
