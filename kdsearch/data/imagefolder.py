"""``imagefolder:DIR``: one sub-directory of images per class, read with Pillow, decoded once.

Layouts: ``DIR/<class>/*.png`` (validation is carved from it), or ``DIR/train/<class>/...``
with optional ``DIR/val/<class>/...`` (used as the validation set) and
``DIR/test/<class>/...`` (the test set). Images are read as greyscale when all of them are
greyscale, RGB otherwise.

Sizes follow the first training image in sorted order. Photos (its shorter side above
:data:`~kdsearch.data.transforms.PHOTO_MIN_SIDE`) get the ImageNet evaluation transform: the
shorter side resized to ``image_size / 0.875``, then a centred ``image_size`` square
(224 by default). Smaller images are resized (bilinear) to that first image's size, or to
``image_size × image_size`` when it is given.

The decoded pixels are stored once in the user cache (see
:func:`~kdsearch.data._image_cache.cache_root`), keyed by every image's relative path, size
and modification time and by the decoding settings; later loads map that file instead of
decoding anything. Mean and std are those of the whole training folder.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from kdsearch.data import _image_cache
from kdsearch.data.dataset import DATASETS, Augment, ImageSet, ProgressFn, RawDataset, channel_stats
from kdsearch.data.transforms import (
    CROP_FRACTION,
    PHOTO_MIN_SIDE,
    PHOTO_SIZE,
    check_image_size,
    resize_and_center_crop,
)
from kdsearch.errors import DataError, UsageError

__all__ = ["IMAGE_SUFFIXES", "load_imagefolder"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
_DECODE_BLOCK = 256  # images handed to the decoding threads at a time (bounds pending results)

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


def _unreadable(path: Path, e: Exception) -> DataError:
    return DataError(f"cannot read image {path} ({e}); delete or replace it")


def _header_of(path: Path) -> tuple[str, tuple[int, int]]:
    """Mode and ``(W, H)`` of an image, from its header only."""
    try:
        with Image.open(path) as im:  # lazy: reads the header only
            return im.mode, im.size
    except (UnidentifiedImageError, OSError) as e:
        raise _unreadable(path, e) from None


def _decode(path: Path, mode: str, size: tuple[int, int], crop: bool) -> np.ndarray:
    """One image as ``(H, W)`` or ``(H, W, 3)`` uint8 in ``mode``.

    ``crop``: the photo transform to a ``size`` square; else a plain resize to ``size`` (W, H).
    """
    try:
        with Image.open(path) as im:
            if crop:
                # JPEGs can decode at 1/2, 1/4 or 1/8 scale: ask for no less than the resize target.
                scale = round(size[0] / CROP_FRACTION) / min(im.size)
                im.draft(mode, (round(im.size[0] * scale), round(im.size[1] * scale)))
                im = resize_and_center_crop(im.convert(mode), size[0])
            else:
                im = im.convert(mode)
                if im.size != size:
                    im = im.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise _unreadable(path, e) from None


def _labels(listing: Listing, classes: tuple[str, ...], root: Path) -> list[int]:
    index = {name: i for i, name in enumerate(classes)}
    labels = []
    for name, files in listing:
        if not files:
            continue
        if name not in index:
            raise DataError(
                f"{root}/{name} is a class the training folder does not have; "
                f"rename it to one of {', '.join(classes)} or add it to the training folder"
            )
        labels.extend([index[name]] * len(files))
    return labels


def _decode_all(files: list[Path], mode: str, size: tuple[int, int], crop: bool, out: np.ndarray) -> None:
    """Decode ``files`` into ``out`` (``(N, C, H, W)`` uint8), several at a time (Pillow frees the GIL)."""
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(files), _DECODE_BLOCK):
            block = files[start : start + _DECODE_BLOCK]
            for i, pixels in enumerate(pool.map(lambda f: _decode(f, mode, size, crop), block), start):
                out[i] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)


@DATASETS.register("imagefolder")
def load_imagefolder(
    path: str | None,
    *,
    data_dir: Path | None,
    download: bool,
    progress: ProgressFn | None,
    image_size: int | None = None,
) -> RawDataset:
    """Images in class folders (see the module docstring for layouts, sizes and the cache)."""
    check_image_size(image_size)
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
    parts: dict[str, Listing] = {"train": train_listing}
    parts.update(
        (part, _scan(root / part)) for part in ("val", "test") if split_layout and (root / part).is_dir()
    )
    labels = {part: _labels(listing, classes, root / part) for part, listing in parts.items()}
    files = [f for listing in parts.values() for _, fs in listing for f in fs]

    _, native = _header_of(train_listing[0][1][0])  # (W, H)
    crop = min(native) > PHOTO_MIN_SIDE
    if crop:
        size = (image_size or PHOTO_SIZE,) * 2
    else:
        size = (image_size, image_size) if image_size else native
    settings = {"size": list(size), "crop": crop}
    key = _image_cache.entry_key(root, files, settings)
    entry = _image_cache.open_entry(key)
    if entry is None:
        mode = "L" if all(_header_of(f)[0] in _GREY_MODES for f in files) else "RGB"
        w, h = size
        shape = (len(files), 1 if mode == "L" else 3, h, w)
        bounds, start = {}, 0
        for part in parts:
            bounds[part] = [start, start + len(labels[part])]
            start += len(labels[part])
        a, b = bounds["train"]
        every_label = np.array([y for part in parts for y in labels[part]], dtype=np.int64)

        def fill(out: np.ndarray) -> dict[str, object]:
            _decode_all(files, mode, size, crop, out)
            mean, std = channel_stats(torch.from_numpy(out[a:b]))
            return {"mean": mean, "std": std}

        entry = _image_cache.write_entry(
            key, shape, fill, every_label,
            {"source": str(root.resolve()), "settings": settings, "classes": list(classes), "splits": bounds},
        )
    sets = {
        part: ImageSet(entry.images[a:b], entry.labels[a:b]) for part, (a, b) in entry.meta["splits"].items()
    }
    h, w = sets["train"].images.shape[2:]
    if min(h, w) >= PHOTO_MIN_SIDE:
        augment = Augment(flip=True, resized_crop=True)
    else:
        augment = Augment(pad=min(h, w) // 8, flip=True)
    return RawDataset(
        name=f"imagefolder:{root}",
        train=sets["train"],
        test=sets.get("test"),
        val=sets.get("val"),
        classes=classes,
        augment=augment,
        mean=tuple(entry.meta["mean"]),
        std=tuple(entry.meta["std"]),
    )
