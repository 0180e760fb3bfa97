"""idx parsing (MNIST / Fashion-MNIST): round trips, corrupt files, the real Fashion-MNIST."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from data_builders import write_idx, isolated_data, make_idx_dir, no_network  # noqa: F401 (fixtures)

from kdsearch.data import Augment, load_dataset
from kdsearch.data.idx import read_idx
from kdsearch.errors import DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_read_idx_round_trip(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (7,), dtype=np.uint8)
    write_idx(tmp_path / f"img{suffix}", images)
    write_idx(tmp_path / f"lab{suffix}", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / f"img{suffix}", 3), images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"lab{suffix}", 1), labels)


def test_read_idx_refuses_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.zeros((4, 6, 6), np.uint8))
    path.write_bytes(path.read_bytes()[:-12])  # cut the gzip trailer and some data
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is corrupt or truncated.*re-download"):
        read_idx(path, 3)


def test_read_idx_refuses_short_payload(tmp_path: Path) -> None:
    path = tmp_path / "images.gz"
    write_idx(path, np.zeros((4, 6, 6), np.uint8))
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-5]))  # valid gzip, but data shorter than the header says
    with pytest.raises(DataError, match=r"images\.gz holds .* bytes but its header \(4, 6, 6\).*re-download"):
        read_idx(path, 3)


def test_read_idx_refuses_wrong_magic(tmp_path: Path) -> None:
    labels = tmp_path / "labels.gz"
    write_idx(labels, np.zeros((4,), np.uint8))
    with pytest.raises(DataError, match="bad magic number 00000801"):
        read_idx(labels, 3)  # a labels file where images are expected


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_directory(tmp_path: Path, make_idx_dir, isolated_data, no_network, gz: bool) -> None:
    arrays = make_idx_dir(tmp_path / "m", n_train=50, n_test=20, gz=gz)
    ds = load_dataset(f"mnist:{tmp_path / 'm'}", val_fraction=0.2, seed=3)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 10, 20)
    assert ds.classes == tuple("0123456789") and ds.mean == (0.1307,) and ds.std == (0.3081,)
    assert ds.augment == Augment(pad=2, flip=False)
    assert ds.in_channels == 1 and ds.image_size == (28, 28)
    np.testing.assert_array_equal(ds.test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    # train and val partition the official train set: every (image, label) pair exactly once.
    pool = torch.cat([ds.train.images, ds.val.images])[:, 0].numpy()
    pool_labels = torch.cat([ds.train.labels, ds.val.labels]).numpy()
    expected = arrays["train-images-idx3-ubyte"]
    order = [int(np.flatnonzero((expected == img).all(axis=(1, 2)))[0]) for img in pool]
    assert sorted(order) == list(range(50))
    np.testing.assert_array_equal(pool_labels, arrays["train-labels-idx1-ubyte"][order])
    assert torch.bincount(ds.val.labels).tolist() == [1] * 10  # stratified: 20% of 5 per class


def test_mnist_mismatched_counts(tmp_path: Path, make_idx_dir) -> None:
    make_idx_dir(tmp_path, n_train=50, n_test=20)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((49,), np.uint8))
    with pytest.raises(DataError, match="50 images but .* 49 labels"):
        load_dataset(f"mnist:{tmp_path}")


def test_explicit_path_missing_files(tmp_path: Path, no_network) -> None:
    with pytest.raises(DataError, match=r"does not hold train-images-idx3-ubyte\.gz.*write just fashion-mnist"):
        load_dataset(f"fashion-mnist:{tmp_path}")
    assert no_network == []


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch, no_network) -> None:
    monkeypatch.delenv("KDSEARCH_DATA", raising=False)
    ds = load_dataset("fashion-mnist", seed=0)
    assert len(ds.train) + len(ds.val) == 60000 and len(ds.val) == 6000
    assert ds.test is not None and len(ds.test) == 10000
    assert ds.train.images.shape[1:] == (1, 28, 28) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.val.labels).tolist() == [600] * 10
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    # The published constants agree with the data itself (computed independently here).
    hist = sum(np.bincount(part.images.numpy().ravel(), minlength=256) for part in (ds.train, ds.val))
    hist = hist.astype(np.float64)
    values = np.arange(256) / 255.0
    mean = [float((hist * values).sum() / hist.sum())]
    std = [float(np.sqrt((hist * values**2).sum() / hist.sum() - mean[0] ** 2))]
    assert abs(mean[0] - ds.mean[0]) < 5e-4 and abs(std[0] - ds.std[0]) < 5e-4
    assert no_network == []
