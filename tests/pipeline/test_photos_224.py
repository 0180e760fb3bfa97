"""A user's 224-px chain end to end: a ResNet-18-layout teacher saved as ``.pt2``, a folder of
RGB photos, ``search`` (mbconv, a latency budget) → ``distill`` → ``export --int8 ptq`` through
the CLI, with nothing on stderr; and the memory guard refusing a batch that cannot fit."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from kdsearch.arch import Arch
from kdsearch.export import read_metadata
from kdsearch.models.resnet_cifar import ResNetCifar
from kdsearch.rundir import RunDir
from kdsearch.spaces import load_space

pytestmark = pytest.mark.slow

SIDE = 224
# ResNet-18's layout (7x7/2 stem + max-pool, 2 basic blocks in each of 4 stages, total stride 32)
# at a quarter of its width: ~0.7M params, so the chain runs in minutes on two cores.
TEACHER_GENES = {"depths": [2, 2, 2, 2], "widths": [16, 32, 64, 128], "block": "basic"}
COLOURS = [(200, 60, 40), (40, 160, 60), (50, 70, 200)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """3 classes × 16 JPEGs of about 260×300: a class has its own colour and stripe direction."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for k, colour in enumerate(COLOURS):
        (root / f"class_{k}").mkdir()
        for i in range(16):
            h, w = int(rng.integers(240, 281)), int(rng.integers(280, 321))
            yy, xx = np.mgrid[0:h, 0:w]
            stripes = (((xx if k == 0 else yy if k == 1 else xx + yy) // 12) % 2)[..., None]  # (H, W, 1)
            pixels = np.array(colour) * (0.5 + 0.5 * stripes) + rng.normal(0, 15, (h, w, 3))  # (H, W, 3)
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / f"class_{k}" / f"{i:02d}.jpg")
    return root


@pytest.fixture(scope="module")
def teacher_pt2(tmp_path_factory) -> Path:
    """The teacher as a user hands it over: ``torch.export`` at 224 px RGB, any batch size."""
    torch.manual_seed(0)
    net = ResNetCifar(**TEACHER_GENES, num_classes=len(COLOURS), in_channels=3, form="imagenet").eval()
    assert net.feature_stride == 32 and net.forward_features(torch.zeros(1, 3, SIDE, SIDE)).shape[-2:] == (7, 7)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt2"
    batch = {"x": {0: torch.export.Dim("batch")}}
    torch.export.save(torch.export.export(net, (torch.randn(2, 3, SIDE, SIDE),), dynamic_shapes=batch), str(path))
    return path


def _teacher_latency_ms() -> float:
    """The teacher's ONNX Runtime latency at batch 1 (one thread), timed as the search times candidates."""
    from kdsearch.export.timing import time_models

    net = load_space("resnet_cifar").build(Arch("resnet_cifar", TEACHER_GENES, "imagenet"), num_classes=len(COLOURS),
                                           in_channels=3)
    return time_models({"teacher": net}, (3, SIDE, SIDE), batches=(1,), runs=10, warmup=3)["teacher"][1]


def test_search_distill_export_at_224_px(photos, teacher_pt2, tmp_path, cli):
    run = tmp_path / "run"
    budget_ms = round(2 * _teacher_latency_ms(), 2)  # a student at most twice the teacher's latency
    code, _, err = cli("search", "--teacher", teacher_pt2, "--data", f"imagefolder:{photos}", "--space", "mbconv",
                       "--max-latency-ms", budget_ms, "--trials", "6", "--population", "6", "--proxy-batch", "16",
                       "--out", run, "--quiet")
    assert code == 0, err
    assert err == ""
    winner = json.loads(RunDir(run).winner.read_text())
    assert winner["arch"]["form"] == "imagenet"
    assert winner["latency_ms"] <= budget_ms and winner["config"]["max_latency_ms"] == budget_ms
    speed = json.loads(RunDir(run).speed.read_text())  # the winner was timed for real, and met the budget
    timed = {json.dumps(t["arch"], sort_keys=True): t for t in speed["timed"]}
    assert timed[json.dumps(winner["arch"], sort_keys=True)]["ms"]["1"] <= budget_ms

    code, _, err = cli("distill", run, "--epochs", "1", "--batch-size", "16", "--quiet")
    assert code == 0, err
    assert err == ""
    arch = Arch.load(RunDir(run).student_json)
    assert arch.form == "imagenet" and arch.to_dict() == winner["arch"]
    student = load_space("mbconv").build(arch, num_classes=len(COLOURS), in_channels=3).eval()
    with torch.no_grad():
        features = student.forward_features(torch.zeros(1, 3, SIDE, SIDE))  # (1, C, 7, 7)
    assert features.shape[-2:] == (7, 7)

    code, _, err = cli("export", run, "--int8", "ptq", "--calib-images", "16", "--latency-runs", "3", "--quiet")
    assert code == 0, err
    # the budget allows a student up to twice the teacher's latency, so the export may warn that a file is
    # slower than the teacher (or int8 than fp32) as timed side by side; nothing else may reach stderr
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith("warning: ") and " slower " in line for line in lines), err
    record = json.loads(RunDir(run).export_record.read_text())
    assert record["input_size"] == [3, SIDE, SIDE]
    for entry in (record["files"]["fp32"], record["files"]["ptq"]):
        assert json.loads(read_metadata(RunDir(run).export / entry["path"])["input_size"]) == [3, SIDE, SIDE]
    teacher = record["teacher"]
    assert "error" not in teacher, teacher
    assert teacher["latency_ms"]["batch_1"]["p50"] > 0 and teacher["latency_ms"]["batch_32"]["p50"] > 0


def test_memory_guard_refuses_with_one_line(photos, teacher_pt2, tmp_path, cli):
    """50 MB cannot hold even a micro-batch of a 224-px step: one line naming the flag, nothing written."""
    student = tmp_path / "student.json"
    arch = load_space("mbconv").sample(random.Random(0), (SIDE, SIDE))
    arch.save(student)
    out = tmp_path / "d"
    code, stdout, err = cli("distill", "--teacher", teacher_pt2, "--student", student, "--data",
                            f"imagefolder:{photos}", "--epochs", "1", "--batch-size", "16", "--max-memory", "50MB",
                            "--out", out, "--quiet")
    assert code == 2, (code, stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--max-memory" in lines[0] and "Traceback" not in err, err
    assert not out.exists()
