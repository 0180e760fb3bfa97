"""A student of a user's space YAML loads back from what kdsearch saved, without that YAML."""
from __future__ import annotations

import random

import pytest
import torch

from kdsearch.arch import Arch
from kdsearch.errors import SpaceError
from kdsearch.spaces import load_space
from kdsearch.spaces.catalog import build_from_description, family_space
from kdsearch.spaces.model_files import load_model_dir, save_model_dir

TINY_RESNETS = """\
name: tiny_resnets
family: resnet_cifar
description: narrow CIFAR ResNets
genes:
  depths: {choices: [1, 2, 3], length: 3}
  widths: {choices: [8, 16, 24], length: 3}
  block: {choices: [basic]}
teacher: {depths: [3, 3, 3], widths: [16, 32, 64], block: basic}
"""


@pytest.fixture()
def user_space(tmp_path):
    path = tmp_path / "elsewhere" / "my_space.yaml"
    path.parent.mkdir()
    path.write_text(TINY_RESNETS)
    return path


def test_a_user_space_student_loads_back_after_its_yaml_is_gone(user_space, tmp_path):
    space = load_space(user_space)
    arch = Arch("tiny_resnets", {"depths": [1, 2, 1], "widths": [24, 8, 16], "block": "basic"})
    space.validate(arch)
    model = space.build(arch, num_classes=10, in_channels=1)
    save_model_dir(tmp_path / "student", model, num_classes=10, in_channels=1, arch=arch, space=space,
                   weights_name="student")
    user_space.unlink()  # moved, deleted, or never copied to this machine
    loaded, meta = load_model_dir(tmp_path / "student", weights_name="student")
    assert meta["space"] == space.definition and meta["family"] == "resnet_cifar"
    x = torch.randn(2, 1, 28, 28)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))


def test_the_saved_definition_rebuilds_the_same_space(user_space):
    space = load_space(user_space)
    again = build_from_description({"arch": space.sample(random.Random(0)).to_dict(), "space": space.definition},
                                   num_classes=10, in_channels=1)
    assert sum(p.numel() for p in again.parameters()) > 0
    from kdsearch.spaces.base import space_from_config

    copy = space_from_config(space.definition)
    assert copy.name == space.name and copy.param_names() == space.param_names() and copy.size() == space.size()


def test_a_definition_of_another_space_is_refused(user_space):
    space = load_space(user_space)
    other = Arch("resnet_cifar", {"depths": [1, 1, 1], "widths": [8, 8, 8], "block": "basic"})
    with pytest.raises(SpaceError, match="tiny_resnets"):
        build_from_description({"arch": other.to_dict(), "space": space.definition}, num_classes=10, in_channels=1)


def test_a_record_with_only_the_family_builds_through_that_family():
    """model.json files written before the definition was kept name the family alone."""
    arch = Arch("tiny_resnets", {"depths": [1, 2, 1], "widths": [24, 8, 16], "block": "basic"})
    space = family_space(arch, "resnet_cifar")
    assert space.name == "tiny_resnets" and space.family == "resnet_cifar"
    model = build_from_description({"arch": arch.to_dict(), "family": "resnet_cifar"}, num_classes=10, in_channels=1)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_an_unknown_space_without_family_names_what_to_give():
    arch = Arch("tiny_resnets", {"depths": [1, 2, 1], "widths": [24, 8, 16], "block": "basic"})
    with pytest.raises(SpaceError, match="YAML"):
        family_space(arch)


def test_distill_takes_a_user_space_student_without_a_run_directory_through_space(cli, fashion_npz, user_space,
                                                                                 tmp_path):
    arch = tmp_path / "arch.json"
    Arch("tiny_resnets", {"depths": [1, 1, 1], "widths": [8, 16, 24], "block": "basic"}, "cifar").save(arch)
    common = ["distill", "--teacher", "resnet8", "--student", str(arch), "--data", f"npz:{fashion_npz}",
              "--epochs", "1", "--batch-size", "32", "-q"]
    code, _, err = cli(*common, "--out", str(tmp_path / "without"))
    assert code == 2 and "--space FILE" in err and not (tmp_path / "without").exists()
    code, out, err = cli(*common, "--out", str(tmp_path / "with"), "--space", str(user_space))
    assert code == 0, err
    assert (tmp_path / "with" / "distill" / "student.safetensors").exists()
