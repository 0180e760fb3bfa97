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

from kdsearch.rundir import ExportRecord, QatMetrics, RunDir, TrainMetrics, WinnerRecord

WINNER_ARCH = {"space": "resnet_cifar", "genes": {"block": "basic", "depths": [1, 1, 1], "widths": [8, 16, 32]}}

# trial, genes widths, score, params, flops, feasible
CANDIDATES = [
    (0, [16, 16, 16], -0.30, 40_000, 9_000_000, True),
    (1, [8, 16, 32], -0.05, 20_000, 5_000_000, True),  # the winner
    (2, [64, 64, 64], -0.02, 900_000, 90_000_000, False),
    (3, [8, 8, 8], -0.50, 5_000, 1_000_000, True),
    (4, [12, 12, 24], -0.10, 15_000, 4_000_000, True),
]


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
    """A run directory with the artifacts of ``stages`` (run.yaml always)."""
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
        w.writerow(["trial", "arch", "score_diswot", "params", "flops", "latency_ms", "feasible", "reused"])
        for trial, widths, score, params, flops, feasible in sorted(CANDIDATES, key=lambda c: -c[2]):
            w.writerow([trial, arch_key(widths), score, params, flops, "", feasible, False])
        (root / "search" / "leaderboard.csv").write_text(buf.getvalue())
        WinnerRecord(arch=WINNER_ARCH, rule="best", proxy="diswot", score=-0.05, params=20_000, flops=5_000_000,
                     latency_ms=None, trial=1, complete_trials=5, unique_candidates=5, feasible_candidates=4,
                     config={}, reason="best proxy score within the budgets").save(RunDir(root).winner)
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
        ExportRecord.from_dict({
            "kdsearch_version": "0", "opset": 18, "provider_requested": "cpu", "log": "export.log",
            "parity_rule": {"provider": "cpu", "min_top1_agreement": 0.999, "images": 64},
            "files": files,
            "pytorch_eager": {"device": "cpu", "accuracy": 0.85, "latency_ms": {"batch_1": {"p50": 1.5}}},
        }).save(RunDir(root).export_record)
    if "correlate" in stages:
        write_png(root / "correlate" / "scatter.png", (70, 30), 4)
        write_png(root / "correlate" / "size_controlled.png", (30, 70), 5)
    return root
