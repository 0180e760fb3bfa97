"""The race (kdsearch.search.race): finalists, the budget, the rungs, and a real SIGKILL then --resume."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdsearch.arch import Arch
from kdsearch.rundir import RunDir, WinnerRecord, read_leaderboard
from kdsearch.search.race import (SynchronousHalvingPruner, gene_distance, is_degenerate, pick_finalists, plan_race,
                                  rung_score)

CONFIG = """\
search: {trials: 6, population: 4, proxy_batch: 16, heartbeat_s: 1}
distill: {epochs: 1, batch_size: 16, augment: false}
"""


def _row(trial: int, depths: list[int], widths: list[int], params: int, score: float = 1.0, **extra) -> dict:
    arch = Arch("resnet_cifar", {"block": "basic", "depths": depths, "widths": widths})
    return {"trial": trial, "arch": json.dumps(arch.to_dict(), sort_keys=True, separators=(",", ":")),
            "score_diswot": score, "params": params, "feasible": True, **extra}


def test_degenerate_candidates_are_filtered_and_finalists_are_diverse():
    rows = [
        _row(0, [3, 3, 3], [16, 32, 64], 900, score_synflow=0.0),  # no gradient path: never races
        _row(1, [3, 3, 3], [16, 32, 48], 800, score=float("nan")),  # non-finite score
        _row(2, [2, 2, 2], [16, 32, 64], 700),
        _row(3, [2, 2, 2], [16, 32, 60], 690),  # one gene from trial 2: a near-copy
        _row(4, [1, 2, 3], [8, 16, 32], 300),
        _row(5, [1, 1, 1], [8, 8, 8], 100),
    ]
    assert is_degenerate(rows[0]) and is_degenerate(rows[1]) and not is_degenerate(rows[2])
    finalists = pick_finalists(rows, "score_diswot", "largest", 3)
    assert [r["trial"] for r in finalists] == [2, 4, 5]  # by the rule (largest), skipping the near-copy
    archs = [Arch.from_json(r["arch"]) for r in finalists]
    assert all(gene_distance(a, b) >= 2 for i, a in enumerate(archs) for b in archs[i + 1:])
    # too few diverse candidates: the near-copy fills the field rather than racing fewer
    assert [r["trial"] for r in pick_finalists(rows[2:4], "score_diswot", "largest", 2)] == [2, 3]


@pytest.mark.parametrize("finalists,eta,budget", [(3, 3, 1.0), (9, 3, 1.0), (9, 3, 0.5), (5, 2, 2.0), (27, 3, 1.0)])
def test_the_planned_race_fits_the_budget_in_steps(finalists, eta, budget):
    plan = plan_race(finalists, eta, full_steps=1000, budget=budget)
    assert plan.planned_steps <= budget * 1000
    assert plan.survivors[0] == finalists and plan.survivors[-1] == 1
    assert all(b == a * eta for a, b in zip(plan.rungs, plan.rungs[1:]))
    bigger = plan_race(finalists, eta, full_steps=1000, budget=budget * 2)
    assert bigger.rungs[0] >= 2 * plan.rungs[0] - 1  # the budget is spent, not left over


def test_a_race_too_small_for_its_finalists_is_refused():
    from kdsearch.errors import UsageError

    with pytest.raises(UsageError, match="--race-budget"):
        plan_race(9, 3, full_steps=10, budget=1.0)


def test_a_rung_ranks_by_the_training_loss_so_far_or_by_validation_top1():
    # finalist 0 ends with the better val top-1 but has the larger sum of training losses over both rungs
    a = [{"step": 1, "val_acc": 0.5, "train_loss_sum": 3.0}, {"step": 3, "val_acc": 0.8, "train_loss_sum": 4.0}]
    b = [{"step": 1, "val_acc": 0.6, "train_loss_sum": 1.0}, {"step": 3, "val_acc": 0.7, "train_loss_sum": 5.0}]
    assert rung_score(b, "tse") > rung_score(a, "tse")  # 6 < 7: the whole run so far counts, not the last rung
    assert rung_score(a, "val") > rung_score(b, "val")
    assert rung_score(b[:1], "tse") > rung_score(a[:1], "tse") and rung_score(b[:1], "val") > rung_score(a[:1], "val")


@pytest.mark.parametrize("rank", ["tse", "val"])
def test_the_pruner_keeps_the_best_third_by_what_the_race_reported(tmp_path, rank):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rungs = (2, 6)
    study = optuna.create_study(direction="maximize", pruner=SynchronousHalvingPruner(rungs, eta=3))
    losses, accs = [5.0, 2.0, 9.0, 4.0, 3.0, 7.0], [0.1, 0.6, 0.9, 0.4, 0.3, 0.2]
    trials = [study.ask() for _ in losses]
    for i, (t, loss, acc) in enumerate(zip(trials, losses, accs)):
        t.set_user_attr("finalist", i)
        t.report(rung_score([{"val_acc": acc, "train_loss_sum": loss}], rank), rungs[0])
    kept = {i for i, t in enumerate(trials) if not t.should_prune()}
    assert kept == ({1, 4} if rank == "tse" else {2, 1})


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("race_config") / "run.yaml"
    path.write_text(CONFIG)
    return path


def _search_args(out: Path, data: str, config: Path) -> list[str]:
    return ["search", "--teacher", "resnet8", "--data", data, "--subset", "256", "--config", str(config),
            "--race", "3", "--out", str(out), "--quiet"]


def test_race_end_to_end(tmp_path, fashion_npz, config_file, cli):
    out = tmp_path / "raced"
    code, _, err = cli(*_search_args(out, f"npz:{fashion_npz}", config_file))
    assert code == 0, err
    run = RunDir(out)
    winner = WinnerRecord.load(run.winner)
    race = winner.race
    assert race is not None and race["rungs"][1] == 3 * race["rungs"][0] and race["survivors"] == [3, 1]
    assert race["spent_steps"] <= race["budget"] * race["full_steps"]
    assert race["spent_steps"] == sum(f["rungs"][-1]["step"] for f in race["finalists"])
    states = {f["finalist"]: f for f in race["finalists"]}
    won = [f for f in states.values() if f["state"] == "complete"]
    assert len(won) == 1 and won[0]["rung_reached"] == 1  # the winner reached the top rung
    assert json.dumps(winner.arch, sort_keys=True, separators=(",", ":")) == won[0]["arch"]
    for f in states.values():
        if f["state"] == "pruned":
            assert f["rung_reached"] == 0 and len(f["rungs"]) == 1  # eliminated at the lower rung, never trained on
            assert not (run.race / f"finalist-{f['finalist']}" / "rung-1").exists()
        assert all(math.isfinite(r["val_acc"]) and r["train_loss_sum"] > 0 for r in f["rungs"])
    assert race["rank"] == "tse"  # the default: each rung keeps the lowest sum of training losses
    first = sorted(states.values(), key=lambda f: (f["rungs"][0]["train_loss_sum"], f["finalist"]))
    assert first[0]["state"] == "complete" and all(f["state"] == "pruned" for f in first[1:])
    rows = read_leaderboard(run.leaderboard)
    assert rows[0]["arch"] == won[0]["arch"] and rows[0]["race_rung"] == 1
    assert rows[0]["race_tse_1"] == pytest.approx(sum(r["train_loss_sum"] for r in won[0]["rungs"]))
    assert sum(r["race_finalist"] is not None for r in {r["arch"]: r for r in rows}.values()) == 3
    assert (run.race / "rungs.png").stat().st_size > 0
    archs = [Arch.from_json(f["arch"]) for f in race["finalists"]]
    assert len({a.key for a in archs}) == 3


def test_race_sigkill_then_resume_never_reruns_a_finished_rung(tmp_path, fashion_npz, config_file, count_read_only):
    out = tmp_path / "killed"
    db = out / "race" / "race.db"
    args = [sys.executable, "-m", "kdsearch", *_search_args(out, f"npz:{fashion_npz}", config_file)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while count_read_only(db, "SELECT COUNT(*) FROM trial_intermediate_values") < 1:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no rung finished in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name + "/" + p.parent.parent.name: p.stat().st_mtime_ns
                for p in (out / "race").glob("finalist-*/rung-*/last.ckpt")}
    assert finished
    assert not RunDir(out).winner.exists() or WinnerRecord.load(RunDir(out).winner).race is None
    done = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    after = {p.parent.name + "/" + p.parent.parent.name: p.stat().st_mtime_ns
             for p in (out / "race").glob("finalist-*/rung-*/last.ckpt")}
    assert all(after[k] == v for k, v in finished.items())  # finished rungs were not trained again
    race = WinnerRecord.load(RunDir(out).winner).race
    assert race is not None and sum(f["state"] == "complete" for f in race["finalists"]) == 1
    assert race["spent_steps"] <= race["budget"] * race["full_steps"]


def test_workers_reaching_the_race_together_enqueue_the_finalists_once(tmp_path):
    """Every worker joins with --resume; each used to see an empty race study and enqueue all finalists."""
    import threading

    import optuna

    from kdsearch.search.config import SearchConfig
    from kdsearch.search.race import open_race_study

    url = f"sqlite:///{tmp_path / 'race.db'}"
    config = SearchConfig(storage=url, study_name="together", heartbeat_s=1)
    plan = plan_race(3, 3, full_steps=100, budget=1.0)
    finalists = [_row(i, [1, 1, 1], [8 + 4 * i, 8, 8], 1000 + i) for i in range(3)]
    barrier, errors = threading.Barrier(6), []

    def join() -> None:
        try:
            barrier.wait()
            open_race_study(config, tmp_path, plan, finalists, resume=True)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=join) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    trials = optuna.load_study(study_name="together-race", storage=url).get_trials(deepcopy=False)
    assert sorted(t.user_attrs["finalist"] for t in trials) == [0, 1, 2]
