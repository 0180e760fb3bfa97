"""Space YAML validation: every malformed file fails with one SpaceError that names the problem."""
from __future__ import annotations

import copy

import pytest

from kdsearch.arch import Arch
from kdsearch.errors import ModelError, SpaceError
from kdsearch.spaces import space_from_config

RESNET = {
    "name": "tiny",
    "family": "resnet_cifar",
    "description": "test space",
    "genes": {
        "depths": {"choices": [1, 2], "length": 3},
        "widths": {"choices": [8, 16], "length": 3},
        "block": {"choices": ["basic"]},
    },
    "teacher": {"depths": [2, 2, 2], "widths": [16, 16, 16], "block": "basic"},
}
MBCONV = {
    "name": "mb",
    "family": "mbconv",
    "genes": {
        "stem_width": {"choices": [8]},
        "depths": {"choices": [1], "length": 2},
        "widths": {"choices": [8, 16], "length": 2},
        "kernels": {"choices": [3, 5], "length": 2},
        "expansions": {"choices": [1, 6], "length": 2},
        "se": {"choices": [False, True], "length": 2},
        "strides": {"value": [1, 2]},
        "head_width": {"value": 0},
    },
    "teacher": {"stem_width": 8, "depths": [1, 1], "widths": [16, 16], "kernels": [5, 5],
                "expansions": [6, 6], "se": [True, True]},
}
VIT = {
    "name": "v",
    "family": "vit",
    "genes": {
        "patch_size": {"choices": [4]},
        "depth": {"choices": [1, 2]},
        "heads": {"choices": [1, 2]},
        "embed_dim": {"choices": [16, 32]},
        "mlp_ratio": {"choices": [2.0]},
    },
    "teacher": {"patch_size": 4, "depth": 2, "heads": 2, "embed_dim": 32, "mlp_ratio": 2.0},
}


def _set(cfg: dict, path: tuple, value) -> dict:
    cfg = copy.deepcopy(cfg)
    node = cfg
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return cfg


_DELETE = object()

CASES = [
    # (base, path, new value, words the message must contain)
    (RESNET, ("colour",), "red", ["unknown top-level key", "colour", "allowed"]),
    (RESNET, ("teacher",), _DELETE, ["missing key", "teacher"]),
    (RESNET, ("genes",), _DELETE, ["missing key", "genes"]),
    (RESNET, ("family",), "resnet_imagenet", ["unknown family", "resnet_imagenet", "resnet_cifar"]),
    (RESNET, ("name",), "two words", ["'name' must be"]),
    (RESNET, ("genes", "colour"), {"choices": [1]}, ["unknown gene", "colour", "depths"]),
    (RESNET, ("genes", "block"), _DELETE, ["missing gene", "block", "{value: ...}"]),
    (RESNET, ("genes", "depths", "choice"), [1], ["unknown key", "choice", "depths"]),
    (RESNET, ("genes", "depths", "choices"), [], ["depths", "non-empty list"]),
    (RESNET, ("genes", "depths", "choices"), 3, ["depths", "non-empty list"]),
    (RESNET, ("genes", "widths", "choices"), [8, "16"], ["widths", "'16' is not an integer", "integers >= 1"]),
    (RESNET, ("genes", "widths", "choices"), [8, True], ["widths", "True is not an integer"]),
    (RESNET, ("genes", "depths", "choices"), [0, 1], ["depths", "below the minimum 1"]),
    (RESNET, ("genes", "block", "choices"), ["wide"], ["block", "'wide' is not one of basic, bottleneck"]),
    (RESNET, ("genes", "depths", "length"), _DELETE, ["depths", "add 'length'"]),
    (RESNET, ("genes", "depths", "length"), 4, ["same length", "depths: 4, widths: 3"]),
    (RESNET, ("genes", "depths", "length"), 0, ["depths", "positive integer"]),
    (RESNET, ("genes", "block", "length"), 2, ["block", "remove 'length'"]),
    (RESNET, ("genes", "block", "value"), "basic", ["block", "exactly one of 'choices'"]),
    (RESNET, ("genes", "widths", "choices"), [8, 16, 8], ["widths", "listed twice"]),
    (RESNET, ("genes", "depths"), [1, 2], ["depths", "must be a mapping"]),
    (RESNET, ("teacher", "depths"), [2, 2], ["teacher", "same length", "depths: 2, widths: 3"]),
    (RESNET, ("teacher", "colour"), 1, ["teacher", "unknown gene", "colour"]),
    (RESNET, ("teacher",), [1, 2], ["'teacher' must be a mapping"]),
    (MBCONV, ("genes", "kernels", "choices"), [3, 9], ["kernels", "9 is not one of 3, 5, 7"]),
    (MBCONV, ("genes", "widths", "length"), 3, ["same length", "widths: 3"]),
    (MBCONV, ("genes", "strides", "value"), [1, 2, 2], ["same length", "strides: 3"]),
    (MBCONV, ("genes", "se", "choices"), [0, 1], ["se", "0 is not true or false"]),
    (MBCONV, ("teacher", "widths"), [16, 16, 16], ["teacher", "same length"]),
    (VIT, ("genes", "heads", "choices"), [1, 3], ["embed_dim 16 is not divisible by heads 3", "multiple"]),
    (VIT, ("genes", "patch_size", "choices"), [4, 64], ["patch_size", "above the maximum 32"]),
    (VIT, ("teacher", "heads"), 5, ["teacher", "embed_dim 32 is not divisible by heads 5"]),
]


@pytest.mark.parametrize("base, path, value, words", CASES, ids=[f"{c[0]['family']}:{'.'.join(c[1])}" for c in CASES])
def test_bad_config_is_a_clear_space_error(base, path, value, words):
    with pytest.raises(SpaceError) as info:
        space_from_config(_set(base, path, value), "test.yaml")
    message = str(info.value)
    assert "test.yaml" in message or "unknown family" in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_not_a_mapping():
    with pytest.raises(SpaceError, match="must hold a mapping"):
        space_from_config(["name", "x"], "list.yaml")


@pytest.mark.parametrize("base", [RESNET, MBCONV, VIT], ids=lambda c: c["family"])
def test_valid_configs_load(base):
    space = space_from_config(copy.deepcopy(base), "ok.yaml")
    assert space.family == base["family"] and space.name == base["name"]
    space.validate(space.teacher())


def test_fixed_genes_are_filled_into_teacher_and_have_no_params():
    space = space_from_config(copy.deepcopy(MBCONV), "mb.yaml")
    assert space.teacher().genes["strides"] == [1, 2] and space.teacher().genes["head_width"] == 0
    assert not any(p.startswith(("stride", "head_width")) for p in space.param_names())
    assert space.param_names()[:3] == ["stem_width", "depth_0", "depth_1"]


def test_size_counts_every_combination():
    space = space_from_config(copy.deepcopy(RESNET), "tiny.yaml")
    assert space.size() == 2**3 * 2**3 * 1
    space = space_from_config(copy.deepcopy(MBCONV), "mb.yaml")
    assert space.size() == 1 * 1 * 2**2 * 2**2 * 2**2 * 2**2


@pytest.fixture
def tiny():
    return space_from_config(copy.deepcopy(RESNET), "tiny.yaml")


@pytest.mark.parametrize(
    "genes, words",
    [
        ({"depths": [1, 3, 1], "widths": [8, 8, 8], "block": "basic"}, ["depths[1] = 3", "outside space 'tiny'", "1, 2"]),
        ({"depths": [1, 1, 1], "widths": [8, 8, 8], "block": "bottleneck"}, ["block = 'bottleneck'", "'basic'"]),
        ({"depths": [1, 1], "widths": [8, 8, 8], "block": "basic"}, ["same length", "depths: 2, widths: 3"]),
        ({"depths": [1, 1], "widths": [8, 8], "block": "basic"}, ["depths", "2 values", "3 positions"]),
        ({"depths": [1, 1, 1], "widths": [8, 8, 8]}, ["missing gene", "block"]),
        ({"depths": [1, 1, 1], "widths": [8, 8, 8], "block": "basic", "x": 1}, ["unknown gene", "x"]),
        ({"depths": [1, 1, 1], "widths": [8, 8.5, 8], "block": "basic"}, ["widths[1]", "8.5 is not an integer"]),
    ],
)
def test_arch_outside_space(tiny, genes, words):
    with pytest.raises(SpaceError) as info:
        tiny.validate(Arch("tiny", genes))
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_arch_of_another_space(tiny):
    with pytest.raises(SpaceError, match="belongs to space 'other'"):
        tiny.validate(Arch("other", {"depths": [1, 1, 1], "widths": [8, 8, 8], "block": "basic"}))
    with pytest.raises(SpaceError, match="belongs to space 'other'"):
        tiny.params(Arch("other", {"depths": [1, 1, 1], "widths": [8, 8, 8], "block": "basic"}))


def test_build_checks_the_family_not_the_ranges(tiny):
    big = Arch("tiny", {"depths": [3, 1, 1], "widths": [24, 8, 8], "block": "basic"})  # outside the ranges
    model = tiny.build(big, num_classes=5, in_channels=1)
    assert len(model.layer1) == 3
    with pytest.raises(SpaceError, match="not one of basic, bottleneck"):
        tiny.build(Arch("tiny", {"depths": [1, 1, 1], "widths": [8, 8, 8], "block": "wide"}), 5, 1)
    with pytest.raises(ModelError, match="num_classes"):
        tiny.build(big, num_classes=0, in_channels=1)
