"""Every registered loss trains a real student for one short epoch, within and across families."""
from __future__ import annotations

import math

import pytest
import torch

from kdsearch.arch import Arch
from kdsearch.data import load_dataset
from kdsearch.distill.losses import LOSSES
from kdsearch.distill.stage import build_student
from kdsearch.distill.config import TrainConfig
from kdsearch.distill.trainer import train

ARCHS = {
    "resnet_cifar": Arch("resnet_cifar", {"block": "basic", "depths": [1, 1, 1], "widths": [8, 8, 16]}),
    "resnet_teacher": Arch("resnet_cifar", {"block": "basic", "depths": [1, 1, 1], "widths": [16, 16, 32]}),
    "mbconv": Arch("mbconv", {"depths": [1, 1, 1, 1], "expansions": [3, 1, 3, 1], "head_width": 0,
                              "kernels": [3, 3, 3, 3], "se": [False, True, False, False], "stem_width": 8,
                              "strides": [1, 2, 2, 1], "widths": [8, 8, 16, 16]}),
}
# (student, teacher): same family twice, then a student of another family than its teacher
PAIRS = [("resnet_cifar", "resnet_teacher"), ("mbconv", "mbconv"), ("mbconv", "resnet_teacher")]


@pytest.fixture(scope="module")
def data(fashion_npz):
    return load_dataset(f"npz:{fashion_npz}", subset=96, seed=0)


@pytest.mark.parametrize("pair", PAIRS, ids=["-".join(p) for p in PAIRS])
@pytest.mark.parametrize("loss", LOSSES.names())
def test_every_loss_trains(loss, pair, data, tmp_path):
    student = build_student(ARCHS[pair[0]], data, seed=0)
    teacher = build_student(ARCHS[pair[1]], data, seed=1).eval()
    before = [p.detach().clone() for p in student.parameters()]
    spec = loss if loss == "ce" else f"{loss}:1,ce:1"
    result = train(student, data, tmp_path, TrainConfig(epochs=1, batch_size=32, loss=spec, lr=0.02), teacher=teacher)
    h = result["history"][0]
    assert set(h["train_loss"]) == set(s.split(":")[0] for s in spec.split(","))
    assert all(math.isfinite(v) for v in h["train_loss"].values())
    assert 0.0 <= h["val_acc"] <= 1.0
    changed = sum(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert changed >= len(before) // 2  # the loss reached most of the student
