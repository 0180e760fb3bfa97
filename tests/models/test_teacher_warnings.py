"""What a teacher's loading tells the user: each KdsearchWarning once, as one plain line; nothing
from the libraries underneath (torch's pytree FutureWarning on a .pt2, the converter's logs)."""
from __future__ import annotations

import io
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from kdsearch.errors import KdsearchWarning
from kdsearch.logs import capture_library_noise, warnings_as_lines


class ScaledNet(nn.Module):
    """Logits times a constant: a graph the TorchScript cut cannot handle (the loader warns)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                      nn.ReLU())
        self.fc = nn.Linear(16, 10)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, 10)
        logits = self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))
        return logits if self.scale == 1.0 else logits * self.scale


def _score(teacher: str, npz, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdsearch", "score", "--teacher", teacher, "--data", f"npz:{npz}",
                           "--subset", "64", "--space", "resnet_cifar", "--sample", "1", "--proxy", "diswot",
                           "--proxy-batch", "16", "-q", *extra], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("init", ["random", "pretrained"])
def test_a_torchscript_teacher_warning_reaches_the_terminal_once_as_one_line(tmp_path, fashion_npz, init):
    torch.manual_seed(0)
    path = tmp_path / "scaled.pt"
    torch.jit.save(torch.jit.trace(ScaledNet(2.0).eval(), torch.randn(2, 1, 28, 28)), str(path))
    done = _score(str(path), fashion_npz, "--teacher-init", init)
    lines = done.stderr.splitlines()
    about = [line for line in lines if "cannot read its features" in line]
    assert len(about) == 1, done.stderr
    assert about[0].startswith("warning: teacher ")
    assert "KdsearchWarning" not in done.stderr and "warnings.warn" not in done.stderr
    assert "Traceback" not in done.stderr
    assert done.returncode != 0 and any(line.startswith("error:") for line in lines)  # the search needs features


def test_a_pt2_teacher_prints_no_library_warning(tmp_path, fashion_npz):
    torch.manual_seed(0)
    net = ScaledNet().eval()
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
