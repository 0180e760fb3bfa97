"""Datasets held in memory as uint8 tensors, and the one entry point :func:`load_dataset`.

A loader registered in :data:`DATASETS` turns ``NAME[:PATH]`` into a :class:`RawDataset`
(the source's own train/test sets and constants); :func:`load_dataset` then carves the
validation split, applies ``subset`` and fills in statistics the source did not give.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Protocol

import torch

from kdsearch.data.transforms import PHOTO_MIN_SIDE, check_image_size, resize_images
from kdsearch.errors import DataError, UsageError
from kdsearch.registry import Registry

__all__ = [
    "DATASETS",
    "ImageSet",
    "Augment",
    "Dataset",
    "RawDataset",
    "DatasetLoader",
    "ProgressFn",
    "load_dataset",
    "parse_spec",
    "balanced_order",
    "channel_stats",
]

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Labelled images in memory.

    Attributes:
        images: ``(N, C, H, W)`` uint8 pixels.
        labels: ``(N,)`` int64 class indices.
    """

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"images must be a (N, C, H, W) uint8 tensor, got {self.images.dtype} "
                f"{tuple(self.images.shape)}; convert pixels to 0-255 uint8 first"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise DataError(
                f"labels must be a (N,) int64 tensor, got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}; convert them with .long()"
            )
        if len(self.images) != len(self.labels):
            raise DataError(
                f"{len(self.images)} images but {len(self.labels)} labels; give one label per image"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, index: torch.Tensor) -> ImageSet:
        """The images at ``index`` (a 1-D int64 tensor), in that order."""
        return ImageSet(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Augment:
    """Standard training augmentation, applied per batch on uint8 tensors.

    Small images (CIFAR, Fashion-MNIST) get a padded random crop; photos (64 px and more)
    get RandomResizedCrop instead, as in ImageNet training.

    Attributes:
        pad: random crop back to the original size after this much zero padding (0: none).
        flip: random horizontal flip with probability 1/2.
        resized_crop: RandomResizedCrop back to the original size (excludes ``pad``).
        crop_scale: with ``resized_crop``, the range of the crop's area as a fraction of the
            image's; (0.08, 1) is the ImageNet recipe.
    """

    pad: int = 0
    flip: bool = False
    resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)

    def __post_init__(self) -> None:
        if self.pad < 0:
            raise UsageError(f"augmentation pad must be >= 0, got {self.pad}; use 0 for no crop")
        if self.resized_crop and self.pad:
            raise UsageError("augmentation takes either a padded crop (pad) or resized_crop, not both; set pad=0")
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise UsageError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}; (0.08, 1) is usual")

    @property
    def enabled(self) -> bool:
        """Whether this augmentation changes anything."""
        return self.pad > 0 or self.flip or self.resized_crop


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset ready for training: splits, class names and normalisation constants.

    Attributes:
        name: what the user asked for (``fashion-mnist``, ``npz:data.npz``...).
        train: training images (the official train set minus ``val``).
        val: a deterministic, seeded, stratified split carved from the official train set
            (or the source's own validation folder, for ``imagefolder``).
        test: the official test set when the source has one.
        classes: class names, index = label.
        mean: per-channel mean on the 0-1 pixel scale.
        std: per-channel standard deviation on the 0-1 pixel scale.
        augment: the augmentation that suits this dataset.
    """

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        """Channels of every image (1 for greyscale, 3 for RGB)."""
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of every image."""
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])


@dataclass(frozen=True, eq=False)
class RawDataset:
    """What a loader returns: the source's own sets, before splitting.

    Attributes:
        name: the dataset's display name.
        train: the official training set (``val`` is carved from it unless given).
        test: the official test set, if any.
        classes: class names, index = label.
        augment: the augmentation that suits this dataset.
        mean: per-channel mean, or None to compute it from the training split.
        std: per-channel std, or None to compute it from the training split.
        val: a validation set the source provides (then nothing is carved from ``train``).
    """

    name: str
    train: ImageSet
    test: ImageSet | None
    classes: tuple[str, ...]
    augment: Augment
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    val: ImageSet | None = None


class DatasetLoader(Protocol):
    """Signature of a function registered in :data:`DATASETS`."""

    def __call__(
        self,
        path: str | None,
        *,
        data_dir: Path | None,
        download: bool,
        progress: ProgressFn | None,
        image_size: int | None = None,
    ) -> RawDataset:
        """Read the source; ``image_size`` (a square side, None: native) may be honoured while
        decoding (``imagefolder`` does); :func:`load_dataset` resizes whatever comes back at
        another size."""


DATASETS: Registry[DatasetLoader] = Registry("dataset")


def balanced_order(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random order of all indices that visits classes round-robin.

    Any prefix of the result is as class-balanced as the data allows: the first K indices
    hold one sample of each of K classes, and so on, in a random order within each round.

    Args:
        labels: ``(N,)`` int64 labels.
        generator: the source of randomness.

    Returns:
        ``(N,)`` int64 permutation of ``range(N)``.
    """
    n = len(labels)
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    perm = torch.randperm(n, generator=generator)  # (N,)
    rank = _rank_within_class(labels[perm])  # (N,) position among its class in `perm`
    # Sort by round (rank), ties broken by position in `perm`, so each round is shuffled.
    key = rank * n + torch.arange(n)  # (N,)
    return perm[torch.argsort(key)]


def _rank_within_class(labels: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions have the same label."""
    n = len(labels)
    sorted_labels, by_class = torch.sort(labels, stable=True)  # (N,), (N,)
    counts = torch.bincount(sorted_labels)  # (K,)
    starts = torch.cumsum(counts, 0) - counts  # (K,)
    rank = torch.empty(n, dtype=torch.int64)
    rank[by_class] = torch.arange(n) - starts[sorted_labels]
    return rank


def _split_val(
    data: ImageSet, fraction: float, generator: torch.Generator
) -> tuple[ImageSet, ImageSet]:
    """Stratified split: ``round(fraction * n_c)`` random images of each class go to val."""
    labels = data.labels
    if fraction == 0.0 or len(data) == 0:
        return data, data.select(torch.zeros(0, dtype=torch.int64))
    perm = torch.randperm(len(data), generator=generator)  # (N,)
    rank = _rank_within_class(labels[perm])  # (N,)
    per_class = torch.round(torch.bincount(labels).double() * fraction).long()  # (K,)
    in_val = rank < per_class[labels[perm]]  # (N,) bool
    val_idx = torch.sort(perm[in_val]).values
    train_idx = torch.sort(perm[~in_val]).values
    return data.select(train_idx), data.select(val_idx)


def _take_balanced(data: ImageSet, count: int, generator: torch.Generator) -> ImageSet:
    """``count`` images chosen class-balanced, kept in their original order."""
    if count >= len(data):
        return data
    index = torch.sort(balanced_order(data.labels, generator)[:count]).values
    return data.select(index)


def channel_stats(images: torch.Tensor, chunk_pixels: int = 1 << 23) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the 0-1 scale.

    Args:
        images: ``(N, C, H, W)`` uint8 (a memory map is read a chunk at a time).
        chunk_pixels: values per step (64 MiB of float64 by default), to bound memory.

    Returns:
        ``(mean, std)``, each a tuple of C floats; a zero std is replaced by 1.
    """
    c = images.shape[1]
    chunk = max(1, chunk_pixels // max(1, images[0].numel() if len(images) else 1))
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].double() / 255.0  # (b, C, H, W)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    mean = total / count  # (C,)
    var = (total_sq / count - mean * mean).clamp_min(0.0)  # (C,)
    std = var.sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _resized(raw: RawDataset, image_size: int) -> RawDataset:
    """``raw`` with every split at ``image_size × image_size`` (bilinear), unchanged if already so."""
    if tuple(raw.train.images.shape[2:]) == (image_size, image_size):
        return raw

    def resize(data: ImageSet | None) -> ImageSet | None:
        if data is None:
            return None
        return ImageSet(resize_images(data.images, (image_size, image_size)), data.labels)

    augment = raw.augment
    if image_size >= PHOTO_MIN_SIDE and not augment.resized_crop:
        augment = Augment(flip=augment.flip, resized_crop=True)
    return replace(raw, train=resize(raw.train), val=resize(raw.val), test=resize(raw.test), augment=augment)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``NAME[:PATH]`` into the registry name and the optional path."""
    name, sep, path = spec.partition(":")
    name = name.strip().lower()
    if not name:
        raise UsageError(f"dataset {spec!r} has no name; write NAME[:PATH], e.g. fashion-mnist or npz:data.npz")
    if sep and not path:
        raise UsageError(f"dataset {spec!r} has an empty path after ':'; write {name}:PATH or just {name}")
    return name, (path if sep else None)


def load_dataset(
    spec: str,
    *,
    data_dir: Path | None = None,
    subset: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    download: bool = True,
    progress: ProgressFn | None = None,
    image_size: int | None = None,
) -> Dataset:
    """Load a dataset by spec, bring it to ``image_size``, split off validation and apply ``subset``.

    Args:
        spec: ``NAME[:PATH]``: ``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100`` (PATH:
            directory to look in), ``imagefolder:DIR`` or ``npz:FILE``.
        data_dir: a directory searched first (``data_dir`` and ``data_dir/NAME``) and where
            downloads go instead of ``~/.cache/kdsearch/NAME``.
        subset: keep this many training images (class-balanced, seeded) and
            ``min(subset // 5, len(val))`` validation images; the test set stays whole.
        seed: seeds the validation split and the subset.
        val_fraction: share of each class of the official train set held out for validation,
            in ``[0, 1)``; ignored when the source has its own validation set.
        download: fetch missing files from the official URLs (SHA-256 verified).
        progress: called as ``progress(done, total)`` with bytes while downloading.
        image_size: the side of the square images to deliver; None keeps the native size of
            small images and crops photos to 224 (``imagefolder``, see its module). Small
            images of another size are resized (bilinear); at 64 px and more the training
            augmentation becomes RandomResizedCrop.

    Returns:
        The :class:`Dataset`; mean/std the source does not fix are computed on ``train``
        before ``subset`` is applied, so a subset run normalises like the full one.
    """
    if subset is not None and subset <= 0:
        raise UsageError(f"subset must be a positive number of images, got {subset}; omit it to use all")
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}; 0.1 is usual")
    check_image_size(image_size)
    name, path = parse_spec(spec)
    loader = DATASETS.get(name)
    raw = loader(path, data_dir=Path(data_dir) if data_dir is not None else None, download=download,
                 progress=progress, image_size=image_size)
    if image_size is not None:
        raw = _resized(raw, image_size)
    if len(raw.train) == 0:
        raise DataError(f"dataset {spec!r} has no training images; check its files")

    for part, data in (("train", raw.train), ("val", raw.val), ("test", raw.test)):
        if data is not None and len(data) and int(data.labels.max()) >= len(raw.classes):
            raise DataError(
                f"dataset {spec!r}: a {part} label is {int(data.labels.max())} but there are only "
                f"{len(raw.classes)} classes; labels must be 0..{len(raw.classes) - 1}"
            )
    if raw.val is not None:
        train, val = raw.train, raw.val
    else:
        train, val = _split_val(raw.train, val_fraction, torch.Generator().manual_seed(seed))
    if len(train) == 0:
        raise UsageError(
            f"val_fraction={val_fraction} leaves no training images out of {len(raw.train)}; lower it"
        )
    if raw.mean is None or raw.std is None:
        mean, std = channel_stats(train.images)
    else:
        mean, std = raw.mean, raw.std
    if subset is not None:
        # A separate stream from the split, so the split does not depend on `subset`.
        train = _take_balanced(train, subset, torch.Generator().manual_seed(seed + 1))
        val = _take_balanced(val, min(subset // 5, len(val)), torch.Generator().manual_seed(seed + 2))
    return Dataset(
        name=raw.name,
        train=train,
        val=val,
        test=raw.test,
        classes=tuple(raw.classes),
        mean=tuple(mean),
        std=tuple(std),
        augment=raw.augment,
    )
