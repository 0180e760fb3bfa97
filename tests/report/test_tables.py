"""Terminal tables: accuracy differences in points, speed ratios as "N× faster" or "N× slower"."""
from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from kdsearch.report.tables import export_table, summary_table


def _text(table) -> str:
    console = Console(width=240, record=True)
    console.print(table)
    return console.export_text()


def _row(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if label in line)


def _summary(teacher_ms: dict[int, float], student_ms: dict[int, float]) -> dict[str, Any]:
    """summary.json as ``kdsearch run`` writes it: the quick demo's figures (a student slower than its teacher at batch 1)."""
    return {
        "run_dir": "runs/quick",
        "teacher": {"val_acc": 0.9267, "params": 272_000, "flops": 62_000_000,
                    **{f"onnx_latency_ms_b{b}": ms for b, ms in teacher_ms.items()}},
        "student": {"val_acc": 0.9112, "params": 32_700, "flops": 19_500_000},
        "reduction": {"params": 8.3, "flops": 3.2},
        "onnx": {"val_acc": 0.9112, "top1_agreement": 1.0, "pytorch_latency_ms_b1": 1.9, "latency_batch": 32,
                 **{f"latency_ms_b{b}": ms for b, ms in student_ms.items()},
                 **{f"speedup_b{b}": teacher_ms[b] / student_ms[b] for b in student_ms},
                 "recommended": "student.onnx",
                 **{f"recommended_speedup_b{b}": teacher_ms[b] / student_ms[b] for b in student_ms}},
        "timings_s": {"search": 10.0},
    }


def test_an_accuracy_difference_is_in_points() -> None:
    text = _text(summary_table(_summary({1: 0.587, 32: 9.51}, {1: 0.841, 32: 7.38})))
    row = _row(text, "val top-1")
    assert "-1.55 points" in row and "%" not in row.split("91.12%")[1]


def test_a_slower_student_reads_slower_never_a_fraction_faster() -> None:
    text = _text(summary_table(_summary({1: 0.587, 32: 9.51}, {1: 0.841, 32: 7.38})))
    assert "1.4× slower" in _row(text, "p50 b=1") and "1.3× faster" in _row(text, "p50 b=32")
    assert "0.7× faster" not in text


def test_no_speed_ratio_between_latencies_not_timed_side_by_side() -> None:
    """PyTorch eager and ONNX Runtime are timed apart: both latencies are shown, no ratio."""
    text = _text(summary_table(_summary({1: 0.587, 32: 9.51}, {1: 0.841, 32: 7.38})))
    assert "×" not in _row(text, "PyTorch")


def test_the_export_table_shows_speed_ups_over_the_teacher_and_fp32() -> None:
    lat = lambda b1, b32: {"batch_1": {"p50": b1}, "batch_32": {"p50": b32}}  # noqa: E731
    report = {
        "teacher": {"path": "teacher.onnx", "latency_ms": lat(0.6, 9.0)},
        "timing": {"batches": [1, 32], "threads": 1},
        "recommended": "fp32",
        "files": {
            "fp32": {"path": "student.onnx", "accuracy": 0.9, "parity": {}, "latency_ms": lat(0.3, 3.0),
                     "size_bytes": 1000, "provider_used": "cpu", "speedup": {"1": 2.0, "32": 3.0}},
            "qat": {"path": "student.qat.onnx", "accuracy": 0.89, "parity": {}, "latency_ms": lat(0.93, 4.0),
                    "size_bytes": 500, "provider_used": "cpu", "speedup": {"1": 0.6 / 0.93, "32": 2.25},
                    "speedup_vs_fp32": {"1": 0.3 / 0.93, "32": 0.75}},
        },
    }
    text = _text(export_table(report))
    fp32, qat = _row(text, "student.onnx"), _row(text, "student.qat.onnx")
    assert "2.0× faster" in fp32 and "3.0× faster" in fp32 and "★" in fp32
    assert "1.6× slower" in qat and "2.2× faster" in qat  # against the teacher
    assert "3.1× slower" in qat and "1.3× slower" in qat  # against fp32


def test_the_terminal_leaderboard_shows_predicted_and_measured_latency_where_timed() -> None:
    from kdsearch.report.tables import leaderboard_table

    arch = lambda i: json.dumps({"space": "resnet_cifar", "genes": {"w": i}}, sort_keys=True, separators=(",", ":"))  # noqa: E731
    timed = {"pred_ms_b1": 0.30, "pred_ms_b32": 3.0, "ms_b1": 0.32, "ms_b32": 3.1, "speedup_b1": 0.5, "speedup_b32": 3.07}
    untimed = {"pred_ms_b1": 0.2, "pred_ms_b32": 2.0, "ms_b1": None, "ms_b32": None, "speedup_b1": None,
               "speedup_b32": None}
    rows = [{"arch": arch(0), "score_diswot": 1.0, "params": 1_000, "flops": 1, "feasible": True, **timed},
            {"arch": arch(1), "score_diswot": 0.5, "params": 900, "flops": 1, "feasible": True, **untimed}]
    text = _text(leaderboard_table(rows, "diswot", {"arch": arch(0), "rule": "largest"}))
    header = _row(text, "arch genes")
    assert all(title in header for title in ("pred ms b=1", "pred ms b=32", "ms b=1", "ms b=32", "vs teacher b=1",
                                             "vs teacher b=32"))
    first, second = _row(text, '"w":0'), _row(text, '"w":1')
    assert "0.300" in first and "0.320" in first and "2.0× slower" in first and "3.1× faster" in first
    assert "0.200" in second and "×" not in second


def test_a_student_larger_than_its_teacher_has_more_params_never_a_fraction_fewer() -> None:
    summary = _summary({1: 0.3, 32: 9.25}, {1: 11.96, 32: 327.6})
    summary["reduction"] = {"params": 77_750 / 2_860_000, "flops": 18.69e6 / 1.16e9}
    text = _text(summary_table(summary))
    assert "36.8× more" in _row(text, "params") and "62.1× more" in _row(text, "FLOPs") and "0.0× fewer" not in text
