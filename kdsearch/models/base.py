"""The shape every in-project network shares, so proxies and losses can find their parts."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ImageClassifier"]


class ImageClassifier(nn.Module):
    """Base of the zoo: ``forward = classifier(flatten(avgpool(forward_features(x))))``.

    Subclasses set ``self.classifier`` (an ``nn.Linear``), implement
    :meth:`forward_features` returning the pre-pooling map ``(B, C, H, W)``, and list the
    module paths whose outputs end each stage in ``self.stage_paths`` (used for feature
    distillation). The final feature map must be the output of a module at path
    ``self.feature_path`` so forward hooks can capture it; ``self.feature_stride`` says how
    many input pixels one step of that map spans (32 for an ImageNet-form CNN: 224 px -> 7x7).
    """

    classifier: nn.Linear
    stage_paths: tuple[str, ...] = ()
    feature_path: str = ""
    feature_stride: int = 1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.forward_features(x)  # (B, C, H, W)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(f, 1), 1))  # (B, K)
