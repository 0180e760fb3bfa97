"""Forms: the image size picks cifar or imagenet, the arch records it, and a saved arch rebuilds in it."""
from __future__ import annotations

import copy
import json
import random

import pytest

from kdsearch.arch import Arch, form_for_image_size
from kdsearch.errors import ConfigError, SpaceError
from kdsearch.spaces import load_space, space_from_config
from kdsearch.spaces.catalog import build_from_description

TINY = {
    "name": "tiny",
    "family": "resnet_cifar",
    "genes": {
        "depths": {"choices": [1, 2], "length": {"cifar": 3, "imagenet": 4}},
        "widths": {"cifar": {"choices": [8, 16], "length": 3}, "imagenet": {"choices": [16, 32], "length": 4}},
        "block": {"choices": ["basic"]},
    },
    "teacher": {"depths": {"cifar": [2, 2, 2], "imagenet": [2, 2, 2, 2]},
                "widths": {"cifar": [16, 16, 16], "imagenet": [32, 32, 32, 32]}, "block": "basic"},
}


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("size, form", [(28, "cifar"), ((32, 32), "cifar"), ((63, 500), "cifar"), (64, "imagenet"),
                                        ((224, 224), "imagenet"), ((96, 128), "imagenet")])
def test_the_shorter_side_picks_the_form(size, form):
    assert form_for_image_size(size) == form


def test_arch_json_round_trips_its_form():
    arch = Arch("mbconv", {"stem_width": 8}, "imagenet")
    data = json.loads(arch.to_json())
    assert data["form"] == "imagenet"
    back = Arch.from_json(arch.to_json())
    assert back == arch and back.form == "imagenet"
    assert back != Arch("mbconv", {"stem_width": 8})  # the form is part of the arch's identity (and key)


def test_an_arch_saved_before_forms_loads_as_cifar(tmp_path):
    old = {"space": "resnet_cifar", "genes": {"depths": [3, 3, 3], "widths": [16, 32, 64], "block": "basic"}}
    path = tmp_path / "winner.json"
    path.write_text(json.dumps({"arch": old, "val_acc": 0.9}))
    arch = Arch.load(path)
    assert arch.form == "cifar"
    assert arch.to_dict() == old  # written back byte-identical: same key, same seeded weights


def test_unknown_arch_form_is_refused():
    with pytest.raises(ConfigError, match="unknown arch form 'photo'.*cifar, imagenet"):
        Arch.from_dict({"space": "vit", "genes": {}, "form": "photo"})


def test_one_space_gives_each_form_its_own_ranges():
    space = space_from_config(copy.deepcopy(TINY), "tiny.yaml")
    small, large = space.sample(random.Random(0), 32), space.sample(random.Random(0), 224)
    assert small.form == "cifar" and len(small.genes["depths"]) == 3 and set(small.genes["widths"]) <= {8, 16}
    assert large.form == "imagenet" and len(large.genes["depths"]) == 4 and set(large.genes["widths"]) <= {16, 32}
    assert space.param_names(224)[-1] == "block" and "depth_3" in space.param_names(224)
    assert "depth_3" not in space.param_names(32)
    assert space.teacher(224).genes["depths"] == [2, 2, 2, 2] and space.teacher().form == "cifar"
    with pytest.raises(SpaceError, match="4 values but space 'tiny' has 3 positions"):  # imagenet genes, cifar form
        space.validate(Arch("tiny", large.genes, "cifar"))
    space.validate(small, 32)
    with pytest.raises(SpaceError, match=r"cifar form but space 'tiny' builds the imagenet form for \(224, 224\) px"):
        space.validate(small, (224, 224))  # e.g. a seed arch searched on CIFAR given to a 224 px search


def test_a_stated_form_holds_at_every_size():
    config = copy.deepcopy(TINY)
    config["form"] = "imagenet"
    space = space_from_config(config, "photos.yaml")
    assert space.sample(random.Random(0), 28).form == "imagenet"
    assert space.form_for() == "imagenet" and space.teacher().form == "imagenet"
    with pytest.raises(SpaceError, match="imagenet form only"):
        space.validate(space.sample(random.Random(0), 28).with_form("cifar"))


def test_the_builtin_yaml_rebuilt_with_a_stated_form():
    """``form: imagenet`` in a copy of the built-in mbconv YAML: 32 px inputs get the stride-2 stem too."""
    import yaml

    from kdsearch.spaces import builtin_space_dir

    config = yaml.safe_load((builtin_space_dir() / "mbconv.yaml").read_text())
    config["form"] = "imagenet"
    space = space_from_config(config, "mbconv_photos.yaml")
    arch = space.sample(random.Random(0), 32)
    assert arch.form == "imagenet" and arch.genes["strides"] == [2, 2, 2, 2]
    assert space.build(arch, 10, 3).feature_stride == 32


@pytest.mark.parametrize("form", ["photo", 3, "ImageNet"])
def test_a_bad_form_in_yaml_is_a_clear_error(form):
    config = copy.deepcopy(TINY)
    config["form"] = form
    with pytest.raises(SpaceError, match=r"bad.yaml: unknown form .*cifar, imagenet.*leave 'form' out") as info:
        space_from_config(config, "bad.yaml")
    assert "\n" not in str(info.value)


def test_a_per_form_value_missing_a_form_is_a_clear_error():
    config = copy.deepcopy(TINY)
    config["genes"]["widths"] = {"cifar": {"choices": [8], "length": 3}}
    with pytest.raises(SpaceError, match="genes.widths gives values for cifar but not for the imagenet form"):
        space_from_config(config, "half.yaml")
    config["form"] = "cifar"  # a space that states its form needs no other
    config["teacher"]["depths"] = [2, 2, 2]
    config["teacher"]["widths"] = [8, 8, 8]
    assert space_from_config(config, "half.yaml").form == "cifar"


@pytest.mark.parametrize("name", ["mbconv", "nb201", "resnet_cifar", "vit"])
def test_a_saved_imagenet_arch_rebuilds_identically(name):
    """model.json's description (arch JSON with its form) rebuilds the same network, weights aside."""
    space = load_space(name)
    arch = min((space.sample(random.Random(s), 224) for s in range(3)), key=lambda a: len(a.key))
    built = space.build(arch, num_classes=10, in_channels=3)
    description = json.loads(json.dumps({"arch": arch.to_dict(), "family": space.family}))
    rebuilt = build_from_description(description, num_classes=10, in_channels=3)
    assert type(rebuilt) is type(built) and _shapes(rebuilt) == _shapes(built)
    assert rebuilt.feature_stride == built.feature_stride >= 16
    cifar = space.build(arch.with_form("cifar"), num_classes=10, in_channels=3)
    # the form, not only the genes, decides the network (stem stride, stem layers, position grid)
    assert (cifar.feature_stride, _shapes(cifar)) != (built.feature_stride, _shapes(built))


def test_costs_are_counted_at_the_data_resolution():
    """FLOPs follow the input shape (the search passes the dataset's); at 224 px the ImageNet form of
    a sampled mbconv arch costs a small fraction of the CIFAR form the same genes would build."""
    import torch

    from kdsearch.proxies.cost import Flops, count_flops

    space = load_space("mbconv")
    arch = space.sample(random.Random(0), 224)
    model = space.build(arch, num_classes=10, in_channels=3)
    at_224 = count_flops(model, (3, 224, 224))
    assert at_224 > 10 * count_flops(model, (3, 64, 64)) > 0
    batch = (torch.zeros(2, 3, 224, 224), torch.zeros(2, dtype=torch.long))
    assert Flops()._score(model, batch, None) == at_224
    cifar_form = space.build(arch.with_form("cifar"), num_classes=10, in_channels=3)
    assert count_flops(cifar_form, (3, 224, 224)) > 3 * at_224
