"""Tensor pieces several losses share (private)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["normalized_gram", "match_spatial"]


def normalized_gram(f: Tensor) -> Tensor:
    """Sample-by-sample Gram matrix ``f fᵀ`` of the flattened rows, rows L2-normalised.

    Args:
        f: ``(N, ...)``; everything after the first axis is flattened.

    Returns:
        ``(N, N)``.
    """
    flat = f.reshape(f.shape[0], -1)  # (N, D)
    return F.normalize(flat @ flat.t(), p=2, dim=1)  # (N, N)


def match_spatial(fs: Tensor, ft: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool whichever map is larger down to the common (min H, min W) size."""
    size = (min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3]))
    if tuple(fs.shape[2:]) != size:
        fs = F.adaptive_avg_pool2d(fs, size)  # (B, Cs, h, w)
    if tuple(ft.shape[2:]) != size:
        ft = F.adaptive_avg_pool2d(ft, size)  # (B, Ct, h, w)
    return fs, ft
