"""A resnet_cifar student cut from a ResNet teacher: exact copies, exact slices, fresh extras, the record."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from kdsearch.models.inherit import inherit_weights, inheritance_problem
from kdsearch.models.resnet_cifar import ResNetCifar
from kdsearch.models.zoo import create_model


@pytest.fixture(scope="module")
def resnet20(trained_looking):
    torch.manual_seed(0)
    return trained_looking(create_model("resnet20"))


def _student(depths, widths, seed: int = 1, **kw) -> ResNetCifar:
    torch.manual_seed(seed)
    return ResNetCifar(depths, widths, **kw)


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(scores.abs(), descending=True, stable=True).indices[:k].sort().values


def test_the_teachers_own_shape_reproduces_its_logits_exactly(resnet20):
    student = _student([3, 3, 3], [16, 32, 64])
    record = inherit_weights("resnet_cifar", resnet20, student)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(student.eval()(x), resnet20(x))
    assert record.fraction == 1.0 and record.inherited == record.total
    assert set(record.parameters) == {n for n, _ in student.named_parameters()}


def test_a_smaller_student_gets_the_sliced_weights(resnet20):
    t = copy.deepcopy(resnet20)
    with torch.no_grad():  # make the teacher's last block of stage 2 the most important of its non-first blocks
        t.layer2[2].bn2.weight.mul_(10)
    student = _student([1, 2, 2], [8, 16, 32])
    inherit_weights("resnet_cifar", t, student)
    # stage 1's stream is the stem's: its channels are ranked by the stem BN and every stage-1 block's bn2
    stream1 = _top(t.stem[1].weight.abs() + sum(b.bn2.weight.abs() for b in t.layer1), 8)
    assert torch.equal(student.stem[0].weight, t.stem[0].weight[stream1])
    assert torch.equal(student.classifier.bias, t.classifier.bias)
    # stage 2 keeps its first block and the block scaled up above (block 2), in order
    stream2 = _top(sum(b.bn2.weight.abs() for b in t.layer2) + t.layer2[0].shortcut[1].weight.abs(), 16)
    inner = _top(t.layer2[2].bn1.weight, 16)
    assert torch.equal(student.layer2[1].conv1.weight, t.layer2[2].conv1.weight[inner][:, stream2])
    assert torch.equal(student.layer2[1].bn2.running_var, t.layer2[2].bn2.running_var[stream2])
    first_inner = _top(t.layer2[0].bn1.weight, 16)
    assert torch.equal(student.layer2[0].conv1.weight, t.layer2[0].conv1.weight[first_inner][:, stream1])
    assert torch.equal(student.layer2[0].shortcut[0].weight, t.layer2[0].shortcut[0].weight[stream2][:, stream1])
    stream3 = _top(sum(b.bn2.weight.abs() for b in t.layer3) + t.layer3[0].shortcut[1].weight.abs(), 32)
    assert torch.equal(student.classifier.weight, t.classifier.weight[:, stream3])
    with torch.no_grad():
        out = student.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_a_wider_student_keeps_fresh_weights_past_the_teachers_channels(resnet20):
    fresh = _student([3, 3, 3], [16, 32, 96], seed=3)
    student = _student([3, 3, 3], [16, 32, 96], seed=3)
    record = inherit_weights("resnet_cifar", resnet20, student)
    w, t = student.layer3[1].conv1.weight, resnet20.layer3[1].conv1.weight  # (96, 96, 3, 3) from (64, 64, 3, 3)
    assert torch.equal(w[:64, :64], t)
    assert torch.equal(w[64:], fresh.layer3[1].conv1.weight[64:])
    assert torch.equal(w[:, 64:], fresh.layer3[1].conv1.weight[:, 64:])
    # every teacher value lands somewhere: each tensor holds the overlap of the two shapes
    expected = sum(math.prod(min(a, b) for a, b in zip(p.shape, resnet20.get_parameter(n).shape))
                   for n, p in student.named_parameters())
    total = sum(p.numel() for p in student.parameters())
    assert record.inherited == expected and record.total == total
    assert record.fraction == pytest.approx(expected / total) and record.fraction < 1


def test_a_deeper_student_keeps_fresh_blocks(resnet20):
    fresh = _student([4, 3, 3], [16, 32, 64], seed=4)
    student = _student([4, 3, 3], [16, 32, 64], seed=4)
    record = inherit_weights("resnet_cifar", resnet20, student)
    assert not any(name.startswith("layer1.3.") for name in record.parameters)
    assert torch.equal(student.layer1[3].conv1.weight, fresh.layer1[3].conv1.weight)
    assert torch.equal(student.layer1[2].conv2.weight, resnet20.layer1[2].conv2.weight)
    fresh_values = sum(p.numel() for p in student.layer1[3].parameters())
    assert record.total - record.inherited == fresh_values


def test_the_teacher_is_left_as_it_was(resnet20):
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    inherit_weights("resnet_cifar", resnet20, _student([1, 1, 1], [8, 8, 16]))
    assert all(torch.equal(before[k], v) for k, v in resnet20.state_dict().items())


def test_imagenet_form_four_stages_and_bottlenecks_inherit(trained_looking):
    torch.manual_seed(0)
    teacher = trained_looking(create_model("resnet18"))
    student = _student([1, 2, 1, 1], [32, 64, 128, 256], form="imagenet")
    record = inherit_weights("resnet_cifar", teacher, student)
    assert record.fraction == 1.0
    with torch.no_grad():
        assert student.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    teacher = trained_looking(ResNetCifar([2, 2, 2], [16, 32, 64], block="bottleneck"))
    student = _student([1, 2, 1], [8, 16, 32], block="bottleneck")
    assert inherit_weights("resnet_cifar", teacher, student).fraction == 1.0
    same = _student([2, 2, 2], [16, 32, 64], block="bottleneck")
    inherit_weights("resnet_cifar", teacher, same)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(same.eval()(x), teacher(x))


@pytest.mark.parametrize("teacher,student,words", [
    (lambda: create_model("resnet18"), lambda: ResNetCifar([1, 1, 1], [8, 8, 8]), "4 stages"),
    (lambda: ResNetCifar([1, 1, 1], [8, 8, 8], form="imagenet"), lambda: ResNetCifar([1, 1, 1], [8, 8, 8]), "form"),
    (lambda: ResNetCifar([1, 1, 1], [8, 8, 8], block="bottleneck"), lambda: ResNetCifar([1, 1, 1], [8, 8, 8]),
     "block kinds"),
    (lambda: ResNetCifar([1, 1, 1], [8, 8, 8], in_channels=1), lambda: ResNetCifar([1, 1, 1], [8, 8, 8]), "channel"),
    (lambda: ResNetCifar([1, 1, 1], [8, 8, 8], num_classes=100), lambda: ResNetCifar([1, 1, 1], [8, 8, 8]), "classes"),
    (lambda: create_model("vit_tiny"), lambda: ResNetCifar([1, 1, 1], [8, 8, 8]), "not a ResNetCifar"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)), lambda: ResNetCifar([1, 1, 1], [8, 8, 8]), ".pt2"),
])
def test_what_cannot_inherit_says_why(teacher, student, words):
    problem = inheritance_problem("resnet_cifar", teacher(), student())
    assert problem is not None and words in problem
    with pytest.raises(ValueError, match="."):
        inherit_weights("resnet_cifar", teacher(), student())


def test_a_family_without_an_inheritor_is_named():
    problem = inheritance_problem("nb201", create_model("resnet8"), create_model("nb201_default"))
    assert problem is not None and "nb201" in problem and "resnet_cifar" in problem
