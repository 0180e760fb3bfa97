"""Inherited against random initialisation on the quick recipe's frontier students, over training seeds.

Reads the frontier's distillations (``quick_frontier.py``, one JSON per init and seed), pairs each
student's random-init and inherited runs at the same seed, and prints the paired differences of
validation and test top-1 with a paired bootstrap 95 % interval of their mean.

    python benchmarks/init_seeds.py --json benchmarks/init_seeds.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# seed -> (random-init frontier JSON, inherited frontier JSON)
RUNS = {
    0: ("quick_frontier.json", "quick_frontier_inherit.json"),
    1: ("quick_frontier_seed1.json", "quick_frontier_inherit_seed1.json"),
    2: ("quick_frontier_seed2.json", "quick_frontier_inherit_seed2.json"),
}
STUDENTS = ("d1-1-1_w8-16-32", "d1-1-2_w8-16-32", "d1-2-4_w8-8-16")


def accuracies(name: str) -> dict[str, dict[str, float]]:
    doc = json.loads((HERE / name).read_text())
    return {s["name"]: {"val": s["val_acc"], "test": s["test_acc"], "teacher_val": s.get("teacher_val_acc")}
            for s in doc["students"] if s.get("val_acc") is not None}


def bootstrap_mean(diffs: np.ndarray, draws: int = 10_000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = rng.choice(diffs, size=(draws, len(diffs)), replace=True).mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for seed, (random_file, inherit_file) in RUNS.items():
        rand, inh = accuracies(random_file), accuracies(inherit_file)
        for student in STUDENTS:
            if student in rand and student in inh:
                rows.append({"student": student, "seed": seed, "teacher_val": rand[student]["teacher_val"],
                             **{f"{k}_{init}": acc[student][k] for init, acc in (("random", rand), ("inherit", inh))
                                for k in ("val", "test")}})
    print(f"{'student':>18} seed  val random → inherit   test random → inherit")
    for r in rows:
        print(f"{r['student']:>18} {r['seed']:>4}  {100 * r['val_random']:6.2f} → {100 * r['val_inherit']:6.2f}"
              f"      {100 * r['test_random']:6.2f} → {100 * r['test_inherit']:6.2f}")
    summary = {}
    for split in ("val", "test"):
        diffs = np.array([r[f"{split}_inherit"] - r[f"{split}_random"] for r in rows]) * 100
        low, high = bootstrap_mean(diffs)
        summary[split] = {"mean_points": float(diffs.mean()), "ci95_points": [low, high],
                          "inherit_better": int((diffs > 0).sum()), "pairs": len(diffs)}
        print(f"{split}: inherited − random = {diffs.mean():+.2f} points [{low:+.2f}, {high:+.2f}], "
              f"better in {(diffs > 0).sum()} of {len(diffs)} pairs")
    teacher = rows[0]["teacher_val"] if rows else None
    for init in ("random", "inherit"):
        within = [r for r in rows if teacher is not None and teacher - r[f"val_{init}"] <= 0.015 + 1e-9]
        summary[f"within_1.5_points_{init}"] = f"{len(within)} of {len(rows)}"
        print(f"{init}: validation top-1 within 1.5 points of the teacher's {100 * teacher:.2f} % in "
              f"{len(within)} of {len(rows)} runs")
    if args.json:
        doc = {"command": "python benchmarks/init_seeds.py " + " ".join(sys.argv[1:]),
               "sources": {str(k): v for k, v in RUNS.items()}, "teacher_val_acc": teacher, "pairs": rows,
               "summary": summary}
        tmp = args.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
