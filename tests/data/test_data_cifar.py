"""CIFAR binary archives: record parsing, safe extraction, verified download."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from data_builders import cifar10_archive, cifar_records, isolated_data, no_network, tar_gz  # noqa: F401 (fixtures)

from kdsearch.data import Augment, _download, cifar, load_dataset
from kdsearch.errors import DataError


def test_cifar10_from_archive(tmp_path: Path, cifar10_archive, isolated_data, no_network) -> None:
    blob, expected = cifar10_archive()
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(blob)
    ds = load_dataset(f"cifar10:{tmp_path}", val_fraction=0.0)
    assert (tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp dir cleaned
    np.testing.assert_array_equal(ds.train.images.numpy(), expected["train_images"])
    np.testing.assert_array_equal(ds.train.labels.numpy(), expected["train_labels"])
    np.testing.assert_array_equal(ds.test.images.numpy(), expected["test_images"])
    np.testing.assert_array_equal(ds.test.labels.numpy(), expected["test_labels"])
    assert ds.classes[0] == "airplane" and ds.num_classes == 10
    assert ds.augment == Augment(pad=4, flip=True) and ds.image_size == (32, 32) and ds.in_channels == 3
    # A second load reads the extracted folder (the archive may be gone).
    (tmp_path / "cifar-10-binary.tar.gz").unlink()
    assert len(load_dataset(f"cifar10:{tmp_path}", val_fraction=0.0).train) == 15


def test_cifar100_uses_fine_labels(tmp_path: Path, no_network) -> None:
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    train_blob, train_images, fine = cifar_records(6, 2, seed=5)
    test_blob, _, _ = cifar_records(2, 2, seed=6)
    (folder / "train.bin").write_bytes(train_blob)
    (folder / "test.bin").write_bytes(test_blob)
    coarse = np.frombuffer(train_blob, np.uint8).reshape(6, -1)[:, 0]
    assert not np.array_equal(coarse, fine)  # the test data can tell the two apart
    ds = load_dataset(f"cifar100:{tmp_path}", val_fraction=0.0)
    np.testing.assert_array_equal(ds.train.labels.numpy(), fine)
    np.testing.assert_array_equal(ds.train.images.numpy(), train_images)
    assert ds.num_classes == 100 and ds.classes[0] == "apple" and ds.classes[99] == "worm"
    assert list(ds.classes) == sorted(ds.classes)  # CIFAR-100 fine names are alphabetical


def test_evil_member_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "data"
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(tar_gz({"cifar-10-batches-bin/test_batch.bin": b"x", "../evil": b"pwned"}))
    with pytest.raises(DataError, match=r"refusing to extract .*'\.\./evil'"):
        cifar.extract_archive(archive, target, "cifar-10-batches-bin")
    assert not (tmp_path / "evil").exists() and not (target.parent / "evil").exists()
    assert list(target.iterdir()) == []  # nothing half-extracted left behind


def test_absolute_member_stays_inside(tmp_path: Path) -> None:
    # The data filter strips the leading "/", so the member lands inside the temporary
    # extraction directory (then removed), never at its absolute path.
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz({str(tmp_path / "abs_evil"): b"pwned"}))
    with pytest.raises(DataError, match="has no cifar-10-batches-bin/ folder"):
        cifar.extract_archive(archive, tmp_path / "out", "cifar-10-batches-bin")
    assert not (tmp_path / "abs_evil").exists()


def test_corrupt_archive(tmp_path: Path, cifar10_archive) -> None:
    blob, _ = cifar10_archive()
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_dataset(f"cifar10:{tmp_path}")


def test_truncated_records(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    blob, _, _ = cifar_records(2, 1, seed=0)
    path.write_bytes(blob[:-1])
    with pytest.raises(DataError, match="not a whole number of 3073-byte records"):
        cifar.read_cifar_bin(path, 1)


def test_cifar_download_then_extract(monkeypatch: pytest.MonkeyPatch, cifar10_archive, isolated_data: Path) -> None:
    blob, expected = cifar10_archive()
    source = cifar.CIFAR_SOURCES["cifar10"]
    monkeypatch.setitem(
        cifar.CIFAR_SOURCES, "cifar10", cifar.CifarSource(**{**source.__dict__, "sha256": hashlib.sha256(blob).hexdigest()})
    )
    asked: list[str] = []

    def fetch(url: str, progress=None):
        asked.append(url)
        yield blob

    monkeypatch.setattr(_download, "fetch", fetch)
    ds = load_dataset("cifar10", val_fraction=0.0)
    assert asked == ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
    assert len(ds.train) == 15 and (isolated_data / "cifar10" / "cifar-10-batches-bin").is_dir()
    np.testing.assert_array_equal(ds.test.labels.numpy(), expected["test_labels"])


def test_missing_cifar_path(tmp_path: Path, no_network) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-bin/ or cifar-10-binary.tar.gz"):
        load_dataset(f"cifar10:{tmp_path}")
