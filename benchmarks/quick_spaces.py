"""The quick preset over two spaces and three seeds: the teacher's family (students inherit) against `pruned`.

Runs ``kdsearch run --data fashion-mnist --preset quick --teacher T`` with ``--space F`` and ``--space
pruned`` at each ``--seed`` (search and training seed), one run at a time, keeping each run directory
(reused when it holds a summary), then prints and records the shipped student of each: validation and
test top-1, parameters, and the export stage's side-by-side speed-ups. ``--setting`` picks T and F:

- ``resnet20`` (default): the quick preset's teacher ``teachers/fashion-mnist-resnet20``, ``resnet_cifar``,
  the preset's 4× speed-up budget; runs ``runs/quick_<space>_s<seed>``.
- ``mbconv4``: the second setting's teacher ``benchmarks/race_truth/mbconv4_teacher``, ``mbconv``, a 2×
  speed-up budget (no ``mbconv`` student is 2.5× faster than this fast teacher at batch 1); runs
  ``runs/quick_mbconv4_<space>_s<seed>``.

    python benchmarks/quick_spaces.py --seeds 0,1,2 --json benchmarks/quick_spaces.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class QuickSetting:
    teacher: str
    family: str  # the space whose students inherit from the teacher
    prefix: str  # run directories: <prefix>_<space>_s<seed>
    length_dir: str  # where quick_length.py distils its arms: <length_dir>/<arm>_s<seed>
    flags: tuple[str, ...] = ()  # on top of the quick preset

    def run_dir(self, work: Path, space: str, seed: int) -> Path:
        return work / f"{self.prefix}_{space}_s{seed}"


SETTINGS = {
    "resnet20": QuickSetting("teachers/fashion-mnist-resnet20", "resnet_cifar", "quick", "quick_length"),
    "mbconv4": QuickSetting("benchmarks/race_truth/mbconv4_teacher", "mbconv", "quick_mbconv4", "quick_length_mbconv4",
                            ("--speedup", "2")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="resnet20", help="the teacher and its family")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--spaces", help="comma-separated (default: the setting's family, then pruned)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    setting = SETTINGS[args.setting]
    rows = []
    for seed in map(int, args.seeds.split(",")):
        for space in (args.spaces or f"{setting.family},pruned").split(","):
            out = setting.run_dir(args.work, space, seed)
            if not (out / "summary.json").exists():
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "kdsearch", "run", "--data", "fashion-mnist", "--preset", "quick",
                                "--teacher", setting.teacher, *setting.flags, "--space", space, "--seed", str(seed),
                                "--out", str(out), "--force", "--quiet"], check=True, cwd=ROOT)
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
