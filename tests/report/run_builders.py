"""Hand-built run directories: every artifact a stage writes, with known values, in milliseconds.

The JSON files are written through the same records (:mod:`kdsearch.rundir`) the stages use,
so a key a stage renames changes here too.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from kdsearch.rundir import ExportRecord, QatMetrics, RunDir, SpeedRecord, TrainMetrics, WinnerRecord

WINNER_ARCH = {"space": "resnet_cifar", "genes": {"block": "basic", "depths": [1, 1, 1], "widths": [8, 16, 32]}}

# trial, genes widths, score, params, flops, feasible
CANDIDATES = [
    (0, [16, 16, 16], -0.30, 40_000, 9_000_000, True),
    (1, [8, 16, 32], -0.05, 20_000, 5_000_000, True),  # the winner
    (2, [64, 64, 64], -0.02, 900_000, 90_000_000, False),
    (3, [8, 8, 8], -0.50, 5_000, 1_000_000, True),
    (4, [12, 12, 24], -0.10, 15_000, 4_000_000, True),
]


# The quick demo's ONNX Runtime medians (ms), timed side by side: the student is slower than its
# teacher at batch 1, faster at batch 32; its PTQ twin is slower than fp32 at both.
TEACHER_MS = {1: 0.587, 32: 9.51}
FP32_MS = {1: 0.841, 32: 7.38}
PTQ_MS = {1: 1.2, 32: 8.0}
# trial -> (predicted ms, measured ms) per batch, for the candidates the search timed ("speed" stage)
TIMED = {1: ({1: 0.30, 32: 3.0}, {1: 0.32, 32: 3.1}), 0: ({1: 0.20, 32: 2.0}, {1: 0.19, 32: 2.2})}
RACE_FINALISTS = {1: 0.84, 0: 0.86}  # trial -> val top-1 at the last rung reached


def arch_key(widths: list[int]) -> str:
    arch = {"space": "resnet_cifar", "genes": {"block": "basic", "depths": [1, 1, 1], "widths": widths}}
    return json.dumps(arch, sort_keys=True, separators=(",", ":"))


def write_png(path: Path, size: tuple[int, int], seed: int) -> np.ndarray:
    """A random RGB PNG of ``size`` (w, h); returns its pixels (h, w, 3)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def build_run(root: Path, stages: tuple[str, ...] = ("teacher", "search", "distill", "export")) -> Path:
    """A run directory with the artifacts of ``stages`` (run.yaml always).

    ``speed``: the search timed candidates (leaderboard latency columns, search/speed.json) and the
    export timed the teacher beside each file; ``race``: winner.json holds a race of two finalists.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "run.yaml").write_text("data:\n  spec: npz:/x.npz  # <script>alert(1)</script>\nseed: 0\n")
    if "teacher" in stages:
        (root / "teacher").mkdir()
        TrainMetrics(val_acc=0.9, test_acc=0.89, params=80_000, history=[]).save(RunDir(root).teacher_metrics)
        write_png(root / "teacher" / "curves.png", (60, 40), 1)
    if "search" in stages:
        (root / "search").mkdir()
        buf = io.StringIO()
        w = csv.writer(buf)
        speed = ["pred_ms_b1", "pred_ms_b32", "ms_b1", "ms_b32", "speedup_b1", "speedup_b32"] if "speed" in stages else []
        w.writerow(["trial", "arch", "score_diswot", "params", "flops", "latency_ms", *speed, "feasible", "reused"])
        for trial, widths, score, params, flops, feasible in sorted(CANDIDATES, key=lambda c: -c[2]):
            predicted, measured = TIMED.get(trial, ({}, {}))
            cells = [predicted.get(1, ""), predicted.get(32, ""), measured.get(1, ""), measured.get(32, ""),
                     *(TEACHER_MS[b] / measured[b] if measured else "" for b in (1, 32))] if speed else []
            w.writerow([trial, arch_key(widths), score, params, flops, "", *cells, feasible, False])
        (root / "search" / "leaderboard.csv").write_text(buf.getvalue())
        race = None
        if "race" in stages:
            finalists = [{"arch": arch_key(next(c[1] for c in CANDIDATES if c[0] == trial)), "finalist": i,
                          "rung_reached": 1 if trial == 1 else 0, "state": "complete" if trial == 1 else "pruned",
                          "rungs": [{"step": 10, "val_acc": acc, "train_loss_sum": 5.0}]}
                         for i, (trial, acc) in enumerate(RACE_FINALISTS.items())]
            race = {"rank": "tse", "rungs": [10, 30], "finalists": finalists, "winner": arch_key([8, 16, 32])}
        WinnerRecord(arch=WINNER_ARCH, rule="best", proxy="diswot", score=-0.05, params=20_000, flops=5_000_000,
                     latency_ms=None, trial=1, complete_trials=5, unique_candidates=5, feasible_candidates=4,
                     config={}, reason="best proxy score within the budgets", race=race).save(RunDir(root).winner)
        if "speed" in stages:
            score = {c[0]: c[2] for c in CANDIDATES}
            SpeedRecord(provider="cpu", threads=1, batches=[1, 32], teacher_ms={str(b): v for b, v in TEACHER_MS.items()},
                        speedup_budget=1.5, replaced=[], timed=[
                            {"arch_key": arch_key(next(c[1] for c in CANDIDATES if c[0] == trial)), "trial": trial,
                             "score": score[trial], "predicted_ms": {str(b): v for b, v in predicted.items()},
                             "ms": {str(b): v for b, v in measured.items()},
                             "speedup": {str(b): TEACHER_MS[b] / v for b, v in measured.items()}, "meets_budget": True}
                            for trial, (predicted, measured) in TIMED.items()]).save(RunDir(root).speed)
        write_png(root / "search" / "pareto.png", (80, 50), 2)
    if "distill" in stages:
        (root / "distill").mkdir()
        TrainMetrics(val_acc=0.85, test_acc=0.84, params=20_000, teacher_val_acc=0.9, history=[]).save(
            RunDir(root).distill_metrics)
        write_png(root / "distill" / "curves.png", (60, 40), 3)
    if "qat" in stages:
        QatMetrics(fp32_val_acc=0.85, fake_quant_val_acc=0.845, int8_val_acc=0.8412, teacher_val_acc=0.9,
                   val_images=100, loss="kd:1,ce:1", recipe="onnx", epochs=1, history=[]).save(RunDir(root).qat_metrics)
    if "export" in stages:
        (root / "export").mkdir()
        lat = {"batch_1": {"p50": 0.25}, "batch_32": {"p50": 3.5}}
        parity = {"batch_1": {"max_abs_diff": 1e-6, "top1_agreement": 1.0},
                  "batch_8": {"max_abs_diff": 2e-6, "top1_agreement": 1.0}}
        files = {
            "fp32": {"path": "student.onnx", "size_bytes": 80_000, "opset": 18, "provider_used": "cpu",
                     "accuracy": 0.85, "parity": parity, "latency_ms": lat},
            "ptq": {"path": "student.ptq.onnx", "size_bytes": 25_000, "opset": 18, "provider_used": "cpu",
                    "accuracy": 0.83, "parity": {"batch_1": {"max_abs_diff": 0.2, "top1_agreement": 0.97}},
                    "latency_ms": {"batch_1": {"p50": 0.15}, "batch_32": {"p50": 2.0}}},
        }
        if "qat" in stages:
            files["qat"] = {"path": "student.qat.onnx", "size_bytes": 27_000, "opset": 18, "provider_used": "cpu",
                            "accuracy": 0.8411, "parity": {"batch_8": {"max_abs_diff": 0.01, "top1_agreement": 1.0}},
                            "latency_ms": {"batch_1": {"p50": 0.12}, "batch_32": {"p50": 1.7}}}
        timed = {}
        if "speed" in stages:  # timed side by side with the teacher, as the export stage records it
            p50 = lambda ms: {f"batch_{b}": {"p50": v} for b, v in ms.items()}  # noqa: E731
            files["fp32"].update(latency_ms=p50(FP32_MS), speedup={str(b): TEACHER_MS[b] / FP32_MS[b] for b in (1, 32)})
            files["ptq"].update(latency_ms=p50(PTQ_MS), speedup={str(b): TEACHER_MS[b] / PTQ_MS[b] for b in (1, 32)},
                                speedup_vs_fp32={str(b): FP32_MS[b] / PTQ_MS[b] for b in (1, 32)})
            files.pop("qat", None)
            timed = {"teacher": {"path": "teacher.onnx", "size_bytes": 300_000, "provider_used": "cpu",
                                 "latency_ms": p50(TEACHER_MS)},
                     "timing": {"batches": [1, 32], "threads": 1, "runs": 100, "warmup": 10, "interleaved": True},
                     "recommended": "fp32"}
        ExportRecord.from_dict({
            "kdsearch_version": "0", "opset": 18, "provider_requested": "cpu", "log": "export.log",
            "parity_rule": {"provider": "cpu", "min_top1_agreement": 0.999, "images": 64},
            "files": files,
            "pytorch_eager": {"device": "cpu", "accuracy": 0.85, "latency_ms": {"batch_1": {"p50": 1.5}}},
            "input_size": [3, 32, 32],
            **timed,
        }).save(RunDir(root).export_record)
    if "correlate" in stages:
        write_png(root / "correlate" / "scatter.png", (70, 30), 4)
        write_png(root / "correlate" / "size_controlled.png", (30, 70), 5)
    return root
