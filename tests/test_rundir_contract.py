"""The run-directory contract: only kdsearch/rundir.py spells the file names of a run directory."""
from __future__ import annotations

import ast
from pathlib import Path

import kdsearch
from kdsearch import rundir

PACKAGE = Path(kdsearch.__file__).parent


def _layout_names() -> set[str]:
    """Every file name rundir.py defines: its upper-case string constants and its records' FILE."""
    names = {v for k, v in vars(rundir).items() if k.isupper() and isinstance(v, str) and "." in v}
    records = [c for c in vars(rundir).values() if isinstance(c, type) and issubclass(c, rundir.Record)]
    return names | {c.FILE for c in records if getattr(c, "FILE", "")}


def test_the_layout_names_are_known():
    names = _layout_names()
    assert {"run.yaml", "summary.json", "report.html", "leaderboard.csv", "winner.json", "race.json",
            "export.json", "student.safetensors", "teacher.onnx", "student.qat.safetensors"} <= names


def test_no_module_but_rundir_names_a_run_directory_file():
    names = _layout_names()
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "rundir.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}")
    assert not found, "use RunDir or a kdsearch.rundir constant instead:\n" + "\n".join(found)


def test_summary_json_is_read_strictly(tmp_path):
    """summary.json is a RunSummary: a key its writer does not write is refused, naming the file."""
    import json

    import pytest

    from kdsearch.errors import ConfigError
    from kdsearch.report.summary import read_run

    (tmp_path / rundir.RUN_CONFIG).write_text("teacher: resnet8\n")
    summary = {"run_dir": str(tmp_path), "dataset": "fashion-mnist", "teacher": {"source": "resnet8"},
               "student": {"arch": None}, "reduction": {"params": 4.0, "flops": 4.0}, "onnx": {"input_size": [1, 28, 28]},
               "timings_s": {"search": 1.0}, "report": None}
    (tmp_path / rundir.RunSummary.FILE).write_text(json.dumps(summary))
    run = read_run(tmp_path)
    assert run.summary is not None and run.summary.onnx["input_size"] == [1, 28, 28]
    (tmp_path / rundir.RunSummary.FILE).write_text(json.dumps({**summary, "speedup": 3.0}))
    with pytest.raises(ConfigError, match=r"summary\.json.*speedup"):
        read_run(tmp_path)


def test_race_record_is_strict():
    import pytest

    from kdsearch.errors import ConfigError

    race = {"rule": "successive halving", "rank": "tse", "eta": 3, "rungs": [10, 30], "survivors": [3, 1],
            "full_steps": 30, "budget": 1.0, "planned_steps": 60, "spent_steps": 60, "spent_distillations": 2.0,
            "finalists": [{"finalist": 0, "arch": "a", "state": "pruned"}, {"finalist": 1, "arch": "b", "state": "complete"}],
            "winner": "b", "storage": "sqlite:///x", "study_name": "kdsearch-race"}
    record = rundir.RaceRecord.from_dict(race)
    assert record.won["finalist"] == 1 and rundir.RaceRecord.from_dict(record.to_dict()) == record
    with pytest.raises(ConfigError, match="race.json"):
        rundir.RaceRecord.from_dict({k: v for k, v in race.items() if k != "winner"})


def test_qat_json_is_read_strictly(tmp_path):
    """qat/qat.json is a QatModel: the QAT student is rebuilt from a record, not from loose JSON."""
    import json

    import pytest

    from kdsearch.errors import ConfigError
    from kdsearch.quant.qat import load_qat_model

    (tmp_path / rundir.QAT_WEIGHTS).write_bytes(b"")
    (tmp_path / rundir.QatModel.FILE).write_text(json.dumps(
        {"student": {}, "recipe": "x86", "image_size": [28, 28], "config": {}, "colour": "blue"}))
    with pytest.raises(ConfigError, match=r"qat\.json.*colour"):
        load_qat_model(tmp_path)
