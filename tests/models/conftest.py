"""Small teachers saved as a user would: TorchScript files whose logits may go through an activation."""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn


class Scale(nn.Module):
    """Logits times a constant: not an activation, so the TorchScript cut refuses it."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class SmallNet(nn.Module):
    """conv → conv → pool → linear → ``out``. No BatchNorm: the TorchScript graph and the module
    compute the same thing in any mode."""

    def __init__(self, out: nn.Module | None = None) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                      nn.ReLU())
        self.fc = nn.Linear(16, 10)
        self.out = out if out is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, 10)
        return self.out(self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)))


@pytest.fixture()
def torchscript_teacher(tmp_path) -> Callable[..., tuple[SmallNet, str]]:
    """``make(out=None, *, freeze=False, name="t.pt") -> (net, path)``: a seeded :class:`SmallNet`
    traced to TorchScript (frozen with ``torch.jit.freeze`` when asked) and saved under ``tmp_path``."""

    def make(out: nn.Module | None = None, *, freeze: bool = False, name: str = "t.pt") -> tuple[SmallNet, str]:
        torch.manual_seed(0)
        net = SmallNet(out).eval()
        script = torch.jit.trace(net, torch.randn(2, 1, 28, 28))
        path = tmp_path / name
        torch.jit.save(torch.jit.freeze(script) if freeze else script, str(path))
        return net, str(path)

    return make


def _trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with distinct BN scales and statistics, so importance orders the channels
    and eval logits depend on them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 2 - 0.5)  # some negative: |gamma| counts
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="session")
def trained_looking() -> Callable[..., nn.Module]:
    """``trained_looking(model, seed=0) -> model``: BN scales and statistics set as a trained net's might be."""
    return _trained_looking


def _block_cut_round_trips(net: nn.Module, teacher: nn.Module, path: str, reload: Callable[[], tuple[nn.Module, list]],
                           tmp_path, x: torch.Tensor, batch: torch.Tensor) -> None:
    """A cut of ``teacher`` (``net`` read back from the file ``path``) with half of every group and block
    ``layer2.1`` removed computes what the same cut of ``net`` does, and saved, reloads onto the teacher read
    again (``reload() -> (teacher, files)``) with equal outputs, pinned to the file."""
    from kdsearch.models.prune import PruneRecipe, apply_recipe, load_pruned, prunable_groups, save_pruned, teacher_digest

    keep = {g.name: 0.5 for g in prunable_groups(teacher, x)}
    recipe = PruneRecipe(teacher_digest(teacher, [path]), keep, remove=("layer2.1",))
    student = apply_recipe(teacher, recipe, x).eval()
    assert not any(name.startswith("layer2.1.") for name in student.state_dict())
    reference = apply_recipe(net, PruneRecipe(teacher_digest(net), keep, remove=("layer2.1",)), x).eval()
    with torch.no_grad():
        assert student(batch).shape == (len(batch), 10)
        assert torch.allclose(student(batch), reference(batch), atol=1e-5)
    save_pruned(tmp_path / "student", student, recipe, x)
    again, files = reload()
    loaded = load_pruned(tmp_path / "student", again, teacher_files=files)
    with torch.no_grad():
        assert torch.equal(loaded(batch), student(batch))


@pytest.fixture(scope="session")
def block_cut_round_trips() -> Callable[..., None]:
    """``block_cut_round_trips(net, teacher, path, reload, tmp_path, x, batch)``: see :func:`_block_cut_round_trips`."""
    return _block_cut_round_trips


@pytest.fixture()
def scale() -> type[Scale]:
    """The :class:`Scale` module (logits times a constant), for a TorchScript graph that cannot be cut."""
    return Scale
