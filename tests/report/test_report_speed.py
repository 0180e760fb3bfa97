"""The report's speed figures and words: ratios timed side by side, "N× slower", points, the student trained."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdsearch.report.html import write_report
from kdsearch.rundir import RunDir, TrainMetrics

from run_builders import CANDIDATES, FP32_MS, PTQ_MS, TEACHER_MS, TIMED, arch_key, build_run
from test_report_html import _parse

SPEED_RUN = ("teacher", "search", "distill", "export", "speed")


def _row(page, label: str) -> list[str]:
    return next(r for r in page.rows if r and r[0] == label)


def test_a_student_slower_than_its_teacher_reads_slower(tmp_path):
    run = build_run(tmp_path / "run", stages=SPEED_RUN)
    figures = write_report(run)
    text = (run / "report.html").read_text(encoding="utf-8")
    page = _parse(run / "report.html")
    b1, b32 = _row(page, "latency b=1, ONNX Runtime fp32 (cpu)"), _row(page, "latency b=32, ONNX Runtime fp32 (cpu)")
    assert b1[1:] == ["0.587 ms", "0.841 ms", "1.4× slower"] and b32[3] == "1.3× faster"
    assert "0.7× faster" not in text
    assert figures["export"]["fp32"]["speedup_b1"] == pytest.approx(TEACHER_MS[1] / FP32_MS[1])
    warnings = figures["speed_warnings"]
    assert any(w.startswith("the student (student.onnx) is 1.4× slower at batch 1 than its teacher") for w in warnings)
    assert any(w in text for w in warnings)  # said on the page too


def test_an_accuracy_difference_is_in_points(tmp_path):
    run = build_run(tmp_path / "run")
    write_report(run)
    assert _row(_parse(run / "report.html"), "val top-1")[3] == "-5.00 points"


def test_int8_slower_than_fp32_is_compared_to_both_and_fp32_recommended(tmp_path):
    run = build_run(tmp_path / "run", stages=SPEED_RUN)
    figures = write_report(run)
    page = _parse(run / "report.html")
    header = next(r for r in page.rows if r and r[0] == "file")
    ptq, fp32 = _row(page, "ptq: student.ptq.onnx"), _row(page, "fp32: student.onnx")
    cell = lambda row, name: row[header.index(name)]  # noqa: E731
    assert cell(ptq, "vs teacher b=1") == "2.0× slower" and cell(ptq, "vs teacher b=32") == "1.2× faster"
    assert cell(ptq, "vs fp32 b=1") == "1.4× slower" and cell(ptq, "vs fp32 b=32") == "1.1× slower"
    assert cell(fp32, "ship") == "★" and cell(ptq, "ship") == ""
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "Recommended: student.onnx" in text and "student.ptq.onnx is slower than fp32" in text
    assert figures["recommended"] == "student.onnx" and figures["export"]["ptq"]["speedup_vs_fp32_b1"] == pytest.approx(
        FP32_MS[1] / PTQ_MS[1])
    assert any(w.startswith("student.ptq.onnx (int8, ptq) is 1.4× slower at batch 1 and 1.1× slower at batch 32 than "
                            "student.onnx (fp32)") for w in figures["speed_warnings"])


def _distill_other(run: Path, widths: list[int], params: int) -> dict:
    arch = {"space": "resnet_cifar", "genes": {"block": "basic", "depths": [1, 1, 1], "widths": widths}}
    (run / "distill" / "student.json").write_text(json.dumps(
        {"arch": arch, "family": "resnet_cifar", "model": None, "num_classes": 10, "in_channels": 3, "trained": True}))
    TrainMetrics(val_acc=0.86, test_acc=0.85, params=params, teacher_val_acc=0.9, history=[]).save(
        RunDir(run).distill_metrics)
    return arch


def test_the_report_describes_the_student_that_was_distilled_not_the_search_winner(tmp_path):
    """``kdsearch distill RUN --student other.json`` trains another student than winner.json's."""
    run = build_run(tmp_path / "run")
    trial, widths, _, params, flops, _ = CANDIDATES[0]  # scored by the search, not its winner
    arch = _distill_other(run, widths, params)
    figures = write_report(run)
    assert figures["student"]["arch"] == arch and figures["student"]["params"] == params
    assert figures["student"]["flops"] == flops and figures["student"]["is_search_winner"] is False
    page = _parse(run / "report.html")
    assert '"widths":[16,16,16]' in _row(page, "architecture")[2]
    assert _row(page, "params")[2] == "40.00k" and _row(page, "FLOPs")[2] == "9.00M"


def test_a_distilled_student_the_search_never_scored_has_its_flops_counted(tmp_path):
    from kdsearch.proxies import count_flops
    from kdsearch.spaces.catalog import build_from_description

    run = build_run(tmp_path / "run")
    arch = _distill_other(run, [4, 8, 8], 5_000)
    model = build_from_description({"arch": arch, "family": "resnet_cifar"}, 10, 3)
    figures = write_report(run)
    assert figures["student"]["flops"] == count_flops(model, (3, 32, 32))


def test_the_leaderboard_shows_predicted_and_measured_latency_where_timed(tmp_path):
    run = build_run(tmp_path / "run", stages=SPEED_RUN)
    write_report(run)
    page = _parse(run / "report.html")
    header = next(r for r in page.rows if r and r[0] == "#")
    assert header[5:11] == ["predicted ms b=1", "predicted ms b=32", "measured ms b=1", "measured ms b=32",
                            "vs teacher b=1", "vs teacher b=32"]
    board = {tuple(json.loads(r[1].removeprefix("★ ").split(" ", 1)[1])["widths"]): r for r in page.rows
             if r and r[0].isdigit() and len(r) == len(header)}
    predicted, measured = TIMED[1]
    winner = board[(8, 16, 32)]
    assert winner[5:9] == [f"{predicted[1]:.3f}", f"{predicted[32]:.3f}", f"{measured[1]:.3f}", f"{measured[32]:.3f}"]
    assert winner[9] == "1.8× faster"
    assert board[(64, 64, 64)][5:11] == [""] * 6  # never timed


def test_the_accuracy_speed_figure_is_embedded(tmp_path):
    run = build_run(tmp_path / "run", stages=(*SPEED_RUN, "race"))
    write_report(run)
    page = _parse(run / "report.html")
    assert page.sections[:2] == ["overview", "speed"]
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "Accuracy against speed. x: speed-up over the teacher" in text and "race finalists" in text
    assert "Dashed: the --speedup budget." in text
    assert len(page.imgs) == 4  # the figure, the Pareto front, two training curves


def test_plot_speed_accuracy_writes_a_png(tmp_path):
    from PIL import Image

    from kdsearch.report.plots import plot_speed_accuracy

    path = tmp_path / "speed.png"
    plot_speed_accuracy([{"label": "teacher", "kind": "teacher", "speedup": 1.0, "val_acc": 0.9},
                         {"label": "student.onnx", "kind": "student", "speedup": 4.2, "val_acc": 0.89},
                         {"label": "#1", "kind": "finalist", "speedup": 3.0, "val_acc": 0.8}],
                        [{"speedup": 3.0, "score": -0.1, "winner": True}, {"speedup": 5.0, "score": -0.3}],
                        path, budget=4.0)
    assert Image.open(path).size[0] > Image.open(path).size[1]  # two panels side by side


def test_the_report_command_warns_when_the_student_is_slower(tmp_path, cli):
    run = build_run(tmp_path / "run", stages=SPEED_RUN)
    code, out, err = cli("report", run)
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("warning: the student")]
    assert len(lines) == 1 and "1.4× slower at batch 1 than its teacher" in lines[0]
    assert "1.4× slower" in out and "0.7× faster" not in out


def test_latencies_of_an_older_export_timed_apart_get_no_ratio(tmp_path):
    """An export.json without side-by-side speed-ups (the teacher timed in another loop): no "× faster"."""
    run = build_run(tmp_path / "run")
    path = RunDir(run).export_record
    data = json.loads(path.read_text())
    data["teacher"] = {"path": "teacher.onnx", "size_bytes": 1, "provider_used": "cpu",
                       "latency_ms": {f"batch_{b}": {"p50": ms} for b, ms in TEACHER_MS.items()}}
    data["files"]["fp32"]["latency_ms"] = {f"batch_{b}": {"p50": ms} for b, ms in FP32_MS.items()}
    path.write_text(json.dumps(data))
    write_report(run)
    row = _row(_parse(run / "report.html"), "latency b=1, ONNX Runtime fp32 (cpu)")
    assert row[1:3] == ["0.587 ms", "0.841 ms"] and row[3] == ""
    assert "× faster" not in (run / "report.html").read_text(encoding="utf-8").split("Overview")[1].split("Search")[0]
