"""How kdsearch words a comparison: speed ratios and accuracy differences (torch-free, for every layer).

A speed ratio is only meaningful between two latencies timed side by side
(:mod:`kdsearch.export.timing`); these functions only word it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdsearch.rundir import ExportRecord

__all__ = ["fewer_text", "points_text", "speed_text", "speedup", "threads_text", "export_speed_warnings"]


def speedup(teacher_ms: float, student_ms: float) -> float:
    """How many times faster the student is than the teacher (below 1: slower)."""
    return teacher_ms / max(student_ms, 1e-12)


def speed_text(ratio: float | None) -> str:
    """``3.2× faster`` or ``1.4× slower`` (never ``0.7× faster``); ``—`` when unknown."""
    if ratio is None or not ratio > 0:
        return "—"
    if ratio >= 1:
        return f"{ratio:.1f}× faster"
    return f"{1 / ratio:.1f}× slower"


def fewer_text(ratio: float | None) -> str:
    """A count's ratio (teacher ÷ student, parameters or FLOPs) as ``8.3× fewer`` or ``1.5× more``
    (never ``0.7× fewer``); ``—`` when unknown."""
    if ratio is None or not ratio > 0:
        return "—"
    if ratio >= 1:
        return f"{ratio:.1f}× fewer"
    return f"{1 / ratio:.1f}× more"


def points_text(student: float | None, reference: float | None) -> str:
    """The difference of two 0-1 accuracies in percentage points: ``-1.55 points``; ``—`` when unknown."""
    if student is None or reference is None:
        return "—"
    return f"{100 * (student - reference):+.2f} points"


def threads_text(threads: int | None) -> str:
    """``1 thread``, ``4 threads``, or ONNX Runtime's default for None."""
    return "ONNX Runtime's default threads" if threads is None else f"{threads} thread" + ("s" if threads > 1 else "")


def export_speed_warnings(record: ExportRecord) -> list[str]:
    """One line per int8 file slower than the fp32 one, and one when the file to ship is slower than
    the teacher, from the ratios ``export.json`` records (each of one interleaved loop)."""
    batches = record.latency_batches
    where = (f"in ONNX Runtime ({record.fp32.provider_used}, {threads_text((record.timing or {}).get('threads'))}), "
             "timed side by side")
    lines = []
    for kind, f in record.files.items():
        slower = [b for b in batches if (f.speedup_vs_fp32_at(b) or 1.0) < 1]
        if kind != "fp32" and slower:
            at = " and ".join(f"{speed_text(f.speedup_vs_fp32_at(b))} at batch {b}" for b in slower)
            lines.append(f"{f.path} (int8, {kind}) is {at} than {record.fp32.path} (fp32) {where}; "
                         f"ship {record.shipped.path}")
    shipped = record.shipped
    slower = [b for b in batches if (shipped.speedup_at(b) or 1.0) < 1]
    if slower:
        at = " and ".join(f"{speed_text(shipped.speedup_at(b))} at batch {b}" for b in slower)
        lines.append(f"the student ({shipped.path}) is {at} than its teacher {where}; a shallower student, "
                     "or a search under --speedup, is faster")
    return lines
