"""How the library reports progress without printing: the CLI passes a :class:`Progress`."""
from __future__ import annotations

from typing import Any

__all__ = ["Progress"]


class Progress:
    """A sink for progress events; this base class ignores them all.

    The library calls ``start`` when a loop begins, ``advance`` as it goes (with live fields
    such as ``loss=`` or ``best=``), ``finish`` when it ends and ``note`` for one-line news.
    The CLI subclasses it with Rich bars; tests can record the calls.
    """

    def start(self, key: str, description: str, total: int | None = None) -> None:
        """A loop called ``key`` begins with ``total`` steps (None: unknown)."""

    def advance(self, key: str, steps: int = 1, **fields: Any) -> None:
        """``steps`` more steps of ``key`` are done; ``fields`` are live values to show."""

    def finish(self, key: str) -> None:
        """The loop ``key`` is over."""

    def note(self, message: str) -> None:
        """A one-line message for the user (a stage finished, a file was written...)."""


NULL_PROGRESS = Progress()
