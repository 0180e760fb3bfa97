"""Batches straight from in-memory tensors: augment and normalise, vectorised."""
from __future__ import annotations

from typing import Sequence

import torch

from kdsearch.data.dataset import Augment, Dataset, balanced_order
from kdsearch.data.transforms import random_resized_crop
from kdsearch.errors import UsageError

__all__ = ["normalize", "NormalizedImages", "augment_batch", "fixed_batch"]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Scale uint8 pixels to 0-1, then subtract ``mean`` and divide by ``std`` per channel.

    Args:
        images: ``(B, C, H, W)`` uint8.
        mean: C per-channel means on the 0-1 scale.
        std: C per-channel standard deviations on the 0-1 scale.

    Returns:
        ``(B, C, H, W)`` float32 on the same device as ``images``.
    """
    c = images.shape[1]
    if len(mean) != c or len(std) != c:
        raise UsageError(
            f"images have {c} channels but mean/std have {len(mean)}/{len(std)} values; "
            "give one mean and one std per channel"
        )
    m = torch.tensor(mean, dtype=torch.float64)  # (C,)
    s = torch.tensor(std, dtype=torch.float64)  # (C,)
    # (x / 255 - m) / s == x * scale - shift, one fused multiply-add per pixel.
    scale = (1.0 / (255.0 * s)).to(torch.float32).to(images.device).view(1, c, 1, 1)  # (1, C, 1, 1)
    shift = (m / s).to(torch.float32).to(images.device).view(1, c, 1, 1)  # (1, C, 1, 1)
    return torch.addcmul(-shift, images.to(torch.float32), scale)  # (B, C, H, W)


class NormalizedImages:
    """uint8 images read as normalised float32 one slice at a time.

    Evaluation code slices it like a tensor (``images[i : i + b]``) and never holds a float32
    copy of the whole set: 10,000 validation images at 224 px would take 6 GB as float32.
    """

    ndim = 4

    def __init__(self, images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
        self.images, self.mean, self.std = images, tuple(mean), tuple(std)  # images (N, C, H, W) uint8

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> torch.Size:
        return self.images.shape

    def __getitem__(self, index: slice) -> torch.Tensor:
        return normalize(self.images[index], self.mean, self.std)  # (b, C, H, W) float32

    def float(self) -> "NormalizedImages":  # already float32 when read
        return self

    def cpu(self) -> "NormalizedImages":
        return self


def augment_batch(images_uint8: torch.Tensor, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """Random pad-and-crop (or RandomResizedCrop) and horizontal flip of a whole batch at once.

    With ``augment.resized_crop`` the batch goes through
    :func:`~kdsearch.data.transforms.random_resized_crop`; otherwise each image gets its own
    crop offset in ``[0, 2 * pad]`` on both axes and its own coin for the flip. All random
    numbers come from ``generator`` (on the CPU), so a generator in the same state gives the
    same batch on any device.

    Args:
        images_uint8: ``(B, C, H, W)`` uint8 on any device.
        augment: what to apply.
        generator: a CPU ``torch.Generator``.

    Returns:
        ``(B, C, H, W)`` uint8, a new tensor (the input is not modified).
    """
    if not augment.enabled or len(images_uint8) == 0:
        return images_uint8
    if augment.resized_crop:
        return random_resized_crop(images_uint8, generator, scale=augment.crop_scale, flip=augment.flip)
    b, c, h, w = images_uint8.shape
    device = images_uint8.device
    p = augment.pad
    if p > 0:
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator)  # (B,)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator)  # (B,)
    else:
        dy = dx = torch.zeros(b, dtype=torch.int64)
    flip = torch.randint(0, 2, (b,), generator=generator).bool() if augment.flip else torch.zeros(b, dtype=torch.bool)
    padded = torch.nn.functional.pad(images_uint8, (p, p, p, p)) if p > 0 else images_uint8  # (B, C, Hp, Wp)
    wp = w + 2 * p
    cols = torch.arange(w)  # (W,)
    # A flipped crop reads its columns right to left: the flip folds into the gather index.
    cols = torch.where(flip[:, None], w - 1 - cols[None, :], cols[None, :]) + dx[:, None]  # (B, W)
    rows = torch.arange(h)[None, :] + dy[:, None]  # (B, H)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w)  # (B, 1, H*W) into Hp*Wp
    flat = flat.to(device).expand(b, c, h * w)  # (B, C, H*W)
    # One gather over the flattened padded images: ~10x faster than 4-D advanced indexing.
    return torch.gather(padded.reshape(b, c, -1), 2, flat).view(b, c, h, w)  # (B, C, H, W)


def fixed_batch(dataset: Dataset, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic, class-balanced-as-possible, normalised batch from ``dataset.train``.

    Classes are visited round-robin (see :func:`~kdsearch.data.dataset.balanced_order`), so
    ``size = k * num_classes`` gives exactly ``k`` images per class when each has ``k``.

    Args:
        dataset: the dataset.
        size: images in the batch.
        seed: which images; the same seed gives the same batch.

    Returns:
        ``x`` float32 ``(size, C, H, W)`` and ``y`` int64 ``(size,)``, on the CPU.
    """
    if not 0 < size <= len(dataset.train):
        raise UsageError(
            f"a batch of {size} images was asked but the training set has {len(dataset.train)}; "
            f"ask for 1..{len(dataset.train)}"
        )
    order = balanced_order(dataset.train.labels, torch.Generator().manual_seed(seed))[:size]  # (size,)
    x = normalize(dataset.train.images[order], dataset.mean, dataset.std)  # (size, C, H, W)
    return x, dataset.train.labels[order].clone()
