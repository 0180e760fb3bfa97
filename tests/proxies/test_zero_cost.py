"""Classic zero-cost proxies against independent hand computations on tiny networks."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.errors import ProxyError
from kdsearch.proxies import create_proxy
from kdsearch.proxies.zero_cost import nwot_kernel


def _score(name: str, model: nn.Module, batch, **options) -> float:
    return create_proxy(name, **options).score(model, batch, None)


def _mlp(d: int = 6, h: int = 16, k: int = 4, bias: bool = True, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h, bias=bias), nn.ReLU(), nn.Linear(h, k, bias=bias))


def _vec_batch(n: int = 8, d: int = 6, k: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


def _conv_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    )


def _img_batch(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_synflow_of_two_linear_layers_is_log_2r() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7, bias=False), nn.Linear(7, 3, bias=False))
    w1 = net[0].weight.detach().double().abs().numpy()
    w2 = net[1].weight.detach().double().abs().numpy()
    r = np.ones(3) @ w2 @ w1 @ np.ones(5)  # R = 1ᵀ|W2||W1|1; Σθ⊙∂R/∂θ = R per layer
    before = copy.deepcopy(net.state_dict())
    assert _score("synflow", net, _vec_batch(d=5, k=3)) == pytest.approx(math.log(2 * r), rel=1e-12)
    for key, value in net.state_dict().items():  # signs and dtype restored: weights untouched
        assert torch.equal(value, before[key])


def test_synflow_ignores_batchnorm() -> None:
    with_bn = _conv_net(seed=1)
    without = nn.Sequential(*[m for m in copy.deepcopy(with_bn) if not isinstance(m, nn.BatchNorm2d)])
    with torch.no_grad():  # BN in the paper is removed, so its statistics must not matter
        with_bn[1].running_var.fill_(9.0)
        with_bn[1].weight.fill_(5.0)
    batch = _img_batch()
    assert _score("synflow", with_bn, batch) == pytest.approx(_score("synflow", without, batch), rel=1e-12)


def _hamming_kernel(codes: list[np.ndarray]) -> np.ndarray:
    n = codes[0].shape[0]
    k = np.zeros((n, n))
    for c in codes:
        for i in range(n):
            for j in range(n):
                k[i, j] += c.shape[1] - np.sum(c[i] != c[j])  # units where i and j agree
    return k


def test_nwot_kernel_of_hand_made_codes() -> None:
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 2, (5, 12)), rng.integers(0, 2, (5, 30))]
    kernel = nwot_kernel([torch.from_numpy(c).bool() for c in codes])
    np.testing.assert_allclose(kernel.numpy(), _hamming_kernel(codes))


def test_nwot_score_is_slogdet_of_relu_code_kernel() -> None:
    net = _mlp(h=32)
    x, y = _vec_batch()
    codes = (x @ net[0].weight.detach().T + net[0].bias.detach() > 0).numpy()  # (N, h)
    expected = np.linalg.slogdet(_hamming_kernel([codes]))[1]
    assert _score("nwot", net, (x, y)) == pytest.approx(expected, rel=1e-9)


def test_nwot_without_relu_fails_clearly() -> None:
    with pytest.raises(ProxyError, match="ReLU"):
        _score("nwot", nn.Sequential(nn.Linear(6, 4)), _vec_batch())


def _autograd_weight_grads(model: nn.Module, batch):
    model = copy.deepcopy(model).train()
    x, y = batch
    F.cross_entropy(model(x), y).backward()
    return [(m.weight.detach(), m.weight.grad) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_grad_norm_and_snip_match_backward() -> None:
    net, batch = _conv_net(seed=2), _img_batch()
    pairs = _autograd_weight_grads(net, batch)
    assert _score("grad_norm", net, batch) == pytest.approx(sum(float(g.norm()) for _, g in pairs), rel=1e-5)
    assert _score("snip", net, batch) == pytest.approx(sum(float((w * g).abs().sum()) for w, g in pairs), rel=1e-5)


def test_grasp_matches_explicit_hessian() -> None:
    net = _mlp(d=3, h=4, k=2, bias=False, seed=3)
    x, y = _vec_batch(d=3, k=2)
    shapes = [(4, 3), (2, 4)]
    theta = torch.cat([net[0].weight.detach().flatten(), net[2].weight.detach().flatten()]).double()

    def loss(flat: torch.Tensor) -> torch.Tensor:
        w1, w2 = flat[:12].view(shapes[0]), flat[12:].view(shapes[1])
        return F.cross_entropy(torch.relu(x.double() @ w1.T) @ w2.T, y)

    g = torch.autograd.functional.jacobian(loss, theta)
    h = torch.autograd.functional.hessian(loss, theta)
    expected = float(-(theta * (h @ g)).sum())
    assert expected != 0
    assert _score("grasp", net, (x, y)) == pytest.approx(expected, rel=1e-4)


def test_fisher_matches_hand_computation() -> None:
    net = _mlp(seed=4)
    x, y = _vec_batch()
    w1, b1, w2, b2 = (p.detach() for p in net.parameters())
    a1 = x @ w1.T + b1  # (N, h) first linear output
    a2 = torch.relu(a1) @ w2.T + b2  # (N, k) logits
    g2 = (torch.softmax(a2, 1) - F.one_hot(y, 4)) / x.shape[0]  # dL/da2
    g1 = (g2 @ w2) * (a1 > 0)  # dL/da1
    expected = float(sum(0.5 * (a * g).pow(2).mean(0).sum() for a, g in [(a1, g1), (a2, g2)]))
    assert _score("fisher", net, (x, y)) == pytest.approx(expected, rel=1e-5)


def test_jacov_matches_numpy_corrcoef() -> None:
    net = _conv_net(seed=5)
    x, y = _img_batch(n=5)
    work = copy.deepcopy(net).train()
    xi = x.clone().requires_grad_(True)
    work(xi).sum().backward()
    corr = np.corrcoef(xi.grad.reshape(5, -1).double().numpy())
    eig = np.linalg.eigvalsh(corr)
    expected = -np.sum(np.log(eig + 1e-5) + 1.0 / (eig + 1e-5))
    assert _score("jacov", net, (x, y)) == pytest.approx(expected, rel=1e-6)


class _ZenNet(nn.Module):
    feature_path = "features"

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.classifier = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def test_zen_matches_hand_computation_without_reinit() -> None:
    torch.manual_seed(6)
    net = _ZenNet()
    x, y = _img_batch()
    torch.manual_seed(0)  # the proxy draws x1, then ε, from the seed it is given
    x1 = torch.randn_like(x)
    x2 = x1 + 0.05 * torch.randn_like(x)
    conv = net.features[0]
    with torch.no_grad():
        pre = conv(x1)
        var = pre.var(dim=(0, 2, 3), unbiased=False)
        f1, f2 = net.features(x1), net.features(x2)
    expected = math.log(float((f1 - f2).abs().sum((1, 2, 3)).mean())) + 0.5 * math.log(float(var.mean()))
    score = create_proxy("zen", mixup_gamma=0.05, gaussian_init=False).score(net, (x, y), None, seed=0)
    assert score == pytest.approx(expected, rel=1e-5)


def test_zen_reinit_leaves_candidate_alone_and_ignores_its_weights() -> None:
    net, batch = _conv_net(seed=7), _img_batch()
    before = copy.deepcopy(net.state_dict())
    first = _score("zen", net, batch)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    with torch.no_grad():
        net[0].weight.mul_(3.0)  # the copy is re-initialised, so the candidate's scale is irrelevant
    assert _score("zen", net, batch) == pytest.approx(first, rel=1e-6)
