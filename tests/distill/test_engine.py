"""The training engine's contract: phase hooks, the schedule, the checkpoint it refuses."""
from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from kdsearch.data import load_dataset
from kdsearch.distill.checkpoint import load_checkpoint, save_checkpoint
from kdsearch.distill.config import TrainConfig
from kdsearch.distill.engine import Phases, build_criterion, build_optimizer, epoch_batches, fit
from kdsearch.errors import UsageError
from kdsearch.models.resnet_cifar import ResNetCifar


@pytest.fixture(scope="module")
def data(fashion_npz):
    return load_dataset(f"npz:{fashion_npz}", subset=256, seed=0)


def _net() -> ResNetCifar:
    torch.manual_seed(0)
    return ResNetCifar([1, 1, 1], [8, 8, 8], num_classes=10, in_channels=1)


class Recording(Phases):
    label = "test "

    def __init__(self) -> None:
        self.calls: list[str] = []

    def start_epoch(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        self.calls.append(f"start {epoch}")
        model.train()
        return {"phase": f"p{epoch}"}

    def before_eval(self, model: nn.Module) -> None:
        self.calls.append("eval")


def _fit(model, data, out, config, phases=None, **kw):
    return fit(model, build_criterion(config), data, out, config, phases=phases or Phases(),
               settings={"test": 1}, device=torch.device("cpu"), **kw)


def test_phases_run_in_order_and_their_entries_reach_the_history(data, tmp_path):
    phases = Recording()
    result = _fit(_net(), data, tmp_path, TrainConfig(epochs=2, batch_size=64, loss="ce"), phases)
    assert phases.calls == ["start 0", "eval", "start 1", "eval"]
    assert [h["phase"] for h in result["history"]] == ["p0", "p1"]
    assert load_checkpoint(tmp_path / "last.ckpt")["history"][-1]["phase"] == "p1"


def test_resume_refuses_other_settings_and_a_checkpoint_missing_state(data, tmp_path):
    config = TrainConfig(epochs=1, batch_size=64, loss="ce")
    _fit(_net(), data, tmp_path, config)
    with pytest.raises(UsageError, match="different settings"):
        fit(_net(), build_criterion(config), data, tmp_path, config, settings={"test": 2}, resume=True,
            device=torch.device("cpu"))
    state = load_checkpoint(tmp_path / "last.ckpt")
    del state["scaler"]
    save_checkpoint(tmp_path / "last.ckpt", state)
    with pytest.raises(UsageError, match="lacks scaler"):
        _fit(_net(), data, tmp_path, config, resume=True)


@pytest.mark.parametrize("warmup_epochs", [0.0, 1.0])
def test_cosine_schedule_with_and_without_warmup(warmup_epochs):
    model = nn.Linear(2, 2)
    config = TrainConfig(epochs=2, loss="ce", lr=1.0, warmup_epochs=warmup_epochs)
    optimizer, scheduler = build_optimizer(config, [model], steps_per_epoch=10)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    if warmup_epochs == 0:  # a plain cosine from the first step
        assert lrs == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 20)) for k in range(20)])
    else:  # ten steps of linear warm-up, then cosine over the other ten
        assert lrs[:10] == pytest.approx([(k + 1) / 10 for k in range(10)])
        assert lrs[10:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_epoch_batches_are_seeded_full_and_sharded(world_size: int) -> None:
    """Every rank draws the same permutation: shards are disjoint and equal, batches full, the order seeded."""
    def shards(seed: int) -> list[list[int]]:
        return [[i for b in epoch_batches(50, 4, torch.Generator().manual_seed(seed), rank, world_size) for i in b.tolist()]
                for rank in range(world_size)]

    first = shards(11)
    assert first == shards(11) and first != shards(12)
    assert {len(s) for s in first} == {(50 // world_size) // 4 * 4}  # equal shards of full batches
    flat = [i for s in first for i in s]
    assert len(set(flat)) == len(flat)  # disjoint
