"""`kdsearch run --space my.yaml` (the README's example space) end to end, then the run directory
copied to another machine where that YAML is not: every stage still finds the student's space."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from kdsearch.rundir import ExportRecord, RunDir

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_space() -> str:
    """The README's example space YAML, as a user would copy it."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    return next(b for b in blocks if b.startswith("name: ") and "\nfamily: " in b)


@pytest.fixture(scope="module")
def user_space_run(tmp_path_factory, fashion_npz):
    from kdsearch.cli import main

    home = tmp_path_factory.mktemp("user")
    space = home / "my_space.yaml"
    space.write_text(_readme_space(), encoding="utf-8")
    out = home / "runs" / "mine"
    code = main(["run", "--preset", "tiny", "--qat", "--space", str(space), "--data", f"npz:{fashion_npz}",
                 "--out", str(out), "--json", "--quiet"])
    assert code == 0
    return RunDir(out), space


def test_a_run_in_a_user_space_reaches_the_report(user_space_run):
    run, space = user_space_run
    name = re.search(r"^name: (\S+)", space.read_text(), re.M).group(1)
    student = json.loads(run.student_json.read_text())
    assert student["arch"]["space"] == name and student["space"]["name"] == name
    assert set(ExportRecord.load(run.export_record).files) == {"fp32", "ptq", "qat"}
    assert run.report.is_file() and name in run.report.read_text(encoding="utf-8")


def test_the_run_copied_without_its_yaml_exports_reports_and_resumes(user_space_run, tmp_path, cli, fashion_npz):
    run, space = user_space_run
    copy = RunDir(tmp_path / "other-machine" / "mine")
    shutil.copytree(run.root, copy.root)
    gone = tmp_path / "moved.yaml"
    shutil.move(space, gone)
    try:
        code, out, err = cli("export", copy.root, "--int8", "qat", "--json", "--quiet")
        assert code == 0, err
        assert set(json.loads(out)["files"]) == {"fp32", "ptq", "qat"}
        code, out, err = cli("report", copy.root)
        assert code == 0, err
        code, out, err = cli("run", "--preset", "tiny", "--qat", "--space", space, "--data", f"npz:{fashion_npz}",
                             "--out", copy.root, "--resume", "--json", "--quiet")
        assert code == 0, err
        # resuming with another space is refused in one line, before anything is touched
        code, out, err = cli("run", "--preset", "tiny", "--data", f"npz:{fashion_npz}", "--out", copy.root,
                             "--resume", "--quiet")
        assert code != 0 and "searched in space" in err and "Traceback" not in err
    finally:
        shutil.move(gone, space)
