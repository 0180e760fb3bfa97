"""Contract suite: every registered distillation loss passes the same checks."""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from kdsearch.distill.losses import LOSSES, DistillLoss, LossInputs
from kdsearch.errors import UsageError

B, K = 6, 5
STUDENT_SHAPES = [(4, 8, 8), (8, 4, 4)]  # (C, H, W) per stage
TEACHER_SHAPES = [(6, 4, 4), (12, 2, 2)]  # other channels and spatial sizes


def _inputs(seed: int = 0, dtype: torch.dtype = torch.float32) -> LossInputs:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, K, generator=g).to(dtype).requires_grad_()
    t = torch.randn(B, K, generator=g).to(dtype).requires_grad_()
    fs = [torch.randn(B, *shape, generator=g).to(dtype).requires_grad_() for shape in STUDENT_SHAPES]
    ft = [torch.randn(B, *shape, generator=g).to(dtype).requires_grad_() for shape in TEACHER_SHAPES]
    return LossInputs(s, t, torch.randint(0, K, (B,), generator=g), fs, ft)


def _built(name: str) -> DistillLoss:
    loss = LOSSES.get(name)()
    loss.setup([c for c, _, _ in STUDENT_SHAPES], [c for c, _, _ in TEACHER_SHAPES])
    return loss


@pytest.fixture(params=LOSSES.names())
def name(request) -> str:
    return request.param


def test_is_a_documented_distill_loss(name):
    cls = LOSSES.get(name)
    assert issubclass(cls, DistillLoss) and cls.name == name
    assert cls.__doc__ and re.search(r"L(_i)?\s*=|·", cls.__doc__), f"{name} must state its formula"
    for field in dataclasses.fields(cls.Options):
        assert field.default is not dataclasses.MISSING, f"{name}.{field.name} needs a default"


def test_cites_its_paper_and_lists_its_options(name):
    cls = LOSSES.get(name)
    assert cls.paper.strip() and re.search(r"\b(19|20)\d\d\b", cls.paper), f"{name} must cite its paper with a year"
    listed = cls.option_info()
    assert [o["name"] for o in listed] == [f.name for f in dataclasses.fields(cls.Options)]
    defaults = dataclasses.asdict(cls.Options())
    for o in listed:
        assert o["default"] == defaults[o["name"]]
        assert o["meaning"].strip(), f"{name}.{o['name']} must say what it means (declare it with option())"


def test_finite_scalar_with_finite_student_grads_and_none_for_the_teacher(name):
    loss = _built(name)
    inputs = _inputs()
    value = loss(inputs)
    assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    student = [inputs.student_logits, *inputs.student_feats]
    grads = [x.grad for x in student if x.grad is not None]
    assert grads, f"{name} gave no gradient to any student tensor"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    teacher = [inputs.teacher_logits, *inputs.teacher_feats]
    assert all(x.grad is None for x in teacher), f"{name} backpropagated into the teacher"
    for p in loss.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_is_deterministic(name):
    a, b = _built(name), _built(name)
    b.load_state_dict(a.state_dict())
    assert a(_inputs(seed=3)).item() == pytest.approx(b(_inputs(seed=3)).item(), rel=1e-6)


def test_low_precision_inputs_give_a_finite_float32_value(name):
    value = _built(name)(_inputs(dtype=torch.bfloat16))
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_declares_what_it_reads(name):
    loss = _built(name)
    inputs = _inputs()
    if not loss.uses_teacher:
        inputs.teacher_logits, inputs.teacher_feats = None, []
    if not loss.uses_features:
        inputs.student_feats, inputs.teacher_feats = [], []
    assert torch.isfinite(loss(inputs))


def test_missing_teacher_or_features_is_a_usage_error(name):
    loss = _built(name)
    inputs = _inputs()
    if loss.uses_features:
        inputs.student_feats, inputs.teacher_feats = [], []
    elif loss.uses_teacher:
        inputs.teacher_logits = None
    else:
        pytest.skip(f"{name} needs neither teacher nor features")
    with pytest.raises(UsageError):
        loss(inputs)


def test_unknown_option_is_a_usage_error_listing_the_options(name):
    with pytest.raises(UsageError, match=name):
        LOSSES.get(name)(no_such_option=1)


def test_non_numeric_option_is_a_usage_error(name):
    fields = dataclasses.fields(LOSSES.get(name).Options)
    if not fields:
        pytest.skip(f"{name} takes no options")
    for field in fields:
        with pytest.raises(UsageError, match=field.name):
            LOSSES.get(name)(**{field.name: "not-a-number"})
