"""Photos at 224 px: does a ``--speedup 4`` search give a student 4× faster than a ResNet-18 teacher?

Writes the generated photo folder and the full-width ResNet-18 teacher as ``.pt2``
(:mod:`photo_setup`), runs ``kdsearch search --speedup S`` on it (one process, the CLI), then
times the winner against the teacher in ONNX Runtime in one interleaved loop (1 thread, batch 1,
and batch 32 with fewer rounds), and prints the ratio beside what the search recorded.

    python benchmarks/photo_speed.py --space mbconv --json benchmarks/photo_speed.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="mbconv")
    parser.add_argument("--speedup", type=float, default=4.0)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--runs", type=int, default=60, help="timed rounds at batch 1 (a sixth at batch 32)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import onnxruntime

    from photo_setup import save_resnet18_teacher, write_photo_folder

    from kdsearch.arch import Arch
    from kdsearch.export.timing import speed_text, time_models
    from kdsearch.rundir import RunDir, SpeedRecord, WinnerRecord
    from kdsearch.spaces import load_space
    from kdsearch.spaces.model_files import load_teacher

    classes = 3
    with tempfile.TemporaryDirectory() as tmp:
        photos = write_photo_folder(Path(tmp) / "photos", classes, per_class=40)
        teacher_path = Path(tmp) / "teacher.pt2"
        teacher_params = save_resnet18_teacher(teacher_path, classes)
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "kdsearch", "search", "--teacher", str(teacher_path), "--data",
                   f"imagefolder:{photos}", "--space", args.space, "--speedup", str(args.speedup), "--trials",
                   str(args.trials), "--population", "8", "--proxy-batch", "16", "--out", str(out), "--quiet"]
        t0 = time.time()
        done = subprocess.run(command, capture_output=True, text=True)
        search_s = time.time() - t0
        if done.returncode != 0:
            print(done.stderr)
            raise SystemExit(done.returncode)
        winner = WinnerRecord.load(RunDir(out).winner)
        recorded = SpeedRecord.load(RunDir(out).speed)
        arch = Arch.from_dict(winner.arch)
        student = load_space(args.space).build(arch, num_classes=classes, in_channels=3)
        teacher = load_teacher(str(teacher_path), num_classes=classes, in_channels=3, image_size=(224, 224))
        load_before = os.getloadavg()
        ms = {"teacher": {}, "student": {}}
        for batch, runs in ((1, args.runs), (32, max(5, args.runs // 6))):
            timed = time_models({"teacher": teacher.exportable(), "student": student}, (3, 224, 224), batches=(batch,),
                                threads=1, runs=runs, warmup=3)
            for name in ms:
                ms[name][str(batch)] = timed[name][batch]
    speedup = {b: ms["teacher"][b] / ms["student"][b] for b in ms["teacher"]}
    result = {
        "command": "python benchmarks/photo_speed.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "onnxruntime": onnxruntime.__version__,
                    "loadavg_before_timing": load_before, "loadavg_after": os.getloadavg()},
        "space": args.space, "speedup_budget": args.speedup, "trials": args.trials, "search_s": search_s,
        "teacher": {"model": "resnet18 (full width) as .pt2", "params": teacher_params},
        "winner": {"arch": winner.arch, "params": winner.params, "flops": winner.flops, "reason": winner.reason},
        "search_recorded": {"teacher_ms": recorded.teacher_ms, "winner_speedup": winner.speedup,
                            "replaced": recorded.replaced},
        "ms": ms, "speedup": speedup, "meets_target_b1": speedup["1"] >= 4.0,
    }
    print(f"search ({args.space}, --speedup {args.speedup:g}, {args.trials} trials): {search_s:.0f} s; winner "
          f"{winner.params:,} params vs the teacher's {teacher_params:,}")
    for b in ms["teacher"]:
        print(f"batch {b:>2}: teacher {ms['teacher'][b]:8.2f} ms, student {ms['student'][b]:8.2f} ms: "
              f"{speed_text(speedup[b])} (search recorded {winner.speedup.get(b) if winner.speedup else None})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
