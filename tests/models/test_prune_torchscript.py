"""A TorchScript teacher pruned through its converted graph: the groups and blocks of the network it came
from, a student that saves and reloads pinned to the file, and one line when the graph cannot be converted."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kdsearch.errors import ModelError
from kdsearch.models.prune import PruneRecipe, apply_recipe, prunable_groups, removable_blocks, teacher_digest
from kdsearch.models.zoo import create_model
from kdsearch.spaces.model_files import load_teacher
from kdsearch.spaces.pruned import PrunedSpace, prunable_teacher, pruned_space

X28 = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(2))
BATCH28 = torch.randn(5, 3, 28, 28, generator=torch.Generator().manual_seed(3))  # the converted batch is dynamic


def _save_traced(net: nn.Module, path) -> str:
    """``net`` saved as a user saves a TorchScript teacher: ``torch.jit.save(torch.jit.trace(...))``."""
    torch.jit.save(torch.jit.trace(net, X28), str(path))
    return str(path)


def _teacher(path: str):
    return load_teacher(path, num_classes=10, in_channels=3, image_size=(28, 28))


@pytest.fixture(scope="module")
def resnet20(trained_looking, tmp_path_factory):
    torch.manual_seed(0)
    net = trained_looking(create_model("resnet20"))
    return net, _save_traced(net, tmp_path_factory.mktemp("resnet20") / "teacher.pt")


def test_a_torchscript_teacher_offers_the_groups_and_blocks_of_the_network_it_came_from(resnet20):
    net, path = resnet20
    module, files = prunable_teacher(_teacher(path))
    assert [str(f) for f in files] == [path]  # its digest is of the file
    assert list(module.state_dict()) == list(net.state_dict())
    with torch.no_grad():
        assert torch.allclose(module(BATCH28), net(BATCH28), atol=1e-5)
    assert [g.name for g in prunable_groups(module, X28)] == [g.name for g in prunable_groups(net, X28)]
    blocks = removable_blocks(net, X28)
    assert blocks and removable_blocks(module, X28) == blocks  # the module hierarchy survives the conversion


def test_a_student_of_a_torchscript_teacher_round_trips_pinned_to_the_file(resnet20, block_cut_round_trips, tmp_path):
    net, path = resnet20
    block_cut_round_trips(net, prunable_teacher(_teacher(path))[0], path,
                          lambda: prunable_teacher(_teacher(path)),  # the file read and converted again
                          tmp_path, X28, BATCH28)


def test_a_pruned_space_reading_a_torchscript_teacher_converts_it_once(resnet20, monkeypatch):
    """Building students from the run's space needs only the pruning program, not the hookable parts
    ``load_teacher`` cuts a script into for the search."""
    import kdsearch.models.graph_teacher as graph_teacher

    _, path = resnet20
    space = pruned_space(_teacher(path), num_classes=10, in_channels=3, image_size=(28, 28))

    def refuse(*_args, **_kwargs):
        raise AssertionError("the script was cut into hookable parts")

    monkeypatch.setattr(graph_teacher, "hookable_torchscript", refuse)
    genes = {"keep": [0.5] * len(space.groups), "remove": [False] * len(space.blocks)}
    with torch.no_grad():
        assert torch.equal(PrunedSpace(space.definition).build_model(genes, 10, 3, "cifar").eval()(BATCH28),
                           space.build_model(genes, 10, 3, "cifar").eval()(BATCH28))


def test_a_torchscript_teacher_changed_since_its_space_was_made_is_refused(trained_looking, tmp_path):
    torch.manual_seed(0)
    net = trained_looking(create_model("resnet8"))
    path = _save_traced(net, tmp_path / "teacher.ts")
    space = pruned_space(_teacher(path), num_classes=10, in_channels=3, image_size=(28, 28))
    assert space.blocks == removable_blocks(net, X28)
    genes = {"keep": [0.5] * len(space.groups), "remove": [False] * len(space.blocks)}
    again = PrunedSpace(space.definition)  # as read back from the run's YAML: the teacher is read from its file again
    with torch.no_grad():
        assert torch.equal(again.build_model(genes, 10, 3, "cifar").eval()(BATCH28),
                           space.build_model(genes, 10, 3, "cifar").eval()(BATCH28))
        net.classifier.bias.add_(1)
    _save_traced(net, path)
    with pytest.raises(ModelError, match="has changed since the pruned space was made from it") as refused:
        PrunedSpace(space.definition).build_model(genes, 10, 3, "cifar")
    assert "\n" not in str(refused.value)


class _Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class _Scriptable(nn.Module):
    """A residual network ``torch.jit.script`` compiles (its layers' own methods are inlined into the graph too)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(_Block(8), _Block(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def test_a_scripted_teacher_offers_its_groups_and_blocks_too(trained_looking, tmp_path):
    torch.manual_seed(0)
    net = trained_looking(_Scriptable())
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    module, _ = prunable_teacher(_teacher(str(path)))
    assert [g.name for g in prunable_groups(module, X28)] == [g.name for g in prunable_groups(net, X28)]
    assert removable_blocks(module, X28) == removable_blocks(net, X28) == ["blocks.0", "blocks.1"]


class _CountedLoop(nn.Module):
    """A loop run a data-dependent number of times: TorchScript keeps it, the converter cannot."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        for _ in range(int(y.sum().item() > 0)):
            y = y * 2
        return self.fc(y.mean((2, 3)))


def test_a_torchscript_graph_the_converter_cannot_convert_is_refused_in_one_line(tmp_path):
    path = tmp_path / "loop.pt"
    torch.jit.save(torch.jit.script(_CountedLoop().eval()), str(path))
    with pytest.warns(Warning):  # its features cannot be read either: the loader says so
        teacher = _teacher(str(path))
    with pytest.raises(ModelError, match=r"cannot cut the TorchScript teacher .*loop\.pt: cannot convert this "
                                         r"TorchScript graph .*prim::Loop") as refused:
        pruned_space(teacher, num_classes=10, in_channels=3, image_size=(28, 28))
    assert "\n" not in str(refused.value)


@pytest.mark.slow
def test_a_student_of_a_torchscript_teacher_exports_to_onnx(resnet20, tmp_path):
    import onnxruntime as ort

    from kdsearch.export import export_onnx

    _, path = resnet20
    teacher, _ = prunable_teacher(_teacher(path))
    keep = {g.name: 0.5 for g in prunable_groups(teacher, X28)}
    student = apply_recipe(teacher, PruneRecipe(teacher_digest(teacher), keep, remove=("layer1.0",)), X28)
    onnx_path = export_onnx(student, X28[:1], tmp_path / "student.onnx")
    logits = ort.InferenceSession(str(onnx_path)).run(None, {"input": BATCH28.numpy()})[0]  # another batch size
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), student.eval()(BATCH28), atol=1e-4)
