"""The quick preset over two spaces and three seeds: `resnet_cifar` (students inherit) against `pruned`.

Runs ``kdsearch run --data fashion-mnist --preset quick --teacher teachers/fashion-mnist-resnet20`` with
``--space resnet_cifar`` and ``--space pruned`` at each ``--seed`` (search and training seed), one run at
a time, keeping each run directory (reused when it holds a summary), then prints and records the shipped
student of each: validation and test top-1, parameters, and the export stage's side-by-side speed-ups.

    python benchmarks/quick_spaces.py --seeds 0,1,2 --json benchmarks/quick_spaces.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEACHER = "teachers/fashion-mnist-resnet20"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--spaces", default="resnet_cifar,pruned")
    parser.add_argument("--work", type=Path, default=ROOT / "runs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for seed in map(int, args.seeds.split(",")):
        for space in args.spaces.split(","):
            out = args.work / f"quick_{space}_s{seed}"
            if not (out / "summary.json").exists():
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "kdsearch", "run", "--data", "fashion-mnist", "--preset", "quick",
                                "--teacher", TEACHER, "--space", space, "--seed", str(seed), "--out", str(out),
                                "--force", "--quiet"], check=True, cwd=ROOT)
                print(f"{space} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
            s = json.loads((out / "summary.json").read_text())
            rows.append({"space": space, "seed": seed, "arch": s["student"]["arch"],
                         "params": s["student"]["params"], "val_acc": s["student"]["val_acc"],
                         "test_acc": s["student"]["test_acc"], "teacher_val_acc": s["teacher"]["val_acc"],
                         "speedup_b1": s["onnx"]["speedup_b1"], "speedup_b32": s["onnx"]["speedup_b32"]})
    for r in rows:
        print(f"{r['space']:>13} seed {r['seed']}  {r['params']:>7,} params  val {100 * r['val_acc']:.2f} % "
              f"({100 * (r['val_acc'] - r['teacher_val_acc']):+.2f})  test {100 * r['test_acc']:.2f} %  "
              f"{r['speedup_b1']:.2f}× / {r['speedup_b32']:.2f}×")
    if args.json:
        doc = {"command": "python benchmarks/quick_spaces.py " + " ".join(sys.argv[1:]),
               "machine": {"cpus": os.cpu_count(), "loadavg_at_end": list(os.getloadavg())}, "rows": rows}
        tmp = args.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
