"""The quick preset (``kdsearch run``'s default) searches students pruned from the teacher (a TorchScript one
too); a flag or ``--config`` still picks another space, and a teacher that cannot be cut is refused in one line
that names one."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from kdsearch.models.resnet_cifar import ResNetCifar
from kdsearch.pipeline import preset
from kdsearch.rundir import RunDir
from kdsearch.spaces import load_space


def test_quick_searches_the_pruned_space_and_the_other_presets_do_not():
    assert preset("quick").search.space == "pruned"
    assert preset("tiny").search.space == preset("standard").search.space == "resnet_cifar"


@pytest.mark.parametrize("args", [(), ("--preset", "quick")])
def test_run_searches_students_pruned_from_the_teacher_by_default(resolved_run, args):
    config = resolved_run(*args)
    assert config.search.space == "pruned"
    assert config.search.speedup == 4.0  # the rest of the quick preset with it


def test_a_space_flag_or_config_file_wins_over_the_preset(resolved_run, tmp_path):
    assert resolved_run("--preset", "quick", "--space", "resnet_cifar").search.space == "resnet_cifar"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({"search": {"space": "mbconv"}}))
    assert resolved_run("--preset", "quick", "--config", config_file).search.space == "mbconv"
    assert resolved_run("--config", config_file, "--space", "vit").search.space == "vit"


@pytest.mark.slow
def test_quick_cuts_its_students_from_a_torchscript_teacher(cli, fashion_npz, tmp_path):
    teacher = tmp_path / "teacher.pt"
    model = ResNetCifar([1, 1, 1], [8, 8, 16], in_channels=1).eval()
    torch.jit.save(torch.jit.trace(model, torch.zeros(2, 1, 28, 28)), str(teacher))
    out = tmp_path / "run"
    small = ("--subset", "256", "--trials", "3", "--epochs", "1", "--speedup", "2")  # a teacher this small: 2x
    code, stdout, err = cli("run", "--preset", "quick", "--teacher", teacher, "--data", f"npz:{fashion_npz}", *small,
                            "--out", out, "--quiet", "--json")
    assert code == 0, err
    assert json.loads(stdout)["student"]["arch"]["space"] == "pruned"
    prune = load_space(RunDir(out).searched_space).prune
    assert prune["teacher"] == str(teacher.resolve()) and prune["blocks"] == ["layer1.0"]


def test_a_teacher_quick_cannot_cut_is_refused_in_one_line_naming_another_space(cli, fashion_npz, tmp_path):
    teacher = tmp_path / "teacher.pt2"
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).eval()  # its one layer makes the logits
    batch = ({0: torch.export.Dim("batch")},)
    torch.export.save(torch.export.export(model, (torch.zeros(2, 1, 28, 28),), dynamic_shapes=batch), str(teacher))
    out = tmp_path / "never"
    code, _, err = cli("run", "--preset", "quick", "--teacher", teacher, "--data", f"npz:{fashion_npz}",
                       "--subset", "256", "--out", out, "--quiet")
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "finds no channel group it can cut" in lines[0] and "--space resnet_cifar" in lines[0]
    assert not out.exists()
