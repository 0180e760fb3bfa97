"""Rich rendering for the CLI: progress bars (or plain lines off a terminal) and errors."""
from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console

from kdsearch.progress import Progress

__all__ = ["console", "err_console", "RichProgress", "PlainProgress", "make_progress", "fmt_fields"]

console = Console()
err_console = Console(stderr=True)


def fmt_fields(fields: dict[str, Any]) -> str:
    parts = []
    for k, v in fields.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:,.0f}" if k == "ips" else f"{k} {v:.4g}")
        else:
            parts.append(f"{k} {v}")
    return "  ".join(parts)


class RichProgress(Progress):
    """Live bars on a terminal: one per running loop, with its live fields."""

    def __init__(self, out: Console) -> None:
        # imported here: --help and shell completion never draw bars, so they need not load them
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichBars, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.out = out
        self.bars = RichBars(
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=out,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.bars.start()

    def start(self, key: str, description: str, total: int | None = None) -> None:
        if key in self.tasks:
            self.bars.remove_task(self.tasks[key])
        self.tasks[key] = self.bars.add_task(description, total=total, info="")

    def advance(self, key: str, steps: int = 1, **fields: Any) -> None:
        if key in self.tasks:
            self.bars.update(self.tasks[key], advance=steps, info=fmt_fields(fields) if fields else None)

    def finish(self, key: str) -> None:
        task = self.tasks.pop(key, None)
        if task is not None:
            self.bars.remove_task(task) if key == "batches" else self.bars.stop_task(task)

    def note(self, message: str) -> None:
        self.bars.console.print(message)

    def close(self) -> None:
        self.bars.stop()


class PlainProgress(Progress):
    """Plain lines for logs (stdout not a terminal): a line per loop start, end and every ~10 s."""

    def __init__(self, out: Console, every_s: float = 10.0) -> None:
        self.out, self.every_s = out, every_s
        self.state: dict[str, list[Any]] = {}

    def start(self, key: str, description: str, total: int | None = None) -> None:
        self.state[key] = [description, total, 0, time.monotonic()]

    def advance(self, key: str, steps: int = 1, **fields: Any) -> None:
        s = self.state.get(key)
        if s is None:
            return
        s[2] += steps
        if time.monotonic() - s[3] >= self.every_s:
            s[3] = time.monotonic()
            total = f"/{s[1]}" if s[1] else ""
            self.out.print(f"{s[0]}: {s[2]}{total} {fmt_fields(fields)}", highlight=False)

    def finish(self, key: str) -> None:
        self.state.pop(key, None)

    def note(self, message: str) -> None:
        self.out.print(message, highlight=False)

    def close(self) -> None:
        pass


def make_progress(quiet: bool, json_mode: bool) -> Progress:
    """Bars on a terminal, lines in logs, nothing with --quiet; --json keeps stdout for JSON."""
    if quiet:
        return Progress()
    out = err_console if json_mode else console
    if out.is_terminal:
        return RichProgress(out)
    return PlainProgress(out)


def close(progress: Progress) -> None:
    if hasattr(progress, "close"):
        progress.close()  # type: ignore[attr-defined]


def print_json(obj: Any) -> None:
    import json

    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
