"""`--config FILE.yaml` on every command: the file's values are used, flags override them, run.yaml records them."""
from __future__ import annotations

import json

import pytest
import yaml

from kdsearch.errors import ConfigError
from kdsearch.pipeline import RunConfig, config_from_dict

TINY_SPACE = """\
name: tiny_resnet
family: resnet_cifar
description: a tiny corner of resnet_cifar for tests
genes:
  depths: {choices: [1, 2], length: 3}
  widths: {choices: [8, 12], length: 3}
  block: {choices: [basic]}
teacher: {depths: [1, 1, 1], widths: [8, 8, 8], block: basic}
"""


def _write(path, doc) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_every_command_takes_config(cli):
    from kdsearch.cli import app

    names = [c.name for c in app.registered_commands]
    assert {"run", "teach", "search", "distill", "export", "quantize", "score", "correlate", "report", "doctor",
            "spaces", "proxies", "models"} <= set(names)
    for name in names:
        code, out, err = cli(name, "--help")
        assert code == 0 and "--config" in out, name


def test_quantize_and_correlate_sections_parse_nested_and_strict():
    config = config_from_dict({"quantize": {"epochs": 3, "lr": 0.01},
                               "correlate": {"archs": 12, "proxies": "diswot,nwot", "train": {"epochs": 5}}})
    assert config.quantize.epochs == 3 and config.quantize.lr == 0.01 and config.quantize.batch_size == 128
    assert config.correlate.archs == 12 and config.correlate.proxies == ("diswot", "nwot")
    assert config.correlate.train.epochs == 5 and config.correlate.train.batch_size == 64  # the rest kept
    with pytest.raises(ConfigError, match=r"correlate\.train.*colour"):
        config_from_dict({"correlate": {"train": {"colour": 1}}})
    with pytest.raises(ConfigError, match=r"quantize\.epochs"):
        config_from_dict({"quantize": {"epochs": "two"}})


def test_saved_config_round_trips():
    from dataclasses import asdict

    from kdsearch.pipeline.config import _plain

    config = config_from_dict({"quantize": {"epochs": 3}, "correlate": {"train": {"lr": 0.3}}})
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(_plain(asdict(config)))), RunConfig())
    assert again == config


def test_score_takes_teacher_data_and_space_from_config_and_flags_win(cli, fashion_npz, tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    cfg = _write(tmp_path / "c.yaml", {"teacher": "resnet8", "data": {"spec": f"npz:{fashion_npz}", "subset": 64},
                                       "search": {"space": str(space), "proxy_batch": 8, "proxy": "nwot"}})
    code, out, err = cli("score", "--config", cfg, "--sample", "2", "--json", "--quiet")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 2 and set(rows[0]["scores"]) == {"nwot", "params", "flops"}  # the config's proxy
    assert all(set(r["arch"]["genes"]["widths"]) <= {8, 12} for r in rows)  # the config's space
    code, out, err = cli("score", "--config", cfg, "--sample", "2", "--space", "nb201", "--proxy", "params", "--json")
    assert code == 0, err
    assert {r["arch"]["space"] for r in json.loads(out)} == {"nb201"}  # the flag wins


def test_search_without_a_teacher_anywhere_is_a_usage_error(cli, tmp_path):
    code, out, err = cli("search", "--out", tmp_path / "s")
    assert code == 2 and "--teacher" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_search_keeps_the_config_data_and_seed(cli, fashion_npz, tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    cfg = _write(tmp_path / "c.yaml", {"teacher": "resnet8", "data": {"spec": f"npz:{fashion_npz}", "subset": 64, "seed": 3},
                                       "search": {"space": str(space), "trials": 2, "population": 2, "proxy_batch": 8,
                                                  "seed": 5, "max_params": 10**6}})
    out = tmp_path / "s"
    code, _, err = cli("search", "--config", cfg, "--out", out, "--trials", "3", "--quiet")
    assert code == 0, err
    saved = yaml.safe_load((out / "run.yaml").read_text())
    assert saved["data"]["spec"] == f"npz:{fashion_npz}" and saved["data"]["seed"] == 3  # no flag default overrode them
    assert saved["search"]["seed"] == 5 and saved["search"]["trials"] == 3  # the flag wins over the file


def test_correlate_reads_its_section(cli, fashion_npz, tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    cfg = _write(tmp_path / "c.yaml", {
        "teacher": "resnet8", "data": {"spec": f"npz:{fashion_npz}", "subset": 96},
        "correlate": {"space": str(space), "archs": 5, "pool": 40, "proxies": ["nwot"], "proxy_batch": 8,
                      "extra_batches": [], "teacher_inits": ["pretrained"],
                      "train": {"epochs": 1, "batch_size": 32, "device": "cpu"}}})
    out = tmp_path / "corr"
    code, stdout, err = cli("correlate", "--config", cfg, "--out", out, "--batch-size", "48", "--json", "--quiet")
    assert code == 0, err
    assert json.loads(stdout)["archs"] == 5
    recorded = json.loads((out / "correlate" / "correlate.json").read_text())["config"]
    assert recorded["pool"] == 40 and recorded["train"]["epochs"] == 1 and recorded["train"]["batch_size"] == 48
    saved = yaml.safe_load((out / "run.yaml").read_text())
    assert saved["correlate"]["train"]["batch_size"] == 48 and saved["teacher"] == "resnet8"


@pytest.mark.parametrize("command", ["report", "doctor", "spaces", "export", "quantize", "score"])
def test_a_broken_config_is_a_usage_error_everywhere(cli, tmp_path, command):
    bad = _write(tmp_path / "bad.yaml", {"search": {"colour": "red"}})
    args = {"report": [tmp_path], "export": [tmp_path], "quantize": [tmp_path], "score": ["--sample", "1"]}.get(command, [])
    (tmp_path / "run.yaml").write_text("{}\n")
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "student.json").write_text("{}")
    code, out, err = cli(command, *args, "--config", bad)
    assert code == 2 and "colour" in err and "Traceback" not in err, (command, err)


@pytest.mark.parametrize("command", ["distill", "correlate"])
def test_training_seed_does_not_move_the_split(cli, tmp_path, monkeypatch, command):
    """``--seed`` seeds training; the train/val split stays the run's (``data.seed``)."""
    import kdsearch.pipeline as pipeline
    from kdsearch.arch import Arch
    from kdsearch.pipeline.config import save_run_config

    seen = {}

    class Stop(Exception):
        pass

    def capture(config):
        seen["config"] = config
        raise Stop

    run = tmp_path / "run"
    (run / "search").mkdir(parents=True)
    save_run_config(run, config_from_dict({"teacher": "resnet8", "data": {"seed": 3}}))
    Arch("resnet_cifar", {"depths": [1, 1, 1], "widths": [8, 8, 8], "block": "basic"}).save(run / "search" / "winner.json")
    if command == "distill":
        monkeypatch.setattr(pipeline, "distill_command", lambda out, config, *a, **k: capture(config))
        argv = ("distill", run, "--seed", "5", "--quiet")
    else:
        monkeypatch.setattr(pipeline, "load_run_dataset", capture)
        argv = ("correlate", "--config", run / "run.yaml", "--seed", "5", "--out", tmp_path / "c", "--quiet")
    with pytest.raises(Stop):
        cli(*argv)
    config = seen["config"]
    assert config.data.seed == 3  # the run's split, not the training seed
    assert (config.distill.seed if command == "distill" else config.correlate.seed) == 5


def test_top_level_device_sets_every_training_section_that_names_none():
    config = config_from_dict({"device": "cpu", "distill": {"device": "cuda", "epochs": 2}})
    assert config.teach.device == config.quantize.device == config.correlate.train.device == "cpu"
    assert config.distill.device == "cuda" and config.distill.epochs == 2  # a section's own device wins
    assert not hasattr(config, "device")  # nothing left that no stage reads
    with pytest.raises(ConfigError, match="device"):
        config_from_dict({"device": 1})


def test_run_max_memory_reaches_every_stage_that_holds_a_batch(resolved_run):
    config = resolved_run("--preset", "tiny", "--max-memory", "3GB")
    assert config.distill.max_memory == config.teach.max_memory == config.quantize.max_memory == "3GB"
    assert config.export.max_memory == "3GB"
