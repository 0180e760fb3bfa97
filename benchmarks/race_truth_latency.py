"""ONNX Runtime latency of the race benchmark's 60 archs, each timed side by side with the teacher.

Every arch of ``benchmarks/race_truth/<space>.archs.json`` is built through its space (as
``race_proof.py`` builds it: 10 classes, 1 input channel) and timed against the quick preset's
teacher, the zoo's ResNet20 (weights do not change latency), on 1×28×28 inputs: ORT CPU, one
intra-op thread, at batch 1 and 32. Each student runs in its own loop with the teacher
(:func:`kdsearch.export.timing.interleaved_latency_ms`, rotated order after a warm-up), so each
speed-up is the ratio of two medians of one loop; the teacher's median is recorded per loop.

Run: ``python benchmarks/race_truth_latency.py --json benchmarks/race_truth/latency.json``; the pruned space's
archs (``race_pruned.py``): ``--space pruned --config pruned_curves.yaml --json benchmarks/race_truth/pruned_latency.json``;
the mbconv archs against the second setting's teacher (``inherit_mbconv.py``): ``--space mbconv --teacher mbconv4
--json benchmarks/race_truth/mbconv4_latency.json``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from race_proof import HERE, SPACES, planned_archs, study_config

INPUT_CHW = (1, 28, 28)
NUM_CLASSES = 10
TEACHER = "resnet20"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")


def time_archs(batches: tuple[int, ...], runs: dict[int, int], warmup: int, threads: int, limit: int | None,
               studies: dict[str, str | None], teacher_model: str = TEACHER) -> dict:
    """Per arch of each study (space -> its config in race_truth/, None: ``<space>.yaml``): teacher and
    student median ms and the speed-up at each batch, one loop per (arch, batch)."""
    import torch

    from kdsearch.arch import Arch
    from kdsearch.export.timing import interleaved_latency_ms, probe_session, speedup
    from kdsearch.models.zoo import create_model
    from kdsearch.pipeline.stages import load_run_dataset
    from kdsearch.spaces import load_space

    torch.manual_seed(0)
    teacher = probe_session(create_model(teacher_model, num_classes=NUM_CLASSES, in_channels=INPUT_CHW[0]), INPUT_CHW,
                            threads=threads)
    rows = []
    for space, config in studies.items():
        study = study_config(space, config)
        sp = load_space(study.correlate.space)
        dataset = None if (HERE / f"{space}.archs.json").exists() else load_run_dataset(study)
        for a in planned_archs(space, dataset, config)[:limit]:
            student = probe_session(sp.build(Arch.from_dict(a["arch"]), num_classes=NUM_CLASSES, in_channels=INPUT_CHW[0]),
                                    INPUT_CHW, threads=threads)
            row = {"key": a["key"], "space": space, "params": a["params"], "flops": a["flops"]}
            for b in batches:
                timed = interleaved_latency_ms({"teacher": teacher, "student": student}, (b, *INPUT_CHW),
                                               runs=runs[b], warmup=warmup)
                t, s = timed["teacher"]["p50"], timed["student"]["p50"]
                row.update({f"teacher_ms_b{b}": t, f"student_ms_b{b}": s, f"speedup_b{b}": speedup(t, s)})
            rows.append(row)
            print(f"{space:12s} {a['params']:>7,} params  " + "  ".join(
                f"b{b}: {row[f'student_ms_b{b}']:7.3f} vs {row[f'teacher_ms_b{b}']:7.3f} ms = {row[f'speedup_b{b}']:4.2f}×"
                for b in batches), flush=True)
    return {"archs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--runs", default="300,60", help="timed rounds per loop at each batch size")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, help="only the first N archs of each space (a quick check)")
    parser.add_argument("--space", help="time only this study's archs (race_truth/<space>.archs.json)")
    parser.add_argument("--config", help="with --space: the study's config in race_truth/ (default <space>.yaml)")
    parser.add_argument("--teacher", default=TEACHER, help="zoo model the archs are timed against")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    torch.set_num_threads(1)
    batches = tuple(int(b) for b in args.batches.split(","))
    runs = dict(zip(batches, (int(r) for r in args.runs.split(","))))
    load_before, t0 = os.getloadavg(), time.perf_counter()
    studies = {args.space: args.config} if args.space else dict.fromkeys(SPACES)
    result = time_archs(batches, runs, args.warmup, args.threads, args.limit, studies, args.teacher)
    load_after = os.getloadavg()
    rows = result["archs"]
    for space in studies:
        mine = [r for r in rows if r["space"] == space]
        slower = sum(r["speedup_b1"] <= 1 for r in mine)
        print(f"{space}: {slower} of {len(mine)} archs not faster than the teacher at batch 1; speed-up at batch 1 "
              f"{min(r['speedup_b1'] for r in mine):.2f}×–{max(r['speedup_b1'] for r in mine):.2f}×")
    if args.json:
        payload = {
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "teacher": args.teacher, "input_chw": list(INPUT_CHW), "num_classes": NUM_CLASSES, "provider": "cpu",
            "threads": args.threads, "batches": list(batches), "runs": {str(b): r for b, r in runs.items()},
            "warmup": args.warmup, "timing": "each arch in its own loop with the teacher, interleaved "
            "(kdsearch.export.timing.interleaved_latency_ms); ms are medians (p50)",
            "machine": {"cpu": cpu_model(), "nproc": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "onnxruntime": ort.__version__, "torch": torch.__version__,
            "loadavg_before": list(load_before), "loadavg_after": list(load_after),
            "seconds": time.perf_counter() - t0, **result,
        }
        tmp = args.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=1) + "\n")
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
