"""Trainer options: loss options, label smoothing, weight decay groups, schedules, DTS, metrics."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdsearch.data import load_dataset
from kdsearch.distill.losses import CombinedLoss
from kdsearch.distill.config import TrainConfig, loss_options_for, parse_loss_options
from kdsearch.distill.engine import dts_temperature, epoch_batches, param_groups
from kdsearch.distill.trainer import train
from kdsearch.errors import UsageError
from kdsearch.models.resnet_cifar import ResNetCifar


@pytest.fixture(scope="module")
def data(fashion_npz):
    return load_dataset(f"npz:{fashion_npz}", subset=256, seed=0)


def _net(width: int = 8, seed: int = 0) -> ResNetCifar:
    torch.manual_seed(seed)
    return ResNetCifar([1, 1, 1], [width, width, 2 * width], num_classes=10, in_channels=1)


# -- loss options --------------------------------------------------------------------------


def test_parse_loss_options_groups_by_loss():
    assert parse_loss_options(["dkd.beta=2", "dkd.alpha = 0.5", "kd.temperature=3"]) == {
        "dkd": {"beta": "2", "alpha": "0.5"},
        "kd": {"temperature": "3"},
    }


@pytest.mark.parametrize("bad", ["dkd.beta", "beta=2", "dkd.=2", ".beta=2", "dkd.beta="])
def test_malformed_loss_option_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="NAME.KEY=VALUE"):
        TrainConfig(loss_options=(bad,))


def test_loss_options_reach_the_losses():
    config = TrainConfig(loss="kd:1,ce:1,dkd:1", temperature=3.0, label_smoothing=0.2,
                         loss_options=("dkd.beta=2", "kd.temperature=5"))
    options = loss_options_for(config, ["kd", "ce", "dkd"])
    criterion = CombinedLoss(config.loss, options)
    assert criterion.terms["kd"].opts.temperature == 5.0  # --loss-option wins over --temperature
    assert criterion.terms["dkd"].opts.temperature == 3.0
    assert criterion.terms["dkd"].opts.beta == 2.0
    assert criterion.terms["ce"].opts.label_smoothing == 0.2


def test_label_smoothing_needs_ce_and_options_need_their_loss():
    with pytest.raises(UsageError, match="add ce"):
        TrainConfig(loss="kd", label_smoothing=0.1)
    with pytest.raises(UsageError, match="not in --loss"):
        TrainConfig(loss="kd", loss_options=("dkd.beta=2",))
    with pytest.raises(UsageError, match="has no option"):
        TrainConfig(loss="kd", loss_options=("kd.gamma=2",))


@pytest.mark.parametrize("bad", [{"label_smoothing": 1.0}, {"weight_decay": -1.0}, {"grad_clip": -1.0},
                                 {"schedule": "step"}, {"temperature_schedule": "linear"}])
def test_bad_options_are_usage_errors(bad):
    with pytest.raises(UsageError):
        TrainConfig(**bad)


def test_label_smoothing_changes_the_ce_term(data, tmp_path):
    """The logged ce term equals an independent label-smoothed cross entropy of the same logits."""
    eps = 0.3
    logits = torch.randn(16, 10)
    y = torch.randint(0, 10, (16,))
    q = torch.full((16, 10), eps / 10) + (1 - eps) * nn.functional.one_hot(y, 10)
    expected = -(q * logits.log_softmax(1)).sum(1).mean()
    from kdsearch.distill.losses import LossInputs

    criterion = CombinedLoss("ce", loss_options_for(TrainConfig(loss="ce", label_smoothing=eps), ["ce"]))
    total, _ = criterion(LossInputs(logits, None, y))
    assert torch.allclose(total, expected, atol=1e-6)


# -- weight decay ----------------------------------------------------------------------------


def test_weight_decay_skips_norms_and_biases():
    model = _net()
    groups = param_groups([model], 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    free = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
            if is_norm or name == "bias":
                assert id(p) in free, (type(module).__name__, name)
            else:
                assert id(p) in decayed, (type(module).__name__, name)


def test_weight_decay_does_not_shrink_batchnorm_in_training(data, tmp_path):
    """With lr>0 and a huge decay, decayed weights shrink; BN scales would too if they were decayed."""
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, data, tmp_path, TrainConfig(epochs=1, batch_size=64, loss="ce", lr=0.05, weight_decay=5.0,
                                            grad_clip=None, warmup_epochs=0))
    conv = model.state_dict()
    w_key = next(k for k in conv if k.endswith("conv1.weight") or (k.endswith("weight") and conv[k].ndim == 4))
    assert conv[w_key].norm() < 0.5 * before[w_key].norm()  # decayed hard
    bn_keys = [k for k in conv if k.endswith(".weight") and conv[k].ndim == 1]
    assert bn_keys
    for k in bn_keys:  # BN γ start at 1; without decay they stay of order 1
        assert conv[k].abs().mean() > 0.5, k


# -- schedules and optimizers --------------------------------------------------------------


@pytest.mark.parametrize("optimizer,schedule", [("adamw", "onecycle"), ("sgd", "cosine")])
def test_optimizers_and_schedules_train(data, tmp_path, optimizer, schedule):
    config = TrainConfig(epochs=2, batch_size=64, loss="ce", optimizer=optimizer, schedule=schedule, warmup_epochs=0.5)
    result = train(_net(), data, tmp_path, config)
    h = result["history"]
    assert h[-1]["train_loss"]["ce"] < h[0]["train_loss"]["ce"]
    peak = config.resolved_lr
    if schedule == "cosine":  # cosine ends at 0
        assert h[-1]["lr"] == pytest.approx(0.0, abs=1e-9)
    else:  # onecycle ends far below its peak
        assert h[-1]["lr"] < peak / 10


# -- DTS -------------------------------------------------------------------------------------


def test_dts_moves_towards_base_times_one_plus_tanh_gap():
    base = 4.0
    assert dts_temperature(base, 0.0, base) == pytest.approx(base)  # no gap: stays
    up = dts_temperature(base, 2.0, base)
    down = dts_temperature(base, -2.0, base)
    assert up == pytest.approx(0.9 * base + 0.1 * base * (1 + math.tanh(2.0)))
    assert down == pytest.approx(0.9 * base + 0.1 * base * (1 + math.tanh(-2.0)))
    assert down < base < up
    t = base
    for _ in range(500):  # the fixed point under a constant gap is the target, inside (0, 2·base)
        t = dts_temperature(t, 1.0, base)
    assert t == pytest.approx(base * (1 + math.tanh(1.0)), rel=1e-6)


def _scaled_classifier(model: ResNetCifar, factor: float) -> ResNetCifar:
    with torch.no_grad():
        model.classifier.weight.mul_(factor)
        model.classifier.bias.mul_(factor)
    return model


@pytest.mark.parametrize("student_scale,teacher_scale,direction", [(100.0, 1.0, 1), (1.0, 100.0, -1)])
def test_dts_in_training_follows_the_gap(data, tmp_path, student_scale, teacher_scale, direction):
    """A student far worse than the teacher (huge wrong logits) heats T; a far better one cools it."""
    student = _scaled_classifier(_net(seed=0), student_scale)
    teacher = _scaled_classifier(_net(seed=1), teacher_scale).eval()
    config = TrainConfig(epochs=1, batch_size=64, loss="kd:1,ce:1", lr=1e-4, temperature_schedule="dts", temperature=4.0)
    result = train(student, data, tmp_path, config, teacher=teacher)
    assert (result["temperature"] - 4.0) * direction > 0.1
    fixed = train(_scaled_classifier(_net(seed=0), student_scale), data, tmp_path / "f",
                  TrainConfig(**{**config.__dict__, "temperature_schedule": "fixed"}), teacher=teacher)
    assert fixed["temperature"] == 4.0


# -- per-epoch metrics -----------------------------------------------------------------------


def test_epoch_metrics_are_complete_and_right(data, tmp_path):
    from kdsearch.distill.evaluate import predict_logits

    teacher = _net(16, seed=1).eval()
    student = _net()
    result = train(student, data, tmp_path, TrainConfig(epochs=1, batch_size=64, loss="kd:1,ce:1,at:2"), teacher=teacher)
    h = result["history"][0]
    assert set(h["train_loss"]) == {"kd", "ce", "at"}
    assert h["images_per_s"] > 0 and h["train_images"] == (len(data.train) // 64) * 64
    s = predict_logits(student, data.val.images, data.mean, data.std)
    t = predict_logits(teacher, data.val.images, data.mean, data.std)
    y = data.val.labels
    assert h["val_acc"] == pytest.approx((s.argmax(1) == y).float().mean().item())
    top5 = (s.topk(5, 1).indices == y[:, None]).any(1).float().mean().item()
    assert h["val_top5"] == pytest.approx(top5)
    assert h["agreement"] == pytest.approx((s.argmax(1) == t.argmax(1)).float().mean().item())


def test_epoch_shards_are_disjoint_and_cover_equal_halves():
    g = [torch.Generator().manual_seed(5) for _ in range(2)]
    shards = [torch.cat(list(epoch_batches(103, 10, g[r], r, 2))) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 50  # 51 per rank, full batches only
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert g[0].get_state().equal(g[1].get_state())  # ranks stay in lockstep
