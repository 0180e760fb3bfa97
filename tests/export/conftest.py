"""Shared tiny models and data for the export tests: one fp32 export per session."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdsearch.models.resnet_cifar import ResNetCifar

NORMALIZATION = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}


def tiny_resnet(seed: int = 0) -> ResNetCifar:
    """A 3-stage ResNet with one block of 4-8 channels per stage; BN statistics randomised."""
    torch.manual_seed(seed)
    model = ResNetCifar([1, 1, 1], [4, 8, 8], num_classes=10)
    for m in model.modules():  # non-trivial running stats, so eval-mode BN is really exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    return torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # (N, C, H, W)


@pytest.fixture(scope="session")
def labels() -> torch.Tensor:
    return torch.randint(0, 10, (24,), generator=torch.Generator().manual_seed(2))  # (N,)


@pytest.fixture(scope="session")
def model() -> ResNetCifar:
    return tiny_resnet()


@pytest.fixture(scope="session")
def fp32_onnx(tmp_path_factory: pytest.TempPathFactory, model: ResNetCifar, images: torch.Tensor) -> Path:
    from kdsearch.export import export_onnx

    path = tmp_path_factory.mktemp("fp32") / "student.onnx"
    meta = {"normalization": json.dumps(NORMALIZATION), "arch": json.dumps({"space": "resnet_cifar", "genes": {}})}
    return export_onnx(model, images[:4], path, metadata=meta)
