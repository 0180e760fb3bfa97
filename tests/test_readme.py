"""Every kdsearch command in the README runs (shrunk to tiny data and sizes), so the README cannot rot."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

# What makes a README command fast enough for a test; everything else runs as written.
SHRINK = [
    (r"--data fashion-mnist", "--data {npz}"),
    (r"--preset quick", "--preset tiny"),
    (r"--epochs \d+", "--epochs 1"),
    (r"--trials \d+", "--trials 4 --population 4 --proxy-batch 16"),
    (r"--model resnet56", "--model resnet20"),  # a teacher a 2x faster student can beat at 28 px
    (r"--speedup [\d.]+", "--speedup 2"),
    (r"--subset \d+", "--subset 600"),
    (r"--archs \d+", "--archs 5 --extra-batches 16 --teacher-init pretrained"),
]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        block = block.replace("\\\n", " ")  # join continued lines
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("kdsearch "):
                commands.append(line)
    return commands


def needs_a_server(command: str) -> bool:
    """The PostgreSQL example: run for real by tests/postgres against a local server."""
    return "--storage postgresql" in command


def test_readme_has_commands():
    commands = readme_commands()
    for verb in ("run", "teach", "search", "distill", "export", "spaces", "proxies", "models"):
        assert any(c.split()[1] == verb for c in commands), verb


@pytest.mark.slow
@pytest.mark.timeout(2400)  # about twenty commands, each a real (tiny) training, search or export
def test_readme_commands_run_in_order(tmp_path, monkeypatch, fashion_npz, cli):
    monkeypatch.chdir(tmp_path)
    for command in readme_commands():
        if needs_a_server(command):
            continue
        for pattern, replacement in SHRINK:
            command = re.sub(pattern, replacement.format(npz=f"npz:{fashion_npz}"), command)
        argv = shlex.split(command)[1:]
        if argv[0] in {"run", "teach", "search", "distill", "export"}:
            argv.append("--quiet")
        code, out, err = cli(*argv)
        assert code == 0, f"`{command}` failed ({code}): {err}"


@pytest.mark.slow
def test_readme_deploy_snippet_runs(tmp_path, monkeypatch, fashion_npz, cli):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("run", "--preset", "tiny", "--data", f"npz:{fashion_npz}", "--out", "runs/quick", "--quiet")
    assert code == 0, err
    snippet = re.search(r"```python\n(import json, numpy.*?)```", README.read_text(), flags=re.S).group(1)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # our own README, not user input
    assert scope["logits"].shape == (1, 10)
