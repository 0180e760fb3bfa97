"""DisWOT: score a student by how similar it is to the teacher at initialisation.

Dong, Li, Wei, "DisWOT: Student Architecture Search for Distillation WithOut Training",
CVPR 2023. Both networks run in train mode (BatchNorm on batch statistics) on one labelled
batch; the score is ``-(w_sem · L_sem + w_rel · L_rel)``, higher is better.

The semantic term needs the classifier weight gradient of the mean cross-entropy, which has a
closed form, ``dL/dW = (softmax(z) - onehot(y))ᵀ h / N`` with ``h`` the classifier input: a
candidate is scored with one forward pass under ``no_grad`` and no backward at all.
:func:`diswot_reference` is the slow path (autograd backward through both networks) that the
tests hold the fast path to.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.errors import ProxyError, UsageError
from kdsearch.models.features import FeatureTap, ModelParts, get_module, locate_parts
from kdsearch.proxies.base import Batch, Proxy, device_of, register_proxy, untouched

__all__ = [
    "DiswotLosses",
    "DiswotTeacherStats",
    "Diswot",
    "DiswotSemantic",
    "DiswotRelation",
    "classifier_weight_grad",
    "class_relation",
    "sample_relation",
    "semantic_loss",
    "relation_loss",
    "diswot_reference",
]

SEMANTIC_FORMS = ("class", "channel")


@dataclass(frozen=True)
class DiswotLosses:
    """The two DisWOT distances (lower means more similar to the teacher)."""

    semantic: float
    relation: float


@dataclass(frozen=True)
class DiswotTeacherStats:
    """The teacher's side of DisWOT, computed once per search (float64)."""

    class_grad: torch.Tensor  # (K, C_t) classifier weight gradient of the mean CE
    class_relation: torch.Tensor  # (K, K) rows of G Gᵀ, L2-normalised
    sample_relation: torch.Tensor  # (N, N) rows of f fᵀ, L2-normalised

    def to(self, device: torch.device) -> "DiswotTeacherStats":
        return DiswotTeacherStats(
            self.class_grad.to(device), self.class_relation.to(device), self.sample_relation.to(device)
        )


def classifier_weight_grad(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Gradient of ``cross_entropy(logits, labels)`` (mean) w.r.t. the classifier weight, in closed form.

    For ``z = h Wᵀ + b``: ``dL/dW = (softmax(z) - onehot(y))ᵀ h / N``; a bias does not change it.

    Args:
        logits: (N, K) classifier outputs.
        labels: (N,) class indices.
        inputs: (N, C) classifier inputs ``h``.

    Returns:
        (K, C) float64 gradient.
    """
    n, k = logits.shape
    delta = torch.softmax(logits.double(), dim=1)  # (N, K)
    delta = delta - F.one_hot(labels.long(), k).double()  # (N, K)
    return delta.T @ inputs.double() / n  # (K, C)


def class_relation(grad: torch.Tensor) -> torch.Tensor:
    """Class-correlation matrix ``G Gᵀ`` of a (K, C) gradient with L2-normalised rows: (K, K)."""
    return F.normalize(grad @ grad.T, dim=1)  # (K, K)


def sample_relation(features: torch.Tensor) -> torch.Tensor:
    """Sample Gram matrix ``f fᵀ`` of a (N, ...) feature map with L2-normalised rows: (N, N)."""
    f = features.flatten(1)  # (N, D)
    return F.normalize((f @ f.T).double(), dim=1)  # (N, N)


def semantic_loss(teacher: DiswotTeacherStats, grad: torch.Tensor, form: str = "class") -> float:
    """L_sem between the teacher's stats and a student's (K, C_s) classifier gradient.

    ``form="class"``: ``‖A_t − A_s‖²_F / K²`` with A the row-normalised ``G Gᵀ`` (K × K).
    ``form="channel"`` (DESIGN.md, needs C_t = C_s): ``Σ_k ‖Â_t^k − Â_s^k‖²_F / (K·C)`` with
    Â^k the row-normalised ``g_k g_kᵀ``. Row i of Â^k is ``sign(g_ki) · g_k/‖g_k‖``, so the
    distance factorises and no (C × C) matrix is formed.
    """
    if form == "class":
        a_s = class_relation(grad.double())  # (K, K)
        return float((teacher.class_relation - a_s).pow(2).sum() / a_s.shape[0] ** 2)
    if form != "channel":
        raise UsageError(f"unknown DisWOT semantic form {form!r}; use one of {', '.join(SEMANTIC_FORMS)}")
    g_t, g_s = teacher.class_grad, grad.double()  # (K, C)
    if g_t.shape != g_s.shape:
        raise ProxyError(
            f"the channel form of DisWOT's semantic term needs equal classifier widths, got teacher "
            f"{g_t.shape[1]} and student {g_s.shape[1]}; use semantic='class'"
        )
    s_t, s_s = g_t.sign(), g_s.sign()  # (K, C)
    u_t, u_s = F.normalize(g_t, dim=1), F.normalize(g_s, dim=1)  # (K, C)
    per_class = (  # ‖s_t⊗u_t − s_s⊗u_s‖²_F for each class: (K,)
        s_t.pow(2).sum(1) * u_t.pow(2).sum(1)
        + s_s.pow(2).sum(1) * u_s.pow(2).sum(1)
        - 2 * (s_t * s_s).sum(1) * (u_t * u_s).sum(1)
    )
    return float(per_class.sum() / g_t.numel())


def relation_loss(teacher: DiswotTeacherStats, features: torch.Tensor) -> float:
    """L_rel = ‖R_t − R_s‖²_F / N² with R the row-normalised sample Gram matrix."""
    r_s = sample_relation(features)  # (N, N)
    return float((teacher.sample_relation - r_s).pow(2).sum() / r_s.shape[0] ** 2)


def _probe(model: nn.Module, parts: ModelParts, x: torch.Tensor, y: torch.Tensor):
    """One no-grad forward: the feature map (N, ...) and the classifier weight gradient (K, C)."""
    with torch.no_grad(), FeatureTap(model, [parts.feature, parts.classifier]) as tap:
        model(x)
    h = tap.inputs[parts.classifier]  # (N, C)
    logits = tap.outputs[parts.classifier]  # (N, K)
    if h.dim() != 2:
        raise ProxyError(
            f"the classifier {parts.classifier!r} gets a {h.dim()}-D input; DisWOT needs a final "
            "nn.Linear on (N, C) features: name the right classifier module"
        )
    _check_labels(y, logits.shape[1])
    return tap.outputs[parts.feature], classifier_weight_grad(logits, y, h)


def _check_labels(y: torch.Tensor, classes: int) -> None:
    if y.dtype.is_floating_point or y.dim() != 1 or int(y.min()) < 0 or int(y.max()) >= classes:
        raise ProxyError(
            f"DisWOT needs integer class labels in [0, {classes}) of shape (N,); "
            "score on a labelled batch of the teacher's classes"
        )


@register_proxy
class Diswot(Proxy):
    """DisWOT score ``-(w_sem · L_sem + w_rel · L_rel)``; higher is better.

    Args:
        w_sem: weight of the semantic (classifier-gradient) distance.
        w_rel: weight of the relation (sample Gram) distance.
        semantic: "class" (default) compares the (K × K) class-correlation matrices ``G Gᵀ``:
            it exists for any pair of classifier widths, so every teacher/student pair is
            scored on the same footing (ICKD-style, as the reference code does). "channel" is
            the per-class (C × C) form of DESIGN.md and needs equal widths.
    """

    name = "diswot"
    needs_teacher = True

    def __init__(self, w_sem: float = 1.0, w_rel: float = 1.0, semantic: str = "class") -> None:
        if semantic not in SEMANTIC_FORMS:
            raise UsageError(f"unknown DisWOT semantic form {semantic!r}; use one of {', '.join(SEMANTIC_FORMS)}")
        self.w_sem, self.w_rel, self.semantic = float(w_sem), float(w_rel), semantic

    def prepare(self, teacher: nn.Module | None, batch: Batch, parts: ModelParts | None = None) -> DiswotTeacherStats:
        if teacher is None:
            raise ProxyError(f"proxy {self.name!r} needs a teacher; pass one or choose another proxy")
        device = device_of(teacher)
        x, y = batch[0].to(device), batch[1].to(device)
        parts = parts or locate_parts(teacher, x)
        with untouched(teacher):
            features, grad = _probe(teacher, parts, x, y)
        return DiswotTeacherStats(grad, class_relation(grad), sample_relation(features))

    def losses(self, student: nn.Module, batch: Batch, stats: DiswotTeacherStats) -> DiswotLosses:
        """Both distances of ``student`` to the teacher (the model must already be in train mode)."""
        x, y = batch
        stats = stats.to(x.device)
        features, grad = _probe(student, locate_parts(student, x), x, y)
        if grad.shape[0] != stats.class_grad.shape[0]:
            raise ProxyError(
                f"the student has {grad.shape[0]} classes and the teacher {stats.class_grad.shape[0]}; "
                "build candidates with the teacher's number of classes"
            )
        sem = semantic_loss(stats, grad, self.semantic) if self.w_sem else 0.0
        rel = relation_loss(stats, features) if self.w_rel else 0.0
        return DiswotLosses(sem, rel)

    def _score(self, student: nn.Module, batch: Batch, stats: Any) -> float:
        losses = self.losses(student, batch, stats)
        return -(self.w_sem * losses.semantic + self.w_rel * losses.relation)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(w_sem={self.w_sem}, w_rel={self.w_rel}, semantic={self.semantic!r})"


@register_proxy
class DiswotSemantic(Diswot):
    """DisWOT semantic term alone: ``-L_sem`` (see :class:`Diswot` for ``semantic``)."""

    name = "diswot_semantic"

    def __init__(self, semantic: str = "class") -> None:
        super().__init__(w_sem=1.0, w_rel=0.0, semantic=semantic)


@register_proxy
class DiswotRelation(Diswot):
    """DisWOT relation term alone: ``-L_rel``."""

    name = "diswot_relation"

    def __init__(self) -> None:
        super().__init__(w_sem=0.0, w_rel=1.0)


def diswot_reference(
    teacher: nn.Module,
    student: nn.Module,
    batch: Batch,
    *,
    semantic: str = "class",
    teacher_parts: ModelParts | None = None,
    student_parts: ModelParts | None = None,
) -> DiswotLosses:
    """DisWOT distances the slow way: a real CE backward through each network, nothing cached.

    The baseline the fast proxies are tested and benchmarked against; models are left as found.
    """
    g_t, f_t = _reference_side(teacher, teacher_parts, batch)
    g_s, f_s = _reference_side(student, student_parts, batch)
    k = g_t.shape[0]
    if semantic == "class":
        a_t = F.normalize(g_t @ g_t.T, dim=1)  # (K, K)
        a_s = F.normalize(g_s @ g_s.T, dim=1)  # (K, K)
        sem = (a_t - a_s).pow(2).sum() / k**2
    elif semantic == "channel":
        sem = sum(  # explicit (C × C) matrix per class
            (F.normalize(torch.outer(g_t[i], g_t[i]), dim=1) - F.normalize(torch.outer(g_s[i], g_s[i]), dim=1))
            .pow(2)
            .sum()
            for i in range(k)
        ) / g_t.numel()
    else:
        raise UsageError(f"unknown DisWOT semantic form {semantic!r}; use one of {', '.join(SEMANTIC_FORMS)}")
    n = f_t.shape[0]
    r_t = F.normalize(f_t @ f_t.T, dim=1)  # (N, N)
    r_s = F.normalize(f_s @ f_s.T, dim=1)  # (N, N)
    rel = (r_t - r_s).pow(2).sum() / n**2
    return DiswotLosses(float(sem), float(rel))


def _reference_side(model: nn.Module, parts: ModelParts | None, batch: Batch):
    device = device_of(model)
    x, y = batch[0].to(device), batch[1].to(device)
    parts = parts or locate_parts(model, x)
    with untouched(model):
        model.zero_grad(set_to_none=True)
        with FeatureTap(model, [parts.feature, parts.classifier]) as tap:
            model(x)
        F.cross_entropy(tap.outputs[parts.classifier], y).backward()
        grad = get_module(model, parts.classifier).weight.grad.detach().double()  # (K, C)
        features = tap.outputs[parts.feature].detach().flatten(1).double()  # (N, D)
    return grad.cpu(), features.cpu()
