"""Small inputs keep the CIFAR form exactly: these numbers were measured before the ImageNet form existed.

Each row pins the parameter count, the FLOPs at that resolution and the sum of absolute
initial weights (same seed, same modules in the same order) of a zoo model or of the first
arch ``sample(random.Random(0))`` draws from a built-in space, so a change to the small-image
networks, to sampling or to arch keys (which seed a candidate's weights) fails here.
"""
from __future__ import annotations

import random

import pytest
import torch

from kdsearch.models.zoo import create_model
from kdsearch.proxies.cost import count_flops, count_params
from kdsearch.spaces import load_space
from kdsearch.spaces.candidates import build_candidate

# name, side, in_channels, params, FLOPs, sum |w| at init
ZOO_PINS = [
    ("resnet20", 28, 1, 272186, 62043904, 15425.783646),
    ("resnet20", 32, 3, 272474, 81626368, 15448.950251),
    ("mobilenetv2", 28, 1, 2236106, 145877248, 152767.647754),
    ("mobilenetv2", 32, 3, 2236682, 175952896, 152823.490348),
    ("nb201_default", 28, 1, 1288218, 282416896, 33541.721264),
    ("nb201_default", 32, 3, 1288506, 369460480, 33556.940122),
    ("vit_tiny", 28, 1, 1800010, 173713152, 31366.09045),
    ("vit_tiny", 32, 3, 1806154, 227675904, 31637.125524),
]

# space, side, in_channels, params, FLOPs, sum |w| at init (build_candidate, seed 0), arch key
SPACE_PINS = [
    ("mbconv", 28, 1, 437786, 97111312, 42869.086082,
     '{"genes":{"depths":[4,1,3,4],"expansions":[3,4,3,1],"head_width":512,"kernels":[5,5,7,3],'
     '"se":[true,false,true,false],"stem_width":32,"strides":[1,2,2,1],"widths":[32,96,96,24]},"space":"mbconv"}'),
    ("mbconv", 32, 3, 438362, 127928320, 42932.69968, None),
    ("nb201", 28, 1, 830138, 180057856, 23529.440192,
     '{"genes":{"cells":5,"channels":16,"ops":["nor_conv_3x3","nor_conv_3x3","none","nor_conv_1x1",'
     '"avg_pool_3x3","nor_conv_3x3"]},"space":"nb201"}'),
    ("nb201", 32, 3, 830426, 235767040, 23552.475, None),
    ("resnet_cifar", 28, 1, 2299370, 990425984, 85571.969742,
     '{"genes":{"block":"basic","depths":[7,7,1],"widths":[32,128,96]},"space":"resnet_cifar"}'),
    ("resnet_cifar", 32, 3, 2299946, 1294796672, 85613.159504, None),
    ("vit", 28, 1, 1016218, 97770816, 17637.329998,
     '{"genes":{"depth":4,"embed_dim":144,"heads":1,"mlp_ratio":4.0,"patch_size":4},"space":"vit"}'),
    ("vit", 32, 3, 1020826, 128289600, 17850.38975, None),
]


def _weight_sum(model: torch.nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in model.parameters()))


@pytest.mark.parametrize("name, side, channels, params, flops, weight_sum", ZOO_PINS)
def test_zoo_model_at_small_size_is_unchanged(name, side, channels, params, flops, weight_sum):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=channels)
    assert count_params(model) == params
    assert count_flops(model, (channels, side, side)) == flops
    assert _weight_sum(model) == pytest.approx(weight_sum, rel=1e-7)


@pytest.mark.parametrize("space_name, side, channels, params, flops, weight_sum, key", SPACE_PINS)
def test_sampled_arch_at_small_size_is_unchanged(space_name, side, channels, params, flops, weight_sum, key):
    space = load_space(space_name)
    arch = space.sample(random.Random(0))
    if key is not None:
        assert arch.key == key
    model = build_candidate(space, arch, 10, channels, seed=0)
    assert count_params(model) == params
    assert count_flops(model, (channels, side, side)) == flops
    assert _weight_sum(model) == pytest.approx(weight_sum, rel=1e-7)
