"""Contract suite: every built-in search space goes through the same checks."""
from __future__ import annotations

import json
import random

import optuna
import pytest
import torch
import yaml

from kdsearch.arch import FORMS, Arch
from kdsearch.models.features import FeatureTap
from kdsearch.spaces import builtin_space_dir, builtin_space_names, load_space

N_ARCHS = 20
N_ARCHS_224 = 6  # ImageNet-form samples; only the smallest runs forward at 224 px
N_REAL_FORWARD = 2  # the smallest sampled archs run on real tensors in the fast suite; all of them under -m slow
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module", params=builtin_space_names())
def space(request):
    return load_space(request.param)


@pytest.fixture(scope="module")
def archs(space):
    rng = random.Random(0)
    return [space.sample(rng) for _ in range(N_ARCHS)]


@pytest.fixture(scope="module")
def archs_224(space):
    rng = random.Random(0)
    return [space.sample(rng, (224, 224)) for _ in range(N_ARCHS_224)]


def _raw_yaml(space) -> dict:
    return yaml.safe_load((builtin_space_dir() / f"{space.name}.yaml").read_text())


def _for_form(raw, form: str):
    """A YAML section with its per-form mappings ({cifar: ..., imagenet: ...}) resolved for ``form``."""
    if isinstance(raw, dict):
        if raw and set(raw) <= set(FORMS):
            return _for_form(raw[form], form)
        return {k: _for_form(v, form) for k, v in raw.items()}
    return raw


def _shapes(space, arch: Arch) -> dict[str, tuple[int, ...]]:
    # (the meta device would skip the weights but is slower: its init ops run Python decompositions)
    model = space.build(arch, num_classes=10, in_channels=3)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


_COUNTS: dict[str, int] = {}


def _param_count(space, arch: Arch) -> int:
    if arch.key not in _COUNTS:
        _COUNTS[arch.key] = sum(p.numel() for p in space.build(arch, num_classes=10, in_channels=3).parameters())
    return _COUNTS[arch.key]


def test_builtin_file_name_is_space_name(space):
    assert _raw_yaml(space)["name"] == space.name
    assert "\n" not in space.describe() and space.name in space.describe()


@pytest.mark.parametrize("side, form", [(28, "cifar"), (32, "cifar"), (64, "imagenet"), (224, "imagenet")])
def test_samples_validate_and_lie_in_yaml_ranges(space, side, form):
    genes_cfg = _for_form(_raw_yaml(space)["genes"], form)
    rng = random.Random(0)
    for arch in [space.sample(rng, (side, side)) for _ in range(N_ARCHS)]:
        space.validate(arch)
        assert arch.space == space.name and arch.form == form
        assert set(arch.genes) == set(genes_cfg)
        for name, cfg in genes_cfg.items():
            value = arch.genes[name]
            if "value" in cfg:
                assert value == cfg["value"]
            elif "length" in cfg:
                assert isinstance(value, list) and len(value) == cfg["length"]
                assert all(v in cfg["choices"] for v in value)
            else:
                assert value in cfg["choices"]


def test_sample_is_deterministic_per_seed(space):
    first = [space.sample(random.Random(7)) for _ in range(3)]
    again = [space.sample(random.Random(7)) for _ in range(3)]
    assert first == again
    rng_a, rng_b = random.Random(1), random.Random(2)
    assert [space.sample(rng_a) for _ in range(5)] != [space.sample(rng_b) for _ in range(5)]


def test_sampling_without_a_size_gives_the_cifar_form(space, archs):
    assert space.form_for() == "cifar" and space.form_for((63, 224)) == "cifar"
    assert all(a.form == "cifar" and "form" not in a.to_dict() for a in archs)
    assert space.sample(random.Random(0)) == space.sample(random.Random(0), (32, 32))


def test_json_round_trip_rebuilds_same_shapes(space, archs, archs_224):
    for arch in [*archs[:10], *archs_224]:
        back = Arch.from_dict(json.loads(json.dumps(arch.to_dict())))
        assert back == arch and back.key == arch.key and back.form == arch.form
        assert _shapes(space, back) == _shapes(space, arch)


def _final_map(model, side: int) -> torch.Tensor:
    model.eval()
    with torch.no_grad(), FeatureTap(model, [model.feature_path]) as tap:
        model(torch.zeros(1, 3, side, side))
    return tap[model.feature_path]


def test_cifar_form_keeps_small_images_resolution(space, archs):
    """At 32 px the CNN stems keep the resolution: total stride 4 (8x8 maps), ViT its patch."""
    arch = min(archs, key=lambda a: _param_count(space, a))
    model = space.build(arch, num_classes=10, in_channels=3)
    expected = arch.genes["patch_size"] if space.family == "vit" else 4
    assert model.feature_stride == expected
    assert _final_map(model, 32).shape[-2:] == (32 // expected, 32 // expected)


def test_imagenet_form_ends_at_stride_32_at_224(space, archs_224):
    """At 224 px a CNN ends on 7x7 (total stride 32); a ViT on 224/patch tokens a side (14 or 7)."""
    arch = min(archs_224, key=lambda a: _param_count(space, a))
    model = space.build(arch, num_classes=10, in_channels=3)
    if space.family == "vit":
        assert model.feature_stride == arch.genes["patch_size"] in (16, 32)
    else:
        assert model.feature_stride == 32
    side = 224 // model.feature_stride
    assert _final_map(model, 224).shape[-2:] == (side, side)


def test_imagenet_teacher_is_a_member_in_its_form(space):
    teacher = space.teacher(224)
    assert teacher.form == "imagenet" and space.teacher(32).form == "cifar"
    space.validate(teacher)


def _check_forward(space, arch: Arch) -> None:
    for shape, classes in (((2, 1, 28, 28), 10), ((2, 3, 32, 32), 7)):
        torch.manual_seed(0)
        model = space.build(arch, num_classes=classes, in_channels=shape[1])
        x = torch.randn(*shape)
        with torch.no_grad(), FeatureTap(model, [model.feature_path, *model.stage_paths]) as tap:
            logits = model(x)
        assert logits.shape == (2, classes)
        assert torch.isfinite(logits).all()
        feature = tap[model.feature_path]
        assert feature.dim() == 4 and feature.shape[0] == 2
        for path in model.stage_paths:
            assert tap[path].dim() == 4
        # ImageClassifier.forward = classifier(mean over the final map)
        pooled = feature.mean(dim=(2, 3))
        torch.testing.assert_close(model.classifier(pooled), logits, rtol=1e-4, atol=1e-5)


def test_forward_smallest_samples(space, archs):
    smallest = sorted(archs, key=lambda a: _param_count(space, a))[:N_REAL_FORWARD]
    for arch in smallest:
        _check_forward(space, arch)


@pytest.mark.slow
def test_forward_all_samples(space, archs):
    for arch in archs:
        _check_forward(space, arch)


def test_teacher_is_a_large_member(space, archs):
    teacher = space.teacher()
    space.validate(teacher)  # built-in teachers lie inside their space
    counts = sorted(_param_count(space, a) for a in archs)
    assert _param_count(space, teacher) >= counts[len(counts) // 2]


@pytest.mark.parametrize("side", [None, 224])
def test_suggest_through_optuna(space, side):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    names = set(space.param_names(None if side is None else (side, side)))
    seen = []
    for _ in range(6):
        trial = study.ask()
        arch = space.suggest(trial, None if side is None else (side, side))
        assert arch.form == ("cifar" if side is None else "imagenet")
        space.validate(arch)
        assert set(trial.params) == names  # flat and fixed-length: NSGA-II's intersection space is all of it
        assert space.params(arch) == trial.params
        study.tell(trial, 0.0)
        seen.append(arch)
    assert len(set(seen)) > 1


@pytest.mark.parametrize("size", [None, (224, 224)])
def test_params_seed_a_study(space, size):
    arch = space.sample(random.Random(3), size)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.enqueue_trial(space.params(arch))
    trial = study.ask()
    assert space.suggest(trial, size) == arch
