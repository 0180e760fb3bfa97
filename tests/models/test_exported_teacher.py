"""A user's own nn.Module, saved with torch.export, works as a teacher: loaded without pickle,
its parts found through forward hooks, scored by DisWOT."""
from __future__ import annotations

import math

import torch
from torch import nn

from kdsearch.models.features import locate_parts
from kdsearch.models.teacher import load_teacher


class UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.body(x)), 1))


def test_pt2_teacher_is_loaded_hooked_and_scored(tmp_path):
    from kdsearch.models.resnet_cifar import ResNetCifar
    from kdsearch.proxies import create_proxy, teacher_stats

    torch.manual_seed(0)
    net = UserNet().eval()
    program = torch.export.export(net, (torch.randn(2, 1, 28, 28),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    path = tmp_path / "teacher.pt2"
    torch.export.save(program, str(path))

    teacher = load_teacher(str(path), num_classes=10, in_channels=1, image_size=(28, 28))
    assert teacher.trained is None  # an opaque file: kdsearch cannot tell
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(teacher.module(x), net(x), atol=1e-5)
    parts = locate_parts(teacher.module, x)
    assert parts.classifier == "head"
    assert parts.feature.startswith("body")
    batch = (x, torch.arange(16) % 10)
    proxy = create_proxy("diswot")
    stats = teacher_stats({"diswot": proxy}, teacher.module, batch, parts)
    student = ResNetCifar([1, 1, 1], [8, 8, 16], num_classes=10, in_channels=1)
    score = proxy.score(student, batch, stats["diswot"])
    assert math.isfinite(score) and score <= 0
