"""The proxy extension point: creation, teacher stats, scoring, leaving models untouched."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdsearch.errors import ProxyError, UsageError
from kdsearch.models.resnet_cifar import ResNetCifar
from kdsearch.proxies import PROXIES, create_proxy, score_candidate, teacher_stats
from kdsearch.proxies.base import untouched


def test_create_proxy_unknown_name_lists_known() -> None:
    with pytest.raises(UsageError, match="synflow"):
        create_proxy("synflo")


def test_create_proxy_options() -> None:
    proxy = create_proxy("diswot", w_sem=2.0, w_rel=None)  # None means "the default"
    assert (proxy.w_sem, proxy.w_rel) == (2.0, 1.0)
    with pytest.raises(UsageError, match="w_sem"):
        create_proxy("diswot", weight=3)
    with pytest.raises(UsageError, match="has no option"):
        create_proxy("snip", seed=1)  # a proxy without options
    with pytest.raises(UsageError, match="semantic"):
        create_proxy("diswot", semantic="pixel")


def test_teacher_proxy_without_teacher_fails() -> None:
    batch = (torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ProxyError, match="teacher"):
        teacher_stats({"diswot": create_proxy("diswot")}, None, batch)
    assert teacher_stats({"snip": create_proxy("snip")}, None, batch) == {"snip": None}


def test_score_candidate_scores_all_and_wraps_failures() -> None:
    torch.manual_seed(0)
    teacher, student = ResNetCifar([1, 1, 1], [8, 8, 16]), ResNetCifar([1, 1, 1], [4, 8, 8])
    batch = (torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,)))
    proxies = {n: create_proxy(n) for n in ("diswot", "snip", "params")}
    stats = teacher_stats(proxies, teacher, batch)
    scores = score_candidate(student, batch, proxies, stats, seed=3)
    assert set(scores) == set(proxies)
    assert scores["diswot"] == proxies["diswot"].score(student, batch, stats["diswot"], seed=3)
    grey = ResNetCifar([1, 1, 1], [4, 8, 8], in_channels=1)  # cannot run 3-channel images
    with pytest.raises(ProxyError, match="'snip' failed"):
        score_candidate(grey, batch, {"snip": proxies["snip"]}, {})


def test_untouched_restores_modes_buffers_and_grads() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    model.train()
    model[1].eval()  # a nested mode must survive too
    model[0].weight.grad = torch.ones(3, 3)
    before = copy.deepcopy(model.state_dict())
    with untouched(model):
        assert model[1].training
        model(torch.randn(5, 3)).sum().backward()
    assert model.training and not model[1].training
    assert torch.equal(model[0].weight.grad, torch.ones(3, 3))
    assert model[0].bias.grad is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_every_builtin_is_registered() -> None:
    expected = {
        "diswot", "diswot_semantic", "diswot_relation", "grad_norm", "snip", "grasp", "synflow",
        "fisher", "jacov", "nwot", "zen", "params", "flops",
    }
    assert set(PROXIES.names()) == expected
