"""Students cut from their teacher by Torch-Pruning: groups, recipes, the cut, and the round trip through files."""
from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from torch import nn

from kdsearch.errors import ConfigError, ModelError, UsageError
from kdsearch.models.prune import (PruneRecipe, apply_recipe, kept_channels, load_pruned, prunable_groups,
                                   removable_blocks, save_pruned, teacher_digest)
from kdsearch.models.vit import ViT
from kdsearch.models.zoo import create_model
from kdsearch.spaces import load_space

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # tiny: the forward is checked after cuts


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def resnet20(trained_looking) -> nn.Module:
    torch.manual_seed(0)
    return trained_looking(create_model("resnet20"))


@pytest.fixture(scope="module")
def resnet20_groups(resnet20):
    return prunable_groups(resnet20, X)


def _recipe(teacher: nn.Module, groups, keep: float, importance: str = "magnitude") -> PruneRecipe:
    return PruneRecipe(teacher_digest(teacher), {g.name: keep for g in groups}, importance)


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_resnet_groups_follow_the_residual_streams(resnet20_groups):
    groups = {g.name: g for g in resnet20_groups}
    # one group per residual stream (named by its first writer) and one per block's inner channels; never the classifier
    assert list(groups) == ["stem.0", "layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1",
                            "layer2.0.conv2", "layer2.1.conv1", "layer2.2.conv1", "layer3.0.conv1", "layer3.0.conv2",
                            "layer3.1.conv1", "layer3.2.conv1"]
    assert [groups[n].channels for n in ("stem.0", "layer2.0.conv2", "layer3.0.conv2")] == [16, 32, 64]
    stream = groups["stem.0"].layers  # the first stage's stream: stem, every block's last conv and BN, the next readers
    assert {"stem.0", "stem.1", "layer1.0.conv2", "layer1.2.bn2", "layer2.0.conv1", "layer2.0.shortcut.0"} <= set(stream)
    assert groups["layer1.0.conv1"].layers == ("layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2")
    assert all("classifier" not in g.layers or g.name == "layer3.0.conv2" for g in resnet20_groups)


def test_params_shrink_with_the_kept_share_and_the_teacher_is_untouched(resnet20, resnet20_groups):
    before = copy.deepcopy(resnet20.state_dict())
    sizes = [_params(apply_recipe(resnet20, _recipe(resnet20, resnet20_groups, keep), X)) for keep in (1.0, 0.75, 0.5, 0.25)]
    assert sizes[0] == _params(resnet20) == 272_474
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3]
    assert 0.2 < sizes[2] / sizes[0] < 0.3  # half the channels everywhere: about a quarter of the weights
    assert all(torch.equal(before[k], v) for k, v in resnet20.state_dict().items())
    assert not resnet20.training


def test_cut_student_keeps_the_most_important_channels(resnet20, resnet20_groups):
    recipe = PruneRecipe(teacher_digest(resnet20), {"layer1.0.conv1": 0.5}, "bn_scale")
    student = apply_recipe(resnet20, recipe, X)
    gamma = resnet20.layer1[0].bn1.weight.detach()
    kept = torch.topk(gamma.abs(), 8).indices.sort().values
    assert torch.equal(student.layer1[0].bn1.weight.detach(), gamma[kept])
    assert torch.equal(student.layer1[0].conv1.weight, resnet20.layer1[0].conv1.weight[kept])
    assert torch.equal(student.layer1[0].conv2.weight, resnet20.layer1[0].conv2.weight[:, kept])
    assert student.layer1[0].conv2.out_channels == 16  # the stream is another group: untouched
    assert student(X).shape == (2, 10)


def test_saved_student_loads_back_identical_without_unpickling(resnet20, resnet20_groups, tmp_path, monkeypatch):
    recipe = _recipe(resnet20, resnet20_groups, 0.5)
    student = apply_recipe(resnet20, recipe, X)
    with torch.no_grad():  # a trained student: its weights are no longer the teacher's slices
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_pruned(tmp_path, student, recipe, X)
    assert json.loads((tmp_path / "pruned.json").read_text())["recipe"] == recipe.to_dict()

    def no_pickle(*args, **kwargs):
        raise AssertionError("load_pruned must not unpickle")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load_pruned(tmp_path, resnet20)
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(batch), student.eval()(batch))
    assert _params(loaded) == _params(student)


def test_changed_teacher_is_refused(resnet20, resnet20_groups, tmp_path):
    recipe = _recipe(resnet20, resnet20_groups, 0.5)
    save_pruned(tmp_path, apply_recipe(resnet20, recipe, X), recipe, X)
    changed = copy.deepcopy(resnet20)
    with torch.no_grad():
        changed.stem[0].weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(ModelError) as error:
        load_pruned(tmp_path, changed)
    assert "the teacher file has changed since" in _one_line(error)


def test_teacher_digest_of_its_files(resnet20, resnet20_groups, tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "teacher" / "model.safetensors"
    weights.parent.mkdir()
    save_file({k: v.contiguous() for k, v in resnet20.state_dict().items()}, str(weights))
    recipe = PruneRecipe(teacher_digest(resnet20, [weights]), {"stem.0": 0.5})
    assert recipe.teacher_sha256 != teacher_digest(resnet20)
    save_pruned(tmp_path / "student", apply_recipe(resnet20, recipe, X), recipe, X)
    assert _params(load_pruned(tmp_path / "student", resnet20, teacher_files=[weights])) < _params(resnet20)
    with pytest.raises(ModelError, match="has changed since"):
        load_pruned(tmp_path / "student", resnet20)  # the digest was of the file, not of the state_dict
    weights.write_bytes(weights.read_bytes() + b" ")
    with pytest.raises(ModelError, match="has changed since"):
        load_pruned(tmp_path / "student", resnet20, teacher_files=[weights])


def test_weights_that_do_not_fit_the_recipe_are_refused(resnet20, resnet20_groups, tmp_path):
    half = _recipe(resnet20, resnet20_groups, 0.5)
    save_pruned(tmp_path, apply_recipe(resnet20, _recipe(resnet20, resnet20_groups, 0.75), X), half, X)
    with pytest.raises(ModelError, match="does not fit") as error:
        load_pruned(tmp_path, resnet20)
    _one_line(error)


RESNET20_BLOCKS = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]


def test_removable_blocks_are_the_identity_shortcut_blocks(resnet20):
    assert removable_blocks(resnet20, X) == RESNET20_BLOCKS  # not a stage's first block (its shortcut projects)


def test_student_without_whole_blocks_round_trips(resnet20, resnet20_groups, tmp_path):
    keep = {g.name: 0.5 for g in resnet20_groups}  # layer1.1.conv1's group is gone with its block: no matter
    recipe = PruneRecipe(teacher_digest(resnet20), keep, remove=("layer1.1", "layer3.2"))
    student = apply_recipe(resnet20, recipe, X)
    assert isinstance(student.layer1[1], nn.Identity) and isinstance(student.layer3[2], nn.Identity)
    assert _params(student) < _params(apply_recipe(resnet20, PruneRecipe(recipe.teacher_sha256, keep), X))
    save_pruned(tmp_path, student, recipe, X)
    loaded = load_pruned(tmp_path, resnet20)
    batch = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(batch), student.eval()(batch))


def test_removing_what_is_not_a_residual_block_is_refused(resnet20):
    with pytest.raises(UsageError, match="layer2.0") as error:
        apply_recipe(resnet20, PruneRecipe(teacher_digest(resnet20), remove=("layer2.0",)), X)
    assert "layer1.0" in _one_line(error)  # the blocks it does have


def test_mbconv_student_prunes_with_its_forward_intact(trained_looking):
    space = load_space("mbconv")
    torch.manual_seed(0)
    teacher = trained_looking(space.build(space.sample(random.Random(0)), num_classes=10, in_channels=3))
    groups = prunable_groups(teacher, X)
    names = [g.name for g in groups]
    assert names[0] == "stem.0" and "head.0" in names and "classifier" not in names
    blocks = removable_blocks(teacher, X)
    assert blocks and all(b.startswith("stages.") and b.count(".") == 2 for b in blocks)  # inverted residuals
    student = apply_recipe(teacher, _recipe(teacher, groups, 0.5, "bn_scale"), X)
    assert _params(student) < 0.5 * _params(teacher)
    shallower = apply_recipe(teacher, PruneRecipe(teacher_digest(teacher), remove=tuple(blocks)), X)
    assert shallower(X).shape == (2, 10)
    with torch.no_grad():
        out = student(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


@pytest.fixture(scope="module")
def vit() -> ViT:
    torch.manual_seed(0)
    return ViT(patch_size=8, depth=2, heads=2, embed_dim=16, mlp_ratio=2.0).eval()


def test_vit_offers_only_its_mlp_groups(vit):
    # The token width cannot shrink (the position embedding is a bare parameter, attention reshapes by it),
    # nor can qkv (its reshape splits it by heads): only the MLPs' hidden widths can.
    groups = prunable_groups(vit, X)
    assert [(g.name, g.channels) for g in groups] == [("blocks.0.mlp.0", 32), ("blocks.1.mlp.0", 32)]
    student = apply_recipe(vit, _recipe(vit, groups, 0.25), X)
    assert student.blocks[0].mlp[0].out_features == 8 and student(X).shape == (2, 10)
    assert removable_blocks(vit, X) == ["blocks.0", "blocks.1"]  # x + attn(.), then + mlp(.): residual as a whole
    assert apply_recipe(vit, PruneRecipe(teacher_digest(vit), remove=("blocks.1",)), X)(X).shape == (2, 10)


@pytest.mark.parametrize("layer", ["patch_embed", "blocks.0.attn.qkv"])
def test_a_cut_torch_pruning_gets_wrong_is_one_line_naming_the_layer(vit, layer):
    with pytest.raises(ModelError) as error:
        apply_recipe(vit, PruneRecipe(teacher_digest(vit), {layer: 0.5}), X)
    message = _one_line(error)
    assert f"layer {layer}" in message and "keep that group whole" in message


class _LinearOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(3 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.flatten(1))


class _FunctionalConv(nn.Module):
    """A conv called as a function on a bare parameter, as a torch.export graph does."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.weight).mean((2, 3))


@pytest.mark.parametrize("teacher", [_LinearOnly, _FunctionalConv])
def test_a_teacher_with_no_prunable_group_is_refused(teacher):
    with pytest.raises(ModelError) as error:
        prunable_groups(teacher(), X)
    assert "Torch-Pruning" in _one_line(error)


def test_a_torchscript_teacher_is_refused_in_one_line(torchscript_teacher):
    _, path = torchscript_teacher()
    with pytest.raises(ModelError, match="TorchScript") as error:
        prunable_groups(torch.jit.load(path), torch.randn(2, 1, 28, 28))
    _one_line(error)


def test_recipe_round_trips_and_refuses_bad_values(resnet20, resnet20_groups):
    recipe = PruneRecipe(teacher_digest(resnet20), {g.name: 0.5 for g in resnet20_groups}, "bn_scale", ("layer1.2",))
    assert PruneRecipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    digest = recipe.teacher_sha256
    for bad in ({"teacher_sha256": digest, "keep": {"stem.0": 0}}, {"teacher_sha256": digest, "keep": {"stem.0": 1.5}},
                {"teacher_sha256": digest, "importance": "taylor"}, {"teacher_sha256": "abc"}, {"keep": {}},
                {"teacher_sha256": digest, "blocks": []}, {"teacher_sha256": digest, "remove_blocks": "layer1.0"},
                {"teacher_sha256": digest, "remove_blocks": ["layer1.0", "layer1.0"]}):
        with pytest.raises(ConfigError):
            PruneRecipe.from_dict(bad)
    with pytest.raises(UsageError, match="layer9.conv1") as error:
        apply_recipe(resnet20, PruneRecipe(digest, {"layer9.conv1": 0.5}), X)
    assert "stem.0" in _one_line(error)  # the groups it does have


def test_kept_channels_rounds_and_keeps_at_least_one():
    assert [kept_channels(16, k) for k in (1.0, 0.5, 0.26, 0.01)] == [16, 8, 4, 1]
    assert kept_channels(3, 0.5) == 2  # round half up, not to even
