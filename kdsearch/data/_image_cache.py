"""Decoded images kept on disk as one memory-mapped uint8 array, keyed by what they came from.

An entry is a folder ``<cache root>/imagefolder/<key>/`` holding ``images.npy`` (all splits,
``(N, C, H, W)`` uint8), ``labels.npy`` (``(N,)`` int64) and ``meta.json`` (classes, where
each split starts and ends, training-set statistics). ``meta.json`` is written last, and
every file goes through a temporary name then a rename, so an entry either is complete
or is not there. Opening one maps the pixels (copy-on-write) instead of reading them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from kdsearch.errors import DataError
from kdsearch.files import atomic_path, write_json

__all__ = ["CACHE_FORMAT", "CachedImages", "cache_root", "entry_key", "open_entry", "write_entry"]

CACHE_FORMAT = 1  # bump when the decoding or the layout changes: old entries are then ignored


def cache_root() -> Path:
    """``$KDSEARCH_CACHE``, else ``$XDG_CACHE_HOME/kdsearch``, else ``~/.cache/kdsearch``."""
    if os.environ.get("KDSEARCH_CACHE"):
        return Path(os.environ["KDSEARCH_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "kdsearch"
    return Path.home() / ".cache" / "kdsearch"


def entry_key(root: Path, files: Iterable[Path], settings: dict[str, Any]) -> str:
    """A digest of every file's path relative to ``root``, size and mtime, plus ``settings``.

    Any added, removed, renamed, rewritten or touched image gives a new key, as does any
    change of the decoding settings or of :data:`CACHE_FORMAT`. Only ``stat`` is called.
    """
    digest = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **settings}, sort_keys=True).encode())
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


@dataclass(frozen=True, eq=False)
class CachedImages:
    """An opened entry.

    Attributes:
        images: ``(N, C, H, W)`` uint8, memory-mapped copy-on-write (writes stay private).
        labels: ``(N,)`` int64.
        meta: what :func:`write_entry` was given as ``meta``.
    """

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    meta: dict[str, Any]


def _entry_dir(key: str) -> Path:
    return cache_root() / "imagefolder" / key


def open_entry(key: str) -> CachedImages | None:
    """The entry stored under ``key``, or None when there is none (or it is unreadable)."""
    folder = _entry_dir(key)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        # "c": copy-on-write; torch cannot wrap a read-only ("r") array without a warning.
        images = np.load(folder / "images.npy", mmap_mode="c")
        labels = np.load(folder / "labels.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if meta.get("format") != CACHE_FORMAT or images.dtype != np.uint8 or images.ndim != 4:
        return None
    if labels.shape != images.shape[:1]:
        return None
    return CachedImages(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), meta)


def write_entry(
    key: str,
    shape: tuple[int, int, int, int],
    fill: Callable[[np.ndarray], dict[str, Any]],
    labels: np.ndarray,
    meta: dict[str, Any],
) -> CachedImages:
    """Write a new entry, then open it.

    Args:
        key: from :func:`entry_key`.
        shape: ``(N, C, H, W)`` of the images.
        fill: called as ``fill(array)`` with the writable ``(N, C, H, W)`` uint8 memory map
            of the (temporary) image file; it writes every image and returns more facts for
            ``meta.json`` (statistics of the pixels, say). It may raise to abandon the entry:
            nothing is left behind then.
        labels: ``(N,)`` int64.
        meta: JSON-serialisable facts stored alongside (``format`` is added).

    Returns:
        The entry, opened as :func:`open_entry` does. Older entries with the same
        ``meta["source"]`` and ``meta["settings"]`` (the folder changed since) are removed.
    """
    folder = _entry_dir(key)
    try:
        with atomic_path(folder / "images.npy") as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            meta = {**meta, **fill(array)}
            array.flush()
            del array
        with atomic_path(folder / "labels.npy") as tmp:
            np.save(tmp, labels.astype(np.int64), allow_pickle=False)
        write_json(folder / "meta.json", {"format": CACHE_FORMAT, **meta})  # last: the entry is complete
    except OSError as e:
        size_mib = int(np.prod(shape)) >> 20
        raise DataError(
            f"cannot write the decoded-image cache in {folder} ({e}); it needs about {size_mib} MiB: "
            "free some space or set $KDSEARCH_CACHE to a writable folder"
        ) from None
    _remove_older(folder, {"source": meta.get("source"), "settings": meta.get("settings")})
    entry = open_entry(key)
    assert entry is not None, f"cache entry {folder} unreadable right after writing it"
    return entry


def _remove_older(keep: Path, origin: dict[str, Any]) -> None:
    """Drop other entries of the same folder and settings: its files changed, they will not be hit again."""
    if origin["source"] is None:
        return
    for other in keep.parent.iterdir():
        if other == keep or not other.is_dir() or other.name.startswith("."):
            continue
        try:
            meta = json.loads((other / "meta.json").read_text(encoding="utf-8"))
            same = {"source": meta.get("source"), "settings": meta.get("settings")} == origin
        except (OSError, ValueError):
            continue  # being written by someone else, or not ours
        if same:
            shutil.rmtree(other, ignore_errors=True)  # a process still mapping it keeps its pages
