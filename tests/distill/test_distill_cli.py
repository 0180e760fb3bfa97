"""`kdsearch distill` trainer flags reach the run configuration and the training."""
from __future__ import annotations

import json

import pytest
import yaml

from kdsearch.arch import Arch


@pytest.fixture()
def student(tmp_path):
    path = tmp_path / "student.json"
    Arch("resnet_cifar", {"block": "basic", "depths": [1, 1, 1], "widths": [8, 8, 16]}).save(path)
    return path


@pytest.mark.slow
def test_trainer_flags_reach_run_yaml_and_metrics(cli, fashion_npz, student, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli(
        "distill", "--teacher", "resnet8", "--student", student, "--data", f"npz:{fashion_npz}", "--subset", "128",
        "--out", out, "--epochs", "1", "--batch-size", "32", "--loss", "kd:1,ce:1", "--optimizer", "adamw",
        "--schedule", "onecycle", "--warmup-epochs", "0.5", "--grad-clip", "0", "--weight-decay", "0.01",
        "--label-smoothing", "0.1", "--temperature-schedule", "dts", "--loss-option", "kd.temperature=2",
        "--loss-option", "ce.label_smoothing=0.2", "--no-compile", "--quiet", "--json",
    )
    assert code == 0, err
    d = yaml.safe_load((out / "run.yaml").read_text())["distill"]
    assert (d["optimizer"], d["schedule"], d["warmup_epochs"], d["grad_clip"], d["weight_decay"]) == (
        "adamw", "onecycle", 0.5, 0.0, 0.01)
    assert d["label_smoothing"] == 0.1 and d["temperature_schedule"] == "dts" and d["compile"] is False
    assert d["loss_options"] == ["kd.temperature=2", "ce.label_smoothing=0.2"]
    metrics = json.loads((out / "distill" / "metrics.json").read_text())
    h = metrics["history"][0]
    assert set(h["train_loss"]) == {"kd", "ce"}
    assert {"val_acc", "val_top5", "agreement", "images_per_s", "temperature"} <= set(h)
    assert h["temperature"] != 4.0  # DTS moved it
    assert (out / "distill" / "curves.png").stat().st_size > 1000
    assert json.loads(stdout)["val_acc"] == metrics["val_acc"]


@pytest.mark.parametrize("flags,message", [
    (["--loss-option", "kd.temperature"], "NAME.KEY=VALUE"),
    (["--loss-option", "dkd.beta=2"], "not in --loss"),
    (["--label-smoothing", "1.5"], "label-smoothing"),
    (["--optimizer", "lion"], "sgd or adamw"),
    (["--temperature-schedule", "cyclic"], "fixed or dts"),
])
def test_bad_trainer_flags_exit_2_with_a_fix(cli, fashion_npz, student, tmp_path, flags, message):
    code, _, err = cli("distill", "--teacher", "resnet8", "--student", student, "--data", f"npz:{fashion_npz}",
                       "--subset", "64", "--out", tmp_path / "bad", "--epochs", "1", "--batch-size", "32",
                       "--loss", "kd:1,ce:1", "--quiet", *flags)
    assert code == 2, err
    assert message in err
