"""Teacher-assistant distillation: picking the assistant from the front, and the two-leg run."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch import nn

from kdsearch.arch import Arch
from kdsearch.distill.assistant import Candidate, choose_assistant, resolve_assistant
from kdsearch.errors import UsageError


def _arch(widths, depths=(1, 1, 1)) -> Arch:
    return Arch("resnet_cifar", {"block": "basic", "depths": list(depths), "widths": list(widths)})


def _leaderboard(path: Path, rows: list[tuple[Arch, int, float, bool]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["trial", "arch", "score_diswot", "params", "flops", "feasible"])
        w.writeheader()
        for i, (arch, params, score, feasible) in enumerate(rows):
            w.writerow({"trial": i, "arch": arch.to_json(), "score_diswot": score, "params": params, "flops": 1,
                        "feasible": feasible})
    return path


def test_picks_the_front_arch_nearest_the_geometric_mean():
    # teacher 10,000 and student 100 params: √(10⁴·10²) = 1,000
    dominated = _arch([8, 8, 8])  # 900 params is nearest 1,000 but scores below a cheaper arch: off the front
    chosen = _arch([16, 16, 16])  # 1,500, infeasible for the student budget, still a valid assistant
    candidates = [
        Candidate(_arch([4, 4, 4]), 50, 1.0),
        Candidate(_arch([8, 8, 4]), 300, 2.0),
        Candidate(dominated, 900, 1.5),
        Candidate(chosen, 1500, 3.0),
        Candidate(_arch([32, 32, 32]), 5000, 4.0),
        Candidate(_arch([64, 64, 64]), 20000, 5.0),
    ]
    assert choose_assistant(candidates, 10_000, 100) == candidates[3]


def test_no_intermediate_arch_is_a_usage_error():
    candidates = [Candidate(_arch([4, 4, 4]), 50, 1.0), Candidate(_arch([64, 64, 64]), 20000, 5.0)]
    with pytest.raises(UsageError, match="ARCH.json"):
        choose_assistant(candidates, 10_000, 100)


def test_auto_reads_the_searched_candidates_of_the_run(tmp_path):
    from kdsearch.pipeline.stages import searched_candidates
    from kdsearch.rundir import RunDir

    teacher = SimpleNamespace(module=nn.Linear(99, 100))  # 10,000 params
    run = RunDir(tmp_path)
    with pytest.raises(UsageError, match="finished search"):
        resolve_assistant("auto", searched_candidates(run), teacher, 100)
    (tmp_path / "search").mkdir()
    chosen = _arch([16, 16, 16])
    _leaderboard(run.leaderboard, [
        (_arch([4, 4, 4]), 50, 1.0, True), (_arch([8, 8, 8]), 900, 0.5, True), (chosen, 1500, 3.0, False)])
    assert resolve_assistant("auto", searched_candidates(run), teacher, 100) == chosen


@pytest.mark.slow
def test_cli_assistant_auto_distils_through_the_assistant(cli, fashion_npz, tmp_path):
    from kdsearch.pipeline import DataConfig, RunConfig, save_run_config

    run = tmp_path / "run"
    (run / "search").mkdir(parents=True)
    save_run_config(run, RunConfig(data=DataConfig(spec=f"npz:{fashion_npz}", subset=256), teacher="resnet8"))
    student = _arch([8, 8, 16])  # 6,386 params; teacher resnet8 77,754: √ ≈ 22,285
    from kdsearch.rundir import RunDir, WinnerRecord

    WinnerRecord(arch=student.to_dict(), rule="largest", proxy="diswot", score=1.0, params=6386, flops=0,
                 latency_ms=None, trial=0, complete_trials=4, unique_candidates=4, feasible_candidates=2,
                 config={}).save(RunDir(run).winner)
    near, far = _arch([16, 16, 32]), _arch([8, 16, 32])  # 24,666 and 19,810 params: 24,666 is nearer in log
    _leaderboard(run / "search" / "leaderboard.csv", [
        (student, 6386, 1.0, True), (far, 19810, 2.0, True), (near, 24666, 3.0, False),
        (_arch([16, 32, 64], (2, 2, 2)), 170000, 4.0, False),
    ])
    code, out, err = cli("distill", run, "--assistant", "auto", "--epochs", "1", "--batch-size", "64", "--quiet",
                         "--json")
    assert code == 0, err
    ta = json.loads((run / "distill" / "assistant" / "model.json").read_text())
    assert Arch.from_dict(ta["arch"]) == near
    assert (run / "distill" / "assistant" / "model.safetensors").exists()
    metrics = json.loads((run / "distill" / "metrics.json").read_text())
    assert Arch.from_dict(metrics["assistant"]["arch"]) == near
    assert metrics["assistant"]["teacher"] == "resnet8"
    assert metrics["teacher"] == str(run / "distill" / "assistant")  # the student's teacher is the assistant
    assert Arch.load(run / "distill" / "student.json") == student
    assert json.loads(out)["assistant"]["params"] == 24666
