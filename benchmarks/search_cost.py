"""What a speed-up budget costs the search: set-up and per-trial time against a params budget.

Runs the quick preset's search (48 trials, population 12, DisWOT) on Fashion-MNIST three times
in this process, against the same teacher: under the params budget the quick preset used to
have (an eighth of the teacher's parameters), then under ``--speedup 4`` with an empty
latency-model cache (the one-time table), then again with the table cached. Set-up is the wall
time from the start of the search to its first trial; per-trial is the median trial duration
in the Optuna study. Ratios are against the params-budget run of the same invocation.

    python benchmarks/search_cost.py --teacher teachers/fashion-mnist-resnet20 --json benchmarks/search_cost.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _one(label: str, config, teacher, dataset, out: Path) -> dict:
    import optuna

    from kdsearch.search import run_search

    t0 = time.time()
    run_search(teacher, dataset, out, config)
    wall = time.time() - t0
    study = optuna.load_study(study_name=config.study_name, storage=f"sqlite:///{out / 'study.db'}")
    trials = [t for t in study.trials if t.datetime_complete is not None]
    first = min(t.datetime_start.timestamp() for t in trials)
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    row = {"label": label, "setup_s": first - t0, "per_trial_s": statistics.median(durations),
           "trials": len(trials), "wall_s": wall}
    print(f"{label:32} set-up {row['setup_s']:7.1f} s   per trial {row['per_trial_s']:.3f} s   wall {wall:7.1f} s")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="teachers/fashion-mnist-resnet20")
    parser.add_argument("--speedup", type=float, default=4.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from kdsearch.pipeline.config import preset
    from kdsearch.pipeline.stages import load_run_dataset
    from kdsearch.spaces.model_files import load_teacher

    quick = preset("quick")
    dataset = load_run_dataset(quick)
    teacher = load_teacher(args.teacher, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                           image_size=dataset.image_size)
    teacher_params = sum(p.numel() for p in teacher.module.parameters())
    base = replace(quick.search, speedup=None)
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KDSEARCH_CACHE"] = str(Path(tmp) / "cache")  # cold: no latency table yet
        rows.append(_one("params budget (1/8 of the teacher)", replace(base, max_params=teacher_params // 8),
                         teacher, dataset, Path(tmp) / "params"))
        rows.append(_one(f"--speedup {args.speedup:g}, table built now", replace(base, speedup=args.speedup),
                         teacher, dataset, Path(tmp) / "speed_cold"))
        from kdsearch.search import speed as speed_module

        speed_module._SPEEDS.clear()  # as a new process would: time the teacher again, load the table from disk
        rows.append(_one(f"--speedup {args.speedup:g}, table cached", replace(base, speedup=args.speedup),
                         teacher, dataset, Path(tmp) / "speed_warm"))
    ref = rows[0]
    for r in rows[1:]:
        r["setup_ratio"] = r["setup_s"] / ref["setup_s"]
        r["per_trial_ratio"] = r["per_trial_s"] / ref["per_trial_s"]
        print(f"{r['label']:32} set-up {r['setup_ratio']:.2f}× the params budget's, per trial {r['per_trial_ratio']:.2f}×")
    result = {"command": "python benchmarks/search_cost.py " + " ".join(sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
              "teacher": args.teacher, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
