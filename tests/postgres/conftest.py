"""A real PostgreSQL server on loopback for the whole session (or KDSEARCH_TEST_PG_URL's)."""
from __future__ import annotations

import os

import pytest

from pg_server import create_database, find_bin_dir, postgres_server


@pytest.fixture(scope="session")
def pg_server_url():
    """Base URL ``postgresql+psycopg2://postgres@127.0.0.1:PORT`` of a running server."""
    given = os.environ.get("KDSEARCH_TEST_PG_URL")
    if given:
        yield given.rstrip("/")
        return
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on PATH; "
                    "apt-get install postgresql")
    pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed")
    with postgres_server(bin_dir) as url:
        yield url


@pytest.fixture()
def pg_url(pg_server_url):
    """A fresh, empty database for one test."""
    return create_database(pg_server_url)
