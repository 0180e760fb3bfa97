"""DisWOT's similarity measures used as training losses: ``diswot_relation``,
``diswot_semantic`` and their sum ``diswot``.

DisWOT (Dong, Li, Wei, "DisWOT: Student Architecture Search for Distillation WithOut
Training", CVPR 2023) scores a student at initialisation by how closely its sample
relations and class relations match the teacher's. Trained on, the same measures become
losses. The relation term is the paper's formula unchanged. The paper's semantic term
compares per-class Gram matrices of classifier-weight *gradients*, which as a training
loss would need second-order gradients and equal channel counts; here it is replaced by
the class-relation matrix of the softmax outputs (see :class:`DisWOTSemanticLoss`), which
is differentiable in the student, dimension-free and cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdsearch.distill.losses._checks import require_non_negative, require_positive
from kdsearch.distill.losses._functional import normalized_gram
from kdsearch.distill.losses.base import DistillLoss, LossInputs, option, register_loss

__all__ = ["DisWOTRelationLoss", "DisWOTSemanticLoss", "DisWOTLoss"]

_DISWOT = 'Dong, Li, Wei, "DisWOT: Student Architecture Search for Distillation WithOut Training", CVPR 2023'


@register_loss("diswot_relation")
class DisWOTRelationLoss(DistillLoss):
    """DisWOT sample-relation distance on the final feature map (LAST feature pair only).

    With f the pre-pooling map flattened to N × D, G = f fᵀ (N × N) with rows L2-normalised::

        L = ‖G_t − G_s‖²_F / N²

    Invariant to channel permutations; channel counts and spatial sizes may differ.
    """

    paper = _DISWOT
    uses_features = True

    def forward(self, inputs: LossInputs) -> Tensor:
        fs, ft = self.feature_pairs(inputs)[-1]  # (B, Cs, Hs, Ws), (B, Ct, Ht, Wt)
        return F.mse_loss(normalized_gram(fs), normalized_gram(ft))  # ‖·‖²_F / N²


@register_loss("diswot_semantic")
class DisWOTSemanticLoss(DistillLoss):
    """DisWOT class-relation distance, on the logits (a training-loss form of the semantic term).

    With P = softmax(Z/T) (B × K), the class-relation matrix A = Pᵀ P (K × K: how often two
    classes are predicted together over the batch) with rows L2-normalised::

        L = ‖A_t − A_s‖²_F / K²

    Like the paper's semantic term it compares class-by-class Gram matrices, row-normalised,
    under a squared Frobenius norm divided by their size; unlike it, it reads predictions
    instead of classifier-weight gradients, so it needs no second-order gradients and works
    whatever the channel counts. ``LossInputs.temperature`` overrides T.
    """

    paper = _DISWOT

    @dataclass(frozen=True)
    class Options:
        temperature: float = option(4.0, "softening temperature T, as in KD, so the off-diagonal class relations carry signal")

        def __post_init__(self) -> None:
            require_positive(temperature=self.temperature)

    def forward(self, inputs: LossInputs) -> Tensor:
        s, t = self.logits(inputs)  # (B, K)
        T = self.temperature(inputs, self.opts.temperature)
        ps, pt = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)  # (B, K)
        return F.mse_loss(normalized_gram(ps.t()), normalized_gram(pt.t()))  # (K, K) grams


@register_loss("diswot")
class DisWOTLoss(DistillLoss):
    """Both DisWOT terms: ``semantic_weight · diswot_semantic + relation_weight · diswot_relation``.

    The relation term reads the LAST feature pair; see the two losses for the formulas.
    """

    paper = _DISWOT
    uses_features = True

    @dataclass(frozen=True)
    class Options:
        semantic_weight: float = option(1.0, "weight of the diswot_semantic term")
        relation_weight: float = option(1.0, "weight of the diswot_relation term")
        temperature: float = option(4.0, "softening temperature T of the semantic term")

        def __post_init__(self) -> None:
            require_non_negative(semantic_weight=self.semantic_weight, relation_weight=self.relation_weight)
            require_positive(temperature=self.temperature)

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.semantic = DisWOTSemanticLoss(temperature=self.opts.temperature)
        self.relation = DisWOTRelationLoss()

    def forward(self, inputs: LossInputs) -> Tensor:
        return self.opts.semantic_weight * self.semantic(inputs) + self.opts.relation_weight * self.relation(
            inputs
        )
