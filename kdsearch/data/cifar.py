"""CIFAR-10 and CIFAR-100 from the official *binary* archives (never the pickled Python ones)."""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdsearch.data import _download
from kdsearch.data.dataset import DATASETS, Augment, ImageSet, ProgressFn, RawDataset
from kdsearch.errors import DataError

__all__ = ["CifarSource", "CIFAR_SOURCES", "read_cifar_bin", "extract_archive", "load_cifar_dir"]

_BASE_URL = "https://www.cs.toronto.edu/~kriz/"
_PIXELS = 3 * 32 * 32

_CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo "
    "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse "
    "mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy "
    "porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television "
    "tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()


@dataclass(frozen=True)
class CifarSource:
    """One CIFAR variant in its binary layout.

    Attributes:
        name: registry name and directory name.
        archive: the official archive's file name under ``https://www.cs.toronto.edu/~kriz/``.
        sha256: its SHA-256 as served.
        folder: the folder the archive extracts to.
        train_files: record files of the training set.
        test_files: record files of the test set.
        label_bytes: label bytes before each image; the last one is the label used
            (CIFAR-100 stores coarse then fine: the fine label is used).
        classes: class names, index = label.
        class_file: the names file in ``folder``, read when present.
        mean: per-channel mean on the 0-1 scale.
        std: per-channel std on the 0-1 scale.
    """

    name: str
    archive: str
    sha256: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_bytes: int
    classes: tuple[str, ...]
    class_file: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR_SOURCES: dict[str, CifarSource] = {
    "cifar10": CifarSource(
        name="cifar10",
        archive="cifar-10-binary.tar.gz",  # MD5 c32a1d4ab5d03f1284b67883e8d87530 on the official page
        sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        folder="cifar-10-batches-bin",
        train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        test_files=("test_batch.bin",),
        label_bytes=1,
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        class_file="batches.meta.txt",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": CifarSource(
        name="cifar100",
        archive="cifar-100-binary.tar.gz",  # MD5 03b5dce01913d631647c71ecec9e9cb8 on the official page
        sha256="58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
        folder="cifar-100-binary",
        train_files=("train.bin",),
        test_files=("test.bin",),
        label_bytes=2,
        classes=tuple(_CIFAR100_FINE),
        class_file="fine_label_names.txt",
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
}


def read_cifar_bin(path: Path, label_bytes: int) -> ImageSet:
    """Parse fixed-size CIFAR records: ``label_bytes`` label bytes, then 3x32x32 pixels (CHW).

    Raises:
        DataError: the file is unreadable or not a whole number of records.
    """
    record = label_bytes + _PIXELS
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read {path} ({e}); check its permissions or re-download") from None
    if raw.size == 0 or raw.size % record:
        raise DataError(
            f"{path} holds {raw.size} bytes, not a whole number of {record}-byte records: "
            "truncated or corrupt; delete it and re-download"
        )
    rows = raw.reshape(-1, record)  # (N, record)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32)  # (N, 3, 32, 32)
    labels = rows[:, label_bytes - 1].astype(np.int64)  # (N,)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels))


def _concat(parts: list[ImageSet]) -> ImageSet:
    return ImageSet(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def _classes(folder: Path, source: CifarSource) -> tuple[str, ...]:
    names_file = folder / source.class_file
    if names_file.is_file():
        names = tuple(line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip())
        if len(names) == len(source.classes):
            return names
    return source.classes


def load_cifar_dir(folder: Path, source: CifarSource) -> RawDataset:
    """Read an extracted ``source.folder`` (the record files and the class names)."""
    return RawDataset(
        name=source.name,
        train=_concat([read_cifar_bin(folder / f, source.label_bytes) for f in source.train_files]),
        test=_concat([read_cifar_bin(folder / f, source.label_bytes) for f in source.test_files]),
        classes=_classes(folder, source),
        augment=Augment(pad=4, flip=True),
        mean=source.mean,
        std=source.std,
    )


def extract_archive(archive: Path, target: Path, folder: str) -> Path:
    """Extract ``archive`` safely and move its ``folder`` into ``target``.

    Extraction uses tarfile's ``data`` filter (no absolute paths, no ``..``, no links or
    devices leaving the destination) into a temporary directory, so a failed or refused
    extraction never leaves a half-filled ``target / folder``.

    Returns:
        ``target / folder``.

    Raises:
        DataError: the archive is corrupt, holds an unsafe member, or lacks ``folder``.
    """
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=target))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except tarfile.FilterError as e:
            member = e.tarinfo.name if e.tarinfo is not None else "?"
            raise DataError(
                f"refusing to extract {archive}: member {member!r} is unsafe ({e}); "
                "this is not the official archive: delete it and re-download"
            ) from None
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise DataError(f"{archive} is corrupt or truncated ({e}); delete it and re-download") from None
        except OSError as e:
            raise DataError(
                f"cannot extract {archive} into {target} ({e}); make it writable or extract it yourself"
            ) from None
        extracted = tmp / folder
        if not extracted.is_dir():
            raise DataError(f"{archive} has no {folder}/ folder; it is not the official archive: re-download it")
        final = target / folder
        if final.exists():
            shutil.rmtree(final)  # an incomplete earlier copy: _has_records() was false for it
        os.replace(extracted, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _has_records(folder: Path, source: CifarSource) -> bool:
    return all((folder / f).is_file() for f in source.train_files + source.test_files)


def _find_in(directory: Path, source: CifarSource) -> Path | None:
    """The extracted folder in ``directory`` (extracting the archive there if needed)."""
    for folder in (directory / source.folder, directory):
        if folder.is_dir() and _has_records(folder, source):
            return folder
    archive = directory / source.archive
    if archive.is_file():
        return extract_archive(archive, directory, source.folder)
    return None


def _locate(
    source: CifarSource, path: str | None, data_dir: Path | None, download: bool, progress: ProgressFn | None
) -> Path:
    hint = _download.offline_hint(source.name, [source.archive])

    def fetch_into(target: Path) -> Path:
        url = _BASE_URL + source.archive
        archive = _download.download_file(url, target / source.archive, source.sha256, hint=hint, progress=progress)
        return extract_archive(archive, target, source.folder)

    return _download.locate(
        source.name, path, data_dir,
        find=lambda d: _find_in(d, source), fetch_into=fetch_into,
        download=download, what=f"{source.folder}/ or {source.archive}", hint=hint,
    )


@DATASETS.register("cifar10")
def load_cifar10(
    path: str | None,
    *,
    data_dir: Path | None,
    download: bool,
    progress: ProgressFn | None,
    image_size: int | None = None,  # native size only: load_dataset resizes
) -> RawDataset:
    """CIFAR-10: 50k/10k 32x32 colour images, 10 classes (Krizhevsky, 2009)."""
    source = CIFAR_SOURCES["cifar10"]
    return load_cifar_dir(_locate(source, path, data_dir, download, progress), source)


@DATASETS.register("cifar100")
def load_cifar100(
    path: str | None,
    *,
    data_dir: Path | None,
    download: bool,
    progress: ProgressFn | None,
    image_size: int | None = None,  # native size only: load_dataset resizes
) -> RawDataset:
    """CIFAR-100: 50k/10k 32x32 colour images, 100 fine classes (Krizhevsky, 2009)."""
    source = CIFAR_SOURCES["cifar100"]
    return load_cifar_dir(_locate(source, path, data_dir, download, progress), source)
