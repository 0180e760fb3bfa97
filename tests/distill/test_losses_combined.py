"""parse_loss_spec and CombinedLoss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kdsearch.distill.losses import CombinedLoss, LossInputs, parse_loss_spec
from kdsearch.errors import UsageError

B, K = 4, 3


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("kd:1,ce:1,fitnet:0.5", [("kd", 1.0), ("ce", 1.0), ("fitnet", 0.5)]),
        ("kd", [("kd", 1.0)]),
        (" kd : 2 , ce ", [("kd", 2.0), ("ce", 1.0)]),
        ("ce:1e-1,dkd:0", [("ce", 0.1), ("dkd", 0.0)]),
    ],
)
def test_parse_good_specs(spec, expected):
    assert parse_loss_spec(spec) == expected


@pytest.mark.parametrize(
    "spec,message",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("kd,,ce", "empty item"),
        ("kd:abc", "not a number"),
        ("kd:1:2", "not a number"),
        ("kd:-1", ">= 0"),
        ("kd:nan", ">= 0"),
        ("kd:inf", ">= 0"),
        (":1", "no loss name"),
        ("kdd:1", "Did you mean 'kd'"),
        ("kd,ce,kd:2", "appears twice"),
        ("kd:0,ce:0", "is 0"),
    ],
)
def test_parse_bad_specs(spec, message):
    with pytest.raises(UsageError, match=message):
        parse_loss_spec(spec)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture()
def inputs() -> LossInputs:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(B, K, generator=g), torch.randn(B, K, generator=g)
    fs = [torch.randn(B, 4, 4, 4, generator=g)]
    ft = [torch.randn(B, 6, 2, 2, generator=g)]
    return LossInputs(s, t, torch.tensor([0, 1, 2, 1]), fs, ft)


def test_total_and_parts_match_independent_kd_and_ce(inputs):
    zs, zt = inputs.student_logits.double().numpy(), inputs.teacher_logits.double().numpy()
    T = 2.0
    ps, pt = _softmax(zs / T), _softmax(zt / T)
    kd = T * T * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))
    ce = -np.mean(np.log(_softmax(zs))[np.arange(B), inputs.labels.numpy()])
    loss = CombinedLoss("kd:0.7,ce:2", options={"kd": {"temperature": T}})
    total, parts = loss(inputs)
    assert parts == pytest.approx({"kd": 0.7 * kd, "ce": 2 * ce}, rel=1e-5)
    assert total.item() == pytest.approx(0.7 * kd + 2 * ce, rel=1e-5)
    assert total.dim() == 0 and all(isinstance(v, float) for v in parts.values())


def test_list_spec_flags_and_connectors(inputs):
    loss = CombinedLoss([("ce", 1.0), ("fitnet", 0.5)])
    assert loss.uses_features is True and loss.uses_teacher is True  # fitnet reads teacher features
    assert CombinedLoss("ce").uses_teacher is False and CombinedLoss("ce").uses_features is False
    assert list(loss.parameters()) == []
    loss.setup([4], [6])
    n_params = sum(p.numel() for p in loss.parameters())
    assert n_params == 4 * 6 + 2 * 6  # 1x1 conv without bias + BN affine
    student = inputs.student_feats[0].clone().requires_grad_()
    total, parts = loss(LossInputs(inputs.student_logits, None, inputs.labels, [student], inputs.teacher_feats))
    total.backward()
    assert set(parts) == {"ce", "fitnet"} and student.grad is not None


def test_options_for_a_loss_outside_the_spec_are_rejected():
    with pytest.raises(UsageError, match="not in the loss spec"):
        CombinedLoss("ce", options={"kd": {"temperature": 2}})


def test_unknown_option_names_the_known_ones():
    with pytest.raises(UsageError, match="temperature"):
        CombinedLoss("kd", options={"kd": {"T": 2}})


@pytest.mark.parametrize("spec", [[], [("kd", -1.0)], [("kd", 1.0), ("kd", 2.0)], [("nope", 1.0)]])
def test_bad_list_specs(spec):
    with pytest.raises(UsageError):
        CombinedLoss(spec)
