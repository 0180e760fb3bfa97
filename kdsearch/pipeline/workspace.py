"""Opening a run directory for a command: refuse to overwrite, and leave nothing behind on failure.

A command that fails before any stage wrote a result removes the directory it created, so the
same command can simply be run again (no ``--force``, no ``--resume``).
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator

from kdsearch.errors import UsageError
from kdsearch.rundir import RUN_CONFIG, RUN_LOG, RunDir

__all__ = ["prepare_run_dir", "opened_run_dir", "holds_results"]

# what a command writes before any stage produces a result
_BOOKKEEPING = {RUN_CONFIG, RUN_LOG}


def prepare_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse to overwrite an existing run unless ``resume`` or ``force``; check it is writable."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} is a file; give a directory")
    if run_dir.exists() and any(run_dir.iterdir()):
        if force and not resume:
            if not RunDir(run_dir).config.exists():
                raise UsageError(f"--force only replaces a kdsearch run directory; {run_dir} holds other files")
            shutil.rmtree(run_dir)
        elif not resume:
            raise UsageError(f"{run_dir} already exists; add --resume to continue it or --force to start over")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to {run_dir} ({e.strerror}); choose another --out") from None


def holds_results(directory: Path) -> bool:
    """Whether ``directory`` holds any file besides a command's bookkeeping (run.yaml, the log)."""
    for path in directory.rglob("*"):
        if path.is_file() and not (path.parent == directory and path.name in _BOOKKEEPING):
            return True
    return False


@contextlib.contextmanager
def opened_run_dir(run_dir: Path, *, resume: bool, force: bool) -> Iterator[Path]:
    """:func:`prepare_run_dir`, then remove the directory again if the body fails before any
    stage wrote a result into it (a directory that existed before is never removed)."""
    ours = not run_dir.exists() or (force and not resume)  # --force replaces it: the new one is ours
    prepare_run_dir(run_dir, resume=resume, force=force)
    try:
        yield run_dir
    except BaseException:
        if ours and run_dir.is_dir() and not holds_results(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
