"""A ``.pt2`` teacher's layers lifted back into modules: the same computation, then pruned like the network it came from."""
from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from kdsearch.errors import KdsearchWarning, ModelError
from kdsearch.models.prune import (PruneRecipe, apply_recipe, lift_layers, load_pruned, prunable_groups,
                                   removable_blocks, save_pruned, teacher_digest)
from kdsearch.models.prune import lift as lift_module
from kdsearch.models.vit import ViT
from kdsearch.models.zoo import create_model
from kdsearch.spaces import load_space
from kdsearch.spaces.model_files import load_teacher
from kdsearch.spaces.pruned import PrunedSpace, prunable_teacher, pruned_space

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
BATCH = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # another batch size: the export's is dynamic


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
def resnet(trained_looking, tmp_path_factory):
    torch.manual_seed(0)
    net = trained_looking(create_model("resnet8"))
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


def test_mbconv_program_lifts_and_prunes(trained_looking, tmp_path):
    space = load_space("mbconv")
    torch.manual_seed(0)
    net = trained_looking(space.build(space.sample(random.Random(0)), num_classes=10, in_channels=3))
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


# The module hierarchy, restored by torch.export.unflatten: residual blocks a recipe can remove by path.

X28 = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(2))
BATCH28 = torch.randn(5, 3, 28, 28, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def resnet20(trained_looking, tmp_path_factory):
    torch.manual_seed(0)
    net = trained_looking(create_model("resnet20"))
    path = tmp_path_factory.mktemp("resnet20") / "teacher.pt2"
    torch.export.save(torch.export.export(net, (X28,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}), str(path))
    return net, str(path)


def _unflattened(path: str) -> nn.Module:
    """The program as a ``.pt2`` teacher is loaded (kdsearch.models.teacher): its module hierarchy restored."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)  # torch's own deprecation
        return torch.export.unflatten(torch.export.load(path))


def test_unflattened_program_offers_the_blocks_of_the_network_it_came_from(resnet20):
    net, path = resnet20
    lifted = lift_layers(_unflattened(path))
    assert _layer_types(lifted) == _layer_types(net)
    assert list(lifted.state_dict()) == list(net.state_dict())
    with torch.no_grad():
        assert torch.allclose(lifted(BATCH28), net(BATCH28), atol=1e-5)
    blocks = removable_blocks(net, X28)
    assert blocks and removable_blocks(lifted, X28) == blocks  # the flat graph offers none
    assert [g.name for g in prunable_groups(lifted, X28)] == [g.name for g in prunable_groups(net, X28)]


def test_a_student_without_a_block_of_a_pt2_teacher_round_trips(resnet20, block_cut_round_trips, tmp_path):
    net, path = resnet20
    block_cut_round_trips(net, lift_layers(_unflattened(path)), path,
                          lambda: (lift_layers(_unflattened(path)), [path]), tmp_path, X28, BATCH28)  # read again


@pytest.mark.slow
def test_a_student_without_a_block_of_a_pt2_teacher_exports_to_onnx(resnet20, tmp_path):
    import onnxruntime as ort

    from kdsearch.export import export_onnx

    _, path = resnet20
    teacher = lift_layers(_unflattened(path))
    keep = {g.name: 0.5 for g in prunable_groups(teacher, X28)}
    student = apply_recipe(teacher, PruneRecipe(teacher_digest(teacher), keep, remove=("layer1.0", "layer3.2")), X28)
    onnx_path = export_onnx(student, X28[:1], tmp_path / "student.onnx")
    logits = ort.InferenceSession(str(onnx_path)).run(None, {"input": BATCH28.numpy()})[0]  # another batch size
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), student.eval()(BATCH28), atol=1e-4)


def test_a_student_cut_from_the_flat_graph_loads_from_the_unflattened_one(resnet20, tmp_path):
    _, path = resnet20
    flat = lift_layers(_program_module(path))
    recipe = PruneRecipe(teacher_digest(flat, [path]), {g.name: 0.5 for g in prunable_groups(flat, X28)})
    student = apply_recipe(flat, recipe, X28).eval()
    save_pruned(tmp_path / "student", student, recipe, X28)
    loaded = load_pruned(tmp_path / "student", lift_layers(_unflattened(path)), teacher_files=[path])
    with torch.no_grad():
        assert torch.allclose(loaded(BATCH28), student(BATCH28), atol=1e-6)


def test_vit_program_blocks_take_their_stream_alone(tmp_path):
    torch.manual_seed(0)
    net = ViT(patch_size=7, depth=2, heads=2, embed_dim=16, mlp_ratio=2.0, image_size=28).eval()
    path = tmp_path / "vit.pt2"
    torch.export.save(torch.export.export(net, (X28,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}), str(path))
    lifted = lift_layers(_unflattened(str(path)))  # its blocks were called with the batch size beside the tokens
    assert removable_blocks(lifted, X28) == removable_blocks(net, X28) == ["blocks.0", "blocks.1"]
    student = apply_recipe(lifted, PruneRecipe(teacher_digest(lifted), remove=("blocks.1",)), X28)
    with torch.no_grad():
        assert student(BATCH28).shape == (5, 10)


def test_pruned_space_offers_block_genes_for_a_pt2_teacher(resnet20):
    net, path = resnet20
    teacher = load_teacher(path, num_classes=10, in_channels=3, image_size=(28, 28))
    space = pruned_space(teacher, num_classes=10, in_channels=3, image_size=(28, 28))
    assert space.blocks == removable_blocks(net, X28) and "remove" in space.gene_specs
    genes = {"keep": [0.5] * len(space.groups), "remove": [i == 1 for i in range(len(space.blocks))]}
    again = PrunedSpace(space.definition)  # as read back from the run's YAML: the teacher is read from its file again
    with torch.no_grad():
        built = space.build_model(genes, 10, 3, "cifar").eval()
        assert torch.equal(again.build_model(genes, 10, 3, "cifar").eval()(BATCH28), built(BATCH28))


def test_a_program_whose_tree_cannot_be_lifted_is_pruned_flat_with_one_warning(resnet20, monkeypatch):
    _, path = resnet20
    teacher = load_teacher(path, num_classes=10, in_channels=3, image_size=(28, 28))

    def refuse(*args, **kwargs):
        raise RuntimeError("no such call")

    monkeypatch.setattr(lift_module, "_lift_tree", refuse)
    with pytest.warns(KdsearchWarning, match="cannot lift its module tree .*pruning its flat graph instead") as warned:
        module, files = prunable_teacher(teacher)
    assert "\n" not in str(warned[0].message) and files == [Path(path)]
    assert _layer_types(module) and removable_blocks(module, X28) == []
