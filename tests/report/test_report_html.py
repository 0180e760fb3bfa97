"""report.html from hand-built run directories: self-contained, complete, and honest to the files."""
from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdsearch.errors import UsageError
from kdsearch.report.html import write_report

from run_builders import CANDIDATES, arch_key, build_run


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.sections: list[str] = []
        self.rows: list[list[str]] = []
        self.row_classes: list[str] = []
        self._cell: list[str] | None = None
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "section":
            self.sections.append(a.get("id", ""))
        if tag in ("link", "script") or (tag == "a" and a.get("href")):
            self.links.append(tag)
        if tag == "tr":
            self.rows.append([])
            self.row_classes.append(a.get("class") or "")
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,"), uri[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def test_full_run_is_self_contained_and_embeds_every_png(tmp_path):
    run = build_run(tmp_path / "run", stages=("teacher", "search", "distill", "export", "correlate"))
    result = write_report(run)
    page_path = run / "report.html"
    assert result["report"] == str(page_path) and page_path.is_file()
    text = page_path.read_text(encoding="utf-8")
    page = _parse(page_path)
    assert not page.links, "no scripts, stylesheets or links: one file that opens anywhere"
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", text), "every resource is inlined"
    expected = [run / "search/pareto.png", run / "teacher/curves.png", run / "distill/curves.png",
                run / "correlate/scatter.png", run / "correlate/size_controlled.png"]
    assert len(page.imgs) == len(expected)
    for uri, png in zip(page.imgs, expected):
        np.testing.assert_array_equal(_decode(uri), np.asarray(Image.open(png).convert("RGB")))
    assert page.sections == ["overview", "search", "curves", "deploy", "correlate", "config"]
    assert not list(run.rglob(".*.tmp*")), "the page is written atomically"


def test_leaderboard_is_sorted_by_proxy_and_marks_winner(tmp_path):
    run = build_run(tmp_path / "run")
    write_report(run)
    page = _parse(run / "report.html")
    board = [(r, c) for r, c in zip(page.rows, page.row_classes) if len(r) == 6 and r[0].isdigit()]
    expected = sorted(CANDIDATES, key=lambda c: -c[2])
    assert [float(r[2]) for r, _ in board] == [c[2] for c in expected]
    winners = [r for r, c in board if c == "winner"]
    assert len(winners) == 1 and winners[0][1].startswith("★") and '"widths":[8,16,32]' in winners[0][1]
    assert [r[5] for r, _ in board] == ["yes" if c[5] else "no" for c in expected]


def test_leaderboard_keeps_the_order_of_the_winner_rule_and_says_why_it_won(tmp_path):
    """The search writes leaderboard.csv in its winner rule's order (largest: by params); the page keeps it."""
    run = build_run(tmp_path / "run")
    path = run / "search/leaderboard.csv"
    header, *lines = path.read_text().splitlines()
    by_params = sorted(lines, key=lambda line: -int(line.rsplit(",", 5)[1]))  # the params column
    path.write_text("\n".join([header, *by_params]) + "\n")
    write_report(run)
    page = _parse(run / "report.html")
    board = [r for r in page.rows if len(r) == 6 and r[0].isdigit()]
    expected = sorted(CANDIDATES, key=lambda c: -c[3])
    assert [json.dumps(c[1], separators=(",", ":")) in r[1] for r, c in zip(board, expected)] == [True] * len(expected)
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "best proxy score within the budgets" in text  # winner.json's reason


def test_report_shows_every_qat_accuracy_and_the_three_files(tmp_path):
    run = build_run(tmp_path / "run", stages=("teacher", "search", "distill", "qat", "export"))
    figures = write_report(run)
    assert figures["qat"]["int8_val_acc"] == 0.8412
    page = _parse(run / "report.html")
    qat_row = next(r for r in page.rows if r and r[0].startswith("val top-1 after QAT"))
    assert qat_row[2] == "84.12%"
    files = [r[0] for r in page.rows if r and r[0].split(":")[0] in ("fp32", "ptq", "qat")]
    assert files == ["fp32: student.onnx", "ptq: student.ptq.onnx", "qat: student.qat.onnx"]


def test_deployment_table_lists_every_exported_file(tmp_path):
    run = build_run(tmp_path / "run")
    write_report(run)
    page = _parse(run / "report.html")
    export = json.loads((run / "export/export.json").read_text())
    deploy = {r[0]: r for r in page.rows if r and r[0].split(":")[0] in export["files"]}
    assert set(deploy) == {f"{k}: {f['path']}" for k, f in export["files"].items()}
    ptq = deploy["ptq: student.ptq.onnx"]
    assert ptq[1] == "83.00%" and ptq[2] == "97.00%" and ptq[4] == "0.150 ms" and ptq[5] == "2.000 ms"
    classes = dict(zip((r[0] for r in page.rows), page.row_classes))
    assert classes["ptq: student.ptq.onnx"] == "warn"  # 97% agreement is under the 99.9% parity rule
    assert classes["fp32: student.onnx"] == ""


def test_key_figures_match_the_files(tmp_path):
    run = build_run(tmp_path / "run")
    figures = write_report(run)
    assert figures["stages"] == ["teacher", "search", "distill", "export"]
    assert figures["teacher"]["val_acc"] == 0.9 and figures["teacher"]["params"] == 80_000
    assert figures["student"]["params"] == 20_000 and figures["student"]["val_acc"] == 0.85
    assert figures["export"]["ptq"]["top1_agreement"] == 0.97
    assert figures["export"]["fp32"]["latency_ms_b32"] == 3.5
    json.dumps(figures)  # plain JSON


def test_partial_run_shows_only_what_ran(tmp_path):
    run = build_run(tmp_path / "run", stages=("search",))
    figures = write_report(run)
    page = _parse(run / "report.html")
    assert figures["stages"] == ["search"] and figures["export"] is None
    assert "deploy" not in page.sections and "curves" not in page.sections and "search" in page.sections


def test_config_only_run_still_renders(tmp_path):
    run = build_run(tmp_path / "run", stages=())
    figures = write_report(run, out=tmp_path / "elsewhere" / "page.html")
    assert figures["stages"] == [] and (tmp_path / "elsewhere" / "page.html").is_file()
    assert not (run / "report.html").exists()


def test_missing_pareto_png_is_plotted_from_the_leaderboard(tmp_path):
    run = build_run(tmp_path / "run", stages=("search",))
    (run / "search/pareto.png").unlink()
    write_report(run)
    imgs = _parse(run / "report.html").imgs
    assert len(imgs) == 1
    assert _decode(imgs[0]).shape[0] > 100  # a real matplotlib figure, not the 80x50 fixture


def test_run_yaml_is_escaped(tmp_path):
    run = build_run(tmp_path / "run", stages=())
    write_report(run)
    text = (run / "report.html").read_text()
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_not_a_run_dir_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="run.yaml"):
        write_report(tmp_path)


def test_cli_report_json_and_errors(tmp_path, cli):
    run = build_run(tmp_path / "run")
    code, out, err = cli("report", run, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["report"] == str(run / "report.html") and Path(doc["report"]).is_file()
    assert doc["student"]["params"] == 20_000
    code, out, err = cli("report", run)
    assert code == 0 and "teacher against student" in out and "report.html" in out
    code, out, err = cli("report", tmp_path / "nothing")
    assert code == 2 and "run.yaml" in err and "Traceback" not in err


def test_arch_key_matches_the_search_encoding():
    from kdsearch.search.summary import json_dumps

    arch = {"space": "resnet_cifar", "genes": {"block": "basic", "depths": [1, 1, 1], "widths": [8, 16, 32]}}
    assert arch_key([8, 16, 32]) == json_dumps(arch)
