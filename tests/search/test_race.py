"""The race (kdsearch.search.race): finalists at the budget's edge, the budget, the rungs, the
winner's run going on into its distillation, and a real SIGKILL then --resume."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdsearch.arch import Arch
from kdsearch.distill.checkpoint import load_checkpoint
from kdsearch.rundir import RunDir, WinnerRecord, read_leaderboard
from kdsearch.search.config import SearchConfig
from kdsearch.search.race import (RACE_SEED_OFFSET, SynchronousHalvingPruner, edge_share, gene_distance, is_degenerate,
                                  pick_finalists, plan_race, rung_score)

# four finalists, halved once: two rungs, the top one with two survivors
CONFIG = """\
search: {trials: 8, population: 4, proxy_batch: 16, heartbeat_s: 1, race_eta: 2, race_budget: 2.0}
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
    finalists = pick_finalists(rows, SearchConfig(), 3)
    assert [r["trial"] for r in finalists] == [2, 4, 5]  # no budget: by size, skipping the near-copy
    archs = [Arch.from_json(r["arch"]) for r in finalists]
    assert all(gene_distance(a, b) >= 2 for i, a in enumerate(archs) for b in archs[i + 1:])
    # too few diverse candidates: the near-copy fills the field rather than racing fewer
    assert [r["trial"] for r in pick_finalists(rows[2:4], SearchConfig(), 2)] == [2, 3]


def test_finalists_are_nearest_the_edge_in_the_budgets_own_unit():
    """Under a speed-up budget the slowest students fast enough race, by measured speed-up where the
    search timed them (here overruling the prediction), whatever their parameter count."""
    rows = [
        _row(0, [3, 3, 3], [16, 32, 64], 9000, pred_speedup_b1=4.1, speedup_b1=6.0),  # timed: far from the edge
        _row(1, [1, 1, 1], [8, 8, 8], 500, pred_speedup_b1=4.2, speedup_b1=None),
        _row(2, [2, 2, 2], [16, 16, 16], 3000, pred_speedup_b1=4.05, speedup_b1=None),
        _row(3, [1, 2, 3], [8, 16, 32], 4000, pred_speedup_b1=5.0, speedup_b1=4.4),
    ]
    for row in rows:  # at batch 32 every one is far faster than asked: batch 1 is the edge
        row.update(pred_speedup_b32=9.0, speedup_b32=None)
    config = SearchConfig(speedup=4.0)
    assert edge_share(rows[2], config) == pytest.approx(4.0 / 4.05)
    assert [r["trial"] for r in pick_finalists(rows, config, 3)] == [2, 1, 3]
    assert [r["trial"] for r in pick_finalists(rows, SearchConfig(max_params=10000), 3)] == [0, 3, 2]


@pytest.mark.parametrize("finalists,eta,budget", [(3, 3, 1.25), (9, 3, 1.25), (9, 3, 1.5), (5, 2, 2.0), (27, 3, 1.25)])
def test_the_race_and_the_winners_distillation_fit_the_budget_in_steps(finalists, eta, budget):
    plan = plan_race(finalists, eta, full_steps=1000, budget=budget)
    assert plan.total_steps <= budget * 1000
    assert plan.total_steps == plan.planned_steps + 1000 - plan.rungs[-1]  # the winner's race steps are not repeated
    assert plan.survivors[0] == finalists and min(plan.survivors) >= 2  # no rung trains a single survivor
    assert all(b == a * eta for a, b in zip(plan.rungs, plan.rungs[1:]))
    bigger = plan_race(finalists, eta, full_steps=1000, budget=1 + 2 * (budget - 1))
    assert bigger.rungs[0] >= 2 * plan.rungs[0] - 1  # the budget is spent, not left over


def test_a_race_too_small_for_its_finalists_is_refused():
    from kdsearch.errors import UsageError

    with pytest.raises(UsageError, match=r"--race-budget .*must be at least 2\.2, not 1\.25"):
        plan_race(9, 3, full_steps=10, budget=1.25)
    with pytest.raises(UsageError, match="more than 1"):
        SearchConfig(race=3, race_budget=1.0)
    assert SearchConfig(race=0, race_budget=1.0).race_budget == 1.0  # a run.yaml of a run without a race still loads


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
            "--race", "4", "--out", str(out), "--quiet"]


def test_race_end_to_end(tmp_path, fashion_npz, config_file, cli):
    out = tmp_path / "raced"
    code, _, err = cli(*_search_args(out, f"npz:{fashion_npz}", config_file))
    assert code == 0, err
    run = RunDir(out)
    winner = WinnerRecord.load(run.winner)
    race = winner.race
    assert race is not None and race["rungs"][1] == 2 * race["rungs"][0] and race["survivors"] == [4, 2]
    assert race["spent_steps"] == sum(f["rungs"][-1]["step"] for f in race["finalists"])
    total = race["spent_steps"] + race["full_steps"] - race["rungs"][-1]
    assert race["total_distillations"] == pytest.approx(total / race["full_steps"])
    assert race["total_distillations"] <= race["budget"]
    assert race["seed"] == RACE_SEED_OFFSET  # --seed 0: a seed no ground-truth run uses
    states = {f["finalist"]: f for f in race["finalists"]}
    top = [f for f in states.values() if f["rung_reached"] == 1]
    assert len(top) == 2 and all(f["state"] == "complete" for f in top)  # two survivors at the top rung
    won = [f for f in top if f["arch"] == Arch.from_dict(winner.arch).key]
    assert len(won) == 1 and race["winner"] == won[0]["arch"]
    assert min(top, key=lambda f: (sum(r["train_loss_sum"] for r in f["rungs"]), f["finalist"])) == won[0]
    assert race["continuation"]["checkpoint"] == f"finalist-{won[0]['finalist']}/last.ckpt"
    assert race["continuation"]["step"] == race["rungs"][-1]
    assert winner.init == won[0]["init"]  # winner.json: what the winner takes from the teacher
    for f in states.values():
        if f["state"] == "pruned":
            assert f["rung_reached"] == 0 and len(f["rungs"]) == 1  # eliminated at the lower rung, never trained on
            state = load_checkpoint(run.race / f"finalist-{f['finalist']}" / "last.ckpt")
            assert state["epoch"] * race["full_steps"] + state["step"] == race["rungs"][0]
        assert all(math.isfinite(r["val_acc"]) and r["train_loss_sum"] > 0 for r in f["rungs"])
        assert f["init"]["mode"] == "inherit" and f["init"]["fraction"] > 0  # as --init auto distils them
    assert race["rank"] == "tse"  # the default: each rung keeps the lowest sum of training losses
    first = sorted(states.values(), key=lambda f: (f["rungs"][0]["train_loss_sum"], f["finalist"]))
    assert {f["finalist"] for f in first[:2]} == {f["finalist"] for f in top}
    rows = read_leaderboard(run.leaderboard)
    assert rows[0]["arch"] == won[0]["arch"] and rows[0]["race_rung"] == 1
    assert rows[0]["race_tse_1"] == pytest.approx(sum(r["train_loss_sum"] for r in won[0]["rungs"]))
    assert sum(r["race_finalist"] is not None for r in {r["arch"]: r for r in rows}.values()) == 4
    assert (run.race / "rungs.png").stat().st_size > 0
    archs = [Arch.from_json(f["arch"]) for f in race["finalists"]]
    assert len({a.key for a in archs}) == 4

    # the winner's distillation goes on from its race run: the same weights as one straight run with the race's seed
    code, said, err = cli("distill", out)
    assert code == 0, err
    assert "goes on from the race's run of the winner" in " ".join((said + err).split())
    straight = tmp_path / "straight"
    (tmp_path / "winner.json").write_text(json.dumps(winner.arch))
    code, _, err = cli("distill", "--teacher", "resnet8", "--data", f"npz:{fashion_npz}", "--subset", "256",
                       "--config", config_file, "--student", tmp_path / "winner.json", "--seed", RACE_SEED_OFFSET,
                       "--out", straight, "--quiet")
    assert code == 0, err
    went_on = load_checkpoint(run.distill / "last.ckpt")["model"]
    for k, v in load_checkpoint(RunDir(straight).distill / "last.ckpt")["model"].items():
        assert torch.allclose(went_on[k], v, atol=1e-6), k


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
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (out / "race").glob("finalist-*/last.ckpt")}
    assert finished
    assert not RunDir(out).winner.exists() or WinnerRecord.load(RunDir(out).winner).race is None
    done = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    race = WinnerRecord.load(RunDir(out).winner).race
    assert race is not None
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "race").glob("finalist-*/last.ckpt")}
    out_at_first = [f"finalist-{f['finalist']}" for f in race["finalists"] if f["rung_reached"] == 0]
    assert all(after[k] == finished[k] for k in out_at_first if k in finished)  # finished rungs were not trained again
    race = WinnerRecord.load(RunDir(out).winner).race
    assert sum(f["state"] == "complete" for f in race["finalists"]) == 2
    assert race["total_distillations"] <= race["budget"]


def test_workers_reaching_the_race_together_enqueue_the_finalists_once(tmp_path):
    """Every worker joins with --resume; each used to see an empty race study and enqueue all finalists."""
    import threading

    import optuna

    from kdsearch.search.config import SearchConfig
    from kdsearch.search.race import open_race_study

    url = f"sqlite:///{tmp_path / 'race.db'}"
    config = SearchConfig(storage=url, study_name="together", heartbeat_s=1)
    plan = plan_race(3, 3, full_steps=100, budget=1.25)
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


def test_a_run_under_a_speed_budget_races_timed_finalists_and_distils_on_from_the_winner(tmp_path, fashion_npz, cli):
    """The tiny preset budgets speed: every finalist is timed for real before it races, and the
    distill stage goes on from the winner's race run instead of starting over."""
    out = tmp_path / "run"
    code, said, err = cli("run", "--preset", "tiny", "--data", f"npz:{fashion_npz}", "--race", "2", "--out", out)
    assert code == 0, err
    run = RunDir(out)
    race = WinnerRecord.load(run.winner).race
    assert race is not None and race["survivors"] == [2] and race["total_distillations"] <= race["budget"]
    rows = {r["arch"]: r for r in read_leaderboard(run.leaderboard)}
    for f in race["finalists"]:
        assert rows[f["arch"]]["ms_b1"] is not None  # timed in ONNX Runtime, not only predicted
    assert "goes on from the race's run of the winner" in " ".join((said + err).split())
    state = load_checkpoint(run.distill / "last.ckpt")
    assert state["config"]["seed"] == race["seed"] == RACE_SEED_OFFSET
    assert state["loss_sum"] > 0 and (run.root / "summary.json").exists()
