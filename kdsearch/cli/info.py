"""Listing commands: what spaces, proxies, models and losses exist."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from kdsearch.cli import _options as o
from kdsearch.cli._console import console, print_json

__all__ = ["register", "plain_summary"]

# reST markup that docstrings use and a terminal must not show: :role:`~a.b.Name`, ``literal``, `default role`
_ROLE = re.compile(r":[\w:-]+:`(?:([^`<]+?)\s*<[^`>]+>|(~?)([^`]+))`")
_LITERAL = re.compile(r"``(.+?)``|`([^`]+)`")
# the citation at the end of a loss summary, e.g. ' (Hinton, Vinyals, Dean, "...", 2015)': `losses` shows it apart
_CITATION = re.compile(r"\s*\([^()]*\b(19|20)\d\d\)(?=\.?$)")


def _role_text(role: re.Match[str]) -> str:
    """What Sphinx shows for a role: its title, else its target (``~``: the target's last part)."""
    title, short, target = role.groups()
    return title or (target.rsplit(".", 1)[-1] if short else target)


def plain_summary(doc: str | None) -> str:
    """A docstring's first paragraph as plain text: one line, reST roles and literals reduced to their text."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    paragraph = _ROLE.sub(_role_text, paragraph)
    return _LITERAL.sub(lambda m: m.group(1) or m.group(2), paragraph)


def _listing(title: str, rows: list[tuple[str, str]], json_out: bool, configured: set[str] | None = None) -> None:
    """One line per entry; with --config, the entries that config uses are marked (JSON: ``configured``)."""
    if json_out:
        extra = (lambda n: {"configured": n in configured}) if configured is not None else (lambda n: {})
        print_json([{"name": n, "description": d, **extra(n)} for n, d in rows])
        return
    table = Table(title=title, show_header=False, box=None)
    for name, desc in rows:
        mark = "  [green](in --config)[/]" if configured and name in configured else ""
        table.add_row(f"[bold]{name}[/]", escape(desc) + mark)
    console.print(table)


def _config(config_file: Path | None):
    from kdsearch.cli._common import base_config

    return base_config(config_file) if config_file is not None else None


def spaces(config_file: o.Config = None, json_out: o.Json = False) -> None:
    """List the built-in search spaces, one line each (with --config, its own space YAML too, marked).

    Example: kdsearch spaces --json
    """
    from kdsearch.spaces import PRUNED_SPACE, PrunedSpace, builtin_space_names, load_space

    config = _config(config_file)
    rows = [(n, load_space(n).describe()) for n in builtin_space_names()]
    # made from a teacher, so no YAML to load: its docstring says what it holds
    summary = plain_summary(PrunedSpace.__doc__).rstrip(".")
    rows = sorted([*rows, (PRUNED_SPACE, f"{PRUNED_SPACE} ({PrunedSpace.family}): {summary[:1].lower()}{summary[1:]}")])
    if config is not None and config.search.space not in [name for name, _ in rows]:
        rows.append((config.search.space, load_space(config.search.space).describe()))  # a YAML: loading validates it
    _listing("search spaces", rows, json_out, {config.search.space} if config else None)


def proxies(config_file: o.Config = None, json_out: o.Json = False) -> None:
    """List the proxies that score candidates, one line each (with --config, the search's objectives marked).

    Example: kdsearch proxies
    """
    from kdsearch.proxies import PROXIES

    rows = [(name, plain_summary(PROXIES.get(name).__doc__)) for name in PROXIES.names()]
    config = _config(config_file)
    _listing("proxies (higher is better; cost proxies are minimised)", rows, json_out,
             {config.search.proxy, *config.search.objectives} if config else None)


def models(config_file: o.Config = None, json_out: o.Json = False) -> None:
    """List the model zoo (teachers by name; with --config, the teacher it trains or names marked).

    Example: kdsearch models
    """
    from kdsearch.models.zoo import MODELS

    rows = [(name, plain_summary(MODELS.get(name).__doc__)) for name in MODELS.names()]
    config = _config(config_file)
    _listing("model zoo", rows, json_out, {config.teacher_model, config.teacher} if config else None)


def losses(config_file: o.Config = None, json_out: o.Json = False) -> None:
    """List the distillation losses with their papers and options (with --config, its distill losses marked).

    Combine them with --loss NAME:WEIGHT,... and set an option with --loss-option NAME.KEY=VALUE.

    Example: kdsearch losses --json
    """
    from kdsearch.distill.losses import LOSSES, parse_loss_spec

    config = _config(config_file)
    configured = {name for name, _ in parse_loss_spec(config.distill.loss)} if config else None
    entries: list[dict[str, Any]] = []
    for name in LOSSES.names():
        cls = LOSSES.get(name)
        entries.append({"name": name, "description": _CITATION.sub("", plain_summary(cls.__doc__)), "paper": cls.paper,
                        "options": cls.option_info()})
        if configured is not None:
            entries[-1]["configured"] = name in configured
    if json_out:
        print_json(entries)
        return
    table = Table(title="distillation losses (--loss NAME:WEIGHT,...; --loss-option NAME.KEY=VALUE)", show_lines=True)
    for col in ("loss", "what (paper)", "options (default): meaning"):
        table.add_column(col)
    for e in entries:
        mark = "\n[green](in --config)[/]" if e.get("configured") else ""
        options = "\n".join(f"[bold]{escape(x['name'])}[/] ({x['default']}): {escape(x['meaning'])}" for x in e["options"])
        table.add_row(f"[bold]{e['name']}[/]{mark}", f"{escape(e['description'])}\n[dim]{escape(e['paper'])}[/]",
                      options or "[dim]none[/]")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("spaces", rich_help_panel="Information")(spaces)
    app.command("proxies", rich_help_panel="Information")(proxies)
    app.command("models", rich_help_panel="Information")(models)
    app.command("losses", rich_help_panel="Information")(losses)
