"""Workers opening one fresh study database at the same instant: how many rounds lose a worker.

Optuna's ``RDBStorage`` creates its schema on first open without a lock. In each round ``--procs``
processes are released together by a barrier onto a new SQLite file (or, with ``--pg URL``, a new
database on that PostgreSQL server), once through plain ``optuna.storages.RDBStorage`` (the
baseline) and once through ``kdsearch.search.study.get_storage`` (which opens again after losing
the race). A round fails when any process cannot open the storage.

Run: ``python benchmarks/storage_race.py [--rounds 20] [--procs 6] [--pg local|postgresql+psycopg2://...]``.
Writes ``benchmarks/storage_race.json`` (``storage_race_pg.json`` with ``--pg``).
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import sys
import tempfile
from pathlib import Path


def _open(how: str, url: str, barrier, results) -> None:
    import optuna

    from kdsearch.search.storage import get_storage

    barrier.wait()
    try:
        if how == "optuna":
            optuna.storages.RDBStorage(url)
        else:
            get_storage(url)
        results.put("ok")
    except BaseException as e:  # noqa: BLE001 - counted
        text = str(e)
        results.put("duplicate version row" if "alembic_version" in text else
                    "table already exists" if "already exists" in text else type(e).__name__)


def _round(how: str, url: str, procs: int) -> list[str]:
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_open, args=(how, url, barrier, results)) for _ in range(procs)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join()
    return outcomes


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "postgres"))
from pg_server import create_database, find_bin_dir, postgres_server  # noqa: E402 - the tests' loopback server


def _fresh_url(pg: str | None, tmp: Path, n: int) -> str:
    return f"sqlite:///{tmp / f'race{n}.db'}" if pg is None else create_database(pg)


def _race(args: argparse.Namespace, pg: str | None, report: dict) -> None:
    n = 0
    with tempfile.TemporaryDirectory() as d:
        for how in ("optuna", "kdsearch"):
            failed, errors = 0, collections.Counter()
            for _ in range(args.rounds):
                n += 1
                bad = [o for o in _round(how, _fresh_url(pg, Path(d), n), args.procs) if o != "ok"]
                failed += bool(bad)
                errors.update(bad)
            report[how] = {"rounds_failed": failed, "errors": dict(errors)}
            print(f"{how:9s} rounds with a worker that could not open the storage: {failed}/{args.rounds} {dict(errors)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--procs", type=int, default=6)
    parser.add_argument("--pg", default=None,
                        help="a PostgreSQL server URL, or 'local' to start one on loopback; default: SQLite files")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.out = args.out or Path(__file__).with_name("storage_race_pg.json" if args.pg else "storage_race.json")
    report: dict = {"procs": args.procs, "rounds": args.rounds, "backend": "postgresql" if args.pg else "sqlite"}
    if args.pg == "local":
        with postgres_server(find_bin_dir()) as url:
            _race(args, url, report)
    else:
        _race(args, args.pg, report)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
