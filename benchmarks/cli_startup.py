"""How long ``kdsearch --version`` takes to start, against a bare ``python -c "import typer"``.

``--version``, ``--help`` and every Tab of shell completion pay the import of ``kdsearch.cli``;
the baseline is the least any Typer CLI pays. Each command runs as a fresh process (the venv's
``kdsearch`` entry point), round-robin so a busy machine slows them all alike, after one warm-up
round; the table gives the median and the ratio of medians to the baseline. ``import torch``
is timed too, to show what a CLI that imports it at start-up would pay.

    python benchmarks/cli_startup.py [--repeats 15]
Writes ``benchmarks/cli_startup.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _commands() -> dict[str, list[str]]:
    entry = Path(sys.executable).with_name("kdsearch")  # the console script next to this interpreter
    if not entry.exists():
        sys.exit(f"no {entry}; run this with the interpreter of the environment kdsearch is installed in")
    return {
        'python -c "import typer"': [sys.executable, "-c", "import typer"],  # the baseline
        "kdsearch --version": [str(entry), "--version"],
        "kdsearch --help": [str(entry), "--help"],
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
    }


def _time(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("cli_startup.json"))
    args = parser.parse_args()
    commands = _commands()
    load_before = os.getloadavg()[0]
    for argv in commands.values():  # warm-up: file caches, .pyc files
        _time(argv)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, argv in commands.items():
            times[name].append(_time(argv))
    baseline = statistics.median(times['python -c "import typer"'])
    rows = {name: {"argv": argv[1:] if argv[0] == sys.executable else [Path(argv[0]).name, *argv[1:]],
                   "median_s": statistics.median(times[name]), "min_s": min(times[name]),
                   "max_s": max(times[name]), "ratio_to_baseline": statistics.median(times[name]) / baseline}
            for name, argv in commands.items()}
    print(f"{args.repeats} runs each, round-robin; {os.cpu_count()} CPUs, load average {load_before:.2f} before")
    print(f"{'command':<28}{'median s':>10}{'min s':>8}{'max s':>8}{'× baseline':>12}")
    for name, row in rows.items():
        print(f"{name:<28}{row['median_s']:>10.3f}{row['min_s']:>8.3f}{row['max_s']:>8.3f}{row['ratio_to_baseline']:>12.2f}")
    report = {"repeats": args.repeats, "baseline": 'python -c "import typer"', "python": platform.python_version(),
              "cpus": os.cpu_count(), "load_average_before": load_before, "commands": rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
