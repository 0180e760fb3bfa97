"""Golden values of the feature and DisWOT losses against independent NumPy loops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kdsearch.distill.losses import LOSSES, LossInputs
from kdsearch.errors import TrainingError, UsageError

B = 5


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _inputs(fs: list[torch.Tensor], ft: list[torch.Tensor], s=None, t=None) -> LossInputs:
    s = torch.zeros(B, 3) if s is None else s
    t = torch.zeros(B, 3) if t is None else t
    return LossInputs(s, t, torch.zeros(len(s), dtype=torch.long), fs, ft)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.double().numpy()


def _block_mean(f: np.ndarray, h: int, w: int) -> np.ndarray:
    """Average-pool (B, C, H, W) to (B, C, h, w) for H, W multiples of h, w."""
    b, c, H, W = f.shape
    return f.reshape(b, c, h, H // h, w, W // w).mean(axis=(3, 5))


def _row_normalised_gram(f: np.ndarray) -> np.ndarray:
    flat = f.reshape(f.shape[0], -1)
    g = flat @ flat.T
    return g / np.linalg.norm(g, axis=1, keepdims=True)


@pytest.fixture()
def two_pairs() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    fs = [_randn(B, 4, 8, 8, seed=1), _randn(B, 6, 4, 4, seed=2)]
    ft = [_randn(B, 3, 4, 4, seed=3), _randn(B, 8, 4, 4, seed=4)]  # first pair: spatial mismatch
    return fs, ft


# -- at -------------------------------------------------------------------------------------


def test_at_matches_numpy(two_pairs):
    fs, ft = two_pairs
    total = 0.0
    for a, b in zip(fs, ft):
        a, b = _np(a), _np(b)
        a = _block_mean(a, *b.shape[2:]) if a.shape[2:] != b.shape[2:] else a
        qa, qb = (a**2).sum(axis=1).reshape(B, -1), (b**2).sum(axis=1).reshape(B, -1)
        qa /= np.linalg.norm(qa, axis=1, keepdims=True)
        qb /= np.linalg.norm(qb, axis=1, keepdims=True)
        total += np.mean((qa - qb) ** 2)
    got = float(LOSSES.get("at")()(_inputs(fs, ft)))
    assert got == pytest.approx(1000.0 / 2 * total, rel=1e-5)


def test_at_option_p_changes_the_map(two_pairs):
    fs, ft = two_pairs
    a = float(LOSSES.get("at")(p=2)(_inputs(fs, ft)))
    b = float(LOSSES.get("at")(p=4)(_inputs(fs, ft)))
    assert a != pytest.approx(b, rel=1e-3)


# -- sp -------------------------------------------------------------------------------------


def test_sp_matches_numpy(two_pairs):
    fs, ft = two_pairs
    total = 0.0
    for a, b in zip(fs, ft):
        diff = _row_normalised_gram(_np(a)) - _row_normalised_gram(_np(b))
        total += np.sum(diff**2) / B**2
    got = float(LOSSES.get("sp")(gamma=2.0)(_inputs(fs, ft)))
    assert got == pytest.approx(2.0 * total, rel=1e-5)


# -- rkd ------------------------------------------------------------------------------------


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def _rkd_reference(es: np.ndarray, et: np.ndarray, wd: float, wa: float) -> float:
    n = len(es)

    def distances(e):
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        return d / (d.sum() / (n * (n - 1)))

    def angles(e):
        a = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u, v = e[i] - e[j], e[k] - e[j]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    if nu > 0 and nv > 0:
                        a[j, i, k] = u @ v / (nu * nv)
        return a

    ds, dt = distances(es), distances(et)
    as_, at = angles(es), angles(et)
    dist = np.mean([_huber(x) for x in (ds - dt).ravel()])
    ang = np.mean([_huber(x) for x in (as_ - at).ravel()])
    return wd * dist + wa * ang


def test_rkd_matches_explicit_loops_on_the_last_pair(two_pairs):
    fs, ft = two_pairs
    es = _np(fs[-1]).mean(axis=(2, 3))
    et = _np(ft[-1]).mean(axis=(2, 3))
    expected = _rkd_reference(es, et, 25.0, 50.0)
    got = float(LOSSES.get("rkd")()(_inputs(fs, ft)))
    assert got == pytest.approx(expected, rel=1e-4)
    # the first pair does not matter
    other = [_randn(B, 4, 8, 8, seed=9), fs[1]]
    assert float(LOSSES.get("rkd")()(_inputs(other, ft))) == pytest.approx(got, rel=1e-6)


def test_rkd_is_zero_when_embeddings_are_a_scaled_rotation():
    e = _randn(B, 4, 1, 1, seed=5)
    q, _ = torch.linalg.qr(_randn(4, 4, seed=6))
    rotated = 3.0 * torch.einsum("bchw,dc->bdhw", e, q)
    assert float(LOSSES.get("rkd")()(_inputs([e], [rotated]))) == pytest.approx(0.0, abs=1e-5)


def test_rkd_rejects_a_batch_of_one():
    with pytest.raises(TrainingError, match="at least 2"):
        LOSSES.get("rkd")()(_inputs([_randn(1, 2, 2, 2, seed=1)], [_randn(1, 2, 2, 2, seed=2)], torch.zeros(1, 3)))


# -- fitnet ---------------------------------------------------------------------------------


def test_fitnet_with_identity_connector_is_mse_of_batch_normalised_student():
    fs = [_randn(B, 3, 4, 4, seed=1) * 2 + 1, _randn(B, 2, 8, 8, seed=2)]
    ft = [_randn(B, 3, 4, 4, seed=3), _randn(B, 2, 4, 4, seed=4)]
    loss = LOSSES.get("fitnet")()
    loss.setup([3, 2], [3, 2])
    with torch.no_grad():
        for connector in loss.connectors:
            c = connector[0].out_channels
            connector[0].weight.copy_(torch.eye(c).view(c, c, 1, 1))
    expected = 0.0
    for a, b in zip(fs, ft):
        a, b = _np(a), _np(b)
        a = _block_mean(a, *b.shape[2:]) if a.shape[2:] != b.shape[2:] else a
        mean = a.mean(axis=(0, 2, 3), keepdims=True)
        var = a.var(axis=(0, 2, 3), keepdims=True)  # BN normalises with the biased variance
        expected += np.mean(((a - mean) / np.sqrt(var + 1e-5) - b) ** 2)
    assert loss(_inputs(fs, ft)).item() == pytest.approx(expected, rel=1e-5)


def test_fitnet_connectors_map_channels_and_receive_gradients():
    fs = [_randn(B, 4, 8, 8, seed=1).requires_grad_()]
    ft = [_randn(B, 6, 8, 8, seed=2)]
    loss = LOSSES.get("fitnet")()
    loss.setup([4], [6])
    conv = loss.connectors[0][0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (4, 6, (1, 1))
    loss(_inputs(fs, ft)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())
    assert fs[0].grad.abs().sum() > 0


def test_fitnet_without_setup_says_to_call_it():
    with pytest.raises(TrainingError, match="setup"):
        LOSSES.get("fitnet")()(_inputs([_randn(B, 2, 4, 4, seed=1)], [_randn(B, 2, 4, 4, seed=2)]))


def test_fitnet_with_the_wrong_channels_says_so():
    loss = LOSSES.get("fitnet")()
    loss.setup([3], [2])
    with pytest.raises(TrainingError, match="channel"):
        loss(_inputs([_randn(B, 2, 4, 4, seed=1)], [_randn(B, 2, 4, 4, seed=2)]))


# -- diswot ---------------------------------------------------------------------------------


def test_diswot_relation_matches_numpy_on_the_last_pair_only(two_pairs):
    fs, ft = two_pairs
    diff = _row_normalised_gram(_np(fs[-1])) - _row_normalised_gram(_np(ft[-1]))
    got = float(LOSSES.get("diswot_relation")()(_inputs(fs, ft)))
    assert got == pytest.approx(np.sum(diff**2) / B**2, rel=1e-5)


def test_diswot_relation_zero_for_identical_and_invariant_to_channel_permutation_and_scale():
    fs, ft = _randn(B, 6, 4, 4, seed=1), _randn(B, 3, 2, 2, seed=2)
    relation = LOSSES.get("diswot_relation")()
    assert float(relation(_inputs([fs], [fs.clone()]))) == pytest.approx(0.0, abs=1e-7)
    base = float(relation(_inputs([fs], [ft])))
    assert base > 1e-4
    permuted = fs[:, torch.randperm(6, generator=torch.Generator().manual_seed(0))]
    assert float(relation(_inputs([permuted], [ft]))) == pytest.approx(base, rel=1e-5)
    assert float(relation(_inputs([7.0 * fs], [ft]))) == pytest.approx(base, rel=1e-5)


def test_diswot_semantic_matches_numpy_class_gram():
    s, t = _randn(B, 4, seed=1) * 3, _randn(B, 4, seed=2) * 3
    T = 2.0

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ps, pt = softmax(_np(s) / T), softmax(_np(t) / T)
    diff = _row_normalised_gram(ps.T) - _row_normalised_gram(pt.T)
    got = float(LOSSES.get("diswot_semantic")(temperature=T)(_inputs([], [], s, t)))
    assert got == pytest.approx(np.sum(diff**2) / 16, rel=1e-5)
    assert float(LOSSES.get("diswot_semantic")()(_inputs([], [], s, s.clone()))) == pytest.approx(0.0, abs=1e-7)


def test_diswot_is_the_weighted_sum_of_its_terms(two_pairs):
    fs, ft = two_pairs
    s, t = _randn(B, 4, seed=1), _randn(B, 4, seed=2)
    inputs = _inputs(fs, ft, s, t)
    sem = float(LOSSES.get("diswot_semantic")()(inputs))
    rel = float(LOSSES.get("diswot_relation")()(inputs))
    got = float(LOSSES.get("diswot")(semantic_weight=2.0, relation_weight=0.5)(inputs))
    assert got == pytest.approx(2.0 * sem + 0.5 * rel, rel=1e-5)


def test_feature_losses_without_features_say_what_to_do():
    with pytest.raises(UsageError, match="stage features"):
        LOSSES.get("sp")()(_inputs([], []))


def test_mismatched_pair_counts_fail_clearly(two_pairs):
    fs, ft = two_pairs
    with pytest.raises(TrainingError, match="same number"):
        LOSSES.get("at")()(_inputs(fs, ft[:1]))
