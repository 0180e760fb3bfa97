"""Parameter and FLOP counts against hand counts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kdsearch.models.resnet_cifar import ResNetCifar
from kdsearch.proxies import PROXIES, count_flops, count_params, create_proxy


def test_count_params_by_hand() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 10))
    assert count_params(model) == 3 * 8 * 9 + 2 * 8 + 8 * 10 + 10


def test_count_params_counts_shared_weights_once() -> None:
    shared = nn.Linear(4, 4)
    assert count_params(nn.Sequential(shared, nn.ReLU(), shared)) == 20


def test_count_params_resnet_by_hand() -> None:
    model = ResNetCifar([1, 1, 1], [4, 8, 8], num_classes=10, in_channels=1)
    conv = lambda cin, cout, k: cin * cout * k * k  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    stem = conv(1, 4, 3) + bn(4)
    block1 = conv(4, 4, 3) + bn(4) + conv(4, 4, 3) + bn(4)
    block2 = conv(4, 8, 3) + bn(8) + conv(8, 8, 3) + bn(8) + conv(4, 8, 1) + bn(8)  # with projection
    block3 = conv(8, 8, 3) + bn(8) + conv(8, 8, 3) + bn(8)  # stride 2, same width: still projects
    block3 += conv(8, 8, 1) + bn(8)
    assert count_params(model) == stem + block1 + block2 + block3 + 8 * 10 + 10


@pytest.mark.parametrize(("stride", "padding", "size"), [(1, 1, 32), (2, 0, 28)])
def test_flops_of_one_conv(stride: int, padding: int, size: int) -> None:
    k, cin, cout = 3, 3, 8
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
    out = (size + 2 * padding - k) // stride + 1
    assert count_flops(conv, (cin, size, size)) == 2 * k * k * cin * cout * out * out


def test_flops_restores_training_mode_and_counts_linear() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).train()
    assert count_flops(model, (3, 2, 2)) == 2 * 12 * 5
    assert model.training


def test_cost_proxies_match_counts() -> None:
    torch.manual_seed(0)
    model = ResNetCifar([1, 1, 1], [4, 8, 8])
    batch = (torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,)))
    assert PROXIES.get("params").is_cost and PROXIES.get("flops").is_cost
    assert create_proxy("params").score(model, batch, None) == count_params(model)
    assert create_proxy("flops").score(model, batch, None) == count_flops(model, (3, 16, 16))
