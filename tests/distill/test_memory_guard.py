"""The memory guard of the training engine: a step is measured on small batches before training;
a batch past ``--max-memory`` trains as micro-batches (the same weights), or the run stops first."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdsearch.data import load_dataset
from kdsearch.distill.config import TrainConfig
from kdsearch.distill.engine import Phases, build_criterion, fit
from kdsearch.errors import Interrupted, MemoryBudgetError, UsageError
from kdsearch.memory import CPU_SLACK, estimate_step_memory, measure_peak, parse_memory
from kdsearch.progress import Progress

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(fashion_npz):
    return load_dataset(f"npz:{fashion_npz}", subset=256, seed=0)


@pytest.fixture(autouse=True)
def nothing_held(monkeypatch):
    """The budgets below are set against one step's estimate (megabytes), so this process's resident set
    (pytest and torch, ≈ 0.5 GB) is not taken off them here; test_the_memory_the_process_holds_is_taken_off
    checks that it is."""
    import kdsearch.distill.engine as engine

    monkeypatch.setattr(engine, "resident_memory", lambda: 0)


class Notes(Progress):
    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


def _net_without_batchnorm() -> nn.Module:
    """BatchNorm would see the micro-batches, not the batch: the equality below needs a net without it."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def _fit(model: nn.Module, data, out, config: TrainConfig, progress: Progress | None = None):
    return fit(model, build_criterion(config), data, out, config, settings={"test": 1}, device=CPU,
               progress=progress or Progress())


@pytest.mark.parametrize("text,nbytes", [("6GB", 6 * 10**9), ("512MB", 512 * 10**6), ("1.5GiB", 3 * 2**29),
                                         ("2048", 2048), (" 64 kb ", 64_000)])
def test_memory_amounts_parse(text, nbytes):
    assert parse_memory(text) == nbytes


@pytest.mark.parametrize("text", ["lots", "6XB", "-1GB", "0GB", "", "GB", "1e9"])
def test_bad_memory_amounts_are_refused_with_the_flag_named(text):
    with pytest.raises(UsageError, match="--max-memory"):
        parse_memory(text)
    with pytest.raises(UsageError, match="--max-memory"):
        TrainConfig(max_memory=text)


def _conv_step(model: nn.Module):
    def step(batch: int) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        nn.functional.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long)).backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)

    return step


def test_the_estimate_grows_with_the_batch_and_matches_a_measured_step():
    step = _conv_step(_net_without_batchnorm())
    estimate = estimate_step_memory(step, CPU)
    assert estimate.per_image > 0 and estimate.at(8) < estimate.at(64) < estimate.at(256)
    with measure_peak(CPU) as peak:
        step(64)
    # extrapolated from 2 and 4 images, the live bytes at 64 are within 10% of the measured peak
    assert peak.nbytes > 0 and estimate.at(64) / CPU_SLACK == pytest.approx(peak.nbytes, rel=0.1)


def test_a_batch_past_the_budget_accumulates_to_the_same_weights(data, tmp_path):
    config = TrainConfig(epochs=1, batch_size=64, loss="ce", max_memory="100GB")
    whole = _net_without_batchnorm()
    first = _fit(whole, data, tmp_path / "whole", config)
    [entry] = first["history"]
    assert entry["micro_batch"] == 64 and entry["accumulation_steps"] == 1
    budget = int(0.6 * entry["memory_estimate_bytes"])  # between a micro-batch of 8 and the batch of 64

    notes = Notes()
    split = _net_without_batchnorm()
    second = _fit(split, data, tmp_path / "split", TrainConfig(epochs=1, batch_size=64, loss="ce",
                                                               max_memory=str(budget)), notes)
    [entry] = second["history"]
    assert 8 <= entry["micro_batch"] < 64 and entry["accumulation_steps"] >= 2
    assert entry["memory_budget_bytes"] == budget
    assert [n for n in notes.notes if "gradient accumulation" in n and "BatchNorm" in n]
    for (name, a), b in zip(whole.state_dict().items(), split.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    assert first["train_loss"]["ce"] == pytest.approx(second["train_loss"]["ce"], rel=1e-5)


def test_the_memory_the_process_holds_is_taken_off(data, tmp_path, monkeypatch):
    """--max-memory caps the process: what it holds before training (libraries, models, data) counts."""
    import kdsearch.distill.engine as engine

    config = TrainConfig(epochs=1, batch_size=64, loss="ce", max_memory="100GB")
    roomy = _fit(_net_without_batchnorm(), data, tmp_path / "roomy", config)
    step = roomy["history"][0]["memory_estimate_bytes"]
    held = 10**9
    monkeypatch.setattr(engine, "resident_memory", lambda: held)
    budget = held + int(0.6 * step)  # the batch of 64 fits the flag, not what the process leaves of it
    notes = Notes()
    result = _fit(_net_without_batchnorm(), data, tmp_path / "held",
                  TrainConfig(epochs=1, batch_size=64, loss="ce", max_memory=str(budget)), notes)
    [entry] = result["history"]
    assert entry["memory_budget_bytes"] == budget - held
    assert entry["micro_batch"] < 64 and entry["accumulation_steps"] >= 2
    assert [n for n in notes.notes if "what the process holds already" in n]

    monkeypatch.setattr(engine, "resident_memory", lambda: budget)  # nothing left: refused before training
    with pytest.raises(MemoryBudgetError, match="--max-memory"):
        _fit(_net_without_batchnorm(), data, tmp_path / "full", TrainConfig(epochs=1, batch_size=64, loss="ce",
                                                                             max_memory=str(budget)))
    assert not (tmp_path / "full").exists()


def test_a_budget_below_the_smallest_micro_batch_stops_before_writing(data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(MemoryBudgetError, match="--max-memory") as caught:
        _fit(_net_without_batchnorm(), data, out, TrainConfig(epochs=1, batch_size=64, loss="ce", max_memory="1kB"))
    assert "batch 64" in str(caught.value) and "\n" not in str(caught.value)
    assert not out.exists()


def test_distill_refuses_in_one_line_and_leaves_no_run_directory(tmp_path, fashion_npz, cli):
    from kdsearch.models.zoo import model_arch

    student = tmp_path / "student.json"
    student.write_text(json.dumps(model_arch("resnet8").to_dict()))
    out = tmp_path / "d"
    code, _, err = cli("distill", "--teacher", "resnet8", "--student", student, "--data", f"npz:{fashion_npz}",
                       "--subset", "256", "--out", out, "--epochs", "1", "--batch-size", "32", "--max-memory", "1kB",
                       "--quiet")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--max-memory" in lines[0] and "Traceback" not in err
    assert not out.exists()


class _StopAtSecondEpoch(Phases):
    def start_epoch(self, model: nn.Module, epoch: int) -> dict:
        if epoch == 1:
            raise KeyboardInterrupt
        return super().start_epoch(model, epoch)


def test_accumulating_runs_resume_to_the_same_weights(data, tmp_path):
    """With BatchNorm and micro-batches: stopped after epoch 1 and resumed equals uninterrupted, bit for bit."""
    from kdsearch.models.resnet_cifar import ResNetCifar

    def net() -> nn.Module:
        torch.manual_seed(0)
        return ResNetCifar([1, 1, 1], [8, 8, 8], num_classes=10, in_channels=1)

    probe = _fit(net(), data, tmp_path / "probe", TrainConfig(epochs=1, batch_size=64, loss="ce", max_memory="100GB"))
    budget = str(int(0.6 * probe["history"][0]["memory_estimate_bytes"]))
    config = TrainConfig(epochs=2, batch_size=64, loss="ce", max_memory=budget)
    whole = net()
    _fit(whole, data, tmp_path / "whole", config)
    with pytest.raises(Interrupted):
        fit(net(), build_criterion(config), data, tmp_path / "cut", config, phases=_StopAtSecondEpoch(),
            settings={"test": 1}, device=CPU)
    resumed = net()
    result = fit(resumed, build_criterion(config), data, tmp_path / "cut", config, settings={"test": 1}, device=CPU,
                 resume=True)
    assert all(h["accumulation_steps"] >= 2 for h in result["history"])
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def _resnet(width: int) -> nn.Module:
    from kdsearch.models.resnet_cifar import ResNetCifar

    torch.manual_seed(0)
    return ResNetCifar([1, 1, 1], [width] * 3, num_classes=10, in_channels=1)


def test_evaluation_is_sized_to_the_budget_not_run_at_eval_batch_size(data, tmp_path, monkeypatch):
    """A budget that holds the training step but not a forward pass of 512 images evaluates in smaller batches."""
    import kdsearch.distill.engine as engine
    from kdsearch.distill.engine import estimate_inference_memory

    batches: list[int] = []
    real = engine.predict_logits
    monkeypatch.setattr(engine, "predict_logits", lambda *a, **k: (batches.append(k["batch_size"]), real(*a, **k))[1])
    probe = _fit(_resnet(8), data, tmp_path / "probe", TrainConfig(epochs=1, batch_size=16, loss="ce",
                                                                   max_memory="100GB"))
    assert probe["history"][0]["eval_batch"] == 512 and batches == [512]
    need_512 = estimate_inference_memory(_resnet(8), data.val.images, data, CPU).at(512)
    budget = int(1.05 * probe["history"][0]["memory_estimate_bytes"])
    assert need_512 > budget  # the case this test is about: the step fits, evaluation at 512 would not

    batches.clear()
    notes = Notes()
    result = _fit(_resnet(8), data, tmp_path / "tight", TrainConfig(epochs=1, batch_size=16, loss="ce",
                                                                    max_memory=str(budget)), notes)
    [entry] = result["history"]
    assert entry["accumulation_steps"] == 1 and 1 <= entry["eval_batch"] < 512
    assert batches == [entry["eval_batch"]]
    assert estimate_inference_memory(_resnet(8), data.val.images, data, CPU).at(entry["eval_batch"]) <= budget
    assert [n for n in notes.notes if "evaluation at batch 512" in n and f"{entry['eval_batch']} images" in n]


def test_the_teacher_cache_is_counted_and_skipped_when_it_does_not_fit_beside_the_step(data, tmp_path):
    """--cache-teacher keeps logits and feature maps of every training image: sized first, live when too big."""
    from kdsearch.distill.engine import TeacherTargets, teacher_cache_bytes
    from kdsearch.distill.trainer import train

    config = TrainConfig(epochs=1, batch_size=64, loss="kd:1,ce:1,at:1", augment=False, cache_teacher=True,
                         max_memory="100GB")
    roomy = train(_resnet(8), data, tmp_path / "roomy", config, teacher=_resnet(16))
    [entry] = roomy["history"]
    assert entry["teacher_cache"] == "host"
    teacher = _resnet(16).eval()
    paths = ["layer2"]
    one_map = teacher_cache_bytes(teacher, paths, data.train, data, CPU)
    built = TeacherTargets.cached(teacher, paths, data.train, data, CPU, 64).cache
    assert built is not None and built.nbytes() == one_map  # the one-image estimate is exact
    cache = entry["teacher_cache_bytes"]
    assert cache > 4 * 10 * len(data.train)  # feature maps, not only the logits

    notes = Notes()
    tight = str(entry["memory_estimate_bytes"] + cache // 2)  # the step fits, the step and the cache do not
    result = train(_resnet(8), data, tmp_path / "tight", TrainConfig(**{**config.__dict__, "max_memory": tight}),
                   teacher=_resnet(16), progress=notes)
    [entry] = result["history"]
    assert entry["teacher_cache"] == "live" and entry["accumulation_steps"] == 1
    assert [n for n in notes.notes if "caching the teacher's outputs" in n and "live" in n]
    assert result["val_acc"] == pytest.approx(roomy["val_acc"], abs=0.02)  # the same training, teacher live
