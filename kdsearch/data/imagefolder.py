"""``imagefolder:DIR``: one sub-directory of images per class, read with Pillow.

Layouts: ``DIR/<class>/*.png`` (validation is carved from it), or ``DIR/train/<class>/...``
with optional ``DIR/val/<class>/...`` (used as the validation set) and
``DIR/test/<class>/...`` (the test set). Every image is resized (bilinear) to the size of
the first training image in sorted order, and read as greyscale when all images are
greyscale, RGB otherwise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from kdsearch.data.dataset import DATASETS, Augment, ImageSet, ProgressFn, RawDataset
from kdsearch.errors import DataError, UsageError

__all__ = ["IMAGE_SUFFIXES", "load_imagefolder"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})

Listing = list[tuple[str, list[Path]]]  # (class name, its image files), sorted


def _scan(root: Path) -> Listing:
    """Class folders of ``root`` and their image files, both sorted, hidden entries skipped."""
    listing = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f for f in class_dir.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES
        )
        listing.append((class_dir.name, files))
    return listing


def _mode_of(path: Path) -> str:
    try:
        with Image.open(path) as im:  # lazy: reads the header only
            return im.mode
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path} ({e}); delete or replace it") from None


def _read(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image as ``(H, W)`` or ``(H, W, 3)`` uint8, in ``mode`` and ``size`` (W, H)."""
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if im.size != size:
                im = im.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path} ({e}); delete or replace it") from None


def _load_split(listing: Listing, classes: tuple[str, ...], mode: str, size: tuple[int, int], root: Path) -> ImageSet:
    index = {name: i for i, name in enumerate(classes)}
    arrays, labels = [], []
    for name, files in listing:
        if files and name not in index:
            raise DataError(
                f"{root}/{name} is a class the training folder does not have; "
                f"rename it to one of {', '.join(classes)} or add it to the training folder"
            )
        for f in files:
            arrays.append(_read(f, mode, size))
            labels.append(index[name])
    w, h = size
    channels = 1 if mode == "L" else 3
    if not arrays:
        return ImageSet(torch.zeros(0, channels, h, w, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    stacked = np.stack(arrays)  # (N, H, W) or (N, H, W, 3)
    images = torch.from_numpy(stacked)
    images = images.unsqueeze(1) if mode == "L" else images.permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64))


@DATASETS.register("imagefolder")
def load_imagefolder(
    path: str | None, *, data_dir: Path | None, download: bool, progress: ProgressFn | None
) -> RawDataset:
    """Images in class folders (see the module docstring for layouts and conventions)."""
    if path is None:
        raise UsageError("imagefolder needs a directory: write imagefolder:DIR")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"imagefolder: {root} is not a directory; give the folder that holds one folder per class")
    split_layout = (root / "train").is_dir()
    train_root = root / "train" if split_layout else root
    train_listing = [(name, files) for name, files in _scan(train_root) if files]
    if not train_listing:
        raise DataError(
            f"imagefolder: no images in {train_root}; put images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
            "in one sub-folder per class"
        )
    classes = tuple(name for name, _ in train_listing)
    extra = {
        part: _scan(root / part) for part in ("val", "test") if split_layout and (root / part).is_dir()
    }
    every_file = [f for listing in (train_listing, *extra.values()) for _, files in listing for f in files]
    mode = "L" if all(_mode_of(f) in _GREY_MODES for f in every_file) else "RGB"
    with Image.open(train_listing[0][1][0]) as first:
        size = first.size  # (W, H)
    sets = {part: _load_split(listing, classes, mode, size, root / part) for part, listing in extra.items()}
    return RawDataset(
        name=f"imagefolder:{root}",
        train=_load_split(train_listing, classes, mode, size, train_root),
        test=sets.get("test"),
        val=sets.get("val"),
        classes=classes,
        augment=Augment(pad=min(size) // 8, flip=True),
    )
