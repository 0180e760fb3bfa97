"""``imagefolder:DIR`` with tiny PNGs and ``npz:FILE``, good and bad."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_builders import image_cache  # noqa: F401 (fixture)
from kdsearch.data import Augment, load_dataset
from kdsearch.errors import DataError, UsageError

pytestmark = pytest.mark.usefixtures("image_cache")  # imagefolder writes its decoded cache there


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std on the 0-1 scale of (N, C, H, W) uint8, in float64."""
    x = images.astype(np.float64) / 255.0
    return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))


def test_imagefolder_grey(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    written = {}
    for cls in ("cat", "dog"):
        for i in range(3):
            a = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            _png(tmp_path / cls / f"{i}.png", a)
            written[(cls, i)] = a
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"imagefolder:{tmp_path}", val_fraction=0.0)
    assert ds.classes == ("cat", "dog") and ds.in_channels == 1 and ds.image_size == (16, 16)
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.test is None
    expected = np.stack([written[(c, i)] for c in ("cat", "dog") for i in range(3)])[:, None]
    np.testing.assert_array_equal(ds.train.images.numpy(), expected)
    mean, std = _stats(expected)
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(ds.std, std, rtol=1e-6)
    assert ds.augment == Augment(pad=2, flip=True)  # 16 // 8


def test_imagefolder_rgb_resize_and_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    _png(tmp_path / "train" / "a" / "0.png", rng.integers(0, 256, (8, 12), dtype=np.uint8))  # first: 12x8 (W x H)
    _png(tmp_path / "train" / "a" / "1.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))  # colour, resized
    _png(tmp_path / "train" / "b" / "0.jpg", rng.integers(0, 256, (8, 12, 3), dtype=np.uint8))
    _png(tmp_path / "val" / "b" / "0.png", rng.integers(0, 256, (8, 12), dtype=np.uint8))
    _png(tmp_path / "test" / "a" / "0.bmp", rng.integers(0, 256, (8, 12, 3), dtype=np.uint8))
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.in_channels == 3 and ds.image_size == (8, 12)
    assert len(ds.train) == 3 and len(ds.val) == 1 and ds.val.labels.tolist() == [1]
    assert ds.test is not None and ds.test.labels.tolist() == [0] and ds.test.images.shape == (1, 3, 8, 12)
    grey = ds.train.images[0]  # a greyscale file read as RGB: three equal channels
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="imagefolder:DIR"):
        load_dataset("imagefolder")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images in"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    with pytest.raises(DataError, match="is not a directory"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    _png(tmp_path / "s" / "train" / "a" / "0.png", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "s" / "val" / "zebra" / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="zebra is a class the training folder does not have"):
        load_dataset(f"imagefolder:{tmp_path / 's'}")
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*x\.png"):
        load_dataset(f"imagefolder:{tmp_path / 'bad'}")


@pytest.mark.parametrize("channels_last", [False, True])
def test_npz_good(tmp_path: Path, channels_last: bool) -> None:
    rng = np.random.default_rng(2)
    shape = (40, 8, 8, 3) if channels_last else (40, 8, 8)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    y = np.arange(40) % 4
    x_test = rng.integers(0, 256, (6, *shape[1:]), dtype=np.uint8)
    y_test = np.array([0, 1, 2, 3, 4, 4])  # class 4 only in test: still counted
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}", val_fraction=0.0)
    nchw = x.transpose(0, 3, 1, 2) if channels_last else x[:, None]
    np.testing.assert_array_equal(ds.train.images.numpy(), nchw)
    np.testing.assert_array_equal(ds.train.labels.numpy(), y)
    assert ds.classes == ("0", "1", "2", "3", "4") and ds.augment == Augment(pad=2, flip=False)
    assert ds.test is not None and ds.test.labels.tolist() == y_test.tolist()
    mean, std = _stats(nchw)
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(ds.std, std, rtol=1e-6)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(2, np.int64)}, r"lacks x .*np\.savez"),
        ({"x": np.zeros((2, 4, 4), np.float32), "y": np.zeros(2, np.int64)}, r"dtype float32, expected uint8"),
        ({"x": np.zeros((2, 4), np.uint8), "y": np.zeros(2, np.int64)}, r"expected N×H×W"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(3, np.int64)}, r"shape \(3,\) but there are 2 images"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(2, np.float64)}, r"expected integer class indices"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, -1])}, r"negative labels"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(2, np.int64), "x_test": np.zeros((1, 4, 4), np.uint8)},
         r"only one of x_test / y_test"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(2, np.int64),
          "x_test": np.zeros((1, 5, 5), np.uint8), "y_test": np.zeros(1, np.int64)}, r"they must match"),
    ],
)
def test_npz_bad(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")


def test_npz_refuses_pickle_and_junk(tmp_path: Path) -> None:
    np.savez(tmp_path / "p.npz", x=np.array([object()], dtype=object), y=np.zeros(1, np.int64))
    with pytest.raises(DataError, match="pickled objects"):
        load_dataset(f"npz:{tmp_path / 'p.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    with pytest.raises(UsageError, match="npz:FILE"):
        load_dataset("npz")
