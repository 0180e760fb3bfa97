"""The report of a real `kdsearch run --preset tiny`, rendered by headless Chromium."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

_CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync", "--no-first-run"]

# Appended to a copy of the page: after load, count the images that did not decode.
_IMAGE_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; }).length;
  var out = document.createElement("div");
  out.id = "image-probe";
  out.textContent = "images=" + imgs.length + " broken=" + broken;
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fashion_npz) -> Path:
    from kdsearch.cli import main

    out = tmp_path_factory.mktemp("runs") / "tiny"
    code = main(["run", "--preset", "tiny", "--data", f"npz:{fashion_npz}", "--out", str(out), "--json", "--quiet"])
    assert code == 0
    return out


def test_run_writes_the_report(tiny_run):
    page = tiny_run / "report.html"
    assert page.is_file()
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["report"] == str(page)
    text = page.read_text(encoding="utf-8")
    uris = re.findall(r'<img src="([^"]+)"', text)
    assert len(uris) == 4  # pareto, accuracy against measured speed-up, teacher curves, distill curves
    for uri in uris:
        assert uri.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        img.load()
        assert img.width > 100 and img.height > 100
    export = json.loads((tiny_run / "export" / "export.json").read_text())
    for f in export["files"].values():
        assert f["path"] in text


def test_cli_report_matches_the_run_files(tiny_run, cli):
    code, out, err = cli("report", tiny_run, "--json")
    assert code == 0, err
    doc = json.loads(out)
    winner = json.loads((tiny_run / "search" / "winner.json").read_text())
    metrics = json.loads((tiny_run / "distill" / "metrics.json").read_text())
    assert doc["student"]["arch"] == winner["arch"] and doc["student"]["val_acc"] == metrics["val_acc"]
    assert doc["stages"] == ["teacher", "search", "distill", "export"]


@pytest.mark.browser
def test_page_renders_in_headless_chromium(tiny_run, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium binary (apt-get install -y chromium)")
    page = tiny_run / "report.html"
    shot = tmp_path / "report.png"
    flags = [chromium, *_CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 20, "the screenshot is (nearly) blank"

    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _IMAGE_PROBE + "</body>"), encoding="utf-8")
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    assert "Teacher against student" in dom and "Deployment (ONNX)" in dom
    match = re.search(r'id="image-probe">images=(\d+) broken=(\d+)<', dom)
    assert match is not None, "the probe did not run"
    assert int(match.group(1)) == 4 and int(match.group(2)) == 0  # pareto, speed, teacher and student curves
