"""The model families against hand counts and hand computations, in both forms."""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from kdsearch.models import FeatureTap
from kdsearch.models.mbconv import InvertedResidual, MBConvNet, mobilenetv2_genes
from kdsearch.models.nb201 import NB201Net
from kdsearch.models.resnet_cifar import ResNetCifar
from kdsearch.models.vit import ViT
from kdsearch.spaces import load_space


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("c_in, c_out, k, t, se", [(8, 8, 3, 1, False), (8, 16, 5, 6, True), (16, 16, 7, 3, True)])
def test_inverted_residual_param_count(c_in, c_out, k, t, se):
    h = c_in * t
    expected = (c_in * h + 2 * h if t != 1 else 0) + (k * k * h + 2 * h) + (h * c_out + 2 * c_out)
    if se:
        r = max(8, h // 4)
        expected += h * r + r + r * h + h
    assert n_params(InvertedResidual(c_in, c_out, 1, k, t, se)) == expected


def test_inverted_residual_uses_residual_only_when_shape_is_kept():
    x = torch.randn(2, 8, 8, 8)
    block = InvertedResidual(8, 8, 1, 3, 1, False)
    torch.testing.assert_close(block(x), x + block.conv(x))
    for c_out, stride in ((16, 1), (8, 2)):
        block = InvertedResidual(8, c_out, stride, 3, 4, False)
        torch.testing.assert_close(block(x), block.conv(x))


def test_mbconv_without_head_reads_the_last_stage():
    net = MBConvNet(8, [1, 1], [8, 12], [3, 5], [1, 6], [False, True], [1, 2], head_width=0, num_classes=3, in_channels=1)
    assert net.feature_path == "stages.1" and net.classifier.in_features == 12
    with FeatureTap(net, [net.feature_path]) as tap:
        out = net(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 3) and tap[net.feature_path].shape == (2, 12, 14, 14)


def vit_params(in_ch: int, p: int, depth: int, d: int, r: float, k: int, grid: int) -> int:
    hidden = int(round(d * r))
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * hidden + hidden + hidden * d + d)
    return (in_ch * p * p * d + d) + d * grid * grid + depth * block + 2 * d + (d * k + k)


def test_vit_param_count():
    model = ViT(patch_size=4, depth=3, heads=2, embed_dim=32, mlp_ratio=2.0, num_classes=7, in_channels=1)
    assert n_params(model) == vit_params(1, 4, 3, 32, 2.0, 7, grid=8)


@pytest.mark.parametrize("size, grid", [(32, 8), (28, 7), (36, 9)])
def test_vit_map_is_the_final_tokens_laid_out_row_major(size, grid):
    torch.manual_seed(0)
    model = ViT(patch_size=4, depth=3, heads=2, embed_dim=16, mlp_ratio=2.0, num_classes=5, in_channels=3).eval()
    with torch.no_grad(), FeatureTap(model, ["norm", "to_map", *model.stage_paths]) as tap:
        logits = model(torch.randn(2, 3, size, size))
    tokens, fmap = tap["norm"], tap["to_map"]  # (B, N, D), (B, D, h, w)
    assert tokens.shape == (2, grid * grid, 16) and fmap.shape == (2, 16, grid, grid)
    assert torch.equal(fmap[:, :, 2, 3], tokens[:, 2 * grid + 3, :])
    torch.testing.assert_close(logits, model.classifier(tokens.mean(dim=1)), rtol=1e-4, atol=1e-5)
    assert model.stage_paths == ("stage_taps.0", "stage_taps.1", "to_map")
    assert all(tap[p].shape == (2, 16, grid, grid) for p in model.stage_paths)


def test_vit_position_embedding_is_interpolated_not_resized():
    model = ViT(patch_size=4, depth=1, heads=1, embed_dim=8, num_classes=2, in_channels=1, image_size=32)
    assert model.pos_embed.shape == (1, 8, 8, 8)
    with torch.no_grad():
        model.pos_embed.fill_(0.5)  # a constant embedding interpolates to the same constant
        model.patch_embed.weight.zero_()
        model.patch_embed.bias.zero_()
    with FeatureTap(model, ["blocks.0.norm1"]) as tap:
        model(torch.randn(1, 1, 28, 28))
    tokens_in = tap.inputs["blocks.0.norm1"]  # (1, 49, 8): patch (0) + position
    torch.testing.assert_close(tokens_in, torch.full((1, 49, 8), 0.5))


# -- forms: the same genes as a CIFAR network (under 64 px) or an ImageNet one ----------------------------


def test_mbconv_imagenet_form_only_strides_the_stem():
    genes = dict(stem_width=8, depths=[1, 1], widths=[8, 16], kernels=[3, 3], expansions=[1, 6], se=[False, False],
                 strides=[2, 2])
    cifar, imagenet = MBConvNet(**genes), MBConvNet(**genes, form="imagenet")
    assert n_params(cifar) == n_params(imagenet)
    assert (cifar.feature_stride, imagenet.feature_stride) == (4, 8)
    assert imagenet.forward_features(torch.zeros(1, 3, 64, 64)).shape[-2:] == (8, 8)


def test_mobilenetv2_imagenet_table_is_torchvisions():
    """The ImageNet table with the stride-2 stem: 3,504,872 parameters and a 7x7 map at 224 px."""
    net = MBConvNet(**mobilenetv2_genes("imagenet"), num_classes=1000, form="imagenet")
    assert n_params(net) == 3_504_872 and net.feature_stride == 32
    assert mobilenetv2_genes("imagenet")["strides"] == [1, 2, 2, 2, 1, 2, 1]


def test_a_default_sampled_mbconv_student_trains_at_224_px():
    """One forward and backward at batch 8: the ImageNet form keeps 224 px activations small."""
    space = load_space("mbconv")
    arch = space.sample(random.Random(0), (224, 224))
    torch.manual_seed(0)
    model = space.build(arch, num_classes=10, in_channels=3).train()
    x = torch.randn(8, 3, 224, 224)
    loss = nn.functional.cross_entropy(model(x), torch.arange(8) % 10)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad(), FeatureTap(model, [model.stage_paths[0], model.feature_path]) as tap:
        model.eval()(x[:1])
    assert tap[model.stage_paths[0]].shape[-2:] == (56, 56)  # the CIFAR form kept 224x224 here
    assert tap[model.feature_path].shape[-2:] == (7, 7)


def test_resnet18_layout_has_torchvisions_parameters():
    """He et al. (2016) Table 1 ResNet-18: 11,689,512 parameters for 1000 classes (torchvision's count)."""
    net = ResNetCifar([2, 2, 2, 2], [64, 128, 256, 512], "basic", num_classes=1000, form="imagenet")
    assert n_params(net) == 11_689_512
    assert net.stage_paths == ("layer1", "layer2", "layer3", "layer4") and net.feature_path == "layer4"
    assert [stage[0].conv1.stride[0] for stage in (net.layer1, net.layer2, net.layer3, net.layer4)] == [1, 2, 2, 2]
    assert net.stem[0].kernel_size == (7, 7) and isinstance(net.stem[3], nn.MaxPool2d)


@pytest.mark.parametrize("depths, side", [([1, 1, 1], 7), ([1, 1, 1, 1], 7), ([1, 1], 14)])
def test_resnet_imagenet_form_halves_in_its_last_three_stages(depths, side):
    net = ResNetCifar(depths, [8] * len(depths), form="imagenet")
    assert net.forward_features(torch.zeros(1, 3, 224, 224)).shape[-2:] == (side, side)
    assert net.feature_stride == 224 // side


def test_resnet_cifar_form_keeps_three_stages_at_strides_1_2_2():
    net = ResNetCifar([1, 1, 1], [8, 16, 32])
    assert net.stage_paths == ("layer1", "layer2", "layer3") and net.feature_stride == 4
    assert net.forward_features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (8, 8)


def test_nb201_imagenet_stem_gives_cells_a_cifar_sized_map():
    ops = ["nor_conv_3x3"] * 6
    net = NB201Net(ops, cells=1, channels=8, form="imagenet")
    with torch.no_grad(), FeatureTap(net, ["stem", "lastact"]) as tap:
        net(torch.zeros(1, 3, 224, 224))
    assert tap["stem"].shape[-2:] == (28, 28) and tap["lastact"].shape[-2:] == (7, 7)
    assert n_params(net) - n_params(NB201Net(ops, cells=1, channels=8)) == 2 * (9 * 8 * 8 + 2 * 8)


def test_vit_imagenet_form_sizes_its_position_grid_for_224_px():
    net = ViT(patch_size=16, depth=1, heads=1, embed_dim=16, form="imagenet")
    assert net.pos_embed.shape[-2:] == (14, 14) and net.feature_stride == 16
    assert net.forward_features(torch.zeros(1, 3, 224, 224)).shape[-2:] == (14, 14)
    assert ViT(patch_size=4, depth=1, heads=1, embed_dim=16).pos_embed.shape[-2:] == (8, 8)
