"""Photos: ``imagefolder`` at 224/96 px with its decode-once cache, ``image_size`` for every
source, RandomResizedCrop, and the small-image path left exactly as it was."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_builders import image_cache  # noqa: F401 (fixture)
from kdsearch.data import Augment, ImageSet, augment_batch, imagefolder, load_dataset
from kdsearch.data.transforms import _crop_boxes, random_resized_crop
from kdsearch.errors import DataError, UsageError

pytestmark = pytest.mark.usefixtures("image_cache")

CLASSES = ("ant", "bee", "cat")
RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)
DECODE = imagefolder._decode  # the real decoder, whatever a test patched in


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """3 classes × 12 random RGB JPEGs of varied sizes around 300×260."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for cls in CLASSES:
        for i in range(12):
            h, w = int(rng.integers(240, 281)), int(rng.integers(280, 321))
            _write(root / cls / f"{i:02d}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return root


def _decode_counter(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Count (and still perform) every image decode."""
    seen: list[Path] = []

    def counting(path: Path, *args):
        seen.append(path)
        return DECODE(path, *args)

    monkeypatch.setattr(imagefolder, "_decode", counting)
    return seen


def _no_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: Path, *args):
        raise AssertionError(f"{path} decoded although it is cached")

    monkeypatch.setattr(imagefolder, "_decode", refuse)


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("image_size, side", [(None, 224), (96, 96)])
def test_photo_folder_shapes(photo_folder: Path, image_size: int | None, side: int) -> None:
    ds = load_dataset(f"imagefolder:{photo_folder}", image_size=image_size, val_fraction=0.25)
    assert ds.classes == CLASSES and ds.in_channels == 3 and ds.image_size == (side, side)
    assert len(ds.train) == 27 and len(ds.val) == 9 and ds.test is None
    for part in (ds.train, ds.val):
        assert part.images.dtype == torch.uint8 and part.images.shape[1:] == (3, side, side)
    assert torch.bincount(ds.val.labels).tolist() == [3, 3, 3]
    assert ds.augment == Augment(flip=True, resized_crop=True)
    # Random pixels: every channel mean is near the middle of 0-1 (resizing averages, shrinking the std).
    assert all(0.45 < m < 0.55 for m in ds.mean) and all(0.01 < s < 0.3 for s in ds.std)


def test_center_crop_on_a_known_image(tmp_path: Path) -> None:
    """300×260 image: a blue margin the crop must drop, green inside it, a red central square.

    At 224 px the shorter side goes to 256 (×256/260) and the central 224 are kept, i.e. the
    central 227.5 original pixels of each axis: rows 16-243 and columns 36-263. The blue margin
    (12 rows, 30 columns each side) lies outside; the 100-px red square becomes ≈ 98 px.
    """
    image = np.empty((260, 300, 3), np.uint8)
    image[:] = BLUE
    image[12:248, 30:270] = GREEN
    image[80:180, 100:200] = RED
    _write(tmp_path / "f" / "a" / "x.png", image)
    _write(tmp_path / "f" / "b" / "y.png", image)
    ds = load_dataset(f"imagefolder:{tmp_path / 'f'}", val_fraction=0.0)
    out = ds.train.images[0].permute(1, 2, 0).numpy().astype(int)  # (224, 224, 3)
    assert out.shape == (224, 224, 3)

    def near(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
        return bool(np.abs(pixel - np.array(colour)).max() <= 12)

    blue_like = (out[..., 2] > 120) & (out[..., 0] < 120) & (out[..., 1] < 120)
    assert not blue_like.any()  # the margin was cropped away
    assert near(out[0, 0], GREEN) and near(out[223, 223], GREEN)
    # The red square is centred: 98 px wide around 112, on both axes.
    for d in (0, 45, -45):
        assert near(out[112 + d, 112], RED) and near(out[112, 112 + d], RED)
    for d in (55, -55):
        assert near(out[112 + d, 112], GREEN) and near(out[112, 112 + d], GREEN)


def test_second_load_decodes_nothing(photo_folder: Path, image_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _decode_counter(monkeypatch)
    first = load_dataset(f"imagefolder:{photo_folder}", image_size=96, seed=3)
    assert len(seen) == 36
    _no_decode(monkeypatch)
    again = load_dataset(f"imagefolder:{photo_folder}", image_size=96, seed=3)
    assert torch.equal(first.train.images, again.train.images) and torch.equal(first.val.labels, again.val.labels)
    assert first.mean == again.mean and first.std == again.std
    entries = [p for p in (image_cache / "imagefolder").iterdir()]
    assert len(entries) == 1 and sorted(p.name for p in entries[0].iterdir()) == ["images.npy", "labels.npy", "meta.json"]
    # Another size is another entry (decoded once more), and the first one stays.
    _decode_counter(monkeypatch)
    load_dataset(f"imagefolder:{photo_folder}", image_size=64)
    assert len(list((image_cache / "imagefolder").iterdir())) == 2


def test_cache_invalidated_when_a_file_changes(photo_folder: Path, image_cache: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    load_dataset(f"imagefolder:{photo_folder}", image_size=96, val_fraction=0.0)
    changed = photo_folder / "bee" / "00.jpg"
    _write(changed, np.full((260, 300, 3), 255, np.uint8))  # all white
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later mtime, even on coarse clocks
    seen = _decode_counter(monkeypatch)
    ds = load_dataset(f"imagefolder:{photo_folder}", image_size=96, val_fraction=0.0)
    assert len(seen) == 36
    assert bool((ds.train.images[12] == 255).all())  # bee/00.jpg: first image of class 1
    assert len(list((image_cache / "imagefolder").iterdir())) == 1  # the stale entry was removed


def test_cache_write_is_atomic(photo_folder: Path, image_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fail_late(path: Path, *args):
        calls.append(path)
        if len(calls) == 20:
            raise DataError(f"cannot read image {path} (simulated); delete or replace it")
        return DECODE(path, *args)

    monkeypatch.setattr(imagefolder, "_decode", fail_late)
    with pytest.raises(DataError, match="simulated"):
        load_dataset(f"imagefolder:{photo_folder}")
    assert _files_under(image_cache) == []  # no half-written entry, no temporary file
    monkeypatch.setattr(imagefolder, "_decode", DECODE)
    load_dataset(f"imagefolder:{photo_folder}")
    files = _files_under(image_cache)
    assert len(files) == 3 and not any(f.name.startswith(".") or ".tmp" in f.name for f in files)


def test_photo_batches_augment_per_batch(photo_folder: Path) -> None:
    from kdsearch.distill.engine import epoch_batches, load_batch

    ds = load_dataset(f"imagefolder:{photo_folder}", image_size=96)
    g = torch.Generator().manual_seed(0)
    x, _ = load_batch(ds.train, next(epoch_batches(len(ds.train), 8, g)), ds, ds.augment, g, torch.device("cpu"), False)
    assert x.shape == (8, 3, 96, 96) and x.dtype == torch.float32


def test_small_imagefolder_keeps_native_size_unless_asked(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    for cls in ("a", "b"):
        for i in range(2):
            _write(tmp_path / "s" / cls / f"{i}.png", rng.integers(0, 256, (16, 20, 3), dtype=np.uint8))
    native = load_dataset(f"imagefolder:{tmp_path / 's'}", val_fraction=0.0)
    assert native.image_size == (16, 20) and native.augment == Augment(pad=2, flip=True)
    square = load_dataset(f"imagefolder:{tmp_path / 's'}", val_fraction=0.0, image_size=32)
    assert square.image_size == (32, 32) and square.augment == Augment(pad=4, flip=True)


def test_image_size_for_array_sources(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 2, x_test=x[:4], y_test=np.arange(4) % 2)
    spec = f"npz:{tmp_path / 'd.npz'}"
    native = load_dataset(spec, val_fraction=0.0)
    same = load_dataset(spec, val_fraction=0.0, image_size=8)
    assert torch.equal(native.train.images, same.train.images) and native.augment == same.augment
    big = load_dataset(spec, val_fraction=0.0, image_size=16)
    assert big.image_size == (16, 16) and big.test is not None and big.test.images.shape == (4, 1, 16, 16)
    assert big.augment == native.augment  # 16 px: still the padded crop
    # Bilinear upscaling of a constant image stays constant.
    flat = load_dataset(spec, val_fraction=0.0, image_size=16)
    const = torch.full((1, 1, 8, 8), 77, dtype=torch.uint8)
    from kdsearch.data.transforms import resize_images
    assert bool((resize_images(const, (16, 16)) == 77).all()) and flat.train.images.dtype == torch.uint8
    photo_sized = load_dataset(spec, val_fraction=0.0, image_size=64)
    assert photo_sized.augment == Augment(flip=False, resized_crop=True)
    with pytest.raises(UsageError, match="positive number of pixels"):
        load_dataset(spec, image_size=0)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("augment, shape, digest", [
    (Augment(pad=2, flip=True), (16, 1, 28, 28), "6f2a919143eea4ab"),
    (Augment(pad=4, flip=True), (16, 3, 32, 32), "ddd18737724add68"),
    (Augment(pad=2, flip=False), (8, 1, 28, 28), "49f9cc1b0795ccb4"),
])
def test_small_image_augmentation_unchanged(augment: Augment, shape: tuple[int, ...], digest: str) -> None:
    """Digests of batches computed before RandomResizedCrop existed: the pad-crop path is bit-identical."""
    x = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    assert _digest(augment_batch(x, augment, torch.Generator().manual_seed(2))) == digest


def test_random_resized_crop_is_seeded_and_changes_images() -> None:
    images = torch.randint(0, 256, (6, 3, 40, 48), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    augment = Augment(flip=True, resized_crop=True)
    out = augment_batch(images, augment, torch.Generator().manual_seed(7))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, augment_batch(images, augment, torch.Generator().manual_seed(7)))
    assert not torch.equal(out, augment_batch(images, augment, torch.Generator().manual_seed(8)))
    assert all(not torch.equal(o, i) for o, i in zip(out, images))


def test_random_resized_crop_whole_image_is_identity_or_mirror() -> None:
    images = torch.randint(0, 256, (8, 2, 10, 10), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    g = torch.Generator().manual_seed(2)
    same = random_resized_crop(images, g, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    assert torch.equal(same, images)
    mirrored = random_resized_crop(images, g, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True)
    flips = [torch.equal(m, i.flip(-1)) for m, i in zip(mirrored, images)]
    assert all(f or torch.equal(m, i) for f, m, i in zip(flips, mirrored, images)) and any(flips) and not all(flips)


def test_random_resized_crop_zooms_into_the_crop() -> None:
    """A crop of the left half of a half-black, half-white image is all black after resizing."""
    images = torch.zeros(1, 1, 20, 20, dtype=torch.uint8)
    images[..., 10:] = 255
    g = torch.Generator().manual_seed(0)
    out = random_resized_crop(images, g, scale=(0.5, 0.5), ratio=(0.5, 0.5), flip=False)
    # A 10-wide, 20-high box: at left 0 it is black, at left 10 white; anything between mixes.
    top, left, h, w = _crop_boxes(1, 20, 20, (0.5, 0.5), (0.5, 0.5), torch.Generator().manual_seed(0))
    assert (int(h), int(w), int(top)) == (20, 10, 0)
    cut = 10 - int(left)  # output columns left of this read black pixels (×2 magnification)
    assert bool((out[..., : max(0, 2 * cut - 1)] == 0).all()) and bool((out[..., 2 * cut + 1 :] == 255).all())


def test_crop_boxes_stay_inside() -> None:
    g = torch.Generator().manual_seed(3)
    top, left, h, w = _crop_boxes(2000, 30, 50, (0.08, 1.0), (3 / 4, 4 / 3), g)
    assert bool((top >= 0).all() and (left >= 0).all() and (top + h <= 30).all() and (left + w <= 50).all())
    assert bool(((h * w) / (30 * 50) <= 1.0).all() and (h >= 1).all() and (w >= 1).all())
    # No draw fits a 1:10 strip with ratios near 1: the fallback is the centred, ratio-clamped box.
    top, left, h, w = _crop_boxes(5, 10, 100, (0.9, 1.0), (1.0, 1.0), g)
    assert h.tolist() == [10.0] * 5 and w.tolist() == [10.0] * 5 and left.tolist() == [45.0] * 5


def test_unwritable_cache_is_a_clear_error(photo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("KDSEARCH_CACHE", str(blocker))
    with pytest.raises(DataError, match=r"cannot write the decoded-image cache .*KDSEARCH_CACHE"):
        load_dataset(f"imagefolder:{photo_folder}", image_size=32)


def test_cache_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kdsearch.data._image_cache import cache_root

    monkeypatch.setenv("KDSEARCH_CACHE", str(tmp_path / "k"))
    assert cache_root() == tmp_path / "k"
    monkeypatch.delenv("KDSEARCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "kdsearch"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert cache_root() == tmp_path / "h" / ".cache" / "kdsearch"
