"""Arm (d): the pruned space's race against the largest ``resnet_cifar`` students, at equal total steps.

Setting: the quick preset's teacher (``teachers/fashion-mnist-resnet20``), Fashion-MNIST (5,000 images),
the ground truth's recipe: one distillation is 234 optimizer steps (3 epochs).

- (d) ``--space pruned`` with kdsearch's race, ``--race 6`` (eta 3, ``--race-budget 4/3``, ranked by
  summed training loss): the candidates are prunings of the teacher (a kept share per channel group,
  a drop flag per residual block), each starting from the teacher's weights. 30 of them
  (``race_truth/pruned.archs.json``) were drawn as the ``resnet_cifar`` ground truth draws its archs,
  near the same params and FLOPs edges (``race_truth/pruned_curves.yaml``), timed against the teacher
  (``race_truth_latency.py --space pruned``), and distilled once at each race seed 1000, 1001, 1002 with
  learning curves (``kdsearch correlate --config benchmarks/race_truth/pruned_curves[_s1001|_s1002].yaml``).
  Each race is replayed from those curves exactly as ``race_arms.py`` replays arm (c) (checked there
  against real races): 311 optimizer steps, the shipped student's test top-1 its curve run's.
- Its budgets are arm (c)'s: the same 40 params, 40 FLOPs and 40 speed-up budgets (3–6× at batch 1 and
  32). Each draw's candidates are 20 of the 30 prunings, seeded by the draw.
- Against: (b) the largest ``resnet_cifar`` arch within the budget, inherited, 4 epochs = 312 steps
  (``race_arms.py``); (c) the ``resnet_cifar`` race, 311 steps. And at one distillation (234 steps): the
  largest pruning within the budget (its curve run) against the largest ``resnet_cifar`` arch, inherited
  (b) and fresh (a).

Differences are paired by budget draw and seed index, 95 % intervals a bootstrap over draws and seeds.

    OMP_NUM_THREADS=1 python benchmarks/race_truth_latency.py --space pruned --config pruned_curves.yaml \\
        --json benchmarks/race_truth/pruned_latency.json
    OMP_NUM_THREADS=1 kdsearch correlate --config benchmarks/race_truth/pruned_curves.yaml --out runs/race_curves/pruned
    (the same for _s1001 and _s1002, into runs/race_curves/pruned_s1001 and _s1002, in parallel)
    python benchmarks/race_pruned.py --collect --json benchmarks/race_pruned.json
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np

from inherit_proof import SETTINGS, accuracies, largest, read_rows, shown
from race_arms import KINDS, LONG, RACE, SEEDS, WORK, bootstrap, load_setting, race_runs, real_races, replay, write_rows
from race_proof import HERE, feasible
from race_sim import RACE_SEED, race_pick, read_curves
from speed_rules import attach_latency

POOL = 20  # prunings each draw's search offers the race, as arm (c)'s pools of 20 archs
ARCHS = HERE / "pruned.archs.json"
LATENCY = HERE / "pruned_latency.json"
STUDENTS = HERE / "pruned_curves_students.jsonl"  # the curve runs' test top-1, every race seed
SPACE = "benchmarks/race_truth/pruned_space.yaml"
REAL = HERE / "race_pruned_real.jsonl"


def curves_file(seed: int) -> Path:
    return HERE / ("pruned_curves.jsonl" if seed == RACE_SEED else f"pruned_curves_s{seed}.jsonl")


def curve_run(seed: int) -> Path:
    return Path("runs/race_curves") / ("pruned" if seed == RACE_SEED else f"pruned_s{seed}") / "correlate"


def collect() -> None:
    """Copy the three curve runs' curves and students into race_truth/."""
    rows = []
    for s in SEEDS:
        run = curve_run(RACE_SEED + s)
        shutil.copyfile(run / "curves.jsonl", curves_file(RACE_SEED + s))
        rows += read_rows(run / "students.jsonl")
    write_rows(STUDENTS, rows)


def load_pruned() -> dict[str, dict]:
    """The 30 prunings by key, with params, FLOPs and speed-ups at batch 1 and 32."""
    archs = json.loads(ARCHS.read_text())
    attach_latency({"pruned": archs}, json.loads(LATENCY.read_text()), (1, 32))
    return {a["key"]: a for a in archs}


def pruned_draws(draws: dict, pruned: dict[str, dict]) -> dict[str, list[dict]]:
    """Arm (c)'s budgets, each with a seeded pool of POOL prunings instead of ``resnet_cifar`` archs."""
    keys = sorted(pruned)
    out = {}
    for kind in KINDS:
        out[kind] = []
        for i, d in enumerate(draws[kind]):
            rng = random.Random(f"{kind}-{i}")
            out[kind].append({**d, "pool": rng.sample(keys, POOL)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", action="store_true", help="copy the finished curve runs into race_truth/ first")
    parser.add_argument("--real", type=int, default=0, help="race this many draws for real (seed 1000), to check the replay")
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.collect:
        collect()
    _, by_key, draws = load_setting()
    pruned = load_pruned()
    pdraws = pruned_draws(draws, pruned)
    if args.real:
        real_races(args.real, pruned, pdraws, SPACE, REAL, WORK / "real-pruned")
        return
    curves = [read_curves(curves_file(RACE_SEED + s)) for s in SEEDS]
    raw = {(r["key"], r["seed"]): r["test_acc"] for r in read_rows(STUDENTS)}  # fractions, as the runs wrote them
    tested = {k: 100 * v for k, v in raw.items()}
    long = {(r["key"], r["seed"]): 100 * r["test_acc"] for r in read_rows(LONG)}
    c_replayed = replay(by_key, draws, race_runs())
    inherited = accuracies(read_rows(SETTINGS["resnet_cifar"].inherited))
    fresh = accuracies(read_rows(SETTINGS["resnet_cifar"].fresh))

    print(f"(d) pruned race K {RACE['k']}, eta {RACE['eta']}, budget {RACE['budget']:.3g}, {RACE['rank']}: 311 steps, "
          f"against (b) the largest resnet_cifar inherited, 312 steps, and (c) its race, 311. At 234 steps: the largest "
          "pruning against the largest resnet_cifar, inherited (b) and fresh (a). Test top-1 (points), mean over draws "
          f"and seeds {','.join(map(str, SEEDS))}; 95 % CI over draws and seeds")
    kinds, shipped = {}, {}
    for kind in KINDS:
        ds, pds = draws[kind], pdraws[kind]
        big = [largest(d, by_key) for d in ds]
        inside = [feasible(pd, pruned) for pd in pds]
        raceable = [len(f) >= 2 for f in inside]
        d_race, d_big = np.full((len(ds), len(SEEDS)), np.nan), np.full((len(ds), len(SEEDS)), np.nan)
        winners = []
        for i, pd in enumerate(pds):
            if not inside[i]:
                continue  # nothing of the pool fits: the pruned search would ship nothing
            for j, s in enumerate(SEEDS):
                key = (race_pick(pd, pruned, curves[j], RACE["k"], RACE["eta"], RACE["budget"], RACE["rank"])
                       if raceable[i] else None) or largest(pd, pruned)
                winners.append(key)
                shipped[(kind, i, s)] = key
                d_race[i, j] = tested[(key, RACE_SEED + s)]
                d_big[i, j] = tested[(largest(pd, pruned), RACE_SEED + s)]
        ok = ~np.isnan(d_race[:, 0])
        b312 = np.array([[long[(k, s)] for s in SEEDS] for k in big])
        c311 = np.array([[100 * c_replayed[(kind, i, s)]["test_acc"] for s in SEEDS] for i in range(len(ds))])
        b234 = np.array([[inherited[k]["accs"][s] for s in SEEDS] for k in big])
        a234 = np.array([[fresh[k]["accs"][s] for s in SEEDS] for k in big])

        def versus(x: np.ndarray, y: np.ndarray) -> dict:
            diff = (x - y)[ok]
            return {"difference": float(diff.mean()), "ci95": bootstrap(diff, args.replicates, 0),
                    "wins": int((diff > 1e-9).sum()), "ties": int((abs(diff) <= 1e-9).sum()),
                    "losses": int((diff < -1e-9).sum())}

        m = {"draws": len(ds), "draws_with_a_pruning": int(ok.sum()), "draws_raced": int(sum(raceable)),
             "pruned_race_311": float(d_race[ok].mean()), "largest_312": float(b312[ok].mean()),
             "race_311": float(c311[ok].mean()), "pruned_largest_234": float(d_big[ok].mean()),
             "largest_234_inherited": float(b234[ok].mean()), "largest_234_fresh": float(a234[ok].mean()),
             "d_minus_b_312": versus(d_race, b312), "d_minus_c_311": versus(d_race, c311),
             "pruned_largest_minus_b_234": versus(d_big, b234), "pruned_largest_minus_a_234": versus(d_big, a234),
             "pruned_race_minus_pruned_largest": versus(d_race, d_big),
             "distinct_winners": len(set(winners)),
             "winner_params": [int(np.min([pruned[k]["params"] for k in winners])),
                               int(np.max([pruned[k]["params"] for k in winners]))]}
        kinds[kind] = m
        print(f"\n{kind}: {m['draws_with_a_pruning']} of {len(ds)} budgets leave a pruning in the pool "
              f"({m['draws_raced']} leave two or more to race); {m['distinct_winners']} distinct winners, "
              f"{m['winner_params'][0]:,}–{m['winner_params'][1]:,} params")
        print(f"  (d) pruned race 311: {m['pruned_race_311']:.2f}   (b) largest 312: {m['largest_312']:.2f}   "
              f"(c) race 311: {m['race_311']:.2f}")
        print(f"  pruned largest 234: {m['pruned_largest_234']:.2f}   (b) 234: {m['largest_234_inherited']:.2f}   "
              f"(a) 234: {m['largest_234_fresh']:.2f}")
        for name in ("d_minus_b_312", "d_minus_c_311", "pruned_largest_minus_b_234", "pruned_largest_minus_a_234",
                     "pruned_race_minus_pruned_largest"):
            v = m[name]
            lo, hi = v["ci95"]
            print(f"  {name:34s} {v['difference']:+6.2f} [{lo:+6.2f}, {hi:+6.2f}]  W/T/L {v['wins']}/{v['ties']}/{v['losses']}")
    real = read_rows(REAL) if REAL.exists() else []
    for r in real:
        key = shipped[(r["kind"], r["draw"], 0)]
        r["replay_winner"], r["replay_test_acc"] = key, raw[(key, RACE_SEED)]
        r["reproduced"] = r["winner"] == key and r["test_acc"] == r["replay_test_acc"]
        print(f"real race, {r['kind']} draw {r['draw']} ({r['budget']}): winner {pruned[r['winner']]['params']:,} params, "
              f"test top-1 {100 * r['test_acc']:.2f}; replay {pruned[key]['params']:,} params, "
              f"{100 * r['replay_test_acc']:.2f}; {r['total_steps']} steps")
    if args.json:
        from kdsearch.files import write_json

        write_json(args.json, {
            "command": "python benchmarks/race_pruned.py " + " ".join(sys.argv[1:]), "race": RACE, "race_steps": 311,
            "largest_steps": 312, "pool": POOL, "seeds": list(SEEDS), "race_seeds": [RACE_SEED + s for s in SEEDS],
            "inputs": {"archs": shown(ARCHS), "latency": shown(LATENCY), "students": shown(STUDENTS),
                       "curves": [shown(curves_file(RACE_SEED + s)) for s in SEEDS], "largest_312": shown(LONG)},
            "unit": "test top-1, points", "kinds": kinds, "real_races": real,
            "real_reproduced": sum(r["reproduced"] for r in real)})


if __name__ == "__main__":
    main()
