"""Race v2 with continuation (c) against the largest student (b), both inherited, at equal total steps.

Setting: the race benchmark's 30 ``resnet_cifar`` archs, the quick preset's teacher, Fashion-MNIST
(5,000 images), the ground truth's recipe: one distillation is 234 optimizer steps (3 epochs).

- (c) kdsearch's race, ``--race 6`` (eta 3, ``--race-budget 4/3``, ranked by summed training loss):
  six finalists nearest the budget's edge train to step 11, two go on to step 33, and the winner's run
  goes on into its distillation: 311 optimizer steps in all. A finalist trains the distillation's own
  schedule from step 0 at the race seed (1000 + training seed), so up to any rung it takes the same
  seeded steps as the learning-curve run of its arch at that seed
  (``kdsearch correlate --config benchmarks/race_truth/resnet_cifar_curves_inherit[_s1001|_s1002].yaml``),
  and the winner's continued distillation is that run to its end (``tests/search/test_race.py``: the
  continued distillation equals a straight one bit for bit). So each race is replayed from the curves:
  the winner is ``race_sim.race_pick`` (kdsearch's own ``pick_finalists`` and ``plan_race``) and the
  shipped student's test top-1 is that curve run's. ``--real N`` runs N of the races for real
  (``run_race``, then ``distill_student`` on from the winner's checkpoint, as ``kdsearch run`` does)
  and checks the replay's winner and test top-1 against them.
- (b) the largest arch within the budget, inherited, distilled 4 epochs: 312 optimizer steps
  (``--train-largest``, rows in ``race_truth/resnet_cifar_inherit_4ep.jsonl``).
- For reference, at 234 steps: the ground truths' largest, inherited and fresh (arms (b) and (a) of
  ``inherit_proof.py``).

Draws: ``race_sim``'s (``inherit_proof.budget_draws``: pools of 20 archs; 40 params, 40 FLOPs and 40
speed-up budgets, 3–6× at batch 1 and 32). Per draw and training seed s (0, 1, 2) the race runs at
seed 1000 + s; (c) − (b) is paired by draw and seed, its 95 % interval a bootstrap over draws and seeds.

    OMP_NUM_THREADS=1 python benchmarks/race_arms.py --train-largest --shard 0/2   # and 1/2, in parallel
    OMP_NUM_THREADS=1 python benchmarks/race_arms.py --real 3
    python benchmarks/race_arms.py --collect --json benchmarks/race_arms.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from kdsearch.files import append_line

from inherit_proof import SETTINGS, accuracies, budget_draws, label, largest, read_rows, shown
from race_proof import HERE, _interval, feasible
from race_sim import FULL_STEPS, RACE_SEED, curves_path, load_curves, race_pick, race_rows, search_config
from speed_rules import attach_latency

RACE = {"k": 6, "eta": 3, "budget": 4 / 3, "rank": "tse"}  # 311 optimizer steps with the winner's distillation
LONG_EPOCHS = 4  # (b): 4 epochs of 78 steps = 312 optimizer steps, the race's 311 rounded up to a whole epoch
SEEDS = (0, 1, 2)
KINDS = ("params", "speedup", "flops")
LONG = HERE / "resnet_cifar_inherit_4ep.jsonl"
RACED = HERE / "resnet_cifar_curves_inherit_students.jsonl"  # the curve runs' test top-1, every race seed
REAL = HERE / "race_arms_real.jsonl"
WORK = Path("runs/race_arms")


def curve_run(seed: int) -> Path:
    return Path("runs/race_curves") / ("inherit" if seed == RACE_SEED else f"inherit_s{seed}") / "correlate"


def collect() -> None:
    """Copy the curve runs (curves and test top-1) and the sharded 4-epoch rows into race_truth/."""
    rows = []
    for s in SEEDS:
        run = curve_run(RACE_SEED + s)
        if s:  # seed 1000's curves are race_sim's, collected there
            shutil.copyfile(run / "curves.jsonl", curves_path("inherit", RACE_SEED + s))
        rows += read_rows(run / "students.jsonl")
    write_rows(RACED, rows)
    write_rows(LONG, [r for shard in sorted(WORK.glob("long-shard*.jsonl")) for r in read_rows(shard)])


def write_rows(path: Path, rows: list[dict]) -> None:
    from kdsearch.files import write_text

    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in sorted(rows, key=lambda r: (r["seed"], r["key"]))))
    print(f"-> {shown(path)} ({len(rows)} rows)")


def load_setting():
    """Archs (with speed-ups at batch 1 and 32), ``by_key`` and the draws per budget kind."""
    setting = SETTINGS["resnet_cifar"]
    archs = list(accuracies(read_rows(setting.inherited)).values())
    attach_latency({"resnet_cifar": archs}, json.loads(setting.latency.read_text()), (1, 32))
    draws, _ = budget_draws(archs, "resnet_cifar", 40, 20, 3.0, 6.0, 0)
    return archs, {a["key"]: a for a in archs}, draws


def load_runtime(recipe: Path = SETTINGS["resnet_cifar"].inherited_config):
    """The dataset, teacher and correlate study (its ``train`` is the recipe) of a ground truth's config
    (default: the inherited ``resnet_cifar_inherit.yaml``)."""
    import torch
    import yaml

    from kdsearch.pipeline.config import config_from_dict
    from kdsearch.pipeline.stages import load_run_dataset
    from kdsearch.spaces.model_files import load_teacher

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    config = config_from_dict(yaml.safe_load(recipe.read_text()))
    dataset = load_run_dataset(config)
    teacher = load_teacher(config.teacher, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                           image_size=dataset.image_size)
    return dataset, teacher, config.correlate


def train_largest(by_key: dict, draws: dict, shard: tuple[int, int]) -> None:
    """Distil every draw's largest arch for LONG_EPOCHS at each seed (resumable; one shard's share)."""
    from kdsearch.arch import Arch
    from kdsearch.distill.stage import distill_student
    from kdsearch.rundir import CHECKPOINT

    keys = sorted({largest(d, by_key) for kind in KINDS for d in draws[kind]}, key=lambda k: by_key[k]["params"])
    out = WORK / f"long-shard{shard[0]}.jsonl"
    done = {(r["key"], r["seed"]) for r in (read_rows(out) if out.exists() else [])}
    todo = [(k, s) for s in SEEDS for k in keys][shard[0]::shard[1]]
    print(f"{len(keys)} largest archs × {len(SEEDS)} seeds; shard {shard[0]}/{shard[1]}: "
          f"{sum(t not in done for t in todo)} of {len(todo)} to train", flush=True)
    dataset, teacher, study = load_runtime()
    recipe = study.train
    for key, seed in todo:
        if (key, seed) in done:
            continue
        work = WORK / "long" / f"{zlib.crc32(key.encode()):08x}-s{seed}"
        config = replace(recipe, epochs=LONG_EPOCHS, seed=seed)
        m = distill_student(Arch.from_dict(by_key[key]["arch"]), teacher, dataset, work, config,
                            resume=(work / CHECKPOINT).exists(), space_spec="resnet_cifar")
        append_line(out, {"key": key, "arch": by_key[key]["arch"], "params": by_key[key]["params"],
                          "flops": by_key[key]["flops"], "seed": seed, "epochs": LONG_EPOCHS,
                          "test_acc": m["test_acc"], "val_acc": m["val_acc"]})
        print(f"{label(by_key[key])} seed {seed}: test top-1 {100 * m['test_acc']:.2f}", flush=True)


def real_races(n: int, by_key: dict, draws: dict, space_spec: str = "resnet_cifar", out: Path = REAL,
               work: Path = WORK / "real", recipe: Path = SETTINGS["resnet_cifar"].inherited_config,
               init: str | None = None) -> None:
    """Run the first ``n`` draws' races for real at race seed 1000 (alternating params and speed-up
    budgets) over the archs of ``space_spec`` and continue each winner into its distillation, with the
    teacher, data and recipe of the config ``recipe`` (its init unless ``init`` is given); append what
    happened to ``out``."""
    from kdsearch.arch import Arch
    from kdsearch.distill.stage import distill_student
    from kdsearch.rundir import CHECKPOINT
    from kdsearch.search.race import finalist_dir, run_race

    done = {(r["kind"], r["draw"]) for r in (read_rows(out) if out.exists() else [])}
    order = [(kind, i) for i in range(len(draws["params"])) for kind in ("params", "speedup")][:n]
    dataset, teacher, study = load_runtime(recipe)
    train_recipe = study.train
    for kind, i in order:
        if (kind, i) in done:
            continue
        draw = draws[kind][i]
        rows = race_rows(draw, by_key)
        config = replace(search_config(draw), race=RACE["k"], race_eta=RACE["eta"], race_budget=RACE["budget"],
                         race_rank=RACE["rank"], space=space_spec, study_name=f"{kind}-{i}")
        race_dir = work / f"{kind}-{i}"
        train = replace(train_recipe, seed=0, init=init or train_recipe.init)
        result = run_race(rows, teacher, dataset, race_dir, config, train, space_spec=space_spec, resume=True)
        record = result.record()
        winner = next(r for r in rows if r["arch"] == result.winner["arch"])
        finalist = next(f["finalist"] for f in record["finalists"]
                        if f["arch"] == record["winner"] and f["state"] == "complete")
        distill = race_dir / "distill"
        distill.mkdir(parents=True, exist_ok=True)
        if not (distill / CHECKPOINT).exists():
            shutil.copyfile(finalist_dir(race_dir, finalist) / CHECKPOINT, distill / CHECKPOINT)
        m = distill_student(Arch.from_dict(by_key[winner["key"]]["arch"]), teacher, dataset, distill,
                            replace(train, seed=record["seed"]), resume=True, space_spec=space_spec)
        row = {"kind": kind, "draw": i, "budget": draw["budget_text"], "winner": winner["key"],
               "test_acc": m["test_acc"], "total_steps": round(record["total_distillations"] * record["full_steps"]),
               "total_distillations": record["total_distillations"], "seed": record["seed"]}
        append_line(out, row)
        print(f"{kind} draw {i}: winner {label(by_key[winner['key']])}, test top-1 {100 * m['test_acc']:.2f}", flush=True)


def race_runs() -> tuple[list[dict], dict]:
    """Per seed, the curves of every arch at its race seed; and (key, race seed) -> the curve run's test top-1."""
    return ([load_curves("inherit", RACE_SEED + s) for s in SEEDS],
            {(r["key"], r["seed"]): r["test_acc"] for r in read_rows(RACED)})


def replay(by_key: dict, draws: dict, runs: tuple[list[dict], dict], race: dict = RACE, floor: float = 0.0) -> dict:
    """(kind, draw, seed) -> the replayed race's winner and its shipped test top-1 (fraction), from
    ``runs`` (:func:`race_runs`); with ``floor``, only archs using at least that share of the budget race
    (``largest`` if under two do)."""
    from kdsearch.search.race import edge_share

    curves, raced = runs
    out = {}
    for s in SEEDS:
        for kind in KINDS:
            for i, draw in enumerate(draws[kind]):
                near = {a["key"]: a for a in feasible(draw, by_key)
                        if edge_share(a, search_config(draw)) >= floor}
                key = (race_pick({**draw, "pool": list(near)}, by_key, curves[s], race["k"], race["eta"],
                                 race["budget"], race["rank"]) if len(near) >= 2 else None) or largest(draw, by_key)
                out[(kind, i, s)] = {"winner": key, "test_acc": raced[(key, RACE_SEED + s)]}
    return out


def variants(by_key: dict, draws: dict, runs: tuple[list[dict], dict], long: dict) -> list[dict]:
    """(c) − (b) for every race shape that costs about the same (``--race-budget`` 4/3), per kind of budget."""
    rows = []
    for k, eta, rank, floor in itertools.product((2, 3, 4, 6), (2, 3), ("tse", "val"), (0.0, 0.5, 0.75)):
        race = {"k": k, "eta": eta, "budget": RACE["budget"], "rank": rank}
        replayed = replay(by_key, draws, runs, race, floor)
        row = {**race, "floor": floor}
        for kind in KINDS:
            diff = [100 * replayed[(kind, i, s)]["test_acc"] - long[(largest(d, by_key), s)]
                    for i, d in enumerate(draws[kind]) for s in SEEDS]
            row[kind] = float(np.mean(diff))
        rows.append(row)
        print(f"K {k} eta {eta} {rank} floor {floor:g}: " + ", ".join(f"{kind} {row[kind]:+.2f}" for kind in KINDS))
    return rows


def bootstrap(diff: np.ndarray, replicates: int, seed: int) -> list[float] | None:
    """95 % interval of the mean of ``diff`` (draws × seeds), resampling draws and seeds."""
    rng = np.random.default_rng(seed)
    n, s = diff.shape
    means = [float(diff[rng.integers(0, n, n)][:, rng.integers(0, s, s)].mean()) for _ in range(replicates)]
    return _interval(means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", action="store_true", help="copy the finished runs into benchmarks/race_truth first")
    parser.add_argument("--train-largest", action="store_true", help="distil arm (b): the draws' largest archs, 4 epochs")
    parser.add_argument("--shard", default="0/1", help="i/n: train every n-th of arm (b)'s runs, from the i-th")
    parser.add_argument("--real", type=int, default=0, help="race this many draws for real (seed 1000), to check the replay")
    parser.add_argument("--variants", action="store_true", help="also replay other race shapes of the same cost")
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    _, by_key, draws = load_setting()
    if args.train_largest:
        train_largest(by_key, draws, tuple(int(x) for x in args.shard.split("/")))
        return
    if args.real:
        real_races(args.real, by_key, draws)
        return
    if args.collect:
        collect()
    runs = race_runs()
    replayed = replay(by_key, draws, runs)
    setting = SETTINGS["resnet_cifar"]
    long = {(r["key"], r["seed"]): 100 * r["test_acc"] for r in read_rows(LONG)}
    inherited = accuracies(read_rows(setting.inherited))
    fresh = accuracies(read_rows(setting.fresh))
    print(f"(c) race K {RACE['k']}, eta {RACE['eta']}, budget {RACE['budget']:.3g}, {RACE['rank']}: 311 steps; "
          f"(b) largest inherited, {LONG_EPOCHS} epochs: 312 steps. Test top-1 (points), mean over draws and "
          f"seeds {','.join(map(str, SEEDS))}; (c) − (b) bootstrap 95 % CI over draws and seeds")
    print(f"{'budget':8s} {'draws':>5s} {'(c) race':>8s} {'(b) 312':>8s} {'c − b':>6s} {'95% CI':>16s} {'W/T/L':>9s}"
          f" {'(b) 234':>8s} {'c − b234':>8s} {'95% CI':>16s} {'(a) 234':>8s} {'same arch':>9s}")
    kinds = {}
    for kind in KINDS:
        ds = draws[kind]
        big = [largest(d, by_key) for d in ds]
        c = np.array([[100 * replayed[(kind, i, s)]["test_acc"] for s in SEEDS] for i in range(len(ds))])
        b = np.array([[long[(k, s)] for s in SEEDS] for k in big])
        b234 = np.array([[inherited[k]["accs"][s] for s in SEEDS] for k in big])
        a234 = np.array([[fresh[k]["accs"][s] for s in SEEDS] for k in big])
        diff = c - b
        same = sum(replayed[(kind, i, s)]["winner"] == big[i] for i in range(len(ds)) for s in SEEDS)
        m = {"draws": len(ds), "race_top1": float(c.mean()), "largest_312_top1": float(b.mean()),
             "difference": float(diff.mean()), "difference_ci95": bootstrap(diff, args.replicates, 0),
             "wins": int((diff > 1e-9).sum()), "ties": int((abs(diff) <= 1e-9).sum()),
             "losses": int((diff < -1e-9).sum()), "largest_234_inherited_top1": float(b234.mean()),
             "largest_234_fresh_top1": float(a234.mean()),
             "race_minus_largest_234": float((c - b234).mean()),
             "race_minus_largest_234_ci95": bootstrap(c - b234, args.replicates, 0), "race_picked_largest": int(same),
             "race_distinct_winners": len({replayed[(kind, i, s)]["winner"] for i in range(len(ds)) for s in SEEDS}),
             "largest_distinct": len(set(big))}
        kinds[kind] = m
        (lo, hi), (lo2, hi2) = m["difference_ci95"], m["race_minus_largest_234_ci95"]
        print(f"{kind:8s} {len(ds):5d} {m['race_top1']:8.2f} {m['largest_312_top1']:8.2f} {m['difference']:+6.2f} "
              f"[{lo:+6.2f}, {hi:+6.2f}] {m['wins']:3d}/{m['ties']}/{m['losses']:<3d} {m['largest_234_inherited_top1']:8.2f} "
              f"{m['race_minus_largest_234']:+8.2f} [{lo2:+6.2f}, {hi2:+6.2f}] {m['largest_234_fresh_top1']:8.2f} "
              f"{same:5d}/{3 * len(ds)}")
    longer = [v - inherited[k]["accs"][s] for (k, s), v in long.items()]
    print(f"4 epochs against 3 on the {len(long) // len(SEEDS)} largest archs, same seeds: {np.mean(longer):+.2f} points")
    real = read_rows(REAL) if REAL.exists() else []
    for r in real:
        r["replay_winner"], r["replay_test_acc"] = (replayed[(r["kind"], r["draw"], 0)][k] for k in ("winner", "test_acc"))
        r["reproduced"] = r["winner"] == r["replay_winner"] and r["test_acc"] == r["replay_test_acc"]
        print(f"real race, {r['kind']} draw {r['draw']} ({r['budget']}): winner {label(by_key[r['winner']])} "
              f"{100 * r['test_acc']:.2f}, replay {label(by_key[r['replay_winner']])} {100 * r['replay_test_acc']:.2f}, "
              f"{r['total_steps']} steps")
    agree = [r for r in real if r["reproduced"]]
    if real:
        print(f"real races: {len(real)}; the replay's winner and test top-1 reproduced exactly in {len(agree)}")
    shapes = variants(by_key, draws, runs, long) if args.variants else None
    if args.json:
        from kdsearch.files import write_json

        write_json(args.json, {
            "command": "python benchmarks/race_arms.py " + " ".join(sys.argv[1:]), "race": RACE, "race_steps": 311,
            "largest_steps": LONG_EPOCHS * FULL_STEPS // 3,  # the recipe's 3 epochs are FULL_STEPS "full_steps": FULL_STEPS, "seeds": list(SEEDS),
            "largest_4_minus_3_epochs": float(np.mean(longer)), "inputs": {"largest_312": shown(LONG), "raced": shown(RACED),
                       "curves": [shown(curves_path("inherit", RACE_SEED + s)) for s in SEEDS]},
            "unit": "test top-1, points", "kinds": kinds, "real_races": real, "real_reproduced": len(agree),
            "variants": shapes})


if __name__ == "__main__":
    main()
