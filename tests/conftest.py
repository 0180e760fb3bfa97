"""Shared fixtures: small real data sets and a CLI runner."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KDSEARCH_NO_DOWNLOAD", "1")  # tests never touch the network
os.environ.setdefault("KDSEARCH_CACHE", tempfile.mkdtemp(prefix="kdsearch-test-cache-"))  # never the user's cache

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fashion_npz(tmp_path_factory) -> Path:
    """1,200 real Fashion-MNIST images as an npz (or synthetic stripes when the package is absent)."""
    path = tmp_path_factory.mktemp("data") / "fashion_small.npz"
    if (FASHION / "train-images-idx3-ubyte.gz").exists():
        from kdsearch.data import load_dataset

        d = load_dataset("fashion-mnist", subset=1000, seed=0)
        x = d.train.images[:, 0].numpy()
        y = d.train.labels.numpy()
        np.savez(path, x=x, y=y, x_test=d.val.images[:200, 0].numpy(), y_test=d.val.labels[:200].numpy())
    else:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 10, 1200)
        x = np.zeros((1200, 28, 28), np.uint8)
        for i, label in enumerate(y):
            x[i, :, label * 2 : label * 2 + 4] = 200
        x = (x + rng.integers(0, 40, x.shape)).astype(np.uint8)
        np.savez(path, x=x[:1000], y=y[:1000], x_test=x[1000:], y_test=y[1000:])
    return path


@pytest.fixture()
def cli():
    """Run the CLI in-process: returns (exit_code, stdout, stderr)."""
    from kdsearch.cli import main

    def invoke(*args: str):
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        from kdsearch.cli import _console

        _console.console.file = out
        _console.err_console.file = err
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
        _console.console.file = None
        _console.err_console.file = None
        return code, out.getvalue(), err.getvalue()

    return invoke


@pytest.fixture()
def resolved_run(cli, monkeypatch, tmp_path):
    """``kdsearch run ARGS``'s resolved configuration (a :class:`RunConfig`), the pipeline not run."""
    import kdsearch.pipeline as pipeline

    seen = {}

    def capture(config, out, **kwargs):
        seen["config"] = config
        return {}

    monkeypatch.setattr(pipeline, "run_pipeline", capture)
    monkeypatch.setattr("kdsearch.report.tables.summary_table", lambda summary: "")

    def run(*args):
        code, _, err = cli("run", "--out", tmp_path / "run", "--quiet", *args)
        assert code == 0, err
        return seen["config"]

    return run


def _open_storage_at_the_barrier(url: str, barrier, results) -> None:
    from kdsearch.search.storage import get_storage

    barrier.wait()
    try:
        get_storage(url)
        results.put("ok")
    except BaseException as e:  # noqa: BLE001 - reported to the test
        results.put(str(e))


@pytest.fixture()
def open_storage_together():
    """Open one storage URL from ``n`` processes released at the same instant; their outcomes."""
    import multiprocessing

    def run(url: str, n: int = 6) -> list[str]:
        ctx = multiprocessing.get_context("fork")
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_open_storage_at_the_barrier, args=(url, barrier, results)) for _ in range(n)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join()
        return outcomes

    return run


def _count_read_only(db: Path, sql: str) -> int:
    """``SELECT COUNT(*) ...`` on an Optuna SQLite file another process is writing: read-only, so a
    test watches a study without joining it; 0 while the file or its schema does not exist yet."""
    import contextlib
    import sqlite3

    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            return con.execute(sql).fetchone()[0]
    except sqlite3.Error:  # the schema is being created
        return 0


@pytest.fixture()
def count_read_only():
    """:func:`_count_read_only` for tests that poll a study while a killed-to-be process runs."""
    return _count_read_only
