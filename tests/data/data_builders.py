"""Builders and fixtures for the data tests (imported by name: a second ``conftest.py``
would shadow other folders' ``from conftest import ...``).

Tiny dataset files in each official format are written independently of the parsers under
test (struct/tarfile/Pillow/numpy straight from the format descriptions)."""
from __future__ import annotations

import gzip
import io
import struct
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from kdsearch.data import _download


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file of unsigned bytes: 0, 0, 0x08, ndim, big-endian uint32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def idx_arrays(n_train: int, n_test: int, seed: int = 0, size: int = 28) -> dict[str, np.ndarray]:
    """Random images and labels cycling 0..9 (so every class is present)."""
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }


@pytest.fixture
def make_idx_dir() -> Callable[..., dict[str, np.ndarray]]:
    """``make(dir, n_train=50, n_test=20, gz=True)`` writes the four idx files, returns the arrays."""

    def make(directory: Path, n_train: int = 50, n_test: int = 20, gz: bool = True) -> dict[str, np.ndarray]:
        directory.mkdir(parents=True, exist_ok=True)
        arrays = idx_arrays(n_train, n_test)
        for base, array in arrays.items():
            write_idx(directory / (base + (".gz" if gz else "")), array)
        return arrays

    return make


def cifar_records(n: int, label_bytes: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """``n`` records: label bytes then R, G, B planes of 32x32; returns (bytes, images, last labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, (n, label_bytes), dtype=np.uint8)
    blob = b"".join(labels[i].tobytes() + images[i].tobytes() for i in range(n))
    return blob, images, labels[:, -1].astype(np.int64)


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def cifar10_archive() -> Callable[[], tuple[bytes, dict[str, np.ndarray]]]:
    """A tiny cifar-10-binary.tar.gz: 5 train batches of 3 records, a test batch of 2."""

    def make() -> tuple[bytes, dict[str, np.ndarray]]:
        members, train_images, train_labels = {}, [], []
        for i in range(1, 6):
            blob, images, labels = cifar_records(3, 1, seed=i)
            members[f"cifar-10-batches-bin/data_batch_{i}.bin"] = blob
            train_images.append(images)
            train_labels.append(labels)
        blob, test_images, test_labels = cifar_records(2, 1, seed=99)
        members["cifar-10-batches-bin/test_batch.bin"] = blob
        members["cifar-10-batches-bin/batches.meta.txt"] = (
            b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n"
        )
        expected = {
            "train_images": np.concatenate(train_images),
            "train_labels": np.concatenate(train_labels),
            "test_images": test_images,
            "test_labels": test_labels,
        }
        return tar_gz(members), expected

    return make


@pytest.fixture
def isolated_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No system data dir, no $KDSEARCH_DATA, HOME in tmp: only what a test writes exists.

    Returns the download cache root (``~/.cache/kdsearch``).
    """
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KDSEARCH_DATA", raising=False)
    monkeypatch.setattr(_download, "SYSTEM_DATA_DIRS", ())
    return home / ".cache" / "kdsearch"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any download attempt fails the test; returns the list of URLs asked for."""
    asked: list[str] = []

    def fetch(url: str, progress=None):
        asked.append(url)
        raise AssertionError(f"unexpected download of {url}")

    monkeypatch.setattr(_download, "fetch", fetch)
    return asked


@pytest.fixture
def image_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Decoded-image cache entries go to a fresh folder (``$KDSEARCH_CACHE``), not the user's."""
    root = tmp_path / "kdsearch-cache"
    monkeypatch.setenv("KDSEARCH_CACHE", str(root))
    return root
