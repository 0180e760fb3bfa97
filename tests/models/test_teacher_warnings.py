"""What a teacher's loading tells the user: each KdsearchWarning once, as one plain line; nothing
from the libraries underneath (torch's pytree FutureWarning on a .pt2, the converter's logs)."""
from __future__ import annotations

import io
import subprocess
import sys
import warnings

import pytest
import torch

from kdsearch.errors import KdsearchWarning
from kdsearch.logs import capture_library_noise, warnings_as_lines


def _score(teacher: str, npz, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdsearch", "score", "--teacher", teacher, "--data", f"npz:{npz}",
                           "--subset", "64", "--space", "resnet_cifar", "--sample", "1", "--proxy", "diswot",
                           "--proxy-batch", "16", "-q", *extra], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("init", ["random", "pretrained"])
def test_a_torchscript_teacher_warning_reaches_the_terminal_once_as_one_line(torchscript_teacher, scale, fashion_npz,
                                                                             init):
    _, path = torchscript_teacher(scale(2.0))  # a graph the cut refuses: the loader warns
    done = _score(path, fashion_npz, "--teacher-init", init)
    lines = done.stderr.splitlines()
    about = [line for line in lines if "cannot read its features" in line]
    assert len(about) == 1, done.stderr
    assert about[0].startswith("warning: teacher ")
    assert "KdsearchWarning" not in done.stderr and "warnings.warn" not in done.stderr
    assert "Traceback" not in done.stderr
    assert done.returncode != 0 and any(line.startswith("error:") for line in lines)  # the search needs features


def test_a_pt2_teacher_prints_no_library_warning(tmp_path, torchscript_teacher, fashion_npz):
    net, _ = torchscript_teacher()
    program = torch.export.export(net, (torch.randn(2, 1, 28, 28),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(tmp_path / "t.pt2"))
    done = _score(str(tmp_path / "t.pt2"), fashion_npz)
    assert done.returncode == 0, done.stderr
    for noise in ("FutureWarning", "LeafSpec", "DeprecationWarning", "UserWarning", "warning"):
        assert noise not in done.stderr, done.stderr


def test_warnings_as_lines_shows_a_kdsearch_warning_once_and_no_library_warning(tmp_path, capsys):
    out = io.StringIO()
    with warnings_as_lines(out):
        warnings.warn("teacher x: first\n  line two", KdsearchWarning)
        with capture_library_noise(tmp_path / "kdsearch.log", terminal=out):
            warnings.warn("teacher x: first\n  line two", KdsearchWarning)  # again, inside a run: not shown again
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning)
        warnings.warn("something torch says", UserWarning)
    assert out.getvalue() == "warning: teacher x: first line two\n"
    assert "LeafSpec" in (tmp_path / "kdsearch.log").read_text()
    assert capsys.readouterr().err == ""  # the library warning outside the run went nowhere near the terminal
