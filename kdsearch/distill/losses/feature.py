"""Losses on paired stage features: ``fitnet``, ``at``, ``sp`` (all pairs) and ``rkd`` (last pair).

Where a student and teacher map differ in spatial size, the larger one is average-pooled
to the smaller (``adaptive_avg_pool2d``) before comparing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsearch.distill.losses._functional import match_spatial, normalized_gram
from kdsearch.distill.losses._checks import require_non_negative, require_positive
from kdsearch.distill.losses.base import DistillLoss, LossInputs, option, register_loss
from kdsearch.errors import TrainingError

__all__ = ["FitNetLoss", "ATLoss", "SPLoss", "RKDLoss"]


@register_loss("fitnet")
class FitNetLoss(DistillLoss):
    """FitNets hints (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

    For every feature pair i: ``L_i = mean((r_i(f_s) − f_t)²)`` where the connector r_i is
    a learned 1×1 conv (C_s → C_t, no bias) followed by BatchNorm, built by :meth:`setup`;
    ``L = Σ_i L_i`` over all pairs. Connectors train with the student and are discarded
    when the student is saved.
    """

    paper = 'Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015'
    uses_features = True

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.connectors: nn.ModuleList | None = None

    def setup(self, student_channels: list[int], teacher_channels: list[int]) -> None:
        """Build one 1×1 conv + BN connector per feature pair."""
        if len(student_channels) != len(teacher_channels):
            raise TrainingError(
                f"loss 'fitnet': {len(student_channels)} student stages but "
                f"{len(teacher_channels)} teacher stages; pair the same number of stages"
            )
        self.connectors = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cs, ct, kernel_size=1, bias=False), nn.BatchNorm2d(ct))
            for cs, ct in zip(student_channels, teacher_channels)
        )

    def forward(self, inputs: LossInputs) -> Tensor:
        pairs = self.feature_pairs(inputs)
        if self.connectors is None or len(self.connectors) != len(pairs):
            raise TrainingError(
                "loss 'fitnet' has no connectors for these features; call "
                "setup(student_channels, teacher_channels) once before training"
            )
        total = pairs[0][0].new_zeros(())
        for connector, (fs, ft) in zip(self.connectors, pairs):
            fs, ft = match_spatial(fs, ft)  # (B, Cs, h, w), (B, Ct, h, w)
            if connector[0].in_channels != fs.shape[1] or connector[0].out_channels != ft.shape[1]:
                raise TrainingError(
                    f"loss 'fitnet': connector maps {connector[0].in_channels} -> "
                    f"{connector[0].out_channels} channels but the features have "
                    f"{fs.shape[1]} and {ft.shape[1]}; call setup with the right channel counts"
                )
            total = total + F.mse_loss(connector(fs), ft)  # connector(fs): (B, Ct, h, w)
        return total


def _attention_map(f: Tensor, p: float) -> Tensor:
    """Spatial attention ``Σ_c |f_c|^p``, flattened and L2-normalised: ``(B, C, H, W) -> (B, HW)``."""
    return F.normalize(f.abs().pow(p).sum(dim=1).flatten(1), p=2, dim=1)


@register_loss("at")
class ATLoss(DistillLoss):
    """Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

    With Q = vec(Σ_c |f_c|^p) / ‖vec(Σ_c |f_c|^p)‖₂ per sample::

        L = (β/2) · Σ_pairs mean_{b,j} (Q_s[b, j] − Q_t[b, j])²

    over all feature pairs, as in the official code (β = 1000, p = 2), so weight 1 in a loss
    spec reproduces the paper's scale. Channel counts may differ.
    """

    paper = ('Zagoruyko, Komodakis, "Paying More Attention to Attention: Improving the Performance of '
             'Convolutional Neural Networks via Attention Transfer", ICLR 2017')
    uses_features = True

    @dataclass(frozen=True)
    class Options:
        beta: float = option(1000.0, "weight β (the paper's); β/2 is applied inside")
        p: float = option(2.0, "power p of the attention map Σ_c |f_c|^p (paper: 2)")

        def __post_init__(self) -> None:
            require_non_negative(beta=self.beta)
            require_positive(p=self.p)

    def forward(self, inputs: LossInputs) -> Tensor:
        total = None
        for fs, ft in self.feature_pairs(inputs):
            fs, ft = match_spatial(fs, ft)
            term = (_attention_map(fs, self.opts.p) - _attention_map(ft, self.opts.p)).pow(2).mean()
            total = term if total is None else total + term
        return self.opts.beta / 2 * total


@register_loss("sp")
class SPLoss(DistillLoss):
    """Similarity-preserving KD (Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019).

    With G = f fᵀ over the batch (f flattened to B × D) and rows L2-normalised::

        L = γ · Σ_pairs ‖G_s − G_t‖²_F / B²

    over all feature pairs; γ = 3000 is the paper's CIFAR weight, so weight 1 in a loss spec
    reproduces its scale. Channel counts and spatial sizes may differ (G is B × B).
    """

    paper = 'Tung, Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019'
    uses_features = True

    @dataclass(frozen=True)
    class Options:
        gamma: float = option(3000.0, "weight γ (the paper's CIFAR-10 weight)")

        def __post_init__(self) -> None:
            require_non_negative(gamma=self.gamma)

    def forward(self, inputs: LossInputs) -> Tensor:
        total = None
        for fs, ft in self.feature_pairs(inputs):
            term = F.mse_loss(normalized_gram(fs), normalized_gram(ft))  # ‖·‖²_F / B²
            total = term if total is None else total + term
        return self.opts.gamma * total


def _pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between rows, zero diagonal: ``(B, D) -> (B, B)``."""
    sq = e.pow(2).sum(dim=1)  # (B,)
    d2 = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps)  # (B, B)
    off_diagonal = ~torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d2.sqrt() * off_diagonal  # (B, B)


def _distance_potential(e: Tensor) -> Tensor:
    """Pairwise distances divided by their mean over distinct pairs: ``(B, D) -> (B, B)``."""
    d = _pairwise_distances(e)  # (B, B)
    B = e.shape[0]
    return d / (d.sum() / (B * (B - 1))).clamp(min=1e-12)


def _angle_potential(e: Tensor) -> Tensor:
    """Cosines of the angles ∠(e_i − e_j, e_k − e_j): ``(B, D) -> (B, B, B)``."""
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # (B, B, D): [j, i] = e_i − e_j
    return diff @ diff.transpose(1, 2)  # (B, B, B)


@register_loss("rkd")
class RKDLoss(DistillLoss):
    """Relational KD (Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019).

    On the LAST feature pair only, global-average-pooled to embeddings e (B × C)::

        ψ_D(i, j)    = ‖e_i − e_j‖₂ / μ,  μ = mean distance over distinct pairs
        ψ_A(i, j, k) = ⟨(e_i − e_j)/‖·‖, (e_k − e_j)/‖·‖⟩
        L = w_d · mean Huber(ψ_D^s − ψ_D^t) + w_a · mean Huber(ψ_A^s − ψ_A^t)

    with the paper's weights w_d = 25, w_a = 50 and Huber = smooth L1 (δ = 1); means over
    all B² and B³ entries, as in the official code. Needs a batch of at least 2.
    """

    paper = 'Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019'
    uses_features = True

    @dataclass(frozen=True)
    class Options:
        distance_weight: float = option(25.0, "weight w_d of the distance term (paper)")
        angle_weight: float = option(50.0, "weight w_a of the angle term (paper)")

        def __post_init__(self) -> None:
            require_non_negative(distance_weight=self.distance_weight, angle_weight=self.angle_weight)

    def forward(self, inputs: LossInputs) -> Tensor:
        fs, ft = self.feature_pairs(inputs)[-1]
        if fs.shape[0] < 2:
            raise TrainingError("loss 'rkd' needs a batch of at least 2 samples; raise the batch size")
        es = F.adaptive_avg_pool2d(fs, 1).flatten(1)  # (B, Cs)
        et = F.adaptive_avg_pool2d(ft, 1).flatten(1)  # (B, Ct)
        distance = F.smooth_l1_loss(_distance_potential(es), _distance_potential(et))
        angle = F.smooth_l1_loss(_angle_potential(es), _angle_potential(et))
        return self.opts.distance_weight * distance + self.opts.angle_weight * angle
