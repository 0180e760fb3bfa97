"""``report.html``: one self-contained page (inline CSS, PNGs as data URIs) a person can open.

Sections appear for the stages that ran: teacher against student, the search's Pareto front and
leaderboard, training curves, the deployment table from ``export/export.json``, the
proxy-against-accuracy plots of ``correlate/`` and the resolved configuration (``run.yaml``).
"""
from __future__ import annotations

import base64
import html
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from kdsearch.files import write_text
from kdsearch.ratios import fewer_text, points_text, speed_text
from kdsearch.report.summary import RunContents, key_figures, read_run
from kdsearch.report.tables import fmt_int, fmt_ms, fmt_pct, latency_columns
from kdsearch.rundir import PARETO_PLOT, RunDir

__all__ = ["write_report", "render_report", "png_data_uri"]

_LEADERBOARD_TOP = 15

_CSS = """
:root { --ink:#1d2433; --muted:#5b6478; --line:#dfe3ea; --accent:#2f6fde; --good:#1a8a4a; --bad:#c0392b;
        --card:#ffffff; --page:#f4f6f9; }
* { box-sizing: border-box; }
body { margin:0; background:var(--page); color:var(--ink);
       font:15px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background:#1d2433; color:#fff; padding:22px 32px; }
header h1 { margin:0 0 4px; font-size:22px; font-weight:600; }
header .meta { color:#b8c0d0; font-size:13px; }
main { max-width:1120px; margin:0 auto; padding:20px 24px 48px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:18px 22px; margin:18px 0; }
h2 { margin:0 0 12px; font-size:18px; font-weight:600; }
h3 { margin:14px 0 6px; font-size:15px; color:var(--muted); font-weight:600; }
.cards { display:flex; gap:14px; flex-wrap:wrap; }
.card { flex:1 1 180px; background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 16px; }
.card .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .value { font-size:24px; font-weight:600; margin-top:2px; }
.card .sub { color:var(--muted); font-size:13px; }
table { border-collapse:collapse; width:100%; font-size:14px; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:right; white-space:nowrap; }
th { background:#f0f3f8; color:var(--muted); font-weight:600; }
th:first-child, td:first-child { text-align:left; }
td.genes, th.genes { text-align:left; font-family:ui-monospace, Menlo, Consolas, monospace; font-size:12.5px; white-space:normal; }
tr.winner td { background:#fff6db; font-weight:600; }
.figures { display:flex; flex-wrap:wrap; gap:16px; }
figure { margin:0; flex:1 1 460px; max-width:640px; }
figure img { width:100%; height:auto; border:1px solid var(--line); border-radius:6px; background:#fff; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
pre { background:#f6f8fa; border:1px solid var(--line); border-radius:6px; padding:12px; overflow:auto;
      font-size:12.5px; max-height:480px; }
.ok { color:var(--good); } .warn { color:var(--bad); }
.muted { color:var(--muted); }
"""


def png_data_uri(data: bytes) -> str:
    """A ``data:image/png;base64,...`` URI for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)



def _table(header: Sequence[str], rows: Iterable[Sequence[str]], row_classes: Sequence[str] | None = None,
           genes_col: int | None = None) -> str:
    head = "".join(f'<th class="genes">{_e(h)}</th>' if j == genes_col else f"<th>{_e(h)}</th>"
                   for j, h in enumerate(header))
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(
            f'<td class="genes">{_e(c)}</td>' if j == genes_col else f"<td>{_e(c)}</td>" for j, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(png: bytes, caption: str) -> str:
    return f'<figure><img src="{png_data_uri(png)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _genes(arch: Any) -> str:
    if isinstance(arch, str):
        try:
            arch = json.loads(arch)
        except json.JSONDecodeError:
            return arch
    if isinstance(arch, dict):
        return f"{arch.get('space', '')} " + json.dumps(arch.get("genes", arch), separators=(",", ":"))
    return str(arch)


def _cards(figures: dict[str, Any]) -> str:
    t, s, exp = figures["teacher"], figures["student"], figures["export"] or {}
    cards = []
    if s["val_acc"] is not None:
        delta = f"teacher {fmt_pct(t['val_acc'])}" if t["val_acc"] is not None else ""
        cards.append(("student val top-1", fmt_pct(s["val_acc"]), delta))
    if s["params"] and t["params"]:
        cards.append(("parameters", fmt_int(s["params"]), f"{fewer_text(t['params'] / s['params'])} than the teacher"))
    elif s["params"]:
        cards.append(("parameters", fmt_int(s["params"]), ""))
    shipped = next((f for f in exp.values() if f["recommended"]), None)
    if shipped and shipped["latency_ms_b1"] is not None:
        vs = speed_text(shipped["speedup_b1"])
        cards.append(("ONNX latency b=1", fmt_ms(shipped["latency_ms_b1"]),
                      f"p50 of {shipped['path']}, {shipped['provider'] or ''}"
                      + (f"; {vs} than the teacher" if shipped["speedup_b1"] is not None else "")))
    search = figures["search"]
    if search:
        cards.append(("candidates scored", str(search["unique_candidates"]),
                      f"{search['feasible_candidates']} within budget, proxy {search['proxy']}"))
    if not cards:
        return ""
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="label">{_e(a)}</div><div class="value">{_e(b)}</div>'
        f'<div class="sub">{_e(c)}</div></div>' for a, b, c in cards) + "</div>"


def _comparison(run: RunContents, figures: dict[str, Any]) -> str:
    t, s = figures["teacher"], figures["student"]
    summary_teacher = run.summary.teacher if run.summary is not None else {}
    teacher_name = (run.teacher_model or {}).get("model") or summary_teacher.get("source") or ""
    rows = []
    if s["arch"] is not None:
        note = "" if s["is_search_winner"] or run.winner is None else "distilled with --student, not the search's winner"
        rows.append(["architecture", str(teacher_name), _genes(s["arch"]), note])
    rows += [
        ["val top-1", fmt_pct(t["val_acc"]), fmt_pct(s["val_acc"]),
         points_text(s["val_acc"], t["val_acc"]) if s["val_acc"] is not None and t["val_acc"] is not None else "–"],
        ["test top-1", fmt_pct(run.teacher.test_acc if run.teacher else None), fmt_pct(s["test_acc"]), ""],
        ["params", fmt_int(t["params"]), fmt_int(s["params"]),
         fewer_text(t["params"] / s["params"]) if t["params"] and s["params"] else "–"],
        ["FLOPs", fmt_int(t["flops"]), fmt_int(s["flops"]),
         fewer_text(t["flops"] / s["flops"]) if t["flops"] and s["flops"] else "–"],
    ]
    if run.qat is not None:
        rows.append(["val top-1 after QAT (int8, PyTorch)", "", fmt_pct(run.qat.int8_val_acc),
                     f"fp32 {fmt_pct(run.qat.fp32_val_acc)} before QAT"])
    if run.export is not None:
        export = run.export
        if export.input_size:
            size = "×".join(str(n) for n in export.input_size)
            rows.append(["input (C×H×W)", size, size, ""])
        eager = export.pytorch_eager
        lat = eager.get("latency_ms", {})
        rows.append([f"latency b=1, PyTorch eager ({eager.get('device', '?')})", "",
                     fmt_ms(lat.get("batch_1", {}).get("p50")), ""])
        for batch in export.latency_batches:
            teacher_ms = export.teacher_p50(batch)
            for kind, f in export.files.items():
                vs = speed_text(f.speedup_at(batch)) if f.speedup_at(batch) is not None else ""
                if kind != "fp32" and f.speedup_vs_fp32_at(batch) is not None:
                    vs += f"{'; ' if vs else ''}{speed_text(f.speedup_vs_fp32_at(batch))} than fp32"
                rows.append([f"latency b={batch}, ONNX Runtime {kind} ({f.provider_used})",
                             fmt_ms(teacher_ms), fmt_ms(f.p50(batch)), vs])
        if export.teacher and "error" in export.teacher:
            rows.append(["teacher latency", export.teacher["error"], "", ""])
    warn = "".join(f'<p class="warn">{_e(line)}</p>' for line in figures["speed_warnings"])
    note = ""
    if run.export is not None and run.export.timing:
        note = ('<p class="muted">Speed ratios: ONNX Runtime medians of the teacher and each file timed side by side '
                f'(one interleaved loop per batch, {_e(run.export.timing.get("runs"))} rounds after warm-up).</p>')
    return _table(["", "teacher", "student", "student vs teacher"], rows) + note + warn


def _pareto_png(run: RunContents) -> bytes | None:
    existing = run.images.get("search") or []
    if existing:
        return existing[0].read_bytes()
    if not run.leaderboard or run.winner is None:
        return None
    from kdsearch.report.plots import plot_pareto

    score = f"score_{run.winner.proxy}"
    winner_key = json.dumps(run.winner.arch, sort_keys=True, separators=(",", ":"))
    winner_row = next((r for r in run.leaderboard if r["arch"] == winner_key), None)
    if winner_row is None or score not in winner_row:
        return None
    unique = list({r["arch"]: r for r in run.leaderboard}.values())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / PARETO_PLOT
        plot_pareto(unique, winner_row, score, path)
        return path.read_bytes()


def _speed_figure(run: RunContents, figures: dict[str, Any]) -> str:
    """The accuracy-speed trade-off: measured speed-ups (the slower of batch 1 and the throughput batch)."""
    export, speed, winner = run.export, run.speed, run.winner
    batches = export.latency_batches if export is not None else tuple(speed.batches) if speed is not None else (1, 32)

    def slowest(ups: dict[str, float] | None) -> float | None:  # the budget must hold at every batch
        values = [(ups or {}).get(str(b)) for b in batches]
        return min(values) if all(isinstance(v, (int, float)) and v > 0 for v in values) else None

    trained: list[dict[str, Any]] = []
    measured: dict[str, dict[str, float]] = {}  # arch key -> speed-ups of candidates timed during the search
    for t in (speed.timed if speed is not None else []):
        measured[t["arch_key"]] = t["speedup"]
    for r in run.leaderboard:
        ups = {str(b): r.get(f"speedup_b{b}") for b in batches}
        if all(isinstance(v, (int, float)) for v in ups.values()):
            measured.setdefault(r["arch"], ups)
    shipped = export.shipped if export is not None else None
    if shipped is not None and shipped.speedup:
        if figures["teacher"]["val_acc"] is not None:
            trained.append({"label": "teacher", "kind": "teacher", "speedup": 1.0, "val_acc": figures["teacher"]["val_acc"]})
        trained.append({"label": shipped.path, "kind": "student", "speedup": slowest(shipped.speedup),
                        "val_acc": shipped.accuracy})
    race = (winner.race or {}) if winner is not None else {}
    for f in race.get("finalists", []):
        ups = measured.get(f["arch"])
        if ups is not None and f.get("rungs"):
            trained.append({"label": f"#{f['finalist']}", "kind": "finalist", "speedup": slowest(ups),
                            "val_acc": f["rungs"][-1]["val_acc"]})
    winner_key = json.dumps(winner.arch, sort_keys=True, separators=(",", ":")) if winner is not None else None
    candidates = [{"speedup": slowest(t["speedup"]), "score": t["score"], "winner": t["arch_key"] == winner_key}
                  for t in (speed.timed if speed is not None else []) if t.get("score") is not None]
    trained = [p for p in trained if p["speedup"] is not None]  # a batch not timed: no point
    candidates = [c for c in candidates if c["speedup"] is not None]
    if not any(p["kind"] != "teacher" for p in trained) and not candidates:
        return ""
    from kdsearch.report.plots import plot_speed_accuracy

    budget = speed.speedup_budget if speed is not None else (run.config.get("search") or {}).get("speedup")
    xlabel = f"speed-up over the teacher (the slower of b={' and b='.join(map(str, batches))})"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speed.png"
        plot_speed_accuracy(trained, candidates, path, proxy=winner.proxy if winner else "proxy",
                            budget=budget if isinstance(budget, (int, float)) else None, xlabel=xlabel)
        png = path.read_bytes()
    caption = ("Accuracy against speed. x: speed-up over the teacher in ONNX Runtime at the slower of batch "
               f"{' and batch '.join(map(str, batches))}, each the ratio of two medians timed side by side with the "
               "teacher (the shipped file at export, search candidates when the search ran). Left: validation top-1 "
               "of the teacher, the shipped file" + (" and the race finalists (at the last rung each reached: "
               "shorter training than the shipped student)" if race else "") + ". "
               + ("Right: proxy score of the candidates timed during the search, never trained. " if candidates else "")
               + ("Dashed: the --speedup budget." if isinstance(budget, (int, float)) else ""))
    return f'<div class="figures">{_figure(png, caption)}</div>'


def _search(run: RunContents) -> str:
    if run.winner is None and not run.leaderboard:
        return ""
    parts = []
    winner = run.winner
    if winner is not None:
        why = f" {_e(winner.reason)}." if winner.reason else ""
        parts.append(f'<p>Winner (rule <b>{_e(winner.rule)}</b>, proxy <b>{_e(winner.proxy)}</b>, '
                     f'trial {_e(winner.trial)}): <code>{_e(_genes(winner.arch))}</code>.{why}</p>')
    png = _pareto_png(run)
    if png is not None:
        parts.append(f'<div class="figures">{_figure(png, "Proxy score against parameters; ★ the winner")}</div>')
    rungs_png = RunDir(run.run_dir).race_plot
    if rungs_png.is_file():
        caption = ("The race by rung: validation top-1 and mean training loss so far (what it ranked by, unless "
                   "--race-rank val); the eliminated in grey, the winner in red")
        parts.append(f'<div class="figures">{_figure(rungs_png.read_bytes(), caption)}</div>')
    if run.leaderboard:
        proxy = winner.proxy if winner else next((k[6:] for k in run.leaderboard[0] if k.startswith("score_")), None)
        key = f"score_{proxy}"
        unique = list({r["arch"]: r for r in reversed(run.leaderboard)}.values())[::-1]  # the file's order: the rule's
        winner_key = json.dumps(winner.arch, sort_keys=True, separators=(",", ":")) if winner else None
        top = unique[:_LEADERBOARD_TOP]
        latency = latency_columns(run.leaderboard, long=True)
        rows = [[str(i + 1), ("★ " if r["arch"] == winner_key else "") + _genes(r["arch"]),
                 f"{r[key]:.5g}" if isinstance(r.get(key), float) else "–", fmt_int(r.get("params")),
                 fmt_int(r.get("flops")), *(render(r.get(column)) for column, _, render in latency),
                 "yes" if r.get("feasible") else "no"] for i, r in enumerate(top)]
        classes = ["winner" if r["arch"] == winner_key else "" for r in top]
        order = f"in the order of rule {_e(winner.rule)}" if winner else f"by {_e(proxy)}"
        parts.append(f"<h3>Leaderboard: top {len(top)} of {len(unique)} unique candidates, {order}</h3>")
        parts.append(_table(["#", "architecture", str(proxy), "params", "FLOPs", *(title for _, title, _ in latency),
                             "within budget"], rows, classes, genes_col=1))
        if latency:
            parts.append('<p class="muted">Predicted latency: the latency model\'s estimate (ONNX Runtime, the '
                         'search\'s threads); measured latency and speed-up: the candidate timed for real, side by '
                         'side with the teacher; empty where a candidate was not timed.</p>')
    return _section("Search", "".join(parts), "search")


def _curves(run: RunContents) -> str:
    figs = []
    for stage, caption in (("teacher", "teacher training"), ("distill", "student distillation"),
                           ("qat", "quantization-aware training")):
        for path in run.images.get(stage, []):
            figs.append(_figure(path.read_bytes(), caption))
    return _section("Training curves", f'<div class="figures">{"".join(figs)}</div>', "curves") if figs else ""


def _deployment(run: RunContents) -> str:
    if run.export is None:
        return ""
    export = run.export
    batches = export.latency_batches
    timed_with_teacher = any(f.speedup for f in export.files.values())
    int8 = any(kind != "fp32" for kind in export.files)
    rows, classes = [], []
    rule = export.parity_rule
    need = rule.get("min_top1_agreement")
    shipped = export.shipped
    for kind, f in export.files.items():
        diffs = [p["max_abs_diff"] for p in f.parity.values() if isinstance(p, dict) and "max_abs_diff" in p]
        agreement = f.min_top1_agreement
        rows.append([
            f"{kind}: {f.path}",
            fmt_pct(f.accuracy),
            fmt_pct(agreement) if agreement is not None else "–",
            f"{max(diffs):.2e}" if diffs else "–",
            *(fmt_ms(f.p50(b)) for b in batches),
            *((speed_text(f.speedup_at(b)) for b in batches) if timed_with_teacher else ()),
            *(((speed_text(f.speedup_vs_fp32_at(b)) if kind != "fp32" else "") for b in batches) if int8 else ()),
            fmt_int(f.size_bytes) + "B",
            f.provider_used,
            "★" if f.path == shipped.path else "",
        ])
        classes.append("" if agreement is None or need is None or agreement >= need else "warn")
    teacher = export.teacher or {}
    if teacher.get("latency_ms"):
        rows.append([f"teacher: {teacher.get('path', '')}", "", "", "", *(fmt_ms(export.teacher_p50(b)) for b in batches),
                     *(("1×" for _ in batches) if timed_with_teacher else ()), *(("" for _ in batches) if int8 else ()),
                     fmt_int(teacher.get("size_bytes")) + "B" if teacher.get("size_bytes") else "",
                     str(teacher.get("provider_used", "")), ""])
        classes.append("")
    eager = export.pytorch_eager
    if eager:
        lat = eager.get("latency_ms", {})
        rows.append([f"PyTorch eager (reference, {eager.get('device', '')})", fmt_pct(eager.get("accuracy")), "", "",
                     *(fmt_ms(lat.get(f"batch_{b}", {}).get("p50")) for b in batches),
                     *(("" for _ in batches) if timed_with_teacher else ()), *(("" for _ in batches) if int8 else ()),
                     "", "", ""])
        classes.append("")
    note = ""
    if rule:
        note = (f'<p class="muted">Parity: ONNX Runtime ({_e(rule.get("provider"))}) against PyTorch on '
                f'{_e(rule.get("images"))} images; top-1 agreement must be ≥ {fmt_pct(need)}. Latency is the median '
                f'(p50) of timed runs after warm-up; the teacher and every file are timed side by side, one '
                f'interleaved loop per batch, and each speed-up is the ratio of two medians of that loop. PyTorch '
                f'eager is timed apart, for reference only.</p>')
    if int8:
        slower = [f.path for kind, f in export.files.items()
                  if kind != "fp32" and any((f.speedup_vs_fp32_at(b) or 1.0) < 1 for b in batches)]
        why = (f" ({', '.join(slower)} {'is' if len(slower) == 1 else 'are'} slower than fp32 on this machine: "
               "int8 saves disk space here, not time)" if slower and shipped.path == export.fp32.path else "")
        note += f'<p><b>Recommended: {_e(shipped.path)}</b> ★{_e(why)}.</p>'
    header = ["file", "val top-1", "top-1 agreement", "max |Δlogit|", *(f"p50 b={b}" for b in batches),
              *((f"vs teacher b={b}" for b in batches) if timed_with_teacher else ()),
              *((f"vs fp32 b={b}" for b in batches) if int8 else ()), "size", "provider", "ship"]
    return _section("Deployment (ONNX)", _table(header, rows, classes) + note, "deploy")


def _correlate(run: RunContents) -> str:
    pngs = run.images.get("correlate") or []
    if not pngs:
        return ""
    figs = "".join(_figure(p.read_bytes(), f"correlate/{p.name}") for p in pngs)
    return _section("Does the proxy pick well? (proxy against accuracy)", f'<div class="figures">{figs}</div>',
                    "correlate")


def render_report(run: RunContents) -> str:
    """The HTML page for ``run`` (a complete document with everything inlined)."""
    figures = key_figures(run)
    dataset = run.config.get("data", {}).get("spec", "?") if isinstance(run.config.get("data"), dict) else "?"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    stages = ", ".join(run.stages) or "none yet"
    overview = _cards(figures)
    if run.teacher is not None or run.winner is not None or run.distill is not None:
        overview += "<h3>Teacher against student</h3>" + _comparison(run, figures)
    speed = _speed_figure(run, figures)
    body = [
        _section("Overview", overview or '<p class="muted">No stage has finished in this run yet.</p>', "overview"),
        _section("Accuracy against speed", speed, "speed") if speed else "",
        _search(run),
        _curves(run),
        _deployment(run),
        _correlate(run),
        _section("Configuration (run.yaml)", f"<pre>{_e(run.config_text)}</pre>", "config"),
    ]
    title = f"kdsearch report: {run.run_dir.name}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><div class=\"meta\">{_e(run.run_dir)} · data {_e(dataset)} · "
        f"stages: {_e(stages)} · written {_e(stamp)}</div></header>"
        f"<main>{''.join(b for b in body if b)}</main></body></html>\n"
    )


def write_report(run_dir: Path, out: Path | None = None) -> dict[str, Any]:
    """Write the run's HTML report (``run_dir/report.html`` unless ``out``) atomically.

    Returns:
        ``{"report": path, **key figures}`` (see :func:`kdsearch.report.summary.key_figures`).

    Raises:
        UsageError: ``run_dir`` is not a run directory (no ``run.yaml``).
    """
    run = read_run(Path(run_dir))
    path = Path(out) if out is not None else RunDir(run.run_dir).report
    write_text(path, render_report(run))
    return {"report": str(path), **key_figures(run)}
