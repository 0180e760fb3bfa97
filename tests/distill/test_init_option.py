"""``--init random|inherit|auto``: how a distilled student starts, refused or fallen back in one line."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from kdsearch.arch import Arch
from kdsearch.errors import UsageError
from kdsearch.models.resnet_cifar import ResNetCifar

VIT = {"patch_size": 4, "depth": 1, "heads": 1, "embed_dim": 48, "mlp_ratio": 1.0}


@pytest.fixture()
def archs(tmp_path):
    resnet, vit = tmp_path / "resnet.json", tmp_path / "vit.json"
    Arch("resnet_cifar", {"block": "basic", "depths": [1, 1, 1], "widths": [8, 8, 16]}).save(resnet)
    Arch("vit", VIT).save(vit)
    return {"resnet": resnet, "vit": vit}


@pytest.fixture()
def torchscript_teacher(tmp_path):
    path = tmp_path / "teacher.pt"
    model = ResNetCifar([1, 1, 1], [8, 8, 16], in_channels=1).eval()
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 1, 28, 28)), str(path))
    return path


def _distill(cli, fashion_npz, teacher, student, out, *flags):
    return cli("distill", "--teacher", teacher, "--student", student, "--data", f"npz:{fashion_npz}", "--subset", "64",
               "--out", out, "--epochs", "1", "--batch-size", "32", *flags)


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_inherit_records_what_came_from_the_teacher(cli, fashion_npz, archs, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = _distill(cli, fashion_npz, "resnet8", archs["resnet"], out, "--init", "inherit")
    assert code == 0, err
    # resnet8 is [1,1,1]x[16,32,64]: the narrower student is cut from it whole
    assert "init: 100.0% of the student's" in stdout and "inherited from teacher resnet8" in " ".join(stdout.split())
    init = json.loads((out / "distill" / "metrics.json").read_text())["init"]
    assert init["mode"] == "inherit" and init["family"] == "resnet_cifar" and init["teacher"] == "resnet8"
    assert init["fraction"] == 1.0 and init["inherited"] == init["total"]
    assert "stem.0.weight" in init["parameters"] and "classifier.weight" in init["parameters"]
    assert json.loads((out / "distill" / "student.json").read_text())["init"] == init  # kept with the weights
    assert yaml.safe_load((out / "run.yaml").read_text())["distill"]["init"] == "inherit"


@pytest.mark.parametrize("teacher", ["resnet8", "torchscript"])
def test_inherit_that_cannot_is_one_line_and_exit_2_with_nothing_written(cli, fashion_npz, archs, tmp_path,
                                                                           torchscript_teacher, teacher):
    student = archs["vit"] if teacher == "resnet8" else archs["resnet"]
    spec = "resnet8" if teacher == "resnet8" else torchscript_teacher
    out = tmp_path / "never"
    code, stdout, err = _distill(cli, fashion_npz, spec, student, out, "--init", "inherit")
    assert code == 2, stdout + err
    line = _one_line(err)
    assert "--init inherit" in line and "--init auto" in line
    assert ("vit student" in line) if teacher == "resnet8" else (".pt2 or TorchScript" in line)
    assert not out.exists()


def test_auto_falls_back_to_random_in_one_line(cli, fashion_npz, archs, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = _distill(cli, fashion_npz, "resnet8", archs["vit"], out, "--init", "auto")
    assert code == 0, err
    said = [line for line in stdout.splitlines() if line.startswith("init:")]
    assert len(said) == 1 and "random weights" in said[0]
    init = json.loads((out / "distill" / "metrics.json").read_text())["init"]
    assert init["mode"] == "random" and "not a ViT" in init["reason"]


def test_auto_is_the_default_and_inherits_where_it_can(cli, fashion_npz, archs, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = _distill(cli, fashion_npz, "resnet8", archs["resnet"], out)
    assert code == 0, err
    assert "inherited from teacher resnet8" in " ".join(stdout.split())
    init = json.loads((out / "distill" / "metrics.json").read_text())["init"]
    assert init["mode"] == "inherit" and init["fraction"] == 1.0
    assert yaml.safe_load((out / "run.yaml").read_text())["distill"]["init"] == "auto"


def test_random_says_nothing_and_keeps_fresh_weights(cli, fashion_npz, archs, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = _distill(cli, fashion_npz, "resnet8", archs["resnet"], out, "--init", "random")
    assert code == 0, err
    assert "init:" not in stdout
    assert json.loads((out / "distill" / "metrics.json").read_text())["init"] == {"mode": "random"}
    assert json.loads((out / "distill" / "student.json").read_text())["init"] == {"mode": "random"}


def test_run_refuses_inherit_for_a_space_the_teacher_cannot_give_weights_to(cli, fashion_npz, tmp_path):
    out = tmp_path / "never"
    code, stdout, err = cli("run", "--teacher", "resnet8", "--space", "vit", "--preset", "tiny", "--data",
                            f"npz:{fashion_npz}", "--init", "inherit", "--out", out)
    assert code == 2, stdout + err
    assert "vit student cannot inherit" in _one_line(err)
    assert not out.exists()


@pytest.mark.parametrize("command", ["distill", "run"])
def test_help_documents_init(cli, command):
    code, out, _ = cli(command, "--help")
    text = " ".join(out.replace("│", " ").split())
    assert code == 0 and "--init" in text and "auto (default" in text and "random" in text


def test_config_files_set_it_and_bad_values_fail():
    from kdsearch.distill.config import TrainConfig
    from kdsearch.pipeline.config import config_from_dict

    assert TrainConfig().init == "random"  # a teacher's own training (teach) has nothing to inherit from
    assert config_from_dict({}).distill.init == "auto"
    assert config_from_dict({"distill": {"init": "auto"}}).distill.init == "auto"
    with pytest.raises(UsageError, match="random, inherit, auto"):
        config_from_dict({"distill": {"init": "clone"}})


def test_a_teach_section_cannot_inherit(cli, fashion_npz, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"teach": {"init": "inherit"}}))
    out = tmp_path / "never"
    code, _, err = cli("teach", "--model", "resnet8", "--data", f"npz:{fashion_npz}", "--subset", "64",
                       "--batch-size", "32", "--config", config, "--out", out)
    assert code == 2 and "teach.init" in _one_line(err)
    assert not out.exists()


@pytest.mark.parametrize("init,mode", [("auto", "inherit"), ("random", "random")])
def test_the_search_records_what_its_winner_takes_from_the_teacher(cli, fashion_npz, tmp_path, init, mode):
    config = tmp_path / "c.yaml"
    config.write_text(f"search: {{trials: 2, population: 2, proxy_batch: 8}}\ndistill: {{init: {init}}}\n")
    out = tmp_path / "run"
    code, _, err = cli("search", "--teacher", "resnet8", "--data", f"npz:{fashion_npz}", "--subset", "64",
                       "--config", config, "--out", out, "--quiet")
    assert code == 0, err
    recorded = json.loads((out / "search" / "winner.json").read_text())["init"]
    assert recorded["mode"] == mode
    if mode == "inherit":
        assert 0 < recorded["fraction"] <= 1 and recorded["teacher"] == "resnet8"
