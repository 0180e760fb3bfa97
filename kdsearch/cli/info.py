"""Listing commands: what spaces, proxies and models exist."""
from __future__ import annotations

import typer
from rich.table import Table

from kdsearch.cli import _options as o
from kdsearch.cli._console import console, print_json

__all__ = ["register"]


def _listing(title: str, rows: list[tuple[str, str]], json_out: bool) -> None:
    if json_out:
        print_json([{"name": n, "description": d} for n, d in rows])
        return
    table = Table(title=title, show_header=False, box=None)
    for name, desc in rows:
        table.add_row(f"[bold]{name}[/]", desc)
    console.print(table)


def spaces(json_out: o.Json = False) -> None:
    """List the built-in search spaces, one line each.

    Example: kdsearch spaces --json
    """
    from kdsearch.spaces import builtin_space_names, load_space

    _listing("search spaces", [(n, load_space(n).describe()) for n in builtin_space_names()], json_out)


def proxies(json_out: o.Json = False) -> None:
    """List the proxies that score candidates, one line each.

    Example: kdsearch proxies
    """
    from kdsearch.proxies import PROXIES

    rows = []
    for name in PROXIES.names():
        doc = (PROXIES.get(name).__doc__ or "").strip().splitlines()
        rows.append((name, doc[0] if doc else ""))
    _listing("proxies (higher is better; cost proxies are minimised)", rows, json_out)


def models(json_out: o.Json = False) -> None:
    """List the model zoo (teachers by name).

    Example: kdsearch models
    """
    from kdsearch.models.zoo import MODELS

    rows = []
    for name in MODELS.names():
        doc = (MODELS.get(name).__doc__ or "").strip().splitlines()
        rows.append((name, doc[0] if doc else ""))
    _listing("model zoo", rows, json_out)


def register(app: typer.Typer) -> None:
    app.command("spaces", rich_help_panel="Information")(spaces)
    app.command("proxies", rich_help_panel="Information")(proxies)
    app.command("models", rich_help_panel="Information")(models)
