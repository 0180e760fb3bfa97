"""Teachers kdsearch cannot rebuild from a description: ``.pt2`` and TorchScript files, read as they are.

Nothing is ever unpickled: TorchScript archives hold no Python code, and ``.pt2`` files are read
with ``torch.export.load``. Teachers given as a zoo name or a model directory are built through
their search space, so ``load_teacher``, which resolves every spec, lives with the spaces
(``spaces/model_files.py``): models never import spaces.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from kdsearch.arch import Arch
from kdsearch.errors import KdsearchWarning, ModelError, UsageError

__all__ = ["Teacher", "load_teacher_file", "load_torchscript", "reinitialise", "check_io"]


@dataclass
class Teacher:
    """A teacher network and what is known about it."""

    module: nn.Module
    source: str  # the spec it came from
    trained: bool | None  # False: a freshly initialised zoo model; None: an opaque file, cannot tell
    arch: Arch | None = None  # when the teacher is a member of a search space
    model_name: str | None = None  # when it is a zoo model
    info: dict[str, Any] = field(default_factory=dict)  # model.json metadata (val_acc, dataset...)
    # A new network of the same architecture: freshly initialised for an arch or zoo teacher (seeded by
    # fresh_copy), a copy of the file's network for an opaque one (then re-initialised by tensor shape).
    rebuild: Callable[[], nn.Module] | None = field(default=None, repr=False, compare=False)
    _flat: nn.Module | None = field(default=None, init=False, repr=False, compare=False)  # exportable(), loaded once

    def exportable(self) -> nn.Module:
        """The network in a form that can be deep-copied and exported to ONNX: a ``.pt2`` teacher's
        unflattened program can be neither, so its flat graph module is loaded again."""
        if Path(self.source).suffix != ".pt2":
            return self.module
        if self._flat is None:  # the input checks and the search both ask: read the file once
            self._flat = torch.export.load(self.source).module()
        return self._flat

    def fresh_copy(self, seed: int) -> nn.Module:
        """A newly initialised network of the same architecture (DisWOT's reference teacher)."""
        if self.rebuild is None:
            raise ModelError(f"teacher {self.source} cannot be rebuilt; load it with load_teacher")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = self.rebuild()
        if self.arch is None and self.model_name is None:  # an opaque file: its weights are the file's
            return reinitialise(module, seed, self.source)
        return module


def reinitialise(module: nn.Module, seed: int, source: str = "the teacher") -> nn.Module:
    """Give an opaque teacher (``.pt2``, TorchScript) fresh weights in place, by tensor shape: conv
    kernels Kaiming-normal (fan-out), linear weights ``N(0, 0.01)``, norm scales 1, biases 0, statistics reset
    (the initialisation of kdsearch's own networks).

    A graph whose weights were frozen into constants (``torch.jit.freeze``) has no parameters to
    re-initialise: it is returned as it is, with one :class:`KdsearchWarning` saying the pretrained
    weights are used.
    """
    fresh = module
    if getattr(fresh, "weights_frozen", False) or not any(p.is_floating_point() for p in fresh.parameters()):
        warnings.warn(f"teacher {source}: its weights are frozen into the graph, so --teacher-init random cannot "
                      "re-initialise them; using its pretrained weights (--teacher-init pretrained)", KdsearchWarning,
                      stacklevel=2)
        return fresh
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name, p in fresh.named_parameters():
            if p.dim() >= 3:
                nn.init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu")
            elif p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.01)
            else:
                (nn.init.ones_ if name.endswith("weight") else nn.init.zeros_)(p)
        for name, b in fresh.named_buffers():
            if name.endswith("running_var"):
                b.fill_(1)
            elif name.endswith(("running_mean", "num_batches_tracked")):
                b.zero_()
    return fresh


TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".torchscript", ".jit")


def _load_pt2(path: Path) -> nn.Module:
    with warnings.catch_warnings():
        # torch's own unflatten trips its pytree deprecation ("isinstance(treespec, LeafSpec)"): not the user's file
        warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
        try:
            program = torch.export.load(str(path))
        except Exception as e:  # noqa: BLE001 - any failure to read is the user's file
            raise ModelError(f"{path} is not a readable torch.export .pt2 file ({type(e).__name__}: {e})") from None
        # unflatten restores the module hierarchy, so features can be hooked by module path
        return torch.export.unflatten(program)


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """The TorchScript module saved in ``path``, on the CPU (raises ``ModelError`` when it is not one)."""
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{path} is not a readable TorchScript file ({type(e).__name__}); save it with torch.jit.save") from None


def _hookable(script: nn.Module, spec: str, num_classes: int, in_channels: int, size: tuple[int, int]) -> nn.Module:
    """The TorchScript graph cut into hookable parts; the plain script (logits only) when it cannot be."""
    from kdsearch.models.graph_teacher import hookable_torchscript

    check_io(script, num_classes=num_classes, in_channels=in_channels, what=f"teacher {spec}", size=size)
    try:
        return hookable_torchscript(script, torch.zeros(2, in_channels, *size))
    except ModelError as e:
        warnings.warn(f"teacher {spec}: {e}; its logits still distil, but the search cannot read its features "
                      "(save it with torch.export as .pt2, or as a kdsearch model directory)", KdsearchWarning,
                      stacklevel=2)
        return script


def load_teacher_file(path: Path, spec: str, *, num_classes: int, in_channels: int,
                      image_size: tuple[int, int] = (32, 32)) -> Teacher:
    """Read a ``.pt2`` or TorchScript (``.pt``, ``.ts``, ``.torchscript``, ``.jit``) teacher file.

    Raises:
        UsageError: ``path`` has another suffix.
    """
    if path.suffix == ".pt2":
        module = _load_pt2(path)
        rebuild = lambda: _load_pt2(path)  # noqa: E731 - an unflattened program cannot be deep-copied: read again
    elif path.suffix in TORCHSCRIPT_SUFFIXES:
        module = _hookable(load_torchscript(path), spec, num_classes, in_channels, image_size)
        rebuild = lambda: copy.deepcopy(module)  # noqa: E731 - a copy, not a second read that would warn again
    else:
        raise UsageError(f"cannot read a teacher from {path}: a teacher file is TorchScript (.pt/.ts) or torch.export (.pt2)")
    return Teacher(module, spec, None, info={}, rebuild=rebuild)


def check_io(model: nn.Module, *, num_classes: int, in_channels: int, what: str,
             size: tuple[int, int] = (32, 32)) -> None:
    """Fail clearly when ``model`` does not take ``in_channels`` or output ``num_classes``."""
    was_training = getattr(model, "training", False)  # a frozen TorchScript module has no mode at all
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, *size))
    except Exception as e:  # noqa: BLE001 - a shape error here is a data/teacher mismatch
        raise UsageError(
            f"{what} cannot take {in_channels}-channel images ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            "use a teacher trained on data of this kind"
        ) from None
    finally:
        if was_training:
            model.train()
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UsageError(f"{what} must return logits of shape (batch, classes)")
    if out.shape[1] != num_classes:
        raise UsageError(
            f"{what} predicts {out.shape[1]} classes but the data has {num_classes}; use a teacher trained on this data"
        )
