"""The arms at the quick recipe's length: fresh, inherited and pruned students of the quick preset's searches.

The quick preset's runs of ``quick_spaces.py`` (``kdsearch run --preset quick --teacher
teachers/fashion-mnist-resnet20 --space resnet_cifar|pruned --seed N``, N = 0, 1, 2) shipped, per seed, a
``resnet_cifar`` student distilled from the teacher's weights (arm b) and a pruning of the teacher (arm d's
space, its largest within the budget), each with the quick recipe: 4 epochs of 53,888 images at batch 128,
1,684 optimizer steps. This distils, from the same run directories and seeds:

- (a) the ``resnet_cifar`` winner from fresh weights, 4 epochs (``kdsearch distill RUN --init random``);
- the pruning for half the steps, 2 epochs (``kdsearch distill RUN --epochs 2``: its one-cycle schedule
  planned for the 2 epochs), to see whether inheriting lets the quick preset train half as long.

and reports validation and test top-1 of every arm, the differences paired by seed, and at which epoch
each inherited run's history first reaches the fresh run's final validation top-1.

    OMP_NUM_THREADS=1 python benchmarks/quick_length.py --json benchmarks/quick_length.json
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
SEEDS = (0, 1, 2)
ARMS = {  # arm -> (space whose quick run it starts from, extra `kdsearch distill` flags); None: the run's own
    "a_fresh_4ep": ("resnet_cifar", ["--init", "random"]),
    "b_inherited_4ep": ("resnet_cifar", None),
    "d_pruned_4ep": ("pruned", None),
    "d_pruned_2ep": ("pruned", ["--epochs", "2"]),
}


def distilled(arm: str, seed: int, work: Path) -> dict:
    """The arm's distillation at ``seed``: its metrics.json (distilled now unless it exists)."""
    space, flags = ARMS[arm]
    run = work / f"quick_{space}_s{seed}"
    if not (run / "summary.json").exists():
        raise SystemExit(f"{run} has no finished quick run: run benchmarks/quick_spaces.py --seeds {seed} first")
    if flags is None:
        return json.loads((run / "distill" / "metrics.json").read_text())
    out = work / "quick_length" / f"{arm}_s{seed}"
    if not (out / "distill" / "metrics.json").exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kdsearch", "distill", str(run), "--out", str(out), "--seed", str(seed),
                        *flags, "--quiet", *(["--resume"] if out.exists() else [])], check=True, cwd=ROOT)
        print(f"{arm} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads((out / "distill" / "metrics.json").read_text())


def first_epoch_at(history: list[dict], target: float) -> int | None:
    return next((h["epoch"] for h in history if h["val_acc"] >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs", help="where quick_spaces.py's runs are")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = {(arm, s): distilled(arm, s, args.work) for s in SEEDS for arm in ARMS}
    rows = []
    for s in SEEDS:
        fresh = runs[("a_fresh_4ep", s)]
        for arm in ARMS:
            m = runs[(arm, s)]
            rows.append({"arm": arm, "seed": s, "params": m["params"], "val_acc": m["val_acc"], "test_acc": m["test_acc"],
                         "teacher_val_acc": m["teacher_val_acc"], "val_by_epoch": [h["val_acc"] for h in m["history"]],
                         "epoch_reaching_fresh_final_val": first_epoch_at(m["history"], fresh["val_acc"])})
    print("Quick recipe (4 epochs = 1,684 steps) unless named; top-1 in %, per seed 0, 1, 2; vs (a) in points")
    summary = {}
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        fresh = [r for r in rows if r["arm"] == "a_fresh_4ep"]
        d_val = [100 * (r["val_acc"] - f["val_acc"]) for r, f in zip(mine, fresh)]
        d_test = [100 * (r["test_acc"] - f["test_acc"]) for r, f in zip(mine, fresh)]
        summary[arm] = {"val": sum(100 * r["val_acc"] for r in mine) / len(mine),
                        "test": sum(100 * r["test_acc"] for r in mine) / len(mine),
                        "val_minus_a": d_val, "test_minus_a": d_test,
                        "test_minus_a_mean": sum(d_test) / len(d_test),
                        "epoch_reaching_fresh_final_val": [r["epoch_reaching_fresh_final_val"] for r in mine]}
        params = ", ".join(f"{r['params']:,}" for r in mine)
        val = " ".join(f"{100 * r['val_acc']:.2f}" for r in mine)
        test = " ".join(f"{100 * r['test_acc']:.2f}" for r in mine)
        print(f"{arm:16s} params {params:26s} val {val}  test {test}  test − (a) "
              f"{' '.join(f'{d:+.2f}' for d in d_test)} (mean {summary[arm]['test_minus_a_mean']:+.2f})  "
              f"epoch reaching (a)'s final val: {summary[arm]['epoch_reaching_fresh_final_val']}")
    if args.json:
        from kdsearch.files import write_json

        write_json(args.json, {"command": "python benchmarks/quick_length.py " + " ".join(sys.argv[1:]),
                               "machine": {"cpus": os.cpu_count(), "loadavg_at_end": list(os.getloadavg())},
                               "steps_per_epoch": 421, "seeds": list(SEEDS), "summary": summary, "rows": rows})


if __name__ == "__main__":
    main()
