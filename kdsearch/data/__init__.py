"""Datasets in memory and fast tensor batches.

``load_dataset("fashion-mnist")`` finds (or downloads, SHA-256 verified) the files, parses
them without pickle, and returns a :class:`Dataset` of uint8 tensors; :func:`augment_batch` and :func:`normalize`
work on batches of those tensors in place of a data loader.
Built-in sources: ``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``, ``imagefolder:DIR``,
``npz:FILE``; a new one is a function registered with ``@DATASETS.register(name)``.
Photos (``imagefolder``) are decoded once, centre-cropped to ``image_size`` (224 by default),
into a memory-mapped cache; at 64 px and more training batches get RandomResizedCrop
(:mod:`kdsearch.data.transforms`) instead of the padded crop of small images.
"""
from __future__ import annotations

from kdsearch.data.batches import NormalizedImages, augment_batch, fixed_batch, normalize
from kdsearch.data.dataset import (
    DATASETS,
    Augment,
    Dataset,
    DatasetLoader,
    ImageSet,
    RawDataset,
    load_dataset,
)

# The built-in sources register themselves in DATASETS on import.
from kdsearch.data import cifar, idx, imagefolder, npz  # noqa: E402,F401  isort: skip

__all__ = [
    "DATASETS",
    "ImageSet",
    "Augment",
    "Dataset",
    "RawDataset",
    "DatasetLoader",
    "load_dataset",
    "normalize",
    "NormalizedImages",
    "augment_batch",
    "fixed_batch",
]
