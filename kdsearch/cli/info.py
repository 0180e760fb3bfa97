"""Listing commands: what spaces, proxies and models exist."""
from __future__ import annotations

import typer
from rich.table import Table

from pathlib import Path
from typing import Optional

from kdsearch.cli import _options as o
from kdsearch.cli._console import console, print_json

__all__ = ["register"]


def _listing(title: str, rows: list[tuple[str, str]], json_out: bool, configured: set[str] | None = None) -> None:
    """One line per entry; with --config, the entries that config uses are marked (JSON: ``configured``)."""
    if json_out:
        extra = (lambda n: {"configured": n in configured}) if configured is not None else (lambda n: {})
        print_json([{"name": n, "description": d, **extra(n)} for n, d in rows])
        return
    table = Table(title=title, show_header=False, box=None)
    for name, desc in rows:
        mark = "  [green](in --config)[/]" if configured and name in configured else ""
        table.add_row(f"[bold]{name}[/]", desc + mark)
    console.print(table)


def _config(config_file: Path | None):
    from kdsearch.cli._common import base_config

    return base_config(config_file) if config_file is not None else None


def spaces(config_file: o.Config = None, json_out: o.Json = False) -> None:
    """List the built-in search spaces, one line each (with --config, its own space YAML too, marked).

    Example: kdsearch spaces --json
    """
    from kdsearch.spaces import builtin_space_names, load_space

    config = _config(config_file)
    names = list(builtin_space_names())
    if config is not None and config.search.space not in names:
        names.append(config.search.space)  # a YAML file: loading it validates it
    _listing("search spaces", [(n, load_space(n).describe()) for n in names], json_out,
             {config.search.space} if config else None)


def proxies(config_file: o.Config = None, json_out: o.Json = False) -> None:
    """List the proxies that score candidates, one line each (with --config, the search's objectives marked).

    Example: kdsearch proxies
    """
    from kdsearch.proxies import PROXIES

    rows = []
    for name in PROXIES.names():
        doc = (PROXIES.get(name).__doc__ or "").strip().splitlines()
        rows.append((name, doc[0] if doc else ""))
    config = _config(config_file)
    _listing("proxies (higher is better; cost proxies are minimised)", rows, json_out,
             {config.search.proxy, *config.search.objectives} if config else None)


def models(config_file: o.Config = None, json_out: o.Json = False) -> None:
    """List the model zoo (teachers by name; with --config, the teacher it trains or names marked).

    Example: kdsearch models
    """
    from kdsearch.models.zoo import MODELS

    rows = []
    for name in MODELS.names():
        doc = (MODELS.get(name).__doc__ or "").strip().splitlines()
        rows.append((name, doc[0] if doc else ""))
    config = _config(config_file)
    _listing("model zoo", rows, json_out, {config.teacher_model, config.teacher} if config else None)


def register(app: typer.Typer) -> None:
    app.command("spaces", rich_help_panel="Information")(spaces)
    app.command("proxies", rich_help_panel="Information")(proxies)
    app.command("models", rich_help_panel="Information")(models)
