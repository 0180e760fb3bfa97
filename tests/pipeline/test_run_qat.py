"""`kdsearch run --preset tiny --qat` end to end: the report shows the QAT accuracy, and fp32, PTQ
and QAT stand side by side in export.json and report.html, also after a later single-mode export."""
from __future__ import annotations

import json
import re

import pytest

from kdsearch.rundir import ExportRecord, QatMetrics, RunDir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory, fashion_npz):
    from kdsearch.cli import main

    out = tmp_path_factory.mktemp("runs") / "tiny-qat"
    code = main(["run", "--preset", "tiny", "--qat", "--data", f"npz:{fashion_npz}", "--out", str(out),
                 "--json", "--quiet"])
    assert code == 0
    return RunDir(out)


def _cells(html: str, label: str) -> list[str]:
    """The cells of the first table row whose first cell starts with ``label``."""
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
        if cells and cells[0].startswith(label):
            return cells
    raise AssertionError(f"no row {label!r} in the report")


def test_report_shows_the_qat_accuracy(qat_run):
    qat = QatMetrics.load(qat_run.qat_metrics)
    html = qat_run.report.read_text(encoding="utf-8")
    cells = _cells(html, "val top-1 after QAT")
    assert cells[2] == f"{100 * qat.int8_val_acc:.2f}%"


def test_export_holds_fp32_ptq_and_qat_side_by_side(qat_run):
    record = ExportRecord.load(qat_run.export_record)
    assert set(record.files) == {"fp32", "ptq", "qat"}
    for entry in record.files.values():
        assert (qat_run.export / entry.path).is_file()
        assert 0.0 <= entry.accuracy <= 1.0 and entry.p50(1) > 0 and entry.size_bytes > 0
    html = qat_run.report.read_text(encoding="utf-8")
    for kind, name in (("fp32", "student.onnx"), ("ptq", "student.ptq.onnx"), ("qat", "student.qat.onnx")):
        cells = _cells(html, f"{kind}: {name}")
        assert cells[1] == f"{100 * record.files[kind].accuracy:.2f}%"


def test_teacher_and_student_latency_side_by_side(qat_run):
    """The edge user's first question: how much faster than the teacher, at batch 1 and 32."""
    record = ExportRecord.load(qat_run.export_record)
    html = qat_run.report.read_text(encoding="utf-8")
    for batch in (1, 32):
        assert record.teacher_p50(batch) > 0
        cells = _cells(html, f"latency b={batch}, ONNX Runtime fp32")
        assert cells[1] == f"{record.teacher_p50(batch):.3f} ms" and cells[2] == f"{record.fp32.p50(batch):.3f} ms"
    assert record.input_size == [1, 28, 28]


def test_a_later_ptq_export_keeps_the_qat_file_and_honours_the_calibration_count(qat_run, cli):
    qat_file = qat_run.export / "student.qat.onnx"
    before = qat_file.read_bytes()
    calib = 300  # above the default of 256: the stage must pass the count through
    code, out, err = cli("export", qat_run.root, "--int8", "ptq", "--calib-images", calib, "--json", "--quiet")
    assert code == 0, err
    report = json.loads(out)
    assert set(report["files"]) == {"fp32", "ptq", "qat"}
    assert report["files"]["ptq"]["calib_images"] == calib
    assert qat_file.read_bytes() == before
    # a student distilled again is another model: its old int8 files are not vouched for
    record = ExportRecord.load(qat_run.export_record)
    assert record.student_digest and len(record.student_digest) == 64
