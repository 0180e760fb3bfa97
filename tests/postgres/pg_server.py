"""A throwaway PostgreSQL server on loopback, for tests and benchmarks (DESIGN.md's recipe).

initdb refuses to run as root, so as root the server runs as the ``postgres`` user (runuser).
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

__all__ = ["find_bin_dir", "postgres_server", "create_database", "free_port"]


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin holding initdb and pg_ctl, or the one on PATH."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--", *cmd] if runuser else ["su", "postgres", "-c", " ".join(cmd)]


@contextlib.contextmanager
def postgres_server(bin_dir: Path) -> Iterator[str]:
    """Start a server on a free loopback port; yields its base URL ``postgresql+psycopg2://postgres@127.0.0.1:PORT``."""
    root = Path(tempfile.mkdtemp(prefix="kdsearch-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]), **run)
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off"
    subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(data / "log"), "-w",
                                 "start"]), **run)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def admin_connection(url: str):
    """A psycopg2 connection to the ``postgres`` database of the server of ``url`` (a base or database URL)."""
    import psycopg2

    host, port = url.split("@", 1)[1].split("/")[0].split(":")
    return psycopg2.connect(host=host, port=int(port), user="postgres", dbname="postgres")


def create_database(base_url: str) -> str:
    """A new empty database on the server at ``base_url``; returns its URL."""
    name = "kd_" + uuid.uuid4().hex[:12]
    conn = admin_connection(base_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return f"{base_url}/{name}"
