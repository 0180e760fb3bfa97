"""The quick demo's shipped student against its teacher: speed side by side, and accuracy.

Reads a finished ``kdsearch run`` directory (default ``runs/quick``: ``make run``), rebuilds the
teacher and the distilled student, and times both in ONNX Runtime in one interleaved loop per
batch size (1 thread, after a warm-up), together with the params-budget student the quick
preset shipped before it budgeted speed (``[7,6,7]×[8,12,8]``, random weights: latency does not
depend on them) as a baseline measured in the same loop. Accuracies come from the run's
``metrics.json`` files (validation split) and, when given, ``--baseline-run`` for the baseline's.

    python benchmarks/quick_demo.py --run-dir runs/quick [--baseline-run runs/quick_params] --json benchmarks/quick_demo.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BASELINE = {"space": "resnet_cifar", "genes": {"block": "basic", "depths": [7, 6, 7], "widths": [8, 12, 8]},
            "form": "cifar"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quick"))
    parser.add_argument("--baseline-run", type=Path, default=None, help="a run that distilled the baseline student")
    parser.add_argument("--runs", type=int, default=300, help="timed rounds at batch 1 (a tenth at batch 32)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import onnxruntime

    from kdsearch.arch import Arch
    from kdsearch.export.latency_model import cpu_model
    from kdsearch.export.timing import speed_text, time_models
    from kdsearch.pipeline import load_run_config, load_run_dataset
    from kdsearch.rundir import RunDir, TrainMetrics
    from kdsearch.spaces import load_space
    from kdsearch.spaces.model_files import load_model_dir, load_teacher

    run = RunDir(args.run_dir)
    config = load_run_config(args.run_dir)
    dataset = load_run_dataset(config)
    teacher = load_teacher(config.teacher or str(run.teacher), num_classes=dataset.num_classes,
                           in_channels=dataset.in_channels, image_size=dataset.image_size)
    student, _ = load_model_dir(run.distill, weights_name="student")
    arch = Arch.load(run.student_json)
    baseline = load_space("resnet_cifar").build(Arch.from_dict(BASELINE), num_classes=dataset.num_classes,
                                                in_channels=dataset.in_channels)
    chw = (dataset.in_channels, *dataset.image_size)
    load_before = os.getloadavg()
    ms = {}
    for batch, runs in ((1, args.runs), (32, max(20, args.runs // 10))):
        timed = time_models({"teacher": teacher.module, "student": student, "baseline": baseline}, chw,
                            batches=(batch,), threads=args.threads, runs=runs, warmup=10)
        for name, t in timed.items():
            ms.setdefault(name, {})[str(batch)] = t[batch]
    teacher_metrics = TrainMetrics.load(run.teacher_metrics) if run.teacher_metrics.exists() else None
    student_metrics = TrainMetrics.load(run.distill_metrics)
    teacher_acc = student_metrics.teacher_val_acc or (teacher_metrics.val_acc if teacher_metrics else None)
    baseline_acc = None
    if args.baseline_run is not None:
        baseline_acc = TrainMetrics.load(RunDir(args.baseline_run).distill_metrics).val_acc
    result = {
        "command": "python benchmarks/quick_demo.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": cpu_model(),
                    "onnxruntime": onnxruntime.__version__, "threads": args.threads,
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "run_dir": str(args.run_dir),
        "student": {"arch": arch.to_dict(), "params": sum(p.numel() for p in student.parameters()),
                    "val_acc": student_metrics.val_acc, "test_acc": student_metrics.test_acc},
        "teacher": {"source": config.teacher or str(run.teacher), "val_acc": teacher_acc,
                    "params": sum(p.numel() for p in teacher.module.parameters())},
        "baseline": {"arch": BASELINE, "params": sum(p.numel() for p in baseline.parameters()), "val_acc": baseline_acc},
        "ms": ms,
        "speedup": {name: {b: ms["teacher"][b] / v for b, v in per.items()} for name, per in ms.items()},
    }
    if teacher_acc is not None:
        result["points_below_teacher"] = 100 * (teacher_acc - student_metrics.val_acc)
    print(f"{'':10} {'params':>8} {'val top-1':>9} {'b=1 ms':>8} {'b=32 ms':>8}  speed over the teacher")
    for name, info in (("teacher", result["teacher"]), ("student", result["student"]), ("baseline", result["baseline"])):
        acc = f"{100 * info['val_acc']:.2f}%" if info.get("val_acc") is not None else "—"
        ups = result["speedup"][name]
        print(f"{name:10} {info['params']:>8,} {acc:>9} {ms[name]['1']:>8.3f} {ms[name]['32']:>8.2f}  "
              f"{speed_text(ups['1'])} at b=1, {speed_text(ups['32'])} at b=32")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
