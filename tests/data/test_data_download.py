"""Lookup order and verified downloads, with the network replaced by a fake ``fetch``."""
from __future__ import annotations

import dataclasses
import hashlib
import urllib.error
from pathlib import Path

import pytest
from data_builders import idx_arrays, isolated_data, make_idx_dir, no_network, write_idx  # noqa: F401 (fixtures)

from kdsearch.data import _download, idx, load_dataset
from kdsearch.errors import DataError


def _official_mnist_bytes(tmp_path: Path) -> dict[str, bytes]:
    """Tiny stand-ins for the four MNIST .gz files, keyed by file name."""
    src = tmp_path / "src"
    src.mkdir()
    out = {}
    for base, array in idx_arrays(30, 10).items():
        write_idx(src / f"{base}.gz", array)
        out[f"{base}.gz"] = (src / f"{base}.gz").read_bytes()
    return out


def _serve(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> list[str]:
    asked: list[str] = []

    def fetch(url: str, progress=None):
        asked.append(url)
        data = files[url.rsplit("/", 1)[1]]
        for i in range(0, len(data), 1000):  # several chunks, like a real stream
            if progress is not None:
                progress(min(i + 1000, len(data)), len(data))
            yield data[i : i + 1000]

    monkeypatch.setattr(_download, "fetch", fetch)
    return asked


def test_download_verifies_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_data: Path) -> None:
    files = _official_mnist_bytes(tmp_path)
    mnist = idx.IDX_SOURCES["mnist"]
    fake = dataclasses.replace(mnist, sha256={k: hashlib.sha256(v).hexdigest() for k, v in files.items()})
    monkeypatch.setitem(idx.IDX_SOURCES, "mnist", fake)
    asked = _serve(monkeypatch, files)
    seen: list[tuple[int, int]] = []
    ds = load_dataset("mnist", progress=lambda done, total: seen.append((done, total)))
    assert sorted(asked) == sorted(mnist.base_url + name for name in files)
    assert len(ds.train) + len(ds.val) == 30 and len(ds.test) == 10
    cache = isolated_data / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)  # no temporary files left
    for name, data in files.items():
        assert (cache / name).read_bytes() == data
    assert seen and seen[-1][0] == seen[-1][1]
    # Second load: found in the cache, nothing fetched.
    asked.clear()
    load_dataset("mnist")
    assert asked == []


def test_checksum_mismatch_deletes_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_data: Path) -> None:
    wrong = b"not the real file"
    _serve(monkeypatch, {name: wrong for name in idx.IDX_SOURCES["fashion-mnist"].sha256})
    expected = idx.IDX_SOURCES["fashion-mnist"].sha256["train-images-idx3-ubyte.gz"]
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist")
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert expected in message and hashlib.sha256(wrong).hexdigest() in message
    assert "deleted" in message
    cache = isolated_data / "fashion-mnist"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_offline_error_names_both_fixes(monkeypatch: pytest.MonkeyPatch, isolated_data: Path) -> None:
    def fetch(url: str, progress=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(_download, "fetch", fetch)
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist")
    message = str(err.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message and "KDSEARCH_DATA" in message
    assert "Temporary failure in name resolution" in message
    assert not (isolated_data / "fashion-mnist").exists() or not any((isolated_data / "fashion-mnist").iterdir())


def test_network_error_mid_stream(monkeypatch: pytest.MonkeyPatch, isolated_data: Path) -> None:
    def fetch(url: str, progress=None):
        yield b"partial"
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(_download, "fetch", fetch)
    with pytest.raises(DataError, match="connection reset by peer"):
        load_dataset("mnist")
    assert not any((isolated_data / "mnist").iterdir())  # the partial file is gone


def test_no_download_when_disabled(isolated_data: Path, no_network) -> None:
    with pytest.raises(DataError, match="downloads are off.*--data-dir"):
        load_dataset("mnist", download=False)
    assert no_network == []


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_idx_dir, isolated_data, no_network) -> None:
    # Each place holds a different number of training images, so the count says which won.
    system, env, data_dir = tmp_path / "system", tmp_path / "env", tmp_path / "dd"
    make_idx_dir(system / "mnist", n_train=20)
    make_idx_dir(env / "mnist", n_train=30)
    make_idx_dir(data_dir / "mnist", n_train=40)
    make_idx_dir(isolated_data / "mnist", n_train=60)
    monkeypatch.setattr(_download, "SYSTEM_DATA_DIRS", (system,))
    monkeypatch.setenv("KDSEARCH_DATA", str(env))

    def total(**kw) -> int:
        ds = load_dataset("mnist", val_fraction=0.0, **kw)
        return len(ds.train)

    assert total(data_dir=data_dir) == 40
    assert total() == 30
    monkeypatch.delenv("KDSEARCH_DATA")
    assert total() == 20
    monkeypatch.setattr(_download, "SYSTEM_DATA_DIRS", ())
    assert total() == 60
    assert no_network == []


def test_download_tables_are_well_formed() -> None:
    # The download table must name exactly the four official files.
    for source in idx.IDX_SOURCES.values():
        assert sorted(source.sha256) == sorted(
            ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
        )
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in source.sha256.values())


def test_real_fetch_against_local_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The one test of the real urllib path: a loopback HTTP server, no outside network.
    import functools
    import http.server
    import threading

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    payload = bytes(range(256)) * 5000  # > one 1 MiB chunk
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "f.bin").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        seen: list[tuple[int, int]] = []
        dest = _download.download_file(
            base + "f.bin", tmp_path / "out" / "f.bin", hashlib.sha256(payload).hexdigest(),
            hint="HINT", progress=lambda d, t: seen.append((d, t)),
        )
        assert dest.read_bytes() == payload and seen[-1] == (len(payload), len(payload))
        with pytest.raises(DataError, match=r"could not download missing\.bin .*offline\? HINT"):
            _download.download_file(base + "missing.bin", tmp_path / "out" / "missing.bin", "0" * 64, hint="HINT")
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f.bin"]
    finally:
        server.shutdown()
        server.server_close()
