"""`kdsearch run` end to end on the tiny preset, and the run directory it leaves."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fashion_npz):
    from kdsearch.cli import main

    out = tmp_path_factory.mktemp("runs") / "tiny"
    code = main(["run", "--preset", "tiny", "--data", f"npz:{fashion_npz}", "--out", str(out), "--json", "--quiet"])
    assert code == 0
    return out


def test_summary_speed_ups_are_the_ones_export_json_recorded(tiny_run):
    # first of the module's tests: later ones export the shared run again, after summary.json was written
    summary = json.loads((tiny_run / "summary.json").read_text())
    export = json.loads((tiny_run / "export" / "export.json").read_text())
    batches = export["timing"]["batches"]
    assert batches[0] == 1 and summary["onnx"]["latency_batch"] == batches[-1]
    for b in batches:
        assert summary["onnx"][f"speedup_b{b}"] == export["files"]["fp32"]["speedup"][str(b)]
        teacher, student = export["teacher"]["latency_ms"][f"batch_{b}"], export["files"]["fp32"]["latency_ms"][f"batch_{b}"]
        assert teacher["runs"] == student["runs"] == export["timing"]["runs"]  # one loop: as many rounds each
        assert export["files"]["fp32"]["speedup"][str(b)] == pytest.approx(teacher["p50"] / student["p50"])


def test_run_directory_is_complete(tiny_run):
    for rel in ["run.yaml", "summary.json", "teacher/model.json", "teacher/model.safetensors", "teacher/metrics.json",
                "search/study.db", "search/leaderboard.csv", "search/winner.json", "search/pareto.png",
                "distill/last.ckpt", "distill/student.safetensors", "distill/student.json", "distill/metrics.json",
                "distill/curves.png", "export/student.onnx", "export/export.json"]:
        assert (tiny_run / rel).exists(), rel
    assert not list(tiny_run.rglob("*.tmp*")), "temporary files left behind"


def test_summary_and_parity(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["onnx"]["top1_agreement"] >= 0.999
    assert summary["student"]["params"] <= summary["teacher"]["params"]  # tiny preset budget = teacher size
    metrics = json.loads((tiny_run / "distill" / "metrics.json").read_text())
    assert 0.0 <= metrics["val_acc"] <= 1.0 and metrics["params"] == summary["student"]["params"]


def test_existing_run_is_refused_then_resumed(tiny_run, cli):
    code, out, err = cli("run", "--preset", "tiny", "--out", tiny_run, "--quiet")
    assert code == 2 and "--resume" in err and "Traceback" not in err
    code, out, err = cli("run", "--preset", "tiny", "--out", tiny_run, "--resume", "--quiet", "--json")
    assert code == 0, err
    assert json.loads(out)["onnx"]["top1_agreement"] >= 0.999


def test_run_yaml_reproduces(tiny_run, tmp_path, cli):
    import yaml

    config = yaml.safe_load((tiny_run / "run.yaml").read_text())
    assert config["search"]["trials"] == 6
    code, out, err = cli("export", tiny_run, "--int8", "ptq", "--json", "--quiet")
    assert code == 0, err
    report = json.loads(out)
    assert "ptq" in report["files"]


def test_export_times_at_the_latency_batch_and_threads_asked(tiny_run, cli):
    import yaml

    code, out, err = cli("export", tiny_run, "--latency-batch", "4", "--latency-threads", "1", "--latency-runs", "3",
                         "--json", "--quiet")
    assert code == 0, err
    report = json.loads(out)
    assert report["timing"]["batches"] == [1, 4] and report["timing"]["threads"] == 1
    assert set(report["teacher"]["latency_ms"]) == set(report["files"]["fp32"]["latency_ms"]) == {"batch_1", "batch_4"}
    saved = yaml.safe_load((tiny_run / "run.yaml").read_text())["export"]
    assert saved["latency_batch"] == 4 and saved["latency_threads"] == 1
    code, out, err = cli("export", tiny_run, "--latency-batch", "0", "--quiet")
    assert code != 0 and "--latency-batch must be at least 1" in err and "Traceback" not in err
