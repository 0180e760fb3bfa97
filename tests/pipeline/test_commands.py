"""The per-command library calls: flags, --config and run.yaml meet the same way; failures leave nothing."""
from __future__ import annotations

import json

import pytest

from kdsearch.rundir import RunDir


@pytest.fixture(scope="module")
def searched(tmp_path_factory, fashion_npz):
    """A run directory after a tiny search (no distillation yet)."""
    from kdsearch.cli import main

    out = tmp_path_factory.mktemp("runs") / "searched"
    code = main(["search", "--teacher", "resnet8", "--data", f"npz:{fashion_npz}", "--subset", "256", "--trials", "3",
                 "--population", "3", "--proxy-batch", "16", "--out", str(out), "--quiet"])
    assert code == 0
    return out


@pytest.mark.slow
def test_distill_run_dir_honours_config(searched, tmp_path, cli):
    config = tmp_path / "distill.yaml"
    config.write_text("distill: {epochs: 1, batch_size: 32, loss: 'ce:1'}\n")
    code, out, err = cli("distill", searched, "--config", config, "--json", "--quiet", "--force")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["loss"] == "ce:1" and len(json.loads(RunDir(searched).distill_metrics.read_text())["history"]) == 1
    import yaml

    saved = yaml.safe_load(RunDir(searched).config.read_text())["distill"]
    assert saved["loss"] == "ce:1" and saved["batch_size"] == 32


@pytest.mark.parametrize("text,message", [
    ("distill: {epochs: zero}\n", "wrong type"),
    ("distil: {epochs: 1}\n", "unknown config key"),
    ("distill: [1, 2\n", "YAML"),
])
def test_distill_run_dir_rejects_a_broken_config(searched, tmp_path, cli, text, message):
    config = tmp_path / "broken.yaml"
    config.write_text(text)
    before = sorted(p.name for p in RunDir(searched).root.iterdir())
    code, out, err = cli("distill", searched, "--config", config, "--quiet", "--force")
    assert code != 0 and message in err and "Traceback" not in err
    assert sorted(p.name for p in RunDir(searched).root.iterdir()) == before


def test_a_command_that_fails_before_any_result_leaves_no_directory(searched, tmp_path, fashion_npz, cli):
    """Distilling on fewer images than one batch fails; the suggested retry must then just work."""
    import numpy as np

    small = tmp_path / "small.npz"
    data = np.load(fashion_npz)
    np.savez(small, x=data["x"][:100], y=data["y"][:100], x_test=data["x_test"][:40], y_test=data["y_test"][:40])
    out = tmp_path / "d"
    args = ("distill", "--teacher", "resnet8", "--student", RunDir(searched).winner, "--data", f"npz:{small}",
            "--out", out, "--epochs", "1", "--quiet")
    code, _, err = cli(*args)
    assert code != 0 and "lower --batch-size" in err and "Traceback" not in err
    assert not out.exists()
    code, _, err = cli(*args, "--batch-size", "16")
    assert code == 0, err
    assert RunDir(out).student_weights.is_file()


def test_a_failure_after_results_keeps_them(tmp_path):
    from kdsearch.pipeline.workspace import opened_run_dir

    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with opened_run_dir(out, resume=False, force=False):
            (out / "run.yaml").write_text("{}\n")
            (out / "search").mkdir()
            (out / "search" / "study.db").write_bytes(b"x")
            raise RuntimeError("stopped")
    assert (out / "search" / "study.db").is_file()
    with pytest.raises(RuntimeError):
        with opened_run_dir(tmp_path / "empty", resume=False, force=False):
            (tmp_path / "empty" / "run.yaml").write_text("{}\n")
            (tmp_path / "empty" / "kdsearch.log").write_text("")
            raise RuntimeError("stopped")
    assert not (tmp_path / "empty").exists()
