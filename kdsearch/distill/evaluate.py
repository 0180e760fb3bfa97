"""Batched inference over an in-memory image set."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["predict_logits", "topk_accuracy"]


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,  # (N, C, H, W) uint8
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    channels_last: bool = False,
) -> torch.Tensor:  # (N, K) float32 on CPU
    """Logits of ``model`` (in eval mode) for every image; the training flag is restored."""
    from kdsearch.data import normalize

    was_training = model.training
    model.eval()
    outs = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].to(device, non_blocking=True), mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose label is among the ``k`` largest logits."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (N, k)
    return (top == labels[:, None]).any(dim=1).float().mean().item()
