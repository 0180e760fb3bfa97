"""The quick recipe's accuracy–speed frontier: which students are both fast and accurate?

Times a fixed list of ``resnet_cifar`` students against the quick preset's teacher in ONNX
Runtime (one interleaved loop per batch size, 1 thread, after a warm-up), then distils each one
that is at least ``--min-speedup``× faster at batch 1 and 32 with the quick preset's recipe
(same seed, same teacher) and records its validation and test top-1. Distillations are kept
under ``--work`` and reused when the script runs again, so it resumes where it stopped.

    python benchmarks/quick_frontier.py --json benchmarks/quick_frontier.json
    python benchmarks/quick_frontier.py --init inherit --work runs/frontier-inherit --only NAME,... --json ...
    python benchmarks/quick_frontier.py --seed 1 --work runs/frontier-seed1 --only NAME,... --json ...
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (depths, widths): from the quick preset's shipped student to ResNet20's own widths at depth 1
CANDIDATES = [
    ([1, 1, 1], [8, 16, 32]),
    ([1, 1, 1], [8, 16, 48]),
    ([1, 1, 1], [8, 16, 64]),
    ([1, 1, 1], [8, 16, 96]),
    ([1, 1, 1], [8, 24, 48]),
    ([1, 1, 1], [12, 24, 48]),
    ([1, 1, 1], [16, 24, 32]),
    ([1, 1, 1], [12, 24, 64]),
    ([1, 1, 1], [16, 32, 64]),
    ([1, 1, 2], [8, 16, 32]),
    ([1, 1, 2], [8, 16, 48]),
    ([1, 2, 4], [8, 8, 16]),
    ([2, 2, 2], [8, 16, 32]),
    ([1, 2, 2], [8, 8, 32]),
    ([7, 6, 7], [8, 12, 8]),  # what the quick preset shipped under a parameter budget
]


def arch_of(depths: list[int], widths: list[int]):
    from kdsearch.arch import Arch

    return Arch.from_dict({"space": "resnet_cifar", "form": "cifar",
                           "genes": {"block": "basic", "depths": depths, "widths": widths}})


def name_of(depths: list[int], widths: list[int]) -> str:
    return "d" + "-".join(map(str, depths)) + "_w" + "-".join(map(str, widths))


def pareto(points: list[dict]) -> list[str]:
    """Names of the points no other point beats on both speed-up (worse batch) and val top-1."""
    done = [p for p in points if p.get("val_acc") is not None]
    front = []
    for p in done:
        if not any(q is not p and q["speedup_min"] >= p["speedup_min"] and q["val_acc"] >= p["val_acc"]
                   and (q["speedup_min"] > p["speedup_min"] or q["val_acc"] > p["val_acc"]) for q in done):
            front.append(p["name"])
    return front


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="teachers/fashion-mnist-resnet20")
    parser.add_argument("--work", type=Path, default=Path("runs/frontier"), help="where distillations are kept")
    parser.add_argument("--min-speedup", type=float, default=3.0, help="distil students at least this much faster")
    parser.add_argument("--runs", type=int, default=300, help="timed rounds at batch 1 (a tenth at batch 32)")
    parser.add_argument("--time-only", action="store_true", help="time, do not distil")
    parser.add_argument("--init", default="random", help="how students start: random, or inherit from the teacher")
    parser.add_argument("--seed", type=int, default=0, help="the distillations' training seed (the split follows the data)")
    parser.add_argument("--only", default=None, help="distil only these students (names as printed, comma-separated)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import onnxruntime

    from kdsearch.export.latency_model import cpu_model
    from kdsearch.export.timing import time_models
    from kdsearch.pipeline import load_run_dataset
    from kdsearch.pipeline.commands import distill_command
    from kdsearch.pipeline.config import preset
    from dataclasses import replace
    from kdsearch.rundir import RunDir, TrainMetrics
    from kdsearch.spaces import load_space
    from kdsearch.spaces.model_files import load_teacher

    quick = preset("quick")
    config = replace(quick, teacher=args.teacher, distill=replace(quick.distill, init=args.init, seed=args.seed))
    dataset = load_run_dataset(config)
    teacher = load_teacher(args.teacher, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                           image_size=dataset.image_size)
    space = load_space("resnet_cifar")
    models = {"teacher": teacher.module}
    archs = {}
    for depths, widths in CANDIDATES:
        name = name_of(depths, widths)
        archs[name] = arch_of(depths, widths)
        models[name] = space.build(archs[name], num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    chw = (dataset.in_channels, *dataset.image_size)
    load_before = os.getloadavg()
    ms: dict[str, dict[str, float]] = {}
    for batch, runs in ((1, args.runs), (32, max(20, args.runs // 10))):
        timed = time_models(models, chw, batches=(batch,), threads=1, runs=runs, warmup=10)
        for name, t in timed.items():
            ms.setdefault(name, {})[str(batch)] = t[batch]
    load_timed = os.getloadavg()
    points = []
    for depths, widths in CANDIDATES:
        name = name_of(depths, widths)
        speedup = {b: ms["teacher"][b] / ms[name][b] for b in ("1", "32")}
        points.append({"name": name, "depths": depths, "widths": widths,
                       "params": sum(p.numel() for p in models[name].parameters()),
                       "ms": ms[name], "speedup": speedup, "speedup_min": min(speedup.values())})
    for p in sorted(points, key=lambda p: -p["speedup_min"]):
        print(f"{p['name']:>24}  {p['params']:>7,} params  {p['speedup']['1']:.2f}× b1  {p['speedup']['32']:.2f}× b32",
              flush=True)
    if not args.time_only:
        for p in sorted(points, key=lambda p: -p["speedup_min"]):
            if p["speedup_min"] < args.min_speedup or (args.only and p["name"] not in args.only.split(",")):
                continue
            out = args.work / p["name"]
            run = RunDir(out)
            if not run.distill_metrics.exists():
                start = time.perf_counter()
                distill_command(out, config, archs[p["name"]], resume=out.exists())
                p["distill_s"] = round(time.perf_counter() - start, 1)
            metrics = TrainMetrics.load(run.distill_metrics)
            p.update(val_acc=metrics.val_acc, test_acc=metrics.test_acc, teacher_val_acc=metrics.teacher_val_acc,
                     init=(metrics.init or {"mode": "random"}))
            print(f"{p['name']:>24}  val {100 * metrics.val_acc:.2f} %  test {100 * metrics.test_acc:.2f} %", flush=True)
    result = {
        "command": "python benchmarks/quick_frontier.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": cpu_model(),
                    "onnxruntime": onnxruntime.__version__, "threads": 1,
                    "loadavg_before_timing": load_before, "loadavg_after_timing": load_timed},
        "teacher": {"source": args.teacher, "ms": ms["teacher"],
                    "params": sum(p.numel() for p in teacher.module.parameters())},
        "recipe": f"quick preset distill section (4 epochs, batch 128, onecycle, lr 0.2), seed {args.seed}, init {args.init}",
        "students": points,
        "pareto": pareto(points),
    }
    if args.json:
        tmp = args.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(args.json)
    print("frontier:", ", ".join(result["pareto"]))


if __name__ == "__main__":
    main()
