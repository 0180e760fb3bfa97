"""The MBConv and ViT building blocks against hand counts and hand computations."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kdsearch.models import FeatureTap
from kdsearch.models.mbconv import InvertedResidual, MBConvNet
from kdsearch.models.vit import ViT


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
