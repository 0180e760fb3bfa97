"""Losses on logits: ``kd``, ``dkd``, ``dist`` and the label loss ``ce``."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdsearch.distill.losses._checks import require_non_negative, require_positive
from kdsearch.distill.losses.base import DistillLoss, LossInputs, option, register_loss
from kdsearch.errors import TrainingError

__all__ = ["KDLoss", "DKDLoss", "DISTLoss", "CELoss"]


@register_loss("kd")
class KDLoss(DistillLoss):
    """Knowledge distillation (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
    Network", 2015).

    ``L = T² · (1/B) Σ_b KL(softmax(t_b/T) ‖ softmax(s_b/T))``; the T² keeps gradient
    magnitudes comparable across temperatures. ``LossInputs.temperature`` overrides T.
    """

    paper = 'Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS Deep Learning Workshop 2015'

    @dataclass(frozen=True)
    class Options:
        temperature: float = option(4.0, "softening temperature T; 4 is the usual CIFAR choice (CRD, DKD benchmarks)")

        def __post_init__(self) -> None:
            require_positive(temperature=self.temperature)

    def forward(self, inputs: LossInputs) -> Tensor:
        s, t = self.logits(inputs)  # (B, K)
        T = self.temperature(inputs, self.opts.temperature)
        log_ps = F.log_softmax(s / T, dim=1)  # (B, K)
        log_pt = F.log_softmax(t / T, dim=1)  # (B, K)
        return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * T * T


@register_loss("dkd")
class DKDLoss(DistillLoss):
    """Decoupled KD (Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022).

    With p = softmax(z/T), b = (p_gt, 1 − p_gt) the binary target/non-target split and
    p̂ = softmax over the non-target classes only::

        TCKD = T² · (1/B) Σ_b KL(b_t ‖ b_s)
        NCKD = T² · (1/B) Σ_b KL(p̂_t ‖ p̂_s)
        L    = α · TCKD + β · NCKD

    as in the official code (mdistiller), including the T² factor; computed in log space
    so a saturated target probability cannot produce log(0). The official code also ramps
    the loss in over the first 20 epochs; that warm-up belongs to the trainer's schedule.
    ``LossInputs.temperature`` overrides T.
    """

    paper = 'Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022'

    @dataclass(frozen=True)
    class Options:
        alpha: float = option(1.0, "weight α of the target-class term TCKD (paper default)")
        beta: float = option(8.0, "weight β of the non-target term NCKD (paper's CIFAR-100 default; 0.5 on ImageNet)")
        temperature: float = option(4.0, "softening temperature T (paper default)")

        def __post_init__(self) -> None:
            require_positive(temperature=self.temperature)
            require_non_negative(alpha=self.alpha, beta=self.beta)

    def forward(self, inputs: LossInputs) -> Tensor:
        s, t = self.logits(inputs)  # (B, K)
        T = self.temperature(inputs, self.opts.temperature)
        B, K = s.shape
        if K < 2:
            raise TrainingError(f"loss 'dkd' needs at least two classes, got {K}; use 'kd' instead")
        gt = F.one_hot(inputs.labels.long(), K).bool()  # (B, K)
        tckd = F.kl_div(
            self._binary_log_probs(s / T, gt),
            self._binary_log_probs(t / T, gt),
            reduction="sum",
            log_target=True,
        )
        log_ns = F.log_softmax(s[~gt].view(B, K - 1) / T, dim=1)  # (B, K-1)
        log_nt = F.log_softmax(t[~gt].view(B, K - 1) / T, dim=1)  # (B, K-1)
        nckd = F.kl_div(log_ns, log_nt, reduction="sum", log_target=True)
        return (self.opts.alpha * tckd + self.opts.beta * nckd) * T * T / B

    @staticmethod
    def _binary_log_probs(z: Tensor, gt: Tensor) -> Tensor:
        """log(p_gt), log(1 − p_gt) of softmax(z), stably."""
        log_p = F.log_softmax(z, dim=1)  # (B, K)
        log_target = log_p.masked_fill(~gt, float("-inf")).logsumexp(dim=1)  # (B,)
        log_other = log_p.masked_fill(gt, float("-inf")).logsumexp(dim=1)  # (B,)
        return torch.stack([log_target, log_other], dim=1)  # (B, 2)


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: ``(N, D) -> (N,)``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@register_loss("dist")
class DISTLoss(DistillLoss):
    """DIST (Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger Teacher",
    NeurIPS 2022).

    With Y = softmax(Z/τ) of shape (B, K) and ρ the Pearson correlation::

        inter = 1 − (1/B) Σ_b ρ(Y_s[b, :], Y_t[b, :])     # per sample, over classes
        intra = 1 − (1/K) Σ_k ρ(Y_s[:, k], Y_t[:, k])     # per class, over the batch
        L     = τ² · (β · inter + γ · intra)

    Defaults β = γ = τ = 1 are the paper's default setting (its ImageNet recipe and the
    official ``DIST`` class); set them per recipe. ``LossInputs.temperature`` overrides τ.
    """

    paper = 'Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022'

    @dataclass(frozen=True)
    class Options:
        beta: float = option(1.0, "weight β of the inter-class relation (per sample, over classes)")
        gamma: float = option(1.0, "weight γ of the intra-class relation (per class, over the batch)")
        temperature: float = option(1.0, "softening temperature τ")

        def __post_init__(self) -> None:
            require_positive(temperature=self.temperature)
            require_non_negative(beta=self.beta, gamma=self.gamma)

    def forward(self, inputs: LossInputs) -> Tensor:
        s, t = self.logits(inputs)  # (B, K)
        T = self.temperature(inputs, self.opts.temperature)
        ys, yt = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)  # (B, K)
        inter = 1 - _pearson_rows(ys, yt).mean()
        intra = 1 - _pearson_rows(ys.t(), yt.t()).mean()
        return T * T * (self.opts.beta * inter + self.opts.gamma * intra)


@register_loss("ce")
class CELoss(DistillLoss):
    """Cross entropy with the labels, optionally label-smoothed (Szegedy et al., CVPR 2016).

    ``L = (1/B) Σ_b −Σ_k q_bk log softmax(s_b)_k`` with ``q = (1 − ε)·onehot + ε/K``.
    Needs no teacher.
    """

    paper = 'Szegedy, Vanhoucke, Ioffe, Shlens, Wojna, "Rethinking the Inception Architecture for Computer Vision", CVPR 2016'
    uses_teacher = False

    @dataclass(frozen=True)
    class Options:
        label_smoothing: float = option(0.0, "label smoothing ε in [0, 1); 0 is plain cross entropy")

        def __post_init__(self) -> None:
            if not 0.0 <= self.label_smoothing < 1.0:
                raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def forward(self, inputs: LossInputs) -> Tensor:
        s = inputs.student_logits.float()  # (B, K)
        return F.cross_entropy(s, inputs.labels.long(), label_smoothing=self.opts.label_smoothing)
