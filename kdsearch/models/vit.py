"""A small Vision Transformer for small images (Dosovitskiy et al., ICLR 2021).

Convolutional patch embedding, learned position embedding on the patch grid, pre-norm
blocks. There is no class token: the final tokens are laid back out as a ``(B, D, h, w)``
map (the output of ``to_map``) and average-pooled, so the model has the same shape as every
other :class:`ImageClassifier` and its features can be hooked the same way.
"""
from __future__ import annotations

import torch
from torch import nn

from kdsearch.models.base import ImageClassifier

__all__ = ["ViT", "TransformerBlock"]


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        assert dim % heads == 0, "embed_dim must be divisible by heads"  # checked by the space
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape  # (B, N, D)
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, h, N, D/h)
        out = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, h, N, D/h)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(round(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))  # (B, N, D)
        return x + self.mlp(self.norm2(x))  # (B, N, D)


def _tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)  # (B, D, h, w)


class ViT(ImageClassifier):
    """Patch embedding, ``depth`` pre-norm blocks, LayerNorm, tokens as a map, pool, linear.

    Args:
        patch_size: side of the square patches (stride of the embedding conv).
        depth: number of transformer blocks.
        heads: attention heads; must divide ``embed_dim``.
        embed_dim: token width D.
        mlp_ratio: MLP hidden width as a multiple of D.
        image_size: the input side the position embedding is sized for; other sizes get it
            bicubically interpolated to their patch grid. None: 32 for the ``cifar`` form,
            224 for ``imagenet``.
        form: ``cifar`` or ``imagenet``; only the default ``image_size`` differs (the patch
            size, a gene, sets the token grid: 16 px patches give 14x14 tokens at 224 px).

    ``stage_paths`` name identity taps that see the tokens laid out as ``(B, D, h, w)`` maps
    after each third of the blocks (the last one is ``to_map``, after the final norm).
    """

    def __init__(
        self,
        patch_size: int,
        depth: int,
        heads: int,
        embed_dim: int,
        mlp_ratio: float = 4.0,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int | None = None,
        form: str = "cifar",
    ) -> None:
        super().__init__()
        if image_size is None:
            image_size = 224 if form == "imagenet" else 32
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, patch_size)
        self.feature_stride = patch_size
        grid = max(1, image_size // patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))  # (1, D, g, g)
        self.blocks = nn.Sequential(*[TransformerBlock(embed_dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        # Identity taps: hook points for intermediate stage maps; they compute nothing.
        self._stage_ends = sorted({max(1, round(depth * k / 3)) for k in (1, 2)} - {depth})
        self.stage_taps = nn.ModuleList(nn.Identity() for _ in self._stage_ends)
        self.to_map = nn.Identity()
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.stage_paths = tuple(f"stage_taps.{i}" for i in range(len(self._stage_ends))) + ("to_map",)
        self.feature_path = "to_map"
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, D, h, w)
        h, w = x.shape[-2:]
        pos = self.pos_embed  # (1, D, g, g)
        if pos.shape[-2:] != (h, w):
            pos = nn.functional.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)  # (1, D, h, w)
        x = (x + pos).flatten(2).transpose(1, 2)  # (B, N, D), N = h·w
        taps = iter(zip(self._stage_ends, self.stage_taps))
        end, tap = next(taps, (None, None))
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)  # (B, N, D)
            if i == end:
                tap(_tokens_to_map(x, h, w))  # (B, D, h, w), seen only by hooks
                end, tap = next(taps, (None, None))
        return self.to_map(_tokens_to_map(self.norm(x), h, w))  # (B, D, h, w)
