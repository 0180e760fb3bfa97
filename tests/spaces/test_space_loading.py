"""Loading spaces: built-in names, user YAML files, the space of an arch."""
from __future__ import annotations

import random

import pytest
import torch

from kdsearch.arch import Arch
from kdsearch.errors import SpaceError
from kdsearch.models import MODELS, create_model, model_arch
from kdsearch.spaces import SPACES, builtin_space_names, load_space, space_for_arch

USER_YAML = """\
name: my_resnets
family: resnet_cifar
description: tiny residual nets with either block
genes:
  depths: {choices: [1, 2], length: 3}
  widths: {choices: [4, 8], length: 3}
  block: {choices: [basic, bottleneck]}
teacher: {depths: [2, 2, 2], widths: [8, 8, 8], block: bottleneck}
"""


def test_builtins_cover_every_family():
    names = builtin_space_names()
    assert {"resnet_cifar", "mbconv", "nb201", "vit"} <= set(names)
    # but pruned, whose space is made from the teacher at search start (tests/pipeline/test_pruned_space.py)
    assert {load_space(n).family for n in names} == set(SPACES.names()) - {"pruned"}


def test_user_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(USER_YAML)
    space = load_space(str(path))
    assert space.name == "my_resnets" and space.size() == 2**3 * 2**3 * 2
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(12)]
    assert {a.genes["block"] for a in archs} == {"basic", "bottleneck"}
    arch = next(a for a in archs if a.genes["block"] == "bottleneck")
    model = space.build(arch, num_classes=4, in_channels=1)
    assert model.classifier.in_features == 4 * arch.genes["widths"][2]  # bottleneck expansion 4
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 4)
    assert space_for_arch(arch, spec=path).name == "my_resnets"
    with pytest.raises(SpaceError, match="pass the YAML"):
        space_for_arch(arch)


@pytest.mark.parametrize(
    "spec, words",
    [
        ("resnet_imagenet", ["unknown search space", "resnet_cifar", "path"]),
        ("no/such/file.yaml", ["does not exist"]),
        ("missing.yaml", ["does not exist"]),
    ],
)
def test_bad_specs(spec, words):
    with pytest.raises(SpaceError) as info:
        load_space(spec)
    for word in words:
        assert word in str(info.value)


def test_invalid_yaml_syntax(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(path)


def test_yaml_tags_are_not_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(path)


def test_space_for_arch_finds_builtins_by_name_and_family():
    assert space_for_arch(Arch("nb201", {"ops": ["none"] * 6, "cells": 5, "channels": 16})).name == "nb201"
    with pytest.raises(SpaceError, match="defines 'vit'"):
        space_for_arch(Arch("nb201", {"ops": ["none"] * 6, "cells": 5, "channels": 16}), spec="vit")


def test_model_arch_of_resnet20():
    assert model_arch("resnet20") == Arch(
        "resnet_cifar", {"depths": [3, 3, 3], "widths": [16, 32, 64], "block": "basic"}
    )


@pytest.mark.parametrize("name", MODELS.names())
def test_zoo_models_rebuild_from_their_arch(name):
    arch = model_arch(name)
    assert arch is not None
    space = space_for_arch(arch)
    torch.manual_seed(0)
    from_space = space.build(arch, num_classes=10, in_channels=3)
    torch.manual_seed(0)
    from_zoo = create_model(name, num_classes=10, in_channels=3)
    a, b = from_space.state_dict(), from_zoo.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key  # same seed, same construction order: same weights
