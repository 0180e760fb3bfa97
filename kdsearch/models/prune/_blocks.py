"""Whole residual blocks a student can drop: modules whose output is their input plus something.

A block ``y = x + f(x)`` (or ``relu(x + f(x))``, or ``(x + a(x)) + m(x + a(x))`` as in a
transformer block) becomes the identity when removed, and the network around it still fits.
Blocks are found by reading autograd's graph of one forward: a module is a residual block when
its input is an operand of an add its output is made of (through adds and activations only).
"""
from __future__ import annotations

import torch
from torch import nn

from kdsearch.errors import ModelError
from kdsearch.models.prune._depgraph import check_forward, output_shapes, scratch_copy

__all__ = ["residual_blocks", "remove_blocks", "removable_blocks"]

# Activations an output may pass through after the residual add (ResNet's relu(x + f(x)), MobileNet's relu6).
_ACTIVATIONS = {"ReluBackward0", "HardtanhBackward0", "GeluBackward0", "SiluBackward0", "HardswishBackward0",
                "LeakyReluBackward0", "EluBackward0"}


def _is_tensor(node, x: torch.Tensor) -> bool:
    """Whether autograd node ``node`` produced ``x`` (or accumulates into it, for a leaf)."""
    return node is x.grad_fn if x.grad_fn is not None else getattr(node, "variable", None) is x


def _adds(node, x: torch.Tensor, depth: int = 0) -> bool:
    """Whether ``x`` is an operand of an add that ``node`` is reached from through adds and activations."""
    if node is None or depth > 32:
        return False
    name = type(node).__name__
    if name.startswith("AddBackward"):
        operands = [n for n, _ in node.next_functions]
        return any(_is_tensor(n, x) for n in operands) or any(_adds(n, x, depth + 1) for n in operands)
    if name in _ACTIVATIONS:
        return _adds(node.next_functions[0][0], x, depth + 1)
    return False


def residual_blocks(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Module paths of ``model``'s innermost residual blocks, in module order (``model`` runs once, in eval mode)."""
    found: dict[nn.Module, bool] = {}

    def hook(module: nn.Module, inputs: tuple, output) -> None:
        x = inputs[0] if len(inputs) == 1 else None
        if (isinstance(x, torch.Tensor) and isinstance(output, torch.Tensor) and output.shape == x.shape
                and (x.requires_grad or x.grad_fn is not None)):
            found[module] = found.get(module, True) and _adds(output.grad_fn, x)

    names = {m: name for name, m in model.named_modules() if name}
    handles = [m.register_forward_hook(hook) for m in names if any(True for _ in m.children())]
    model.eval()
    try:
        with torch.enable_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    blocks = [m for m, residual in found.items() if residual]
    inner = [m for m in blocks if not any(b is not m and any(c is b for c in m.modules()) for b in blocks)]
    return sorted((names[m] for m in inner), key=list(names.values()).index)


def remove_blocks(model: nn.Module, paths: list[str]) -> None:
    """Replace each module at ``paths`` by ``nn.Identity`` in place."""
    for path in paths:
        parent, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())


def removable_blocks(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """The residual blocks of ``model`` whose removal keeps its forward and its output's shape (``model`` is untouched)."""
    scratch = scratch_copy(model)
    blocks = residual_blocks(scratch, example_input)
    shapes = output_shapes(scratch, example_input)

    def works(paths: list[str]) -> bool:
        trial = scratch_copy(scratch)
        remove_blocks(trial, paths)
        try:
            check_forward(trial, example_input, shapes, "removing blocks")
            return True
        except ModelError:
            return False

    return blocks if works(blocks) else [b for b in blocks if works([b])]
