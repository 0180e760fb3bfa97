"""Contract suite: every registered inheritor goes through the same checks.

The teacher is its family's built-in space's teacher (the YAML's ``teacher:`` genes) with
distinct norm scales; the students are members of that space.
"""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from kdsearch.models.inherit import INHERITORS, inherit_weights, inheritance_problem
from kdsearch.models.zoo import create_model
from kdsearch.spaces import load_space

N_STUDENTS = 6
FOREIGN = {"resnet_cifar": "vit_tiny", "mbconv": "resnet8", "vit": "resnet8"}  # a zoo model of another family


def _distinct_norms(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.25)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="module", params=INHERITORS.names())
def family(request):
    return request.param


@pytest.fixture(scope="module")
def space(family):
    return load_space(family)


@pytest.fixture(scope="module")
def teacher(space):
    torch.manual_seed(0)
    return _distinct_norms(space.build(space.teacher(), num_classes=10, in_channels=3))


def _students(space, teacher):
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(N_STUDENTS * 4)]
    torch.manual_seed(1)
    built = [space.build(a, num_classes=10, in_channels=3) for a in archs]
    able = [s for s in built if inheritance_problem(space.family, teacher, s) is None]
    return able[:N_STUDENTS]


def test_the_registry_matches_the_spaces(family):
    assert INHERITORS.get(family).family == family
    assert load_space(family).family == family


def test_the_teachers_own_arch_reproduces_its_logits(space, teacher):
    torch.manual_seed(2)
    student = space.build(space.teacher(), num_classes=10, in_channels=3)
    record = inherit_weights(space.family, teacher, student)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(student.eval()(x), teacher(x))
    assert record.fraction == 1.0 and len(record.parameters) == len(list(student.parameters()))


def test_members_of_the_space_inherit_and_stay_normal_members(space, teacher):
    students = _students(space, teacher)
    assert students, "no member of the space can inherit from the space's own teacher"
    names_before = [[(n, t.shape) for n, t in s.state_dict().items()] for s in students]
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    for student, before in zip(students, names_before):
        record = inherit_weights(space.family, teacher, student)
        assert [(n, t.shape) for n, t in student.state_dict().items()] == before  # same module, same shapes
        params = dict(student.named_parameters())
        assert set(record.parameters) <= set(params) and record.parameters
        assert record.total == sum(p.numel() for p in params.values())
        assert 0 < record.inherited <= record.total and record.fraction == record.inherited / record.total
        assert record.to_dict()["fraction"] == record.fraction
        with torch.no_grad():
            out = student.eval()(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())


def test_the_check_reads_shapes_only(space, teacher):
    with torch.device("meta"):
        student = space.build(space.teacher(), num_classes=10, in_channels=3)
    assert inheritance_problem(space.family, teacher, student) is None


def test_other_teachers_are_refused_in_words(space, family):
    student = space.build(space.teacher(), num_classes=10, in_channels=3)
    for teacher in (create_model(FOREIGN[family]), nn.Sequential(nn.Flatten(), nn.LazyLinear(10))):
        problem = inheritance_problem(family, teacher, student)
        assert isinstance(problem, str) and problem
    other_classes = space.build(space.teacher(), num_classes=7, in_channels=3)
    assert "classes" in inheritance_problem(family, other_classes, student)
