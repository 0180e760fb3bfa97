"""`make run` in a fresh clone, set-up included: how long a newcomer waits.

Clones this repository's committed HEAD into a temporary folder, runs ``make run`` there (new
``.venv``, torch and kdsearch installed, Fashion-MNIST, the quick preset with the shipped demo
teacher) and records the wall time of the whole command, of the install part (until the run's
first line) and of each stage as the run's ``summary.json`` states it, with what was shipped.

    python benchmarks/fresh_clone.py --keep runs/quick --json benchmarks/fresh_clone.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _point_at_kept_copy(keep: Path, clone: Path) -> None:
    """Make the kept run read its teacher where it lives once the clone is gone.

    A pruned space (the quick preset's) records the teacher it cuts by absolute path: in the clone, its
    ``runs/quick/teacher`` or ``teachers/...``. Those become the kept copy and this checkout, whose
    committed teacher is the same file (the space's SHA-256 still checks it).
    """
    clone = clone.resolve()
    moves = [(str(clone / "runs/quick"), str(keep.resolve())), (str(clone), str(ROOT))]
    for path in keep.rglob("*"):
        if path.suffix in (".json", ".yaml") and path.is_file():
            text = original = path.read_text()
            for old, new in moves:
                text = text.replace(old, new)
            if text != original:
                path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make-args", default="", help="extra arguments for make, e.g. TEACHER=train")
    parser.add_argument("--keep", type=Path, default=None, help="copy the run directory here (for quick_demo.py)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "kdsearch"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        load_before = os.getloadavg()
        start = time.monotonic()
        first_run_line = None
        proc = subprocess.Popen(["make", "run", *args.make_args.split()], cwd=clone, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "100"})
        tail = []
        for line in proc.stdout:  # type: ignore[union-attr]
            if first_run_line is None and "kdsearch run " in line:
                first_run_line = time.monotonic() - start
            tail = (tail + [line.rstrip()])[-40:]
        rc = proc.wait()
        wall = time.monotonic() - start
        if rc != 0:
            print("\n".join(tail))
            sys.exit(f"make run failed with exit {rc}")
        summary = json.loads((clone / "runs/quick/summary.json").read_text())
        if args.keep is not None:
            import shutil

            shutil.rmtree(args.keep, ignore_errors=True)
            shutil.copytree(clone / "runs/quick", args.keep)
            _point_at_kept_copy(args.keep, clone)
    result = {
        "command": "python benchmarks/fresh_clone.py " + " ".join(sys.argv[1:]),
        "commit": head,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                    "pip_config": subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                                                 text=True).stdout.splitlines()},
        "wall_s": round(wall, 1),
        "setup_s": round(first_run_line, 1) if first_run_line is not None else None,
        "stages_s": {k: round(v, 1) for k, v in summary["timings_s"].items()},
        "student": summary["student"]["arch"],
        "val_acc": {"teacher": summary["teacher"]["val_acc"], "student": summary["student"]["val_acc"]},
        "speedup": {"b1": summary["onnx"]["speedup_b1"], "b32": summary["onnx"].get("speedup_b32")},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        tmp_json = args.json.with_suffix(".json.tmp")
        tmp_json.write_text(json.dumps(result, indent=2) + "\n")
        tmp_json.replace(args.json)


if __name__ == "__main__":
    main()
