"""The CLI starts without the heavy libraries: ``--version``, ``--help`` and every Tab of shell
completion import ``kdsearch.cli``, and torch alone takes seconds to import on two cores.

Each check runs in a fresh interpreter, since this test process has long imported torch.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

HEAVY = ("torch", "onnxruntime", "optuna", "matplotlib")

# Runs the CLI in-process in a fresh interpreter, then reports what it printed and which heavy
# libraries it loaded (main() returns the exit code instead of exiting).
_PROBE = """
import contextlib, io, json, sys
import kdsearch.cli
argv = json.loads(sys.argv[1])
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = kdsearch.cli.main(argv) if argv else 0
heavy = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
sys.stderr.write(json.dumps({"code": code, "out": out.getvalue(), "heavy": heavy}))
"""


def _probe(*argv: str) -> dict:
    env = {**os.environ, "COLUMNS": "200"}  # wide enough that Rich never folds an option name
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(list(argv)), json.dumps(HEAVY)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stderr.strip().splitlines()[-1])


def _command(name: str | None = None):
    import typer

    from kdsearch.cli import app

    group = typer.main.get_command(app)
    return group if name is None else group.commands[name]


def test_importing_the_cli_loads_no_heavy_library():
    assert _probe()["heavy"] == []


def test_root_help_lists_every_command_without_heavy_libraries():
    result = _probe("--help")
    assert result["code"] == 0 and result["heavy"] == []
    names = list(_command().commands)
    assert len(names) >= 10
    for name in names:
        assert re.search(rf"^│ {name} ", result["out"], re.M), f"`kdsearch --help` does not list {name}"


@pytest.mark.parametrize("command", ["search", "distill"])
def test_command_help_lists_every_option_without_heavy_libraries(command):
    result = _probe(command, "--help")
    assert result["code"] == 0 and result["heavy"] == []
    options = [opt for param in _command(command).params for opt in (*param.opts, *param.secondary_opts)
               if opt.startswith("--")]
    assert "--json" in options
    for opt in options:
        assert opt in result["out"], f"`kdsearch {command} --help` does not list {opt}"


def test_version_loads_no_heavy_library():
    from kdsearch import __version__

    result = _probe("--version")
    assert result["code"] == 0 and __version__ in result["out"] and result["heavy"] == []


def test_report_loads_no_torch(tmp_path):
    """``kdsearch report`` reads JSON and draws a page: no RunConfig (whose losses import torch) on the way."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.yaml").write_text("teacher: resnet8\n")
    result = _probe("report", str(run), "--json")
    assert result["code"] == 0 and (run / "report.html").is_file()
    assert "torch" not in result["heavy"]
