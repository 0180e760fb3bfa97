"""load_dataset: spec parsing, split, subset, and a contract run over every registered source."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from data_builders import cifar_records, isolated_data, no_network, write_idx  # noqa: F401 (fixtures)

from kdsearch.data import DATASETS, Dataset, load_dataset
from kdsearch.errors import DataError, UsageError


def _idx_spec(root: Path, name: str) -> str:
    rng = np.random.default_rng(0)
    d = root / name
    d.mkdir()
    for prefix, n in (("train", 60), ("t10k", 20)):
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return f"{name}:{d}"


def _cifar_spec(root: Path, name: str) -> str:
    d = root / name
    d.mkdir()
    if name == "cifar10":
        for i in range(1, 6):
            (d / f"data_batch_{i}.bin").write_bytes(cifar_records(4, 1, seed=i)[0])
        (d / "test_batch.bin").write_bytes(cifar_records(4, 1, seed=9)[0])
    else:
        (d / "train.bin").write_bytes(cifar_records(20, 2, seed=1)[0])
        (d / "test.bin").write_bytes(cifar_records(4, 2, seed=2)[0])
    return f"{name}:{d}"


def _imagefolder_spec(root: Path, name: str) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(10):
            (root / "if" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "if" / cls / f"{i}.png")
    return f"imagefolder:{root / 'if'}"


def _npz_spec(root: Path, name: str) -> str:
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", x=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y=np.arange(20) % 3)
    return f"npz:{root / 'd.npz'}"


# Every registered dataset needs a tiny builder here: a new source without one fails the contract.
BUILDERS: dict[str, Callable[[Path, str], str]] = {
    "fashion-mnist": _idx_spec,
    "mnist": _idx_spec,
    "cifar10": _cifar_spec,
    "cifar100": _cifar_spec,
    "imagefolder": _imagefolder_spec,
    "npz": _npz_spec,
}


@pytest.mark.parametrize("name", DATASETS.names())
def test_contract(name: str, tmp_path: Path, isolated_data, no_network) -> None:
    assert name in BUILDERS, f"add a tiny builder for dataset {name!r} to BUILDERS"
    spec = BUILDERS[name](tmp_path, name)
    ds = load_dataset(spec, seed=0, val_fraction=0.2)
    assert isinstance(ds, Dataset)
    parts = [ds.train, ds.val] + ([ds.test] if ds.test is not None else [])
    for part in parts:
        assert part.images.dtype == torch.uint8 and part.labels.dtype == torch.int64
        assert part.images.shape[1:] == (ds.in_channels, *ds.image_size)
        if len(part):
            assert 0 <= int(part.labels.min()) and int(part.labels.max()) < ds.num_classes
    assert len(ds.val) > 0 and len(ds.mean) == len(ds.std) == ds.in_channels
    assert all(s > 0 for s in ds.std) and all(0 <= m <= 1 for m in ds.mean)
    again = load_dataset(spec, seed=0, val_fraction=0.2)
    assert torch.equal(again.val.images, ds.val.images) and torch.equal(again.train.labels, ds.train.labels)
    small = load_dataset(spec, seed=0, val_fraction=0.2, subset=5)
    assert len(small.train) == 5 and len(small.val) == 1
    assert no_network == []


def test_unknown_dataset_lists_known() -> None:
    with pytest.raises(UsageError, match="unknown dataset 'fashion_mnist'.*Did you mean 'fashion-mnist'.*cifar10"):
        load_dataset("fashion_mnist")


@pytest.mark.parametrize("spec", ["", ":x", "mnist:"])
def test_bad_spec(spec: str) -> None:
    with pytest.raises(UsageError):
        load_dataset(spec)


@pytest.mark.parametrize("kwargs, message", [({"subset": 0}, "subset must be a positive"),
                                             ({"subset": -3}, "subset must be a positive"),
                                             ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
                                             ({"val_fraction": -0.1}, r"val_fraction must be in \[0, 1\)")])
def test_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_dataset("mnist", **kwargs)


def test_split_and_subset(tmp_path: Path, isolated_data, no_network) -> None:
    spec = _idx_spec(tmp_path, "mnist")  # 60 train images, 6 per class
    a, b, c = (load_dataset(spec, seed=s, val_fraction=0.5) for s in (1, 1, 2))
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
    assert torch.bincount(a.val.labels).tolist() == [3] * 10
    sub = load_dataset(spec, seed=1, val_fraction=0.5, subset=20)
    assert len(sub.train) == 20 and len(sub.val) == 4 and torch.bincount(sub.train.labels).tolist() == [2] * 10
    assert sub.mean == a.mean and len(sub.test) == 20  # test stays whole
    # subset images come from the train split, never from val
    train_rows = {bytes(img.numpy()) for img in a.train.images}
    assert all(bytes(img.numpy()) in train_rows for img in sub.train.images)
    big = load_dataset(spec, seed=1, val_fraction=0.5, subset=10_000)
    assert len(big.train) == 30 and len(big.val) == 30


def test_label_beyond_classes(tmp_path: Path, isolated_data) -> None:
    d = tmp_path / "m"
    d.mkdir()
    for prefix in ("train", "t10k"):
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", np.zeros((3, 4, 4), np.uint8))
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", np.array([0, 1, 12], np.uint8))
    with pytest.raises(DataError, match="label is 12 but there are only 10 classes"):
        load_dataset(f"mnist:{d}")
