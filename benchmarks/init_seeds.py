"""Inherited against random initialisation on the quick recipe's frontier students, over training seeds.

Reads the frontier's distillations (``quick_frontier.py``, one JSON per init and seed), pairs each
student's random-init and inherited runs at the same seed, and prints the paired differences of
validation and test top-1 with a paired bootstrap 95 % interval of their mean. From the
distillations' own per-epoch histories (``--work``: the frontier runs' folders, ``quick_frontier.py
--work``), how soon the inherited student reaches the random-init student's final validation top-1.

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
# seed -> (random-init work folder, inherited work folder) of quick_frontier.py --work
WORK = {0: ("frontier", "frontier-inherit"), 1: ("frontier-seed1", "frontier-inherit-seed1"),
        2: ("frontier-seed2", "frontier-inherit-seed2")}


def val_by_epoch(work: Path, student: str) -> list[float] | None:
    """Validation top-1 after each epoch of one frontier distillation, from its metrics.json."""
    path = work / student / "distill" / "metrics.json"
    return [h["val_acc"] for h in json.loads(path.read_text())["history"]] if path.exists() else None


def epochs_to_match(runs: Path) -> list[dict]:
    """Per student and seed: the first epoch at which the inherited run reaches the random-init run's final
    validation top-1 (None: never)."""
    out = []
    for seed, (random_dir, inherit_dir) in WORK.items():
        for student in STUDENTS:
            rand, inh = val_by_epoch(runs / random_dir, student), val_by_epoch(runs / inherit_dir, student)
            if rand and inh:
                first = next((e + 1 for e, v in enumerate(inh) if v >= rand[-1]), None)
                out.append({"student": student, "seed": seed, "epochs": len(inh), "match_epoch": first,
                            "val_random_by_epoch": rand, "val_inherit_by_epoch": inh})
    return out


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
    parser.add_argument("--work", type=Path, default=Path("runs"), help="where quick_frontier.py --work kept the runs")
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
    matched = epochs_to_match(args.work)
    if matched:
        epochs = matched[0]["epochs"]
        counts = {e: sum(m["match_epoch"] == e for m in matched) for e in [*range(1, epochs + 1), None]}
        summary["epochs_to_match_random_final"] = {str(k): v for k, v in counts.items()}
        print("inherited reaches the random-init run's final val top-1 at epoch: "
              + ", ".join(f"{'never' if e is None else e}: {n}" for e, n in counts.items()) + f" (of {len(matched)})")
    if args.json:
        doc = {"command": "python benchmarks/init_seeds.py " + " ".join(sys.argv[1:]),
               "sources": {str(k): v for k, v in RUNS.items()}, "teacher_val_acc": teacher, "pairs": rows,
               "summary": summary, "epochs_to_match": matched}
        tmp = args.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
