"""Capture intermediate features with forward hooks, by module path; models are never edited."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from kdsearch.errors import ModelError

__all__ = ["FeatureTap", "ModelParts", "locate_parts", "get_module"]


def get_module(model: nn.Module, path: str) -> nn.Module:
    """Return the submodule at dotted ``path`` ("" is the model itself) or fail listing some."""
    if path == "":
        return model
    modules = dict(model.named_modules())
    if path not in modules:
        names = [n for n in modules if n][:12]
        raise ModelError(
            f"the model has no module {path!r}; module paths look like: {', '.join(names)}"
        )
    return modules[path]


class FeatureTap:
    """Record the outputs of the modules at ``paths`` during forward passes.

    Usage::

        with FeatureTap(model, ["layer3", "fc"]) as tap:
            logits = model(x)
        f = tap["layer3"]
    """

    def __init__(self, model: nn.Module, paths: Sequence[str], detach: bool = False) -> None:
        self.model = model
        self.paths = list(paths)
        self.detach = detach
        self.outputs: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "FeatureTap":
        for path in self.paths:
            module = get_module(self.model, path)
            self._handles.append(module.register_forward_hook(self._hook(path)))
        return self

    def _hook(self, path: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            inp = args[0] if args else None
            self.outputs[path] = out.detach() if self.detach else out
            if isinstance(inp, torch.Tensor):
                self.inputs[path] = inp.detach() if self.detach else inp

        return hook

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __getitem__(self, path: str) -> torch.Tensor:
        return self.outputs[path]


def _is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear``, or a module standing for one (a ``torch.export`` unflattened ``Linear``
    keeps its 2-D ``weight`` but not its class)."""
    if isinstance(module, nn.Linear):
        return True
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2 and not any(True for _ in module.children())


@dataclass(frozen=True)
class ModelParts:
    """Where to read a model: its last 4-D feature map and its final classifier."""

    feature: str  # module path whose output is the pre-pooling map (B, C, H, W)
    classifier: str  # module path of the final nn.Linear


@contextlib.contextmanager
def _record_order(model: nn.Module) -> Iterator[list[tuple[str, nn.Module, object]]]:
    calls: list[tuple[str, nn.Module, object]] = []
    handles = []
    for name, module in model.named_modules():
        if name == "":
            continue

        def hook(m: nn.Module, a: tuple, out: object, name: str = name) -> None:
            calls.append((name, m, out))

        handles.append(module.register_forward_hook(hook))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def locate_parts(
    model: nn.Module,
    sample: torch.Tensor,
    feature: str | None = None,
    classifier: str | None = None,
) -> ModelParts:
    """Find the last 4-D feature map and the final ``nn.Linear`` of any model.

    Explicit paths win; in-project models declare theirs; otherwise one forward pass on
    ``sample`` records the order modules run in: the classifier is the last ``nn.Linear``
    to run, the feature is the last module with a 4-D output that ran before it.
    """
    if isinstance(model, torch.jit.ScriptModule):  # its compiled graph never calls hooks
        raise ModelError(
            "this TorchScript teacher's features cannot be read (its graph could not be cut into parts, see the "
            "warning above); save it with torch.export as .pt2 or as a kdsearch model directory"
        )
    feat = feature or getattr(model, "feature_path", "") or None
    clf = classifier
    if clf is None and isinstance(getattr(model, "classifier", None), nn.Linear):
        clf = "classifier"
    if feat is not None and clf is not None:
        get_module(model, feat)
        if not _is_linear(get_module(model, clf)):
            raise ModelError(f"module {clf!r} is not an nn.Linear classifier; name the final linear layer")
        return ModelParts(feat, clf)
    was_training = model.training
    model.eval()
    with torch.no_grad(), _record_order(model) as calls:
        model(sample[:2])
    model.train(was_training)
    if clf is None:
        linears = [name for name, m, _ in calls if _is_linear(m)]
        if not linears:
            raise ModelError("the model has no nn.Linear classifier; name it with --teacher-classifier")
        clf = linears[-1]
    if feat is None:
        clf_index = max(i for i, (name, _, _) in enumerate(calls) if name == clf)
        maps = [
            name
            for name, _, out in calls[:clf_index]
            if isinstance(out, torch.Tensor) and out.dim() == 4
        ]
        spatial = [  # a global pool also returns (B, C, 1, 1): prefer real maps
            name
            for name, _, out in calls[:clf_index]
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1
        ]
        maps = spatial or maps
        if not maps:
            raise ModelError("the model produces no 4-D feature map; name one with --teacher-feature")
        feat = maps[-1]
    return ModelParts(feat, clf)
