"""Every registered proxy through the same checks."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from kdsearch.models.resnet_cifar import ResNetCifar
from kdsearch.proxies import PROXIES, create_proxy


@pytest.fixture(scope="module", params=[(1, False), (3, True)], ids=["grey28-eval", "rgb32-train"])
def setting(request):
    channels, training = request.param  # the student's mode before scoring, which must survive
    size = 28 if channels == 1 else 32
    g = torch.Generator().manual_seed(channels)
    batch = (torch.randn(8, channels, size, size, generator=g), torch.randint(0, 10, (8,), generator=g))
    torch.manual_seed(channels)
    teacher = ResNetCifar([1, 1, 1], [8, 16, 16], in_channels=channels)
    student = ResNetCifar([1, 1, 1], [4, 8, 8], in_channels=channels)
    return teacher, student.train(training), batch


@pytest.mark.parametrize("name", PROXIES.names())
def test_proxy_contract(name: str, setting) -> None:
    teacher, student, batch = setting
    training = student.training
    proxy = create_proxy(name)
    stats = proxy.prepare(teacher if proxy.needs_teacher else None, batch)
    before = copy.deepcopy(student.state_dict())
    rng = torch.get_rng_state()

    first = proxy.score(student, batch, stats, seed=0)

    assert isinstance(first, float) and math.isfinite(first)
    assert proxy.score(student, batch, stats, seed=0) == first
    assert student.training is training
    assert all(m.training is training for m in student.modules())
    assert all(p.grad is None for p in student.parameters())
    for key, value in student.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(torch.get_rng_state(), rng)
    if proxy.is_cost:
        assert first > 0
