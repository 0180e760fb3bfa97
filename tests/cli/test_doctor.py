"""kdsearch doctor: what it finds matches independent look-ups; broken pieces come with fixes."""
from __future__ import annotations

import importlib.metadata
import json

import pytest

from kdsearch import doctor as doctor_module
from kdsearch.doctor import diagnose

_IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz")


@pytest.fixture()
def no_user_data(monkeypatch, tmp_path):
    """Datasets only where a test puts them (plus the system folder, which tests treat as unknown)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KDSEARCH_DATA", raising=False)


class _FakeDist:
    def __init__(self, name: str) -> None:
        self.metadata = {"Name": name}


def _with_both_runtimes(monkeypatch):
    real = importlib.metadata.distributions

    def both():
        return [*real(), _FakeDist("onnxruntime"), _FakeDist("onnxruntime-gpu")]

    monkeypatch.setattr(importlib.metadata, "distributions", both)


def test_versions_and_providers_match_independent_lookups(no_user_data):
    import onnxruntime
    import torch

    report = diagnose()
    for dist in ("torch", "onnx", "onnxscript", "torchao", "optuna", "typer", "rich"):
        assert report.versions[dist] == importlib.metadata.version(dist)
    assert report.versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert report.ort_providers == onnxruntime.get_available_providers()
    installed = [d for d in ("onnxruntime", "onnxruntime-gpu") if report.versions[d] is not None]
    assert report.onnxruntime_dists == installed
    assert (report.cuda == []) == (not torch.cuda.is_available())
    try:
        import psycopg2  # noqa: F401

        assert report.postgres_driver
    except ImportError:
        assert not report.postgres_driver
    assert report.healthy, [p for p in report.problems if p.required]


def test_both_onnxruntime_distributions_is_a_required_problem(monkeypatch, no_user_data):
    _with_both_runtimes(monkeypatch)
    report = diagnose()
    assert not report.healthy
    problem = next(p for p in report.problems if "onnxruntime-gpu" in p.what)
    assert problem.required and "pip uninstall -y onnxruntime onnxruntime-gpu" in problem.fix


def test_missing_required_package_is_reported_with_install_command(monkeypatch, no_user_data):
    real = doctor_module._version
    monkeypatch.setattr(doctor_module, "_version", lambda d: None if d == "optuna" else real(d))
    report = diagnose()
    assert report.versions["optuna"] is None and not report.healthy
    assert any(p.required and p.fix == "pip install optuna" for p in report.problems)


def test_datasets_are_found_where_the_data_package_looks(tmp_path, no_user_data, monkeypatch):
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    for name in _IDX:
        (data / "mnist" / name).write_bytes(b"")
    report = diagnose(data_dir=data)
    assert report.datasets["mnist"] == str(data / "mnist")
    monkeypatch.setenv("KDSEARCH_DATA", str(data))
    assert diagnose().datasets["mnist"] == str(data / "mnist")
    (data / "mnist" / _IDX[0]).unlink()
    report = diagnose(data_dir=data)
    if report.datasets["mnist"] is None:  # unless this machine has MNIST in a system folder
        problem = next(p for p in report.problems if p.what.startswith("mnist"))
        assert not problem.required and problem.fix


def test_cli_doctor_json_and_exit_codes(cli, monkeypatch, no_user_data):
    code, out, err = cli("doctor", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["healthy"] is True, err
    assert doc["versions"]["torch"] == importlib.metadata.version("torch")
    assert {"ort_providers", "cuda", "datasets", "postgres_driver", "optuna_dashboard", "problems"} <= set(doc)
    code, out, err = cli("doctor")
    assert code == 0 and "torch" in out and "healthy" in out
    _with_both_runtimes(monkeypatch)
    code, out, err = cli("doctor")
    assert code == 1 and "pip uninstall" in out.replace("\n", " ")
    code, out, err = cli("doctor", "--json")
    assert code == 1 and json.loads(out)["healthy"] is False


def test_cli_doctor_takes_the_data_dir_from_config(cli, tmp_path, no_user_data):
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    for name in _IDX:
        (data / "mnist" / name).write_bytes(b"")
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  data_dir: {data}\n")
    code, out, err = cli("doctor", "--config", config, "--json")
    assert json.loads(out)["datasets"]["mnist"] == str(data / "mnist")
