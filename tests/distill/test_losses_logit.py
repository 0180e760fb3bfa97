"""Golden values of the logit losses against independent NumPy re-implementations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kdsearch.distill.losses import LOSSES, LossInputs
from kdsearch.errors import UsageError

B, K = 6, 5


@pytest.fixture()
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(B, K, generator=g) * 2
    t = torch.randn(B, K, generator=g) * 3
    labels = torch.tensor([0, 1, 2, 3, 4, 1])
    return s, t, labels


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


def _value(name: str, s, t, labels, scheduled_T=None, **options) -> float:
    loss = LOSSES.get(name)(**options)
    return float(loss(LossInputs(s, t, labels, [], [], temperature=scheduled_T)))


def _np(x: torch.Tensor) -> np.ndarray:
    return x.double().numpy()


def _kd_reference(s, t, T) -> float:
    ps, pt = _softmax(_np(s) / T), _softmax(_np(t) / T)
    return T * T * sum(_kl(pt[b], ps[b]) for b in range(len(ps))) / len(ps)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_matches_manual_kl(logits, T):
    s, t, labels = logits
    assert _value("kd", s, t, labels, temperature=T) == pytest.approx(
        _kd_reference(s, t, T), rel=1e-5
    )


def test_kd_option_and_schedule_temperature_agree(logits):
    s, t, labels = logits
    expected = _kd_reference(s, t, 2.0)
    assert _value("kd", s, t, labels, temperature=2.0) == pytest.approx(expected, rel=1e-5)
    assert _value("kd", s, t, labels, scheduled_T=2.0) == pytest.approx(expected, rel=1e-5)
    # the schedule overrides the option
    assert _value("kd", s, t, labels, scheduled_T=2.0, temperature=8.0) == pytest.approx(expected, rel=1e-5)
    assert _value("kd", s, t, labels) != pytest.approx(expected, rel=1e-3)


def test_kd_is_zero_for_identical_logits(logits):
    s, _, labels = logits
    assert _value("kd", s, s.clone(), labels) == pytest.approx(0.0, abs=1e-6)


def _dkd_reference(s, t, labels, alpha, beta, T) -> float:
    """DKD straight from the paper: TCKD on (p_gt, 1 - p_gt), NCKD on the renormalised others."""
    zs, zt = _np(s) / T, _np(t) / T
    total = 0.0
    for b, y in enumerate(labels.tolist()):
        ps, pt = _softmax(zs[b]), _softmax(zt[b])
        bs = np.array([ps[y], 1 - ps[y]])
        bt = np.array([pt[y], 1 - pt[y]])
        others = [k for k in range(len(ps)) if k != y]
        hs = np.exp(zs[b, others]) / np.exp(zs[b, others]).sum()
        ht = np.exp(zt[b, others]) / np.exp(zt[b, others]).sum()
        # the paper's identity KD = TCKD + (1 - p_t) NCKD checks the reference itself
        assert _kl(pt, ps) == pytest.approx(_kl(bt, bs) + (1 - pt[y]) * _kl(ht, hs), rel=1e-9)
        total += alpha * _kl(bt, bs) + beta * _kl(ht, hs)
    return T * T * total / len(labels)


@pytest.mark.parametrize("alpha,beta,T", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (1.0, 0.0, 2.0)])
def test_dkd_matches_paper_formula(logits, alpha, beta, T):
    s, t, labels = logits
    got = _value("dkd", s, t, labels, alpha=alpha, beta=beta, temperature=T)
    assert got == pytest.approx(_dkd_reference(s, t, labels, alpha, beta, T), rel=1e-5)


def test_dkd_stays_finite_when_the_target_probability_saturates():
    s = torch.tensor([[60.0, -60.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[80.0, -50.0, 1.0], [1.0, 2.0, 3.0]])
    loss = LOSSES.get("dkd")(temperature=1.0)(LossInputs(s, t, torch.tensor([0, 2]), [], []))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("beta,gamma,T", [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)])
def test_dist_matches_numpy_pearson(logits, beta, gamma, T):
    s, t, labels = logits
    ys, yt = _softmax(_np(s) / T), _softmax(_np(t) / T)
    inter = 1 - np.mean([_pearson(ys[b], yt[b]) for b in range(B)])
    intra = 1 - np.mean([_pearson(ys[:, k], yt[:, k]) for k in range(K)])
    expected = T * T * (beta * inter + gamma * intra)
    got = _value("dist", s, t, labels, beta=beta, gamma=gamma, temperature=T)
    assert got == pytest.approx(expected, rel=1e-4)


def test_dist_is_zero_for_identical_logits(logits):
    s, _, labels = logits
    assert _value("dist", s, s.clone(), labels) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_ce_with_label_smoothing_matches_manual(logits, eps):
    s, t, labels = logits
    log_p = np.log(_softmax(_np(s)))
    q = np.full((B, K), eps / K)
    q[np.arange(B), labels.numpy()] += 1 - eps
    expected = float(-(q * log_p).sum(axis=1).mean())
    assert _value("ce", s, None, labels, label_smoothing=eps) == pytest.approx(expected, rel=1e-5)


def test_ce_needs_no_teacher_but_kd_does(logits):
    s, _, labels = logits
    assert not LOSSES.get("ce").uses_teacher
    with pytest.raises(UsageError, match="needs a teacher"):
        _value("kd", s, None, labels)


@pytest.mark.parametrize(
    "name,options",
    [
        ("kd", {"temperature": 0}),
        ("kd", {"temperature": "hot"}),
        ("dkd", {"beta": -1}),
        ("dist", {"temperature": float("nan")}),
        ("ce", {"label_smoothing": 1.0}),
        ("ce", {"label_smoothing": True}),
    ],
)
def test_bad_option_values_are_usage_errors_naming_the_options(name, options):
    with pytest.raises(UsageError, match="its options are"):
        LOSSES.get(name)(**options)


def test_numeric_strings_are_accepted_as_options(logits):
    s, t, labels = logits
    assert _value("kd", s, t, labels, **{"temperature": "2"}) == pytest.approx(
        _kd_reference(s, t, 2.0), rel=1e-5
    )
