"""Two CPU processes under torchrun (gloo): one run directory, rank 0 writes, shards are disjoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdsearch.arch import Arch
from kdsearch.distill.checkpoint import load_checkpoint

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _torchrun_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _torchrun_distill(student: Path, npz: Path, out: Path) -> list[str]:
    return [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "kdsearch", "distill",
            "--teacher", "resnet8", "--student", str(student), "--data", f"npz:{npz}", "--out", str(out),
            "--epochs", "1", "--batch-size", "32"]


needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")


@pytest.mark.slow
@needs_torchrun
def test_torchrun_refuses_an_existing_run_once_and_touches_nothing(fashion_npz, tmp_path):
    """Rank 0's refusal reaches every rank: one error line, exit 2, no rank trains or writes."""
    student = tmp_path / "student.json"
    Arch("resnet_cifar", {"block": "basic", "depths": [1, 1, 1], "widths": [8, 8, 8]}).save(student)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = subprocess.run(_torchrun_distill(student, fashion_npz, out), env=_torchrun_env(), capture_output=True,
                          text=True, timeout=240)
    assert done.returncode != 0
    assert done.stderr.count("already exists; add --resume") == 1, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.slow
@needs_torchrun
def test_torchrun_two_processes_distill(fashion_npz, tmp_path):
    from safetensors.torch import load_file

    student = tmp_path / "student.json"
    Arch("resnet_cifar", {"block": "basic", "depths": [1, 1, 1], "widths": [8, 8, 16]}).save(student)
    out = tmp_path / "run"
    cmd = _torchrun_distill(student, fashion_npz, out) + ["--loss", "kd:1,ce:1,fitnet:1", "--lr", "0.05",
                                                         "--temperature-schedule", "dts", "--json"]
    done = subprocess.run(cmd, env=_torchrun_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 0 alone prints the JSON document
    assert done.stdout.count('"val_acc"') == 1, done.stdout
    printed = json.loads(done.stdout[done.stdout.index("{"):])

    files = sorted(p.name for p in (out / "distill").iterdir())
    assert files == ["curves.png", "last.ckpt", "metrics.json", "student.json", "student.safetensors"]
    state = load_checkpoint(out / "distill" / "last.ckpt")
    h = state["history"][0]
    from kdsearch.data import load_dataset

    n_train = len(load_dataset(f"npz:{fashion_npz}").train)
    per_rank_steps = (n_train // 2) // 32
    assert h["world_size"] == 2
    assert h["train_images"] == 2 * per_rank_steps * 32  # both ranks' shards counted, once each
    assert 0.0 < h["val_acc"] <= 1.0 and printed["val_acc"] == pytest.approx(h["val_acc"])
    assert h["temperature"] != 4.0  # DTS moved, identically on both ranks (else the barrier/broadcast would hang)
    saved = load_file(str(out / "distill" / "student.safetensors"))
    for k, v in state["model"].items():
        assert torch.equal(saved[k], v), k


def test_epoch_batches_per_rank_match_the_global_permutation():
    """What each rank trains on is exactly its half of the one permutation every rank draws."""
    from kdsearch.distill.engine import epoch_batches as _epoch_batches

    n, batch = 64, 8
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    for rank in range(2):
        seen = torch.cat(list(_epoch_batches(n, batch, torch.Generator().manual_seed(3), rank, 2)))
        assert seen.tolist() == perm[rank * 32 : (rank + 1) * 32].tolist()


def test_main_process_follows_rank(monkeypatch):
    from kdsearch.distill.distributed import DistributedContext, is_main_process

    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()
    monkeypatch.setenv("WORLD_SIZE", "1")
    ctx = DistributedContext.from_env(torch.device("cpu"))
    assert not ctx.active and ctx.sum([1.0, 2.0], torch.device("cpu")) == [1.0, 2.0] and ctx.broadcast(5) == 5
