"""Rich tables for the terminal: the run summary, the search leaderboard, the export report."""
from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from rich.table import Table

from kdsearch.ratios import fewer_text, points_text, speed_text

__all__ = ["summary_table", "leaderboard_table", "latency_columns", "export_table", "fmt_int", "fmt_pct", "fmt_ms"]


def fmt_int(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def fmt_pct(x: float | None) -> str:
    """A 0-1 fraction as a percentage; an en dash for None."""
    return _pct(x)


def fmt_ms(x: float | None) -> str:
    """Milliseconds with three decimals; an en dash for None."""
    return _ms(x)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f} ms"


def summary_table(summary: dict[str, Any]) -> Table:
    """Teacher against student: accuracy (difference in points), size, cost, latency.

    Speed ratios are the ones ``summary.json`` records: each of two latencies timed side by
    side (``speedup_b<batch>``); latencies timed apart (PyTorch eager) get no ratio.
    """
    t, s, onnx = summary["teacher"], summary["student"], summary["onnx"]
    table = Table(title=f"kdsearch run: {summary['run_dir']}")
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    table.add_column("ratio", justify="right")
    table.add_row("val top-1", _pct(t["val_acc"]), _pct(s["val_acc"]), points_text(s["val_acc"], t["val_acc"]))
    table.add_row("params", fmt_int(t["params"]), fmt_int(s["params"]), fewer_text(summary["reduction"]["params"]))
    table.add_row("FLOPs", fmt_int(t["flops"]), fmt_int(s["flops"]), fewer_text(summary["reduction"]["flops"]))
    table.add_row("ONNX val top-1", "", _pct(onnx["val_acc"]), f"agreement {_pct(onnx['top1_agreement'])}")
    table.add_row("latency b=1, PyTorch eager", "", _ms(onnx["pytorch_latency_ms_b1"]), "")
    for batch in dict.fromkeys((1, onnx.get("latency_batch", 32))):
        teacher_ms, student_ms = t.get(f"onnx_latency_ms_b{batch}"), onnx.get(f"latency_ms_b{batch}")
        if teacher_ms is not None and student_ms:
            table.add_row(f"ONNX Runtime p50 b={batch} (fp32)", _ms(teacher_ms), _ms(student_ms),
                          speed_text(onnx.get(f"speedup_b{batch}")))
    recommended = onnx.get("recommended")
    if recommended and not str(onnx.get("path", "")).endswith(recommended):
        speeds = ", ".join(f"{speed_text(onnx.get(f'recommended_speedup_b{b}'))} at b={b}"
                           for b in dict.fromkeys((1, onnx.get("latency_batch", 32))))
        table.add_row("file to ship (int8, faster than fp32)", "", recommended, speeds)
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in summary["timings_s"].items())
    table.caption = f"speed ratios: ONNX Runtime medians timed side by side; wall time: {timings}"
    return table


def leaderboard_table(rows: Sequence[dict[str, Any]], proxy: str, winner: dict[str, Any], top: int = 10) -> Table:
    """The best candidates within budget, in the order of the rule that chose the winner.

    ``rows`` come as the search ranked them (``search/leaderboard.csv``'s order: by the winner
    rule, the winner first) when ``winner`` names its ``rule``; without one (an older run) they
    are ordered by the proxy. The CLI prints the winner's ``reason`` under the table.
    """
    key = f"score_{proxy}"
    rule = winner.get("rule")
    unique = list({r["arch"]: r for r in rows}.values())  # first appearance keeps its place
    if rule is None:
        unique.sort(key=lambda r: -r[key])
    shown = [r for r in unique if r["feasible"]][:top]
    by = f"--pick {rule}" if rule else proxy
    table = Table(title=f"top candidates by {by} ({len(unique)} unique, {sum(r['feasible'] for r in unique)} within budget)")
    latency = latency_columns(shown)
    for col in ("", "arch genes", proxy, "params", "FLOPs", *(title for _, title, _ in latency)):
        table.add_column(col, justify="left" if col == "arch genes" else "right")
    for r in shown:
        genes = json.dumps(json.loads(r["arch"])["genes"], separators=(",", ":"))
        table.add_row("★" if r["arch"] == winner["arch"] else "", genes, f"{r[key]:.5g}", fmt_int(r["params"]),
                      fmt_int(r["flops"]), *(render(r.get(column)) for column, _, render in latency))
    if latency:
        table.caption = "pred: the latency model's ONNX Runtime estimate; ms, vs teacher: timed for real beside the teacher"
    return table


def latency_columns(rows: Sequence[dict[str, Any]], *, long: bool = False) -> list[tuple[str, str, Callable[[Any], str]]]:
    """The leaderboard's latency columns that hold a value in ``rows``, as ``(column, title, render)``:
    predicted ms, measured ms and measured speed-up over the teacher, at batch 1 then the throughput
    batch; ``long`` titles spell them out (the HTML page)."""
    batches = sorted({int(k.rsplit("_b", 1)[1]) for r in rows for k in r
                      if k.startswith(("pred_ms_b", "ms_b", "speedup_b")) and k.rsplit("_b", 1)[1].isdigit()})

    def ms(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, (int, float)) else ""

    def speed(v: Any) -> str:
        return speed_text(v) if isinstance(v, (int, float)) else ""

    predicted, measured = ("predicted ms", "measured ms") if long else ("pred ms", "ms")
    columns = [(f"pred_ms_b{b}", f"{predicted} b={b}", ms) for b in batches]
    columns += [(f"ms_b{b}", f"{measured} b={b}", ms) for b in batches]
    columns += [(f"speedup_b{b}", f"vs teacher b={b}", speed) for b in batches]
    return [c for c in columns if any(isinstance(r.get(c[0]), (int, float)) for r in rows)]


def export_table(report: dict[str, Any]) -> Table:
    """One row per exported file (★ the one to ship) and the teacher: accuracy, parity, latency, speed-ups
    over the teacher and, for int8, over fp32 (every ratio of two medians from one interleaved loop), size."""
    batches = list(dict.fromkeys((report.get("timing") or {}).get("batches") or (1, 32)))
    table = Table(title="ONNX export")
    int8 = any(kind != "fp32" for kind in report["files"])
    teacher = report.get("teacher") or {}
    vs_teacher = [f"vs teacher b={b}" for b in batches] if teacher.get("latency_ms") else []
    vs_fp32 = [f"vs fp32 b={b}" for b in batches] if int8 else []
    columns = ["file", "val top-1", "agreement", *(f"p50 b={b}" for b in batches), *vs_teacher, *vs_fp32, "size",
               "provider"]
    for col in columns:
        table.add_column(col, justify="right" if col != "file" else "left")
    if teacher.get("latency_ms"):
        lat = teacher["latency_ms"]
        table.add_row(f"teacher: {teacher.get('path', '')}", "", "",
                      *(_ms(lat.get(f"batch_{b}", {}).get("p50")) for b in batches), *([""] * len(vs_teacher + vs_fp32)),
                      fmt_int(teacher.get("size_bytes")) + "B" if teacher.get("size_bytes") else "",
                      str(teacher.get("provider_used", "")))
    recommended = report.get("recommended")
    for kind, f in report["files"].items():
        agreement = min((p["top1_agreement"] for p in f.get("parity", {}).values() if isinstance(p, dict)
                         and "top1_agreement" in p), default=None)
        lat = f.get("latency_ms", {})
        ratios = f.get("speedup_vs_fp32") or {}
        table.add_row(
            ("★ " if kind == recommended else "") + f"{kind}: {f['path']}",
            _pct(f.get("accuracy")),
            _pct(agreement),
            *(_ms(lat.get(f"batch_{b}", {}).get("p50")) for b in batches),
            *(speed_text((f.get("speedup") or {}).get(str(b))) for b in batches if vs_teacher),
            *((speed_text(ratios.get(str(b))) if kind != "fp32" else "") for b in batches if vs_fp32),
            fmt_int(f.get("size_bytes")) + "B",
            str(f.get("provider_used", "")),
        )
    timing = report.get("timing") or {}
    if timing:
        threads = timing.get("threads")
        table.caption = (f"★ the file to ship (fp32 unless int8 is faster at every batch); latencies: medians of "
                         f"{timing.get('runs')} interleaved rounds, "
                         f"{'default' if threads is None else threads} ONNX Runtime thread(s)")
    return table
