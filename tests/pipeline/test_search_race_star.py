"""`kdsearch search --race` stars the race's winner in the terminal table, not the search's pick before it."""
from __future__ import annotations

import json

import kdsearch.pipeline.commands as commands
from kdsearch.rundir import RaceRecord, RunDir, WinnerRecord, read_leaderboard
from kdsearch.search.summary import record_race


def _race_won_by_the_runner_up(run: RunDir, config, dataset, teacher, *, resume: bool, progress) -> WinnerRecord:
    """A stand-in race (no training): the second feasible candidate of the leaderboard wins it."""
    rows = [r for r in {r["arch"]: r for r in read_leaderboard(run.leaderboard)}.values() if r["feasible"]]
    finalists = [{"arch": r["arch"], "finalist": i, "rung_reached": 1 if i == 1 else 0,
                  "state": "complete" if i == 1 else "pruned",
                  "rungs": [{"step": 4, "val_acc": 0.5, "train_loss_sum": 1.0 + i}]} for i, r in enumerate(rows[:2])]
    return record_race(run.search, RaceRecord(
        rule="a stand-in race", rank="tse", eta=3, rungs=[4, 12], survivors=[2, 1], full_steps=12, budget=1.0,
        planned_steps=20, spent_steps=6, spent_distillations=0.5, finalists=finalists, winner=rows[1]["arch"],
        storage="", study_name="kdsearch-race"))


def test_the_terminal_table_stars_the_race_winner(tmp_path, fashion_npz, cli, monkeypatch):
    monkeypatch.setattr(commands, "race_stage", _race_won_by_the_runner_up)
    out = tmp_path / "raced"
    code, stdout, err = cli("search", "--teacher", "resnet8", "--data", f"npz:{fashion_npz}", "--subset", "256",
                            "--trials", "4", "--population", "4", "--proxy-batch", "16", "--out", out, "--quiet")
    assert code == 0, err
    winner = WinnerRecord.load(RunDir(out).winner)
    assert winner.race is not None
    starred = [line for line in stdout.splitlines() if "★" in line]
    genes = json.dumps(winner.arch["genes"], separators=(",", ":"))
    assert len(starred) == 1 and genes[:40] in starred[0].replace(" ", "").replace("│", "")
