"""Where dataset files are looked for, and verified downloads of the missing ones."""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Sequence

from kdsearch.errors import DataError
from kdsearch.files import atomic_path

__all__ = [
    "SYSTEM_DATA_DIRS",
    "search_dirs",
    "download_dir",
    "locate",
    "fetch",
    "download_file",
    "offline_hint",
]

ProgressFn = Callable[[int, int], None]

# Debian's dataset-* packages install under /usr/share/datasets/<name>.
SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)

_CHUNK = 1 << 20
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError, OSError)


def search_dirs(name: str, data_dir: Path | None) -> list[Path]:
    """Directories searched for dataset ``name``, in order.

    ``data_dir/name`` and ``data_dir``; ``$KDSEARCH_DATA/name``; ``/usr/share/datasets/name``;
    ``~/.cache/kdsearch/name``.
    """
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [data_dir / name, data_dir]
    env = os.environ.get("KDSEARCH_DATA")
    if env:
        dirs.append(Path(env) / name)
    dirs += [base / name for base in SYSTEM_DATA_DIRS]
    dirs.append(download_dir(name, None))
    return dirs


def download_dir(name: str, data_dir: Path | None) -> Path:
    """Where downloads of ``name`` go: ``data_dir/name``, else ``~/.cache/kdsearch/name``."""
    if data_dir is not None:
        return data_dir / name
    return Path.home() / ".cache" / "kdsearch" / name


def locate(
    name: str,
    path: str | None,
    data_dir: Path | None,
    *,
    find: Callable[[Path], Path | None],
    fetch_into: Callable[[Path], Path],
    download: bool,
    what: str,
    hint: str,
) -> Path:
    """Find a dataset's files, downloading them when allowed.

    Args:
        name: the dataset's registry name.
        path: the ``:PATH`` of the spec; when given, only this directory is looked at.
        data_dir: searched first, and the download target (see :func:`search_dirs`).
        find: returns where the usable files are for a directory, or None.
        fetch_into: downloads into a directory and returns where the usable files are.
        download: whether :func:`fetch_into` may be called.
        what: the files, for messages.
        hint: how to provide the files by hand.
    """
    if path is not None:
        directory = Path(path).expanduser()
        found = find(directory) if directory.is_dir() else None
        if found is None:
            raise DataError(
                f"{name}: {directory} does not hold {what}; put them there, "
                f"or write just {name} to search the usual places"
            )
        return found
    dirs = search_dirs(name, data_dir)
    for directory in dirs:
        found = find(directory) if directory.is_dir() else None
        if found is not None:
            return found
    if not download:
        raise DataError(
            f"{name} ({what}) not found in {', '.join(map(str, dirs))} and downloads are off; "
            f"allow downloads, or {hint}"
        )
    return fetch_into(download_dir(name, data_dir))


def fetch(url: str, progress: ProgressFn | None = None) -> Iterator[bytes]:
    """Stream the body of ``url`` in chunks, reporting ``progress(done, total)`` in bytes.

    Tests replace this function to stay offline.
    """
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (http(s) URLs from our table)
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        while chunk := response.read(_CHUNK):
            done += len(chunk)
            if progress is not None:
                progress(done, total)
            yield chunk


def _network_chunks(url: str, name: str, hint: str, progress: ProgressFn | None) -> Iterator[bytes]:
    """:func:`fetch`, with network failures (not local write errors) turned into DataError."""
    try:
        yield from fetch(url, progress)
    except _NETWORK_ERRORS as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"could not download {name} from {url} ({reason}); offline? {hint}") from None


def download_file(
    url: str,
    dest: Path,
    sha256: str,
    *,
    hint: str,
    progress: ProgressFn | None = None,
) -> Path:
    """Download ``url`` to ``dest`` through a temporary name, verify its SHA-256, then rename.

    Args:
        url: where the file is.
        dest: its final path; never holds a partial or unverified file.
        sha256: the expected hex digest.
        hint: how to get the file without a network, appended to network errors.
        progress: called with ``(done, total)`` bytes.

    Raises:
        DataError: the network failed, or the digest differs (the download is deleted).
    """
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            for chunk in _network_chunks(url, dest.name, hint, progress):
                digest.update(chunk)
                f.write(chunk)
        actual = digest.hexdigest()
        if actual != sha256:
            raise DataError(
                f"checksum mismatch for {dest.name} downloaded from {url}: expected sha256 {sha256}, "
                f"got {actual}; the file was deleted. Try again; if it persists, fetch the file by hand "
                f"and pass --data-dir"
            )
    return dest


def offline_hint(name: str, files: Sequence[str], apt_package: str | None = None) -> str:
    """The one-line fix for a missing dataset, naming every way to provide it."""
    ways = [f"`apt-get install {apt_package}`"] if apt_package else []
    ways.append(
        f"put {', '.join(files)} in a directory and pass --data-dir DIR "
        f"(or set $KDSEARCH_DATA so that $KDSEARCH_DATA/{name} holds them)"
    )
    return " or ".join(ways)
