"""DisWOT: closed forms against autograd, fast path against the slow reference."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.errors import ProxyError
from kdsearch.models.features import FeatureTap
from kdsearch.models.resnet_cifar import ResNetCifar
from kdsearch.proxies import PROXIES, classifier_weight_grad, create_proxy, diswot_reference, teacher_stats


def _batch(n: int = 12, c: int = 3, size: int = 32, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def _resnet(depths, widths, seed: int, **kw) -> ResNetCifar:
    torch.manual_seed(seed)
    return ResNetCifar(depths, widths, **kw)


class MlpHeadNet(nn.Module):
    """A teacher whose classifier input is a hidden MLP layer, not the pooled feature map."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1), nn.BatchNorm2d(6))
        self.act = nn.ReLU()
        self.hidden = nn.Linear(6 * 16 * 16, 20)
        self.head = nn.Linear(20, classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.act(self.body(x))  # (N, 6, 16, 16)
        return self.head(torch.relu(self.hidden(f.flatten(1))))  # (N, K)


def _score(name: str, teacher, student, batch, **options) -> float:
    proxy = create_proxy(name, **options)
    return proxy.score(student, batch, proxy.prepare(teacher, batch))


def test_closed_form_classifier_grad_equals_autograd() -> None:
    torch.manual_seed(0)
    clf = nn.Linear(7, 5)  # with a bias: the weight gradient formula must not change
    h = torch.randn(9, 7)
    y = torch.randint(0, 5, (9,))
    F.cross_entropy(clf(h), y).backward()
    closed = classifier_weight_grad(clf(h).detach(), y, h)
    torch.testing.assert_close(closed.float(), clf.weight.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["diswot", "diswot_semantic", "diswot_relation"])
@pytest.mark.parametrize("semantic", ["class", "channel"])
def test_identical_teacher_and_student_score_zero(name: str, semantic: str) -> None:
    model = _resnet([1, 1, 1], [8, 16, 16], seed=1)
    options = {} if name == "diswot_relation" else {"semantic": semantic}
    assert _score(name, model, model, _batch(), **options) == pytest.approx(0.0, abs=1e-12)


def _permute_layer3_channels(model: ResNetCifar, perm: torch.Tensor) -> ResNetCifar:
    """Same function, feature channels of layer3 reordered (layer3 is one block with a projection)."""
    out = copy.deepcopy(model)
    block = out.layer3[0]
    with torch.no_grad():
        for conv, bn in [(block.conv2, block.bn2), (block.shortcut[0], block.shortcut[1])]:
            conv.weight.copy_(conv.weight[perm])
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                t.copy_(t[perm])
        out.classifier.weight.copy_(out.classifier.weight[:, perm])
    return out


def test_relation_unchanged_by_permuting_student_channels() -> None:
    teacher = _resnet([1, 1, 1], [8, 16, 32], seed=2)
    student = _resnet([1, 1, 1], [8, 8, 16], seed=3)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    permuted = _permute_layer3_channels(student, perm)
    x, y = batch = _batch()
    with FeatureTap(student, ["layer3"]) as a, FeatureTap(permuted, ["layer3"]) as b:
        torch.testing.assert_close(student(x), permuted(x))
    torch.testing.assert_close(b["layer3"], a["layer3"][:, perm])  # the permutation really happened
    assert not torch.equal(b["layer3"], a["layer3"])
    base = _score("diswot_relation", teacher, student, batch)
    assert _score("diswot_relation", teacher, permuted, batch) == pytest.approx(base, rel=1e-6)
    other = _resnet([1, 1, 1], [8, 8, 16], seed=4)  # a different student does score differently
    assert _score("diswot_relation", teacher, other, batch) != pytest.approx(base, rel=1e-3)


def test_deterministic_and_global_rng_untouched() -> None:
    teacher = _resnet([1, 1, 1], [8, 16, 32], seed=2)
    student = _resnet([1, 1, 1], [8, 8, 16], seed=3)
    batch = _batch()
    proxy = create_proxy("diswot")
    stats = proxy.prepare(teacher, batch)
    state = torch.get_rng_state()
    first = proxy.score(student, batch, stats, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert proxy.score(student, batch, stats, seed=5) == first


@pytest.mark.parametrize(
    ("teacher_cfg", "student_cfg", "semantic"),
    [
        (([2, 1, 2], [16, 32, 64]), ([1, 2, 1], [8, 24, 48]), "class"),
        (([1, 1, 1], [16, 32, 48]), ([2, 1, 1], [8, 16, 48]), "channel"),  # equal final widths
    ],
)
def test_fast_equals_reference(teacher_cfg, student_cfg, semantic: str) -> None:
    teacher = _resnet(*teacher_cfg, seed=10)
    student = _resnet(*student_cfg, seed=11)
    batch = _batch(n=16, size=16)
    ref = diswot_reference(teacher, student, batch, semantic=semantic)
    assert ref.semantic > 0 and ref.relation > 0
    sem = _score("diswot_semantic", teacher, student, batch, semantic=semantic)
    rel = _score("diswot_relation", teacher, student, batch)
    assert -sem == pytest.approx(ref.semantic, rel=1e-4)
    assert -rel == pytest.approx(ref.relation, rel=1e-4)
    both = _score("diswot", teacher, student, batch, w_sem=3.0, w_rel=0.5, semantic=semantic)
    assert both == pytest.approx(-(3.0 * ref.semantic + 0.5 * ref.relation), rel=1e-4)


def test_fast_equals_reference_for_a_hidden_layer_classifier() -> None:
    torch.manual_seed(12)
    teacher = MlpHeadNet()
    student = _resnet([1, 1, 1], [8, 8, 16], seed=13)
    batch = _batch(n=10)
    ref = diswot_reference(teacher, student, batch)
    assert -_score("diswot_semantic", teacher, student, batch) == pytest.approx(ref.semantic, rel=1e-4)
    assert -_score("diswot_relation", teacher, student, batch) == pytest.approx(ref.relation, rel=1e-4)


def test_teacher_left_as_found() -> None:
    teacher = _resnet([1, 1, 1], [8, 16, 32], seed=2).eval()
    before = copy.deepcopy(teacher.state_dict())
    batch = _batch()
    teacher_stats({"diswot": create_proxy("diswot")}, teacher, batch)
    diswot_reference(teacher, teacher, batch)
    assert not teacher.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in teacher.parameters())


def test_class_count_mismatch_and_channel_width_mismatch_fail_clearly() -> None:
    teacher = _resnet([1, 1, 1], [8, 16, 32], seed=2)
    batch = _batch()
    with pytest.raises(ProxyError, match="classes"):
        _score("diswot", teacher, _resnet([1, 1, 1], [8, 8, 16], seed=3, num_classes=7), batch)
    with pytest.raises(ProxyError, match="semantic='class'"):
        _score("diswot", teacher, _resnet([1, 1, 1], [8, 8, 16], seed=3), batch, semantic="channel")


def test_registered_with_teacher_flag() -> None:
    for name in ("diswot", "diswot_semantic", "diswot_relation"):
        assert PROXIES.get(name).needs_teacher and not PROXIES.get(name).is_cost
