"""The ``kdsearch`` command line: parse and validate, call one library function, render."""
from __future__ import annotations

import sys
from typing import Optional

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click; older releases depend on it
    from typer import _click as click
except ImportError:  # pragma: no cover - depends on the installed typer
    import click  # type: ignore[no-redef]

from kdsearch import __version__
from kdsearch.cli._console import err_console

__all__ = ["app", "main"]

# the same exceptions whether click is vendored (typer >= 0.20) or a dependency
_EXIT = tuple({typer.Exit, getattr(click.exceptions, "Exit", typer.Exit)})
_ABORT = tuple({typer.Abort, getattr(click.exceptions, "Abort", typer.Abort)})


def _flags_without_type(params: list[click.Parameter]) -> list[click.Parameter]:
    """Give flags an empty metavar, the text Typer's Rich help then prints as their type."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    return params


class _Group(TyperGroup):
    """Typer's group, but ``--help`` shows no value type for flags (``--json``, ``--augment/--no-augment``).

    Typer 0.29's Rich help prints a type for every option, ``<bool>`` for a flag, although a
    flag takes no value (its plain help and older Typers print none); for an option with a
    metavar it prints the metavar instead. Set here, for every command and the built-in ``--help``.
    """

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return _flags_without_type(super().get_params(ctx))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _flags_without_type(command.get_params(ctx))
        return command


app = typer.Typer(
    cls=_Group,
    name="kdsearch",
    help=(
        "Find the student network that distils best from your teacher, train it, and ship it as ONNX.\n\n"
        "Example: kdsearch run --data fashion-mnist --preset quick --out runs/quick"
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=True,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kdsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """kdsearch: search, distil, quantize and export a student for your teacher."""


from kdsearch.cli import correlate, info, quantize, report, run, score, stages  # noqa: E402  (commands register on `app`)

run.register(app)
stages.register(app)
quantize.register(app)
correlate.register(app)
score.register(app)
info.register(app)
report.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes become one red line on stderr and a non-zero exit, never a traceback."""
    from kdsearch.errors import KdsearchError
    from kdsearch.logs import warnings_as_lines

    command = typer.main.get_command(app)
    try:
        with warnings_as_lines():  # a KdsearchWarning: one "warning: ..." line, once; library warnings: not here
            code = command.main(args=argv if argv is not None else sys.argv[1:], prog_name="kdsearch", standalone_mode=False)
        if isinstance(code, int):  # without standalone mode, click returns typer.Exit's code instead of exiting
            return code
    except KdsearchError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except click.exceptions.NoArgsIsHelpError as e:  # `kdsearch` alone prints help
        e.ctx.get_help() and click.echo(e.ctx.get_help())
        return 0
    except click.exceptions.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "kdsearch"
        err_console.print(f"[bold red]error:[/] {cmd}: {e.format_message()} (see {cmd} --help)", highlight=False, soft_wrap=True)
        return 2
    except _EXIT as e:
        return e.exit_code
    except click.exceptions.ClickException as e:
        err_console.print(f"[bold red]error:[/] {e.format_message()}", highlight=False, soft_wrap=True)
        return e.exit_code
    except (*_ABORT, KeyboardInterrupt):
        err_console.print("[bold red]stopped[/] (Ctrl-C); add --resume to the same command to continue", highlight=False)
        return 130
    return 0


def entry() -> None:
    sys.exit(main())
