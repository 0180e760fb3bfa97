"""The arms at the quick recipe's length and at 4× it: fresh, inherited and pruned students of the quick runs.

The quick preset's runs of ``quick_spaces.py`` (``kdsearch run --preset quick --teacher
teachers/fashion-mnist-resnet20 --space resnet_cifar|pruned --seed N``; with ``--setting mbconv4`` the
``mbconv4`` teacher, ``mbconv`` and a 2× speed-up budget) shipped, per seed, a student of the teacher's family
distilled from the teacher's weights (arm b) and a pruning of the teacher (arm d's space, its largest
within the budget), each with the quick recipe: 4 epochs of 53,888 images at batch 128, 1,684 optimizer
steps. This distils, from the same run directories and seeds (into ``runs/quick_length[_mbconv4]``):

- (a) the family's winner from fresh weights, 4 epochs (``kdsearch distill RUN --init random``);
- the pruning for half the steps, 2 epochs (``kdsearch distill RUN --epochs 2``: its one-cycle schedule
  planned for the 2 epochs), to see whether inheriting lets the quick preset train half as long;
- with ``--arms`` naming them, all three arms at 4× the quick length, 16 epochs = 6,736 steps
  (``--epochs 16``, the schedule planned for 16).

It reports validation and test top-1 of every arm, the differences to (a) at the same length paired by
seed with a bootstrap 95 % interval of their mean over seeds, and at which epoch each run's history first
reaches (a)'s final validation top-1. ``--with`` pools the rows of earlier runs of this script (other seeds
or arms) into the summary.

    OMP_NUM_THREADS=1 python benchmarks/quick_length.py --jobs 2 --json benchmarks/quick_length.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from init_seeds import bootstrap_mean  # noqa: E402
from quick_spaces import SETTINGS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# arm -> (space whose quick run it starts from, extra `kdsearch distill` flags or None for the run's own
# distillation, the fresh arm it is compared with)
# (``family``: the setting's family, resnet_cifar or mbconv)
ARMS = {
    "a_fresh_4ep": ("family", ["--init", "random"], "a_fresh_4ep"),
    "b_inherited_4ep": ("family", None, "a_fresh_4ep"),
    "d_pruned_4ep": ("pruned", None, "a_fresh_4ep"),
    "d_pruned_2ep": ("pruned", ["--epochs", "2"], "a_fresh_4ep"),
    "a_fresh_16ep": ("family", ["--init", "random", "--epochs", "16"], "a_fresh_16ep"),
    "b_inherited_16ep": ("family", ["--epochs", "16"], "a_fresh_16ep"),
    "d_pruned_16ep": ("pruned", ["--epochs", "16"], "a_fresh_16ep"),
}
DEFAULT_ARMS = "a_fresh_4ep,b_inherited_4ep,d_pruned_4ep,d_pruned_2ep"
MIN_PAIRS_FOR_CI = 5  # a bootstrap over fewer seeds only restates their range


def distilled(setting: str, arm: str, seed: int, work: Path) -> dict:
    """The arm's distillation at ``seed``: its metrics.json (distilled now unless it exists)."""
    quick = SETTINGS[setting]
    space, flags, _ = ARMS[arm]
    run = quick.run_dir(work, quick.family if space == "family" else space, seed)
    if not (run / "summary.json").exists():
        raise SystemExit(f"{run} has no finished quick run: run benchmarks/quick_spaces.py --setting {setting} "
                         f"--seeds {seed} first")
    if flags is None:
        return json.loads((run / "distill" / "metrics.json").read_text())
    out = work / quick.length_dir / f"{arm}_s{seed}"
    if not (out / "distill" / "metrics.json").exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kdsearch", "distill", str(run), "--out", str(out), "--seed", str(seed),
                        *flags, "--quiet", *(["--resume"] if out.exists() else [])], check=True, cwd=ROOT)
        print(f"{arm} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads((out / "distill" / "metrics.json").read_text())


def first_epoch_at(history: list[dict], target: float) -> int | None:
    return next((h["epoch"] for h in history if h["val_acc"] >= target), None)


def measure(setting: str, arms: list[str], seeds: list[int], work: Path, jobs: int = 1) -> list[dict]:
    """One row per arm and seed (distilling what is missing, ``jobs`` at a time), each with the epoch it
    reaches (a)'s final val."""
    every = list(dict.fromkeys(sorted({ARMS[arm][2] for arm in arms}) + arms))  # the fresh arms they need too
    keys = [(arm, s) for s in seeds for arm in every]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = dict(zip(keys, pool.map(lambda key: distilled(setting, *key, work), keys)))
    return [{"arm": arm, "seed": s, "params": m["params"], "val_acc": m["val_acc"], "test_acc": m["test_acc"],
             "teacher_val_acc": m["teacher_val_acc"], "val_by_epoch": [h["val_acc"] for h in m["history"]],
             "epoch_reaching_fresh_final_val": first_epoch_at(m["history"], runs[(ARMS[arm][2], s)]["val_acc"])}
            for s in seeds for arm in every for m in [runs[(arm, s)]]]


def summarize(rows: list[dict]) -> dict:
    """Per arm: mean top-1 and, paired by seed with its fresh arm, the differences and their interval."""
    by = {(r["arm"], r["seed"]): r for r in rows}
    summary = {}
    for arm in ARMS:
        seeds = sorted(s for a, s in by if a == arm and (ARMS[arm][2], s) in by)
        if not seeds:
            continue
        mine, fresh = [by[(arm, s)] for s in seeds], [by[(ARMS[arm][2], s)] for s in seeds]
        d_test = np.array([100 * (r["test_acc"] - f["test_acc"]) for r, f in zip(mine, fresh)])
        summary[arm] = {"seeds": seeds, "compared_with": ARMS[arm][2],
                        "val": float(np.mean([100 * r["val_acc"] for r in mine])),
                        "test": float(np.mean([100 * r["test_acc"] for r in mine])),
                        "val_minus_a": [100 * (r["val_acc"] - f["val_acc"]) for r, f in zip(mine, fresh)],
                        "test_minus_a": d_test.tolist(), "test_minus_a_mean": float(d_test.mean()),
                        "test_minus_a_ci95": (list(bootstrap_mean(d_test)) if arm != ARMS[arm][2]
                                              and len(seeds) >= MIN_PAIRS_FOR_CI else None),
                        "wins": int((d_test > 0).sum()), "losses": int((d_test < 0).sum()),
                        "epoch_reaching_fresh_final_val": [r["epoch_reaching_fresh_final_val"] for r in mine]}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="resnet20",
                        help="quick_spaces.py's setting: the teacher and its family")
    parser.add_argument("--work", type=Path, default=ROOT / "runs", help="where quick_spaces.py's runs are")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of quick_spaces.py's runs")
    parser.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated, of: {', '.join(ARMS)}")
    parser.add_argument("--with", dest="earlier", type=Path, action="append", default=[],
                        help="a JSON of this script whose rows (other seeds or arms) join the summary")
    parser.add_argument("--jobs", type=int, default=1,
                        help="distillations at once (each on one thread with OMP_NUM_THREADS=1)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    arms = args.arms.split(",")
    if unknown := [a for a in arms if a not in ARMS]:
        raise SystemExit(f"unknown arm {unknown[0]!r}: choose from {', '.join(ARMS)}")
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be at least 1, not {args.jobs}")
    rows = measure(args.setting, arms, [int(s) for s in args.seeds.split(",")], args.work, args.jobs)
    docs = [json.loads(path.read_text()) for path in args.earlier]
    earlier = [r for doc in docs for r in doc["rows"]]
    mine = {(r["arm"], r["seed"]) for r in rows}
    rows = [r for r in earlier if (r["arm"], r["seed"]) not in mine] + rows
    summary = summarize(rows)
    print("top-1 in %; test − (a) in points, paired by seed with (a) at the same length; [bootstrap 95 % CI]")
    for arm, s in summary.items():
        ci = s["test_minus_a_ci95"]
        print(f"{arm:17s} seeds {','.join(map(str, s['seeds'])):18s} val {s['val']:.2f}  test {s['test']:.2f}  "
              f"test − (a) {' '.join(f'{d:+.2f}' for d in s['test_minus_a'])}  mean {s['test_minus_a_mean']:+.2f}"
              + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}] W/L {s['wins']}/{s['losses']}" if ci else "")
              + f"  epoch reaching (a)'s final val: {s['epoch_reaching_fresh_final_val']}")
    if args.json:
        from kdsearch.files import write_json

        command = "python benchmarks/quick_length.py " + " ".join(sys.argv[1:])
        before = [c for doc in docs for c in doc.get("commands_before", []) + [doc["command"]] if c != command]
        write_json(args.json, {"command": command, "setting": args.setting,
                               "commands_before": list(dict.fromkeys(before)),  # whose rows --with joined
                               "machine": {"cpus": os.cpu_count(), "loadavg_at_end": list(os.getloadavg())},
                               "steps_per_epoch": 421, "summary": summary, "rows": rows})


if __name__ == "__main__":
    main()
