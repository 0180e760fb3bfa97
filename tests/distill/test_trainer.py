"""The trainer: learns, checkpoints every epoch, resumes to identical weights, stops on NaN."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kdsearch.data import load_dataset
from kdsearch.distill.checkpoint import load_checkpoint
from kdsearch.distill.config import TrainConfig
from kdsearch.distill.trainer import train
from kdsearch.errors import TrainingError, UsageError
from kdsearch.models.resnet_cifar import ResNetCifar


@pytest.fixture(scope="module")
def data(fashion_npz):
    return load_dataset(f"npz:{fashion_npz}", subset=512, seed=0)


def _net(width: int = 8, seed: int = 0) -> ResNetCifar:
    torch.manual_seed(seed)
    return ResNetCifar([1, 1, 1], [width, width, 2 * width], num_classes=10, in_channels=1)


def test_training_learns_and_checkpoints(data, tmp_path):
    model = _net()
    config = TrainConfig(epochs=2, batch_size=64, loss="ce", lr=0.05)
    result = train(model, data, tmp_path, config)
    assert len(result["history"]) == 2
    assert result["history"][-1]["train_loss"]["ce"] < result["history"][0]["train_loss"]["ce"]
    assert result["val_acc"] > 0.2  # ten classes: chance is 0.1
    state = load_checkpoint(tmp_path / "last.ckpt")
    assert state["epoch"] == 2
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v)


def test_resume_gives_identical_weights(data, tmp_path):
    teacher = _net(width=16, seed=1).eval()
    config = TrainConfig(epochs=3, batch_size=64, loss="kd:1,ce:1", lr=0.05, seed=3)
    straight = _net()
    train(straight, data, tmp_path / "a", config, teacher=teacher)

    interrupted = _net()
    short = TrainConfig(**{**config.__dict__, "epochs": 3})
    # run the first epoch only by stopping after it: simulate with a progress hook that raises
    from kdsearch.progress import Progress

    class StopAfterFirst(Progress):
        def note(self, message: str) -> None:
            if message.startswith("epoch 1/"):
                raise KeyboardInterrupt

    from kdsearch.errors import Interrupted

    with pytest.raises(Interrupted):
        train(interrupted, data, tmp_path / "b", short, teacher=teacher, progress=StopAfterFirst())
    assert load_checkpoint(tmp_path / "b" / "last.ckpt")["epoch"] == 1
    resumed = _net(seed=99)  # different init: everything must come from the checkpoint
    train(resumed, data, tmp_path / "b", short, teacher=teacher, resume=True)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_run_stopped_inside_epochs_goes_on_to_identical_weights(data, tmp_path):
    """Stops at steps 5 and 11 (8 steps an epoch), each resumed: the weights, history, schedule and
    summed training loss of one straight run, augmentation included."""
    teacher = _net(width=16, seed=1).eval()
    config = TrainConfig(epochs=3, batch_size=64, loss="kd:1,ce:1", lr=0.05, seed=3, augment=True)
    straight = _net()
    whole = train(straight, data, tmp_path / "a", config, teacher=teacher)

    stopped = _net()
    reached = []
    for stop in (5, 11, None):
        result = train(stopped, data, tmp_path / "b", config, teacher=teacher, resume=True, stop_step=stop)
        reached.append(result["run_steps"])
        if stop == 5:
            state = load_checkpoint(tmp_path / "b" / "last.ckpt")
            assert (state["epoch"], state["step"]) == (0, 5) and state["history"] == []
            assert 0 <= result["val_acc"] <= 1
        stopped = _net(seed=99)  # everything must come from the checkpoint
    stopped_state = load_checkpoint(tmp_path / "b" / "last.ckpt")["model"]
    assert reached == [5, 11, whole["run_steps"]] == [5, 11, 24]
    assert result["train_loss_total"] == pytest.approx(whole["train_loss_total"], rel=1e-6)
    again = train(_net(seed=5), data, tmp_path / "b", config, teacher=teacher, resume=True, stop_step=11)
    assert again["run_steps"] == 24  # nothing left to train: the run as it stands, evaluated
    for k, v in straight.state_dict().items():
        assert torch.equal(stopped_state[k], v), k
    assert len(result["history"]) == 3
    assert result["history"][-1]["lr"] == whole["history"][-1]["lr"]


def test_learning_curves_keep_every_step_and_do_not_change_the_training(data, tmp_path):
    """curve_every 4: every step's loss terms, val top-1 at steps 4, 8, ..., through a stop and a
    resume; the weights are those of the same run without curves."""
    teacher = _net(width=16, seed=1).eval()
    config = TrainConfig(epochs=2, batch_size=64, loss="kd:1,ce:1", lr=0.05, seed=3)
    plain = _net()
    train(plain, data, tmp_path / "plain", config, teacher=teacher)
    curved = replace(config, curve_every=4)
    train(_net(), data, tmp_path / "curved", curved, teacher=teacher, stop_step=6)
    student = _net(seed=7)
    result = train(student, data, tmp_path / "curved", curved, teacher=teacher, resume=True)
    curve = result["curve"]
    assert [p["step"] for p in curve] == list(range(1, 17))
    assert all(set(p["loss"]) == {"kd", "ce"} for p in curve)
    assert [p["step"] for p in curve if "val_acc" in p] == [4, 8, 12, 16]
    assert curve[-1]["val_acc"] == pytest.approx(result["val_acc"])  # the last point is the final model
    for k, v in plain.state_dict().items():
        assert torch.equal(student.state_dict()[k], v), k


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(data, tmp_path):
    model = _net()
    train(model, data, tmp_path, TrainConfig(epochs=1, batch_size=64, loss="ce", lr=0.01))
    before = (tmp_path / "last.ckpt").read_bytes()
    # the diverging run writes to the same directory: its checkpoint must not replace the good one
    with pytest.raises(TrainingError, match="lower --lr"):
        train(_net(), data, tmp_path, TrainConfig(epochs=1, batch_size=64, loss="ce", lr=1e30, grad_clip=None))
    assert (tmp_path / "last.ckpt").read_bytes() == before


def test_kd_without_teacher_is_a_usage_error(data, tmp_path):
    with pytest.raises(UsageError, match="needs a teacher"):
        train(_net(), data, tmp_path, TrainConfig(epochs=1, loss="kd:1,ce:1"))


def test_cache_teacher_needs_deterministic_inputs(data, tmp_path):
    with pytest.raises(UsageError, match="--no-augment"):
        train(_net(), data, tmp_path, TrainConfig(epochs=1, cache_teacher=True), teacher=_net(16))


def test_cache_teacher_matches_live_teacher(data, tmp_path):
    teacher = _net(16, seed=1).eval()
    config = TrainConfig(epochs=1, batch_size=64, loss="kd:1,ce:1,at:1", augment=False, seed=1)
    live, cached = _net(), _net()
    train(live, data, tmp_path / "live", config, teacher=teacher)
    train(cached, data, tmp_path / "cached", TrainConfig(**{**config.__dict__, "cache_teacher": True}), teacher=teacher)
    for a, b in zip(live.state_dict().values(), cached.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def _teacher_images(teacher: torch.nn.Module) -> list[int]:
    """Images the teacher sees from now on, batch by batch."""
    seen: list[int] = []
    teacher.register_forward_hook(lambda module, args, out: seen.append(len(args[0])))
    return seen


def test_runs_from_one_teacher_over_one_training_set_pass_the_teacher_over_it_once(data, tmp_path):
    """A race trains each finalist rung by rung, a study one student after another: the cache is kept."""
    teacher = _net(16, seed=1).eval()
    seen = _teacher_images(teacher)
    config = TrainConfig(epochs=1, batch_size=64, loss="kd:1,ce:1", augment=False, seed=1, cache_teacher=True)
    first, second = _net(), _net()
    train(first, data, tmp_path / "first", config, teacher=teacher)
    assert sum(seen) >= len(data.train)
    seen.clear()
    train(second, data, tmp_path / "second", config, teacher=teacher)
    assert 0 < sum(seen) < len(data.train)  # its validation logits only
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_a_teacher_changed_in_place_is_passed_over_the_training_set_again(data, tmp_path):
    teacher = _net(16, seed=1).eval()
    config = TrainConfig(epochs=1, batch_size=64, loss="kd:1,ce:1", augment=False, seed=1, cache_teacher=True)
    train(_net(), data, tmp_path / "before", config, teacher=teacher)
    with torch.no_grad():
        next(teacher.parameters()).mul_(0.5)
    seen = _teacher_images(teacher)
    changed = _net()
    train(changed, data, tmp_path / "after", config, teacher=teacher)
    assert sum(seen) >= len(data.train)
    live = _net()
    train(live, data, tmp_path / "live", replace(config, cache_teacher=False), teacher=teacher)
    for a, b in zip(changed.state_dict().values(), live.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


@pytest.mark.parametrize("cache", [False, True])
def test_a_teacher_ending_in_softmax_distils_as_its_logits_do(data, tmp_path, cache):
    from kdsearch.errors import KdsearchWarning

    teacher = _net(16, seed=1).eval()
    softmaxed = torch.nn.Sequential(teacher, torch.nn.Softmax(dim=1)).eval()
    config = TrainConfig(epochs=1, batch_size=64, loss="kd:1", augment=False, seed=1, cache_teacher=cache)
    from_logits, from_probs = _net(), _net()
    train(from_logits, data, tmp_path / "logits", config, teacher=teacher)
    with pytest.warns(KdsearchWarning, match="probabilities"):
        train(from_probs, data, tmp_path / "probs", config, teacher=softmaxed)
    for a, b in zip(from_logits.state_dict().values(), from_probs.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-4)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"batch_size": -1}, {"lr": -0.1}, {"optimizer": "lion"}])
def test_bad_config_is_usage_error(bad):
    with pytest.raises(UsageError):
        TrainConfig(**bad)


def test_tiny_dataset_smaller_than_a_batch(data, tmp_path):

    with pytest.raises(UsageError, match="fewer than one batch"):
        train(_net(), data, tmp_path, TrainConfig(epochs=1, batch_size=100000, loss="ce"))


def test_checkpoint_refuses_pickled_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    bad = tmp_path / "last.ckpt"
    bad.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(TrainingError, match="not a loadable"):
        load_checkpoint(bad)
    assert not (tmp_path / "pwned").exists()


def test_a_warm_restart_starts_the_feature_adapters_where_they_were(data, tmp_path):
    """The race trains each rung as a new call from the last rung's checkpoint; the loss's
    adapters (fitnet's here) used to start again from a fresh initialisation at every rung."""
    teacher = _net(width=16, seed=1).eval()
    config = TrainConfig(epochs=1, batch_size=64, loss="kd:1,fitnet:1", lr=0.05, seed=3, augment=False)
    student = _net()
    train(student, data, tmp_path / "rung0", config, teacher=teacher)
    first = load_checkpoint(tmp_path / "rung0" / "last.ckpt")
    assert first["criterion"], "fitnet has adapters"
    still = TrainConfig(epochs=1, batch_size=64, loss="kd:1,fitnet:1", lr=1e-12, seed=4, augment=False)
    train(student, data, tmp_path / "rung1", still, teacher=teacher, criterion_state=first["criterion"])
    second = load_checkpoint(tmp_path / "rung1" / "last.ckpt")["criterion"]
    learned = [n for n in first["criterion"] if not n.rsplit(".", 1)[-1].startswith(("running_", "num_batches"))]
    assert learned  # (batch-norm statistics move without a learning rate; the weights do not)
    for name in learned:
        assert torch.allclose(second[name], first["criterion"][name], atol=1e-6), name


def test_a_distillation_under_curve_every_writes_its_learning_curve(cli, fashion_npz, tmp_path):
    from kdsearch.arch import Arch

    student, config = tmp_path / "student.json", tmp_path / "c.yaml"
    Arch("resnet_cifar", {"block": "basic", "depths": [1, 1, 1], "widths": [8, 8, 16]}).save(student)
    config.write_text("distill: {curve_every: 2, epochs: 1, batch_size: 16}\n")
    code, _, err = cli("distill", "--teacher", "resnet8", "--student", student, "--data", f"npz:{fashion_npz}",
                       "--subset", "64", "--config", config, "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    curve = json.loads((tmp_path / "run" / "distill" / "curve.json").read_text())
    assert curve["curve_every"] == 2 and curve["init"] == "inherit"
    assert [p["step"] for p in curve["steps"] if "val_acc" in p] == list(range(2, len(curve["steps"]) + 1, 2))
    code, _, err = cli("distill", "--teacher", "resnet8", "--student", student, "--data", f"npz:{fashion_npz}",
                       "--subset", "64", "--epochs", "1", "--batch-size", "16", "--out", tmp_path / "plain", "--quiet")
    assert code == 0, err
    assert not (tmp_path / "plain" / "distill" / "curve.json").exists()  # off unless asked
