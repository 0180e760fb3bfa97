"""The model zoo: sizes against published figures, shapes, and where features are read."""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from kdsearch.errors import ModelError, UsageError
from kdsearch.models import MODELS, FeatureTap, ImageClassifier, create_model, locate_parts, model_arch
from kdsearch.models.features import get_module
from kdsearch.models.inherit import inheritance_problem
from kdsearch.spaces import load_space

HEAVY = {"resnet110", "resnet56", "resnet44", "resnet18"}  # shape checks at two sizes cost seconds on two cores


def _small_side(name: str) -> int:
    """A small input side the model is meant for: 28 px, or 64 px for an ImageNet-form model."""
    arch = model_arch(name)
    return 64 if arch is not None and arch.form == "imagenet" else 28


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resnet_cifar_params(depth: int, num_classes: int = 10, in_channels: int = 3) -> int:
    """He et al. (2016) CIFAR ResNet-(6n+2) with 1x1 projection shortcuts, counted by hand."""
    n = (depth - 2) // 6
    conv_bn = lambda k, ci, co: k * k * ci * co + 2 * co  # noqa: E731
    total = conv_bn(3, in_channels, 16)
    c = 16
    for w in (16, 32, 64):
        for j in range(n):
            total += conv_bn(3, c, w) + conv_bn(3, w, w)
            if c != w:
                total += conv_bn(1, c, w)
            c = w
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize("depth", [8, 14, 20, 32, 44, 56, 110])
def test_resnet_param_counts_match_hand_count(depth):
    assert n_params(create_model(f"resnet{depth}", 10, 3)) == resnet_cifar_params(depth)


@pytest.mark.parametrize("depth, published", [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6), (110, 1.7e6)])
def test_resnet_sizes_match_the_paper(depth, published):
    """He et al. (2016), Table 6 (the paper's option-A shortcuts differ by < 2%)."""
    assert abs(n_params(create_model(f"resnet{depth}", 10, 3)) / published - 1) < 0.02


def test_mobilenetv2_matches_torchvision_count():
    # torchvision.models.mobilenet_v2(): 3,504,872 parameters (1000 classes); the CIFAR strides keep it.
    assert n_params(create_model("mobilenetv2", num_classes=1000, in_channels=3)) == 3_504_872
    assert n_params(create_model("mobilenetv2", 10, 3)) == 3_504_872 - 1281 * 990


def test_mbconv_space_students_inherit_from_mbconv4_not_from_mobilenetv2():
    """mobilenetv2's seven stages fit no student of the four-stage mbconv space; mbconv4 is one of its members."""
    space = load_space("mbconv")
    arch = model_arch("mbconv4")
    assert arch is not None and arch.space == "mbconv"
    assert n_params(space.build(arch, num_classes=10, in_channels=1)) == n_params(create_model("mbconv4", 10, 1))
    rng = random.Random(0)
    for _ in range(3):
        student = space.build(space.sample(rng, (28, 28)), num_classes=10, in_channels=1)
        assert "stages" in inheritance_problem("mbconv", create_model("mobilenetv2", 10, 1), student)
        assert inheritance_problem("mbconv", create_model("mbconv4", 10, 1), student) is None


@pytest.mark.parametrize("name", MODELS.names())
def test_zoo_model_shapes_and_parts(name):
    torch.manual_seed(0)
    sizes = [(1, 28, 5), (3, 32, 10)]
    if name in HEAVY:
        sizes = sizes[:1]
    for in_channels, size, classes in sizes:
        model = create_model(name, num_classes=classes, in_channels=in_channels)
        assert isinstance(model, ImageClassifier)
        assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == classes
        x = torch.randn(2, in_channels, size, size)
        model.eval()
        with torch.no_grad(), FeatureTap(model, [model.feature_path, *model.stage_paths]) as tap:
            logits = model(x)
        assert logits.shape == (2, classes)
        feature = tap[model.feature_path]
        assert feature.dim() == 4 and feature.shape[:2] == (2, model.classifier.in_features)
        assert all(tap[p].dim() == 4 for p in model.stage_paths)
        torch.testing.assert_close(model.classifier(feature.mean(dim=(2, 3))), logits, rtol=1e-4, atol=1e-5)


class _Wrapped(nn.Module):
    """Hides the declared paths so locate_parts must discover them from one forward pass."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("name", MODELS.names())
def test_locate_parts_agrees_with_declared_paths(name):
    model = create_model(name, num_classes=10, in_channels=1)
    side = _small_side(name)
    x = torch.randn(2, 1, side, side)
    declared = locate_parts(model, x)
    assert (declared.feature, declared.classifier) == (model.feature_path, "classifier")
    found = locate_parts(_Wrapped(model), x)
    assert found.feature == f"net.{model.feature_path}"
    assert found.classifier == "net.classifier"
    assert isinstance(get_module(model, model.feature_path), nn.Module)


def test_model_arch_and_errors():
    assert model_arch("resnet56").genes == {"depths": [9, 9, 9], "widths": [16, 32, 64], "block": "basic"}
    assert model_arch("nb201_default").space == "nb201"
    with pytest.raises(UsageError, match="resnet20"):
        create_model("resnet21")
    with pytest.raises(UsageError, match="Known"):
        model_arch("alexnet")
    with pytest.raises(ModelError, match="num_classes"):
        create_model("resnet8", num_classes=0)
    with pytest.raises(ModelError, match="in_channels"):
        create_model("resnet8", in_channels=0)


def test_resnet18_is_the_imagenet_form_of_resnet_cifar():
    """The benchmarks' teacher: ResNet-18 (11,689,512 parameters for 1000 classes), 7x7 at 224 px,
    recorded as an imagenet-form arch of the built-in resnet_cifar space so it rebuilds by arch."""
    from kdsearch.spaces import load_space

    model = create_model("resnet18", num_classes=1000, in_channels=3)
    assert n_params(model) == 11_689_512
    arch = model_arch("resnet18")
    assert arch.form == "imagenet" and arch.genes["depths"] == [2, 2, 2, 2]
    space = load_space(arch.space)
    space.validate(arch)  # inside the built-in space's ImageNet ranges
    rebuilt = space.build(arch, num_classes=1000, in_channels=3)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad(), FeatureTap(model, [model.feature_path]) as tap:
        model(torch.zeros(1, 3, 224, 224))
    assert tap[model.feature_path].shape == (1, 512, 7, 7)
