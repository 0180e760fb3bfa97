"""A ``.pt2`` teacher's layers lifted back into modules: the same computation, then pruned like the network it came from."""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from kdsearch.errors import ModelError
from kdsearch.models.prune import (PruneRecipe, apply_recipe, lift_layers, load_pruned, prunable_groups, save_pruned,
                                   teacher_digest)
from kdsearch.models.zoo import create_model
from kdsearch.spaces import load_space

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
BATCH = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # another batch size: the export's is dynamic


def _trained_looking(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 2 - 0.5)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _export(net: nn.Module, path) -> str:
    """``net`` saved as a user saves a teacher: torch.export with any batch size."""
    program = torch.export.export(net, (X,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(path))
    return str(path)


def _program_module(path: str) -> nn.Module:
    return torch.export.load(path).module()


def _layer_types(model: nn.Module) -> list[str]:
    return sorted(type(m).__name__ for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    torch.manual_seed(0)
    net = _trained_looking(create_model("resnet8"))
    return net, _export(net, tmp_path_factory.mktemp("teacher") / "teacher.pt2")


def test_lifted_program_computes_the_same_with_modules(resnet):
    net, path = resnet
    program = _program_module(path)
    assert _layer_types(program) == []  # the flat graph calls aten.conv2d on bare parameters
    lifted = lift_layers(program)
    assert _layer_types(lifted) == _layer_types(net)
    assert sorted(lifted.state_dict()) == sorted(net.state_dict())
    assert not lifted.training  # it computes as the exported graph did: BN on running statistics
    with torch.no_grad():
        assert torch.allclose(lifted(BATCH), program(BATCH), atol=1e-6)
        assert torch.allclose(lifted(BATCH), net(BATCH), atol=1e-6)
    lifted.train()  # the exported module refuses train() and eval(); the lifted one takes both
    assert lifted.get_submodule("stem.1").training


def test_lifted_program_prunes_as_the_network_it_came_from(resnet):
    net, path = resnet
    lifted = lift_layers(_program_module(path))
    groups = prunable_groups(lifted, X)
    assert [g.name for g in groups] == [g.name for g in prunable_groups(net, X)]
    keep = {g.name: 0.5 for g in groups}
    cut = apply_recipe(lifted, PruneRecipe(teacher_digest(lifted), keep), X)
    reference = apply_recipe(net, PruneRecipe(teacher_digest(net), keep), X)
    assert sum(p.numel() for p in cut.parameters()) == sum(p.numel() for p in reference.parameters())
    with torch.no_grad():
        assert torch.allclose(cut(BATCH), reference(BATCH), atol=1e-5)


def test_student_of_a_pt2_teacher_round_trips_pinned_to_the_file(resnet, tmp_path):
    _, path = resnet
    teacher = lift_layers(_program_module(path))
    recipe = PruneRecipe(teacher_digest(teacher, [path]), {g.name: 0.5 for g in prunable_groups(teacher, X)}, "bn_scale")
    student = apply_recipe(teacher, recipe, X)
    save_pruned(tmp_path / "student", student, recipe, X)
    loaded = load_pruned(tmp_path / "student", lift_layers(_program_module(path)), teacher_files=[path])
    with torch.no_grad():
        assert torch.equal(loaded(BATCH), student.eval()(BATCH))
    changed = tmp_path / "changed.pt2"
    changed.write_bytes(open(path, "rb").read() + b"\0")
    with pytest.raises(ModelError, match="the teacher file has changed since"):
        load_pruned(tmp_path / "student", teacher, teacher_files=[changed])


def test_mbconv_program_lifts_and_prunes(tmp_path):
    space = load_space("mbconv")
    torch.manual_seed(0)
    net = _trained_looking(space.build(space.sample(random.Random(0)), num_classes=10, in_channels=3))
    lifted = lift_layers(_program_module(_export(net, tmp_path / "mbconv.pt2")))
    assert _layer_types(lifted) == _layer_types(net)  # depthwise and squeeze-excite convs too
    groups = prunable_groups(lifted, X)
    cut = apply_recipe(lifted, PruneRecipe(teacher_digest(lifted), {g.name: 0.5 for g in groups}), X)
    assert sum(p.numel() for p in cut.parameters()) < 0.5 * sum(p.numel() for p in net.parameters())
    assert cut(BATCH).shape == (5, 10)


class _ComputedWeight(nn.Module):
    """A conv whose weight is computed in the forward: no module can hold it, so its call stays a function."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.conv = nn.Conv2d(4, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(nn.functional.conv2d(x, self.weight * 2))
        return self.fc(y.mean((2, 3)))


def test_calls_that_cannot_be_lifted_stay_as_they_are(tmp_path):
    torch.manual_seed(0)
    net = _ComputedWeight().eval()
    program = _program_module(_export(net, tmp_path / "computed.pt2"))
    lifted = lift_layers(program)
    assert _layer_types(lifted) == ["Conv2d", "Linear"]
    with torch.no_grad():
        assert torch.allclose(lifted(BATCH), net(BATCH), atol=1e-6)


def test_only_an_exported_program_is_lifted():
    with pytest.raises(ModelError, match="torch.export"):
        lift_layers(create_model("resnet8"))
