"""Cost proxies: parameters and FLOPs. They return the raw cost; the search minimises it."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdsearch.proxies.base import Batch, Proxy, device_of, register_proxy, untouched

__all__ = ["count_params", "count_flops", "Params", "Flops"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on a single sample of shape ``input_shape`` (no batch axis).

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` in eval mode without gradients; a
    multiply-add counts as 2 FLOPs, and only matmul/convolution-like ops are counted.
    """
    x = torch.zeros((1, *input_shape), device=device_of(model))  # (1, *input_shape)
    with untouched(model, train=False), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


@register_proxy
class Params(Proxy):
    """Parameter count (a cost: lower is better)."""

    name = "params"
    is_cost = True

    def _score(self, student: nn.Module, batch: Batch, stats: Any) -> float:
        return float(count_params(student))


@register_proxy
class Flops(Proxy):
    """FLOPs of one sample of the batch's shape (a cost: lower is better)."""

    name = "flops"
    is_cost = True

    def _score(self, student: nn.Module, batch: Batch, stats: Any) -> float:
        return float(count_flops(student, tuple(batch[0].shape[1:])))
