"""Faults survived: processes really killed (SIGKILL) or interrupted (SIGINT), then resumed."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

STUDENT = {"space": "resnet_cifar", "genes": {"depths": [1, 1, 1], "widths": [8, 8, 16], "block": "basic"}}


def _default_sigint() -> None:
    """A job started in the background by a non-interactive shell inherits SIGINT ignored; a user's
    terminal would deliver Ctrl-C, so give the child the default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _kdsearch(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdsearch", *map(str, args)]


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended early ({proc.returncode}): {err[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("timed out waiting")


def _epoch_of(ckpt: Path) -> int:
    if not ckpt.exists():
        return 0
    try:
        return torch.load(ckpt, weights_only=True)["epoch"]
    except Exception:  # noqa: BLE001 - being replaced right now
        return 0


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, fashion_npz):
    d = tmp_path_factory.mktemp("faults")
    (d / "student.json").write_text(json.dumps(STUDENT))
    return d, f"npz:{fashion_npz}"


def _distill_args(d: Path, data: str, out: Path, epochs: int = 3) -> list[str]:
    return _kdsearch("distill", "--teacher", "resnet8", "--student", d / "student.json", "--data", data, "--out", out,
                     "--epochs", epochs, "--batch-size", "32", "--seed", "5", "--quiet")


def test_distill_sigkill_then_resume_matches_uninterrupted(inputs):
    from safetensors.torch import load_file

    d, data = inputs
    straight = d / "straight"
    subprocess.run(_distill_args(d, data, straight), check=True, capture_output=True, timeout=600)

    killed = d / "killed"
    proc = subprocess.Popen(_distill_args(d, data, killed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _epoch_of(killed / "distill" / "last.ckpt") >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "distill" / "student.safetensors").exists()
    assert not list(killed.rglob("*.tmp*")), "a kill must not leave temporary files under final names"
    done = subprocess.run(_distill_args(d, data, killed) + ["--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    a = load_file(str(straight / "distill" / "student.safetensors"))
    b = load_file(str(killed / "distill" / "student.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((killed / "distill" / "metrics.json").read_text())["val_acc"] == pytest.approx(
        json.loads((straight / "distill" / "metrics.json").read_text())["val_acc"])


def test_distill_sigint_saves_and_exits_130(inputs):
    d, data = inputs
    out = d / "interrupted"
    # many epochs, so the signal surely lands mid-training however fast the machine is
    proc = subprocess.Popen(_distill_args(d, data, out, epochs=200), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)
    _wait_for(lambda: _epoch_of(out / "distill" / "last.ckpt") >= 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    assert len([line for line in err.strip().splitlines() if line.strip()]) == 1
    assert _epoch_of(out / "distill" / "last.ckpt") >= 1


@pytest.fixture(scope="module")
def distilled(inputs) -> Path:
    """A run directory with a distilled student (1 epoch), for QAT."""
    d, data = inputs
    subprocess.run(_distill_args(d, data, d / "distilled", epochs=1), check=True, capture_output=True, timeout=600)
    return d / "distilled"


def _quantize_args(run: Path, epochs: int = 2) -> list[str]:
    return _kdsearch("quantize", run, "--epochs", epochs, "--batch-size", "32", "--lr", "0.01", "--device", "cpu",
                     "--quiet")


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("qat", "export"))
    return dst


@pytest.mark.skipif(not __import__("importlib").util.find_spec("torchao"), reason="QAT needs torchao")
def test_quantize_sigkill_then_resume_matches_uninterrupted(distilled):
    from safetensors.torch import load_file

    straight = _copy_run(distilled, distilled.parent / "qat_straight")
    done = subprocess.run(_quantize_args(straight), check=True, capture_output=True, text=True, timeout=900)
    assert done.stderr == "", done.stderr  # --quiet, and torchao's import chatter goes to kdsearch.log
    assert (straight / "kdsearch.log").exists()
    killed = _copy_run(distilled, distilled.parent / "qat_killed")
    proc = subprocess.Popen(_quantize_args(killed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _epoch_of(killed / "qat" / "last.ckpt") >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "qat" / "student.qat.safetensors").exists()
    assert not list(killed.rglob("*.tmp*")), "a kill must not leave temporary files under final names"
    done = subprocess.run(_quantize_args(killed) + ["--resume"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    a = load_file(str(straight / "qat" / "student.qat.safetensors"))
    b = load_file(str(killed / "qat" / "student.qat.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    metrics = [json.loads((r / "qat" / "metrics.json").read_text()) for r in (straight, killed)]
    assert metrics[0]["int8_val_acc"] == metrics[1]["int8_val_acc"]


@pytest.mark.skipif(not __import__("importlib").util.find_spec("torchao"), reason="QAT needs torchao")
def test_quantize_sigint_saves_and_exits_130(distilled):
    run = _copy_run(distilled, distilled.parent / "qat_interrupted")
    proc = subprocess.Popen(_quantize_args(run, epochs=200), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    _wait_for(lambda: _epoch_of(run / "qat" / "last.ckpt") >= 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    assert _epoch_of(run / "qat" / "last.ckpt") >= 1


def _search_args(out: Path, data: str, trials: int) -> list[str]:
    return _kdsearch("search", "--teacher", "resnet8", "--data", data, "--out", out, "--trials", trials,
                     "--population", "4", "--proxy-batch", "16", "--max-params", "200000", "--quiet")


def test_search_sigkill_then_resume_finishes_with_no_loss(inputs, count_read_only):
    import optuna

    d, data = inputs
    out = d / "search_killed"
    db = out / "search" / "study.db"

    def complete() -> list:
        study = optuna.load_study(study_name="kdsearch", storage=f"sqlite:///{db}")
        return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))

    def completed_so_far() -> int:
        return count_read_only(db, "SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'")

    proc = subprocess.Popen(_search_args(out, data, 40), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: completed_so_far() >= 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: t.params for t in complete()}
    assert len(before) >= 3
    done = subprocess.run(_search_args(out, data, 12) + ["--resume"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    after = complete()
    assert len(after) == max(12, len(before))
    assert len({t.number for t in after}) == len(after)
    for number, params in before.items():  # every trial completed before the kill is kept as it was
        assert next(t for t in after if t.number == number).params == params
    assert (out / "search" / "winner.json").exists()


def test_search_sigint_exits_130(inputs):
    d, data = inputs
    out = d / "search_interrupted"
    db = out / "search" / "study.db"
    proc = subprocess.Popen(_search_args(out, data, 500), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    _wait_for(lambda: db.exists() and db.stat().st_size > 0, proc)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
