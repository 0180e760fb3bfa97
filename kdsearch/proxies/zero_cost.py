"""Classic teacher-free zero-cost proxies; higher is better for every one of them.

Collected and compared by Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS",
ICLR 2021; each class cites its original paper. All run with BatchNorm in train mode on the
fixed batch, take gradients with ``torch.autograd.grad`` (``.grad`` is never written), and
never change the candidate's weights (synflow and zen work on a copy).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from kdsearch.errors import ProxyError
from kdsearch.models.features import FeatureTap, locate_parts
from kdsearch.proxies.base import Batch, Proxy, register_proxy

__all__ = [
    "GradNorm",
    "Snip",
    "Grasp",
    "Synflow",
    "Fisher",
    "Jacov",
    "Nwot",
    "Zen",
    "nwot_kernel",
    "jacobian_covariance_score",
]

_RELUS = (nn.ReLU, nn.ReLU6)


def _weighted_layers(model: nn.Module) -> list[nn.Module]:
    """Convolutions and linear layers: the layers zero-cost proxies sum over."""
    return [m for m in model.modules() if isinstance(m, (_ConvNd, nn.Linear)) and m.weight.requires_grad]


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out  # (N, K)


def _weight_grads(model: nn.Module, batch: Batch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Conv/linear weights and the gradients of the mean CE on ``batch`` w.r.t. them."""
    x, y = batch
    weights = [m.weight for m in _weighted_layers(model)]
    loss = F.cross_entropy(_logits(model, x), y)
    grads = torch.autograd.grad(loss, weights, allow_unused=True)
    used = [(w, g) for w, g in zip(weights, grads) if g is not None]
    return [w for w, _ in used], [g for _, g in used]


@register_proxy
class GradNorm(Proxy):
    """Sum over conv/linear layers of ``‖∂L/∂W‖₂`` (Abdelfattah et al. 2021), CE loss."""

    name = "grad_norm"

    def _score(self, student: nn.Module, batch: Batch, stats: Any) -> float:
        _, grads = _weight_grads(student, batch)
        return float(sum(g.norm() for g in grads))


@register_proxy
class Snip(Proxy):
    """SNIP saliency ``Σ |θ ⊙ ∂L/∂θ|`` (Lee, Ajanthan, Torr, ICLR 2019) over conv/linear weights."""

    name = "snip"

    def _score(self, student: nn.Module, batch: Batch, stats: Any) -> float:
        weights, grads = _weight_grads(student, batch)
        return float(sum((w.detach() * g).abs().sum() for w, g in zip(weights, grads)))


@register_proxy
class Grasp(Proxy):
    """GraSP ``Σ −θ ⊙ H g`` (Wang, Zhang, Grosse, ICLR 2020), as scored by Abdelfattah et al. 2021.

    ``H g`` is the Hessian-gradient product, ``∂(g_const · g(θ))/∂θ`` by double backward.
    """

    name = "grasp"

    def _score(self, student: nn.Module, batch: Batch, stats: Any) -> float:
        x, y = batch
        weights = [m.weight for m in _weighted_layers(student)]
        loss = F.cross_entropy(_logits(student, x), y)
        grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
        z = sum((g.detach() * g).sum() for g in grads if g is not None)
        hg = torch.autograd.grad(z, weights, allow_unused=True)
        return float(sum((-w.detach() * h).sum() for w, h in zip(weights, hg) if h is not None))


@register_proxy
class Synflow(Proxy):
    """log SynFlow (Tanaka et al., NeurIPS 2020): ``log Σ θ ⊙ ∂R/∂θ``, ``R = 1ᵀ f_|θ|(1)``.

    Runs on a float64 copy with absolute weights and BatchNorm removed (as the paper does),
    on one all-ones input of the batch's sample shape. The raw sum overflows float32 on deep
    networks, hence the log; a network that passes nothing through scores ``-inf``.
    """

    name = "synflow"

    def _score(self, student: nn.Module, batch: Batch, stats: Any) -> float:
        x, _ = batch
        net = copy.deepcopy(student).double().eval()
        _remove_batchnorm(net)
        with torch.no_grad():
            for p in net.parameters():
                p.abs_()
        weights = [m.weight for m in _weighted_layers(net)]
        r = _logits(net, torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device)).sum()
        grads = torch.autograd.grad(r, weights, allow_unused=True)
        total = float(sum((w.detach() * g).sum() for w, g in zip(weights, grads) if g is not None))
        return math.log(total) if total > 0 else float("-inf")


def _remove_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, _BatchNorm):
                setattr(module, name, nn.Identity())


@register_proxy
class Fisher(Proxy):
    """Fisher potential (Turner et al., "BlockSwap", ICLR 2020) on conv/linear outputs.

    Per channel c of activation a with gradient g: ``½ · mean_n (Σ_hw a·g)²``, summed over
    channels and layers.
    """

    name = "fisher"

    def _score(self, student: nn.Module, batch: Batch, stats: Any) -> float:
        x, y = batch
        acts: list[torch.Tensor] = []

        def keep(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            acts.append(out)
            return out.clone()  # later in-place ops (ReLU(inplace=True)) must not touch `out`

        handles = [m.register_forward_hook(keep) for m in _weighted_layers(student)]
        try:
            loss = F.cross_entropy(_logits(student, x), y)
        finally:
            for h in handles:
                h.remove()
        grads = torch.autograd.grad(loss, acts, allow_unused=True)
        total = 0.0
        for a, g in zip(acts, grads):
            if g is None:
                continue
            per_sample = (a.detach() * g).flatten(2).sum(2) if a.dim() > 2 else a.detach() * g  # (N, C)
            total += float(0.5 * per_sample.pow(2).mean(0).sum())
        return total


def jacobian_covariance_score(jacobian: torch.Tensor, k: float = 1e-5) -> float:
    """Mellor et al. 2020 (v1): ``−Σ_i [log(λ_i + k) + 1/(λ_i + k)]`` over eigenvalues λ of corr(J)."""
    j = jacobian.flatten(1).double()  # (N, D)
    j = F.normalize(j - j.mean(1, keepdim=True), dim=1)  # (N, D) centred, unit rows
    eig = torch.linalg.eigvalsh(j @ j.T)  # (N,) of the correlation matrix
    return float(-(torch.log(eig + k) + 1.0 / (eig + k)).sum())


@register_proxy
class Jacov(Proxy):
    """Jacobian covariance (Mellor et al., "Neural Architecture Search without Training", 2020 v1).

    J is the gradient of the summed outputs w.r.t. each input image; see
    :func:`jacobian_covariance_score`.
    """

    name = "jacov"

    def _score(self, student: nn.Module, batch: Batch, stats: Any) -> float:
        x = batch[0].clone().requires_grad_(True)
        (jac,) = torch.autograd.grad(_logits(student, x).sum(), x)  # (N, C, H, W)
        return jacobian_covariance_score(jac)


def nwot_kernel(codes: Sequence[torch.Tensor]) -> torch.Tensor:
    """NASWOT kernel ``K_H = Σ_layers c cᵀ + (1−c)(1−c)ᵀ`` of binary ReLU codes (N, units): (N, N)."""
    n = codes[0].shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64, device=codes[0].device)
    for code in codes:
        c = code.flatten(1).float()  # (N, units); float32 sums of 0/1 are exact below 2**24
        r = c.sum(1, keepdim=True).double()  # (N, 1) active units per image
        # (1−c)(1−c)ᵀ = units − r 1ᵀ − 1 rᵀ + c cᵀ: one matmul instead of two
        kernel += 2 * (c @ c.T).double() - r - r.T + c.shape[1]
    return kernel


@register_proxy
class Nwot(Proxy):
    """NASWOT ``log |det K_H|`` (Mellor et al., ICML 2021) over every ``nn.ReLU``'s binary code.

    ``K_H[i, j]`` counts the units on which images i and j agree (N_A minus the Hamming
    distance of their codes); computed with ``slogdet``.
    """

    name = "nwot"

    def _score(self, student: nn.Module, batch: Batch, stats: Any) -> float:
        relus = [m for m in student.modules() if isinstance(m, _RELUS)]
        if not relus:
            raise ProxyError("nwot reads nn.ReLU modules and the candidate has none; use another proxy")
        n = batch[0].shape[0]
        kernel = torch.zeros(n, n, dtype=torch.float64, device=batch[0].device)

        def accumulate(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            kernel.add_(nwot_kernel([out > 0]))

        handles = [m.register_forward_hook(accumulate) for m in relus]
        try:
            with torch.no_grad():
                student(batch[0])
        finally:
            for h in handles:
                h.remove()
        return float(torch.linalg.slogdet(kernel)[1])


@register_proxy
class Zen(Proxy):
    """Zen-score (Lin et al., "Zen-NAS", ICCV 2021).

    ``log E‖f(x) − f(x + γ ε)‖₁ + Σ_BN log sqrt(mean_c σ_c²)`` with x, ε Gaussian of the
    batch's shape and f the pre-pooling feature map. σ² is the batch variance each BatchNorm
    sees on the clean pass (what the original reads, via running_var, after its forwards).

    Args:
        mixup_gamma: the perturbation size γ.
        gaussian_init: re-initialise a copy with N(0, 1) weights first, as the paper does, so
            the score depends on the architecture only.
    """

    name = "zen"

    def __init__(self, mixup_gamma: float = 1e-2, gaussian_init: bool = True) -> None:
        self.mixup_gamma, self.gaussian_init = float(mixup_gamma), bool(gaussian_init)

    def _score(self, student: nn.Module, batch: Batch, stats: Any) -> float:
        x = batch[0]
        net = _gaussian_copy(student) if self.gaussian_init else student
        feature = locate_parts(net, x).feature
        x1 = torch.randn_like(x)  # (N, C, H, W)
        x2 = x1 + self.mixup_gamma * torch.randn_like(x)  # (N, C, H, W)
        log_std: list[torch.Tensor] = []

        def bn_std(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            var = args[0].transpose(0, 1).flatten(1).var(1, unbiased=False)  # (C,)
            log_std.append(0.5 * torch.log(var.mean()))

        bns = [m for m in net.modules() if isinstance(m, _BatchNorm)]
        with torch.no_grad():
            handles = [m.register_forward_hook(bn_std) for m in bns]
            try:
                with FeatureTap(net, [feature]) as tap:
                    net(x1)
            finally:
                for h in handles:
                    h.remove()
            f1 = tap[feature].clone()  # (N, C', H', W')
            with FeatureTap(net, [feature]) as tap:
                net(x2)
            change = (f1 - tap[feature]).abs().flatten(1).sum(1).mean()
        return float(torch.log(change) + sum(log_std, torch.zeros((), device=x.device)))


def _gaussian_copy(model: nn.Module) -> nn.Module:
    """A copy with Zen-NAS's init: conv/linear N(0, 1), biases 0, BatchNorm γ=1, β=0."""
    net = copy.deepcopy(model)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (_ConvNd, nn.Linear)):
                m.weight.normal_()
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, _BatchNorm) and m.affine:
                m.weight.fill_(1.0)
                m.bias.zero_()
    return net
