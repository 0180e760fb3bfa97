"""MNIST and Fashion-MNIST from their idx files (``*-idx3-ubyte.gz``), parsed with numpy."""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdsearch.data import _download
from kdsearch.data.dataset import DATASETS, Augment, ImageSet, ProgressFn, RawDataset
from kdsearch.errors import DataError

__all__ = ["IdxSource", "IDX_SOURCES", "read_idx", "load_idx_dir"]

# Base names; each is looked up as NAME.gz, then as the uncompressed NAME.
_TRAIN_IMAGES, _TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
_TEST_IMAGES, _TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
_FILES = (_TRAIN_IMAGES, _TRAIN_LABELS, _TEST_IMAGES, _TEST_LABELS)
_IDX_UBYTE = 0x08


@dataclass(frozen=True)
class IdxSource:
    """One idx dataset: where to download it and how to use it.

    Attributes:
        name: registry name and directory name.
        base_url: official URL prefix of the ``.gz`` files.
        sha256: SHA-256 of each ``.gz`` file exactly as served from ``base_url``.
        classes: class names, index = label.
        mean: pixel mean on the 0-1 scale.
        std: pixel std on the 0-1 scale.
        augment: the usual augmentation.
        apt_package: a Debian package that installs the files, if any.
    """

    name: str
    base_url: str
    sha256: dict[str, str]
    classes: tuple[str, ...]
    mean: float
    std: float
    augment: Augment
    apt_package: str | None = None


IDX_SOURCES: dict[str, IdxSource] = {
    # Digests of the files as the official servers send them (they match the upstream
    # README's MD5s). Debian's dataset-fashion-mnist re-gzips the same files, so its .gz
    # digests differ while the decompressed idx bytes are identical; local files are
    # therefore checked by structure, and only downloads by digest.
    "fashion-mnist": IdxSource(
        name="fashion-mnist",
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        sha256={
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        mean=0.2860,
        std=0.3530,
        augment=Augment(pad=2, flip=True),
        apt_package="dataset-fashion-mnist",
    ),
    "mnist": IdxSource(
        name="mnist",
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        classes=tuple(str(d) for d in range(10)),
        mean=0.1307,
        std=0.3081,
        augment=Augment(pad=2, flip=False),  # a flipped digit is another symbol
    ),
}


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an idx file of unsigned bytes (gzip-compressed when it ends in ``.gz``).

    Args:
        path: the file.
        ndim: the number of dimensions it must have (3 for images, 1 for labels).

    Returns:
        A uint8 array of the stored shape.

    Raises:
        DataError: the file is unreadable, corrupt, truncated or not the expected idx kind.
    """
    fix = "delete it and re-download (or reinstall its package)"
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is corrupt or truncated ({e}); {fix}") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise DataError(
            f"{path} is not an idx file of {ndim}-D unsigned bytes (bad magic number {raw[:4].hex()}); {fix}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"{path} holds {len(raw)} bytes but its header {dims} says {expected}: truncated or corrupt; {fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _file(directory: Path, base: str) -> Path | None:
    for candidate in (directory / f"{base}.gz", directory / base):
        if candidate.is_file():
            return candidate
    return None


def _has_all(directory: Path) -> bool:
    return all(_file(directory, base) is not None for base in _FILES)


def _read_pair(directory: Path, images_base: str, labels_base: str) -> ImageSet:
    images_path, labels_path = _file(directory, images_base), _file(directory, labels_base)
    assert images_path is not None and labels_path is not None
    images = read_idx(images_path, 3)  # (N, H, W)
    labels = read_idx(labels_path, 1)  # (N,)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
            "the files do not belong together: re-download both"
        )
    return ImageSet(
        torch.from_numpy(images.copy()).unsqueeze(1),  # (N, 1, H, W)
        torch.from_numpy(labels.astype(np.int64)),  # (N,)
    )


def load_idx_dir(directory: Path, source: IdxSource) -> RawDataset:
    """Read the four idx files of ``source`` from ``directory``."""
    return RawDataset(
        name=source.name,
        train=_read_pair(directory, _TRAIN_IMAGES, _TRAIN_LABELS),
        test=_read_pair(directory, _TEST_IMAGES, _TEST_LABELS),
        classes=source.classes,
        augment=source.augment,
        mean=(source.mean,),
        std=(source.std,),
    )


def _locate(
    source: IdxSource, path: str | None, data_dir: Path | None, download: bool, progress: ProgressFn | None
) -> Path:
    names = [f"{base}.gz" for base in _FILES]
    hint = _download.offline_hint(source.name, names, source.apt_package)

    def fetch_into(target: Path) -> Path:
        for base in _FILES:
            if _file(target, base) is None:
                name = f"{base}.gz"
                url = source.base_url + name
                _download.download_file(url, target / name, source.sha256[name], hint=hint, progress=progress)
        return target

    return _download.locate(
        source.name, path, data_dir,
        find=lambda d: d if _has_all(d) else None, fetch_into=fetch_into,
        download=download, what=", ".join(names), hint=hint,
    )


def _load(name: str, path: str | None, data_dir: Path | None, download: bool, progress: ProgressFn | None) -> RawDataset:
    source = IDX_SOURCES[name]
    return load_idx_dir(_locate(source, path, data_dir, download, progress), source)


@DATASETS.register("fashion-mnist")
def load_fashion_mnist(
    path: str | None,
    *,
    data_dir: Path | None,
    download: bool,
    progress: ProgressFn | None,
    image_size: int | None = None,  # native size only: load_dataset resizes
) -> RawDataset:
    """Fashion-MNIST: 60k/10k 28x28 greyscale clothes, 10 classes (Xiao et al., 2017)."""
    return _load("fashion-mnist", path, data_dir, download, progress)


@DATASETS.register("mnist")
def load_mnist(
    path: str | None,
    *,
    data_dir: Path | None,
    download: bool,
    progress: ProgressFn | None,
    image_size: int | None = None,  # native size only: load_dataset resizes
) -> RawDataset:
    """MNIST: 60k/10k 28x28 greyscale digits (LeCun et al., 1998)."""
    return _load("mnist", path, data_dir, download, progress)
