"""Arm (d): the pruned space's race against the largest students of another space, at equal total steps.

Two settings (``--setting``), each with the ground truth's recipe on Fashion-MNIST (5,000 images): one
distillation is 234 optimizer steps (3 epochs).

- ``resnet20`` (default): the quick preset's teacher (``teachers/fashion-mnist-resnet20``) against the
  ``resnet_cifar`` ground truth (``race_arms.py``, ``inherit_proof.py``).
- ``mbconv4``: the second setting's teacher (``benchmarks/race_truth/mbconv4_teacher``, trained by
  ``race_truth/mbconv4_teacher.yaml``) against its ``mbconv`` students (``inherit_mbconv.py``).

Per setting:

- (d) ``--space pruned`` with kdsearch's race, ``--race 6`` (eta 3, ``--race-budget 4/3``, ranked by
  summed training loss): the candidates are prunings of the teacher (a kept share per channel group,
  a drop flag per residual block), each starting from the teacher's weights. 30 of them
  (``race_truth/<name>.archs.json``, name ``pruned`` or ``mbconv4_pruned``) were drawn as the ground
  truth draws its archs, near the same params and FLOPs edges (``race_truth/<name>_curves.yaml``), timed
  against the teacher (``race_truth_latency.py --space <name>``), and distilled once at each race seed
  1000, 1001, 1002 with learning curves (``kdsearch correlate --config
  benchmarks/race_truth/<name>_curves[_s1001|_s1002].yaml``). Each race is replayed from those curves
  exactly as ``race_arms.py`` replays arm (c) (checked there, and here with ``--real``, against real
  races): 311 optimizer steps, the shipped student's test top-1 its curve run's.
- Its budgets are the other arms': ``resnet20`` 40 params, 40 FLOPs and 40 speed-up budgets (3–6× at
  batch 1 and 32); ``mbconv4`` 40 params and 40 speed-up budgets (1.5–2.4×). Each draw's candidates are
  20 of the 30 prunings, seeded by the draw.
- Against: (b) the largest arch of the other space within the budget, inherited, 4 epochs = 312 steps, and
  (c) that space's race, 311 steps (``race_arms.py``; ``race_arms_mbconv4.py`` in ``mbconv4``), each paired
  with the pruned race and with the largest pruning's 234-step run. And at one distillation (234 steps): the
  largest pruning within the budget (its curve run) against the largest arch of the other space, inherited (b)
  and fresh (a), and how many steps that pruning takes to reach (a)'s final validation top-1.

Differences are paired by budget draw and seed index, 95 % intervals a bootstrap over draws and seeds.

    OMP_NUM_THREADS=1 python benchmarks/race_truth_latency.py --space pruned --config pruned_curves.yaml \\
        --json benchmarks/race_truth/pruned_latency.json
    OMP_NUM_THREADS=1 kdsearch correlate --config benchmarks/race_truth/pruned_curves.yaml --out runs/race_curves/pruned
    (the same for _s1001 and _s1002, into runs/race_curves/pruned_s1001 and _s1002, in parallel)
    python benchmarks/race_pruned.py --collect --json benchmarks/race_pruned.json

    # mbconv4: the same with --space mbconv4_pruned --config mbconv4_pruned_curves.yaml --teacher mbconv4,
    # the configs mbconv4_pruned_curves[_s1001|_s1002].yaml into runs/race_curves/mbconv4_pruned[_s1001|_s1002]
    python benchmarks/race_pruned.py --setting mbconv4 --collect --json benchmarks/race_pruned_mbconv4.json
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from inherit_proof import SETTINGS, largest, read_rows, shown
from race_arms import RACE, SEEDS, WORK, bootstrap, load_runtime, load_setting, race_runs, real_races, replay, write_rows
from race_proof import HERE, feasible
from race_sim import FULL_STEPS, RACE_SEED, race_pick, race_rows, read_curves, search_config
from speed_rules import attach_latency

POOL = 20  # prunings each draw's search offers the race, as arm (c)'s pools of 20 archs


@dataclass(frozen=True)
class PrunedSetting:
    """One teacher's prunings (``race_truth/<name>.archs.json`` …) and the arms they are compared with."""

    name: str  # the prunings' files: <name>.archs.json, <name>_latency.json, <name>_curves[_s<seed>].jsonl
    space: str  # the pruned space's YAML, relative to the repository root
    recipe: Path  # the ground truth's config (teacher, data, 234-step recipe), for --real
    kinds: tuple[str, ...]  # kinds of budget the baseline arms were trained for
    json: str  # the default --json

    @property
    def archs(self) -> Path:
        return HERE / f"{self.name}.archs.json"

    @property
    def latency(self) -> Path:
        return HERE / f"{self.name}_latency.json"

    @property
    def students(self) -> Path:  # the curve runs' test top-1, every race seed
        return HERE / f"{self.name}_curves_students.jsonl"

    @property
    def real(self) -> Path:
        return HERE / ("race_pruned_real.jsonl" if self.name == "pruned" else f"race_{self.name}_real.jsonl")

    def curves_file(self, seed: int) -> Path:
        return HERE / (f"{self.name}_curves.jsonl" if seed == RACE_SEED else f"{self.name}_curves_s{seed}.jsonl")

    def curve_run(self, seed: int) -> Path:
        return Path("runs/race_curves") / (self.name if seed == RACE_SEED else f"{self.name}_s{seed}") / "correlate"


PRUNED = {
    "resnet20": PrunedSetting("pruned", "benchmarks/race_truth/pruned_space.yaml",
                              SETTINGS["resnet_cifar"].inherited_config, ("params", "speedup", "flops"),
                              "benchmarks/race_pruned.json"),
    "mbconv4": PrunedSetting("mbconv4_pruned", "benchmarks/race_truth/mbconv4_pruned_space.yaml",
                             HERE / "mbconv4.yaml", ("params", "speedup"), "benchmarks/race_pruned_mbconv4.json"),
}


@dataclass
class Baselines:
    """The other space's students under the same budgets: arm (b) at 312 and 234 steps, (a) at 234, (c) if raced.
    Accuracies are test top-1 in points by (key, seed); ``race`` by (kind, draw, seed)."""

    by_key: dict[str, dict]
    draws: dict[str, list[dict]]
    largest_312: dict[tuple[str, int], float] | None  # None: not trained in this setting
    inherited_234: dict[tuple[str, int], float]
    fresh_234: dict[tuple[str, int], float]
    fresh_val_234: dict[tuple[str, int], float]  # (a)'s final validation top-1, for steps to match
    race: dict[tuple[str, int, int], float] | None
    files: dict[str, str]  # the committed rows behind the arms, for the JSON's inputs


def by_seed(rows: list[dict], field: str = "test_acc") -> dict[tuple[str, int], float]:
    return {(r["key"], r["seed"]): 100 * r[field] for r in rows}


def resnet20_baselines() -> Baselines:
    """Setting 1: ``resnet_cifar`` students of the quick preset's teacher (``race_arms.py``, ``inherit_proof.py``)."""
    from race_arms import LONG

    _, by_key, draws = load_setting()
    c = replay(by_key, draws, race_runs())
    fresh = read_rows(SETTINGS["resnet_cifar"].fresh)
    return Baselines(by_key, draws, largest_312=by_seed(read_rows(LONG)),
                     inherited_234=by_seed(read_rows(SETTINGS["resnet_cifar"].inherited)),
                     fresh_234=by_seed(fresh), fresh_val_234=by_seed(fresh, "val_acc"),
                     race={k: 100 * v["test_acc"] for k, v in c.items()}, files={"largest_312": shown(LONG)})


def mbconv4_baselines() -> Baselines:
    """Setting 2: ``mbconv`` students of the ``mbconv4`` teacher (``inherit_mbconv.py``) and their race
    (``race_arms_mbconv4.py``)."""
    import inherit_mbconv
    import race_arms_mbconv4

    by_key, draws = inherit_mbconv.load()
    rows = read_rows(inherit_mbconv.ROWS)
    fresh = [r for r in rows if r["init"] == "random"]
    races = race_arms_mbconv4.raced(by_key, draws)
    return Baselines(by_key, draws, largest_312=by_seed(read_rows(inherit_mbconv.LONG_ROWS)),
                     inherited_234=by_seed([r for r in rows if r["init"] == "inherit"]),
                     fresh_234=by_seed(fresh), fresh_val_234=by_seed(fresh, "val_acc"),
                     race={(kind, i, s): 100 * races[j][(kind, i)]["test_acc"] for j, s in enumerate(SEEDS)
                           for kind in inherit_mbconv.KINDS for i in range(len(draws[kind]))},
                     files={"largest_234": shown(inherit_mbconv.ROWS), "largest_312": shown(inherit_mbconv.LONG_ROWS),
                            "race": shown(race_arms_mbconv4.RACED)})


BASELINES = {"resnet20": resnet20_baselines, "mbconv4": mbconv4_baselines}


def collect(setting: PrunedSetting, seeds: list[int]) -> None:
    """Copy the curve runs' curves and students at training seeds ``seeds`` into race_truth/."""
    rows = []
    for s in seeds:
        run = setting.curve_run(RACE_SEED + s)
        shutil.copyfile(run / "curves.jsonl", setting.curves_file(RACE_SEED + s))
        rows += read_rows(run / "students.jsonl")
    write_rows(setting.students, rows)


def load_pruned(setting: PrunedSetting) -> dict[str, dict]:
    """The 30 prunings by key, with params, FLOPs and speed-ups at batch 1 and 32."""
    archs = json.loads(setting.archs.read_text())
    attach_latency({setting.name: archs}, json.loads(setting.latency.read_text()), (1, 32))
    return {a["key"]: a for a in archs}


def race_finalists(draws: dict[str, list[dict]], pruned: dict[str, dict], kinds: tuple[str, ...]) -> set[str]:
    """Every pruning kdsearch's race takes to its first rung under some draw that leaves two or more to race."""
    from kdsearch.search.race import pick_finalists

    return {r["key"] for kind in kinds for d in draws[kind] if len(feasible(d, pruned)) >= 2
            for r in pick_finalists(race_rows(d, pruned), search_config(d), RACE["k"])}


def pruned_draws(draws: dict, pruned: dict[str, dict], kinds: tuple[str, ...]) -> dict[str, list[dict]]:
    """The other arms' budgets, each with a seeded pool of POOL prunings instead of their archs."""
    keys = sorted(pruned)
    out = {}
    for kind in kinds:
        out[kind] = []
        for i, d in enumerate(draws[kind]):
            rng = random.Random(f"{kind}-{i}")
            out[kind].append({**d, "pool": rng.sample(keys, POOL)})
    return out


def train_prunings(setting: PrunedSetting, draws: dict[str, list[dict]], pruned: dict[str, dict],
                   shard: tuple[int, int], finalists_too: bool = False) -> None:
    """Distil only the prunings some draw ships as its largest (``finalists_too``: also every race
    finalist), at every race seed, into the curve runs' own directories and files
    (``runs/race_curves/<name>[_s<seed>]/correlate``), so that ``kdsearch correlate`` on the same config
    later trains only the rest. Seed-major, resumable; one shard's share."""
    from kdsearch.arch import Arch
    from kdsearch.rundir import CORRELATE_STUDENTS
    from kdsearch.search.correlate import train_and_record
    from kdsearch.spaces import load_space

    keys = {largest(d, pruned) for kind in setting.kinds for d in draws[kind] if feasible(d, pruned)}
    if finalists_too:
        keys |= race_finalists(draws, pruned, setting.kinds)
    keys = sorted(keys, key=lambda k: pruned[k]["params"])
    todo = [(k, s) for s in SEEDS for k in keys][shard[0]::shard[1]]
    dataset, teacher, study = load_runtime(HERE / f"{setting.name}_curves.yaml")
    space = load_space(study.space)
    for key, s in todo:
        seed = RACE_SEED + s
        out = setting.curve_run(seed)
        students = out / CORRELATE_STUDENTS
        if any(r["key"] == key and r["seed"] == seed for r in (read_rows(students) if students.exists() else [])):
            continue
        out.mkdir(parents=True, exist_ok=True)
        row = train_and_record(Arch.from_dict(pruned[key]["arch"]), seed, space, teacher, dataset, out,
                               replace(study, train=replace(study.train, seed=seed)))  # the seed's own study
        print(f"{row['params']:,} params, seed {seed}: test top-1 {100 * row['test_acc']:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(PRUNED), default="resnet20",
                        help="whose prunings: the quick preset's ResNet20 teacher or the mbconv4 teacher")
    parser.add_argument("--train-largest", action="store_true",
                        help="distil only the prunings the draws ship as their largest, at every race seed")
    parser.add_argument("--train-finalists", action="store_true",
                        help="as --train-largest, and also every pruning the race takes to its first rung")
    parser.add_argument("--shard", default="0/1", help="with --train-*: i/n, train every n-th run from the i-th")
    parser.add_argument("--collect", action="store_true", help="copy the finished curve runs into race_truth/ first")
    parser.add_argument("--real", type=int, default=0, help="race this many draws for real (seed 1000), to check the replay")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="training seeds to judge on (race seed 1000 + each)")
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="where to write the figures (default: the setting's own file)")
    args = parser.parse_args()
    setting = PRUNED[args.setting]
    seeds = [int(x) for x in args.seeds.split(",")]
    if args.collect:
        collect(setting, seeds)
    base = BASELINES[args.setting]()
    pruned = load_pruned(setting)
    pdraws = pruned_draws(base.draws, pruned, setting.kinds)
    if args.train_largest or args.train_finalists:
        train_prunings(setting, pdraws, pruned, tuple(int(x) for x in args.shard.split("/")), args.train_finalists)
        return
    if args.real:
        # a pruning starts from the teacher's weights (init auto), as its curve runs did, whatever the recipe's init
        real_races(args.real, pruned, pdraws, setting.space, setting.real, WORK / f"real-{setting.name}", setting.recipe,
                   init="auto")
        return
    curves = {s: read_curves(setting.curves_file(RACE_SEED + s)) for s in seeds}
    raw = {(r["key"], r["seed"]): r["test_acc"] for r in read_rows(setting.students)}  # fractions, as the runs wrote them
    tested = {k: 100 * v for k, v in raw.items()}
    missing = {k for k in race_finalists(pdraws, pruned, setting.kinds) if any(k not in curves[s] for s in seeds)}
    raced = not missing  # a race is replayed only where every finalist's curve exists at every seed

    print(f"{args.setting}: " + (f"(d) pruned race K {RACE['k']}, eta {RACE['eta']}, budget {RACE['budget']:.3g}, "
          f"{RACE['rank']}: 311 steps, against (b) the largest student of the other space, inherited, 312 steps"
          f"{', and (c) its race, 311' if base.race else ''}. " if raced else
          f"the race is not replayed: {len(missing)} of its finalists have no curve run at every seed. ") +
          "At 234 steps: the largest pruning against the largest student, inherited (b) and fresh (a). Test top-1 "
          f"(points), mean over draws and seeds {args.seeds}; 95 % CI over draws and seeds")
    kinds, shipped = {}, {}
    for kind in setting.kinds:
        ds, pds = base.draws[kind], pdraws[kind]
        big = [largest(d, base.by_key) for d in ds]
        inside = [feasible(pd, pruned) for pd in pds]
        raceable = [len(f) >= 2 for f in inside]
        d_race, d_big = np.full((len(ds), len(seeds)), np.nan), np.full((len(ds), len(seeds)), np.nan)
        winners, to_match = [], []  # to_match: steps the largest pruning takes to reach (a)'s final val top-1
        for i, pd in enumerate(pds):
            if not inside[i]:
                continue  # nothing of the pool fits: the pruned search would ship nothing
            top = largest(pd, pruned)
            for j, s in enumerate(seeds):
                d_big[i, j] = tested[(top, RACE_SEED + s)]
                target = base.fresh_val_234[(big[i], s)]
                to_match.append(next((step for step, v in sorted(curves[s][top]["val"].items())
                                      if 100 * v >= target), None))
                if raced:
                    key = (race_pick(pd, pruned, curves[s], RACE["k"], RACE["eta"], RACE["budget"], RACE["rank"])
                           if raceable[i] else None) or top
                    winners.append(key)
                    shipped[(kind, i, s)] = key
                    d_race[i, j] = tested[(key, RACE_SEED + s)]
        ok = ~np.isnan(d_big[:, 0])
        b234, a234 = (np.array([[arm[(k, s)] for s in seeds] for k in big]) for arm in (base.inherited_234, base.fresh_234))

        def versus(x: np.ndarray, y: np.ndarray) -> dict:
            diff = (x - y)[ok]
            return {"difference": float(diff.mean()), "ci95": bootstrap(diff, args.replicates, 0),
                    "wins": int((diff > 1e-9).sum()), "ties": int((abs(diff) <= 1e-9).sum()),
                    "losses": int((diff < -1e-9).sum())}

        picked = [largest(pd, pruned) for pd, f in zip(pds, inside) if f]
        m = {"draws": len(ds), "draws_with_a_pruning": int(ok.sum()), "draws_raced": int(sum(raceable)),
             "pruned_largest_234": float(d_big[ok].mean()),
             "largest_234_inherited": float(b234[ok].mean()), "largest_234_fresh": float(a234[ok].mean()),
             "pruned_largest_minus_b_234": versus(d_big, b234), "pruned_largest_minus_a_234": versus(d_big, a234),
             "distinct_largest": len(set(picked)),
             "largest_params": [min(pruned[k]["params"] for k in picked), max(pruned[k]["params"] for k in picked)],
             "pruned_steps_to_match_fresh_final_val": {
                 "runs": len(to_match), "never": sum(v is None for v in to_match),
                 "median": float(np.median([v for v in to_match if v is not None])),
                 "at_most_half": sum(v is not None and v <= FULL_STEPS // 2 for v in to_match), "of": FULL_STEPS}}
        if raced:
            m.update({"pruned_race_311": float(d_race[ok].mean()),
                      "pruned_race_minus_pruned_largest": versus(d_race, d_big), "distinct_winners": len(set(winners)),
                      "winner_params": [min(pruned[k]["params"] for k in winners),
                                        max(pruned[k]["params"] for k in winners)]})
        # the largest pruning's 234 steps against the other space's 312 and 311: fewer steps, on the pruning's side
        if base.largest_312:
            b312 = np.array([[base.largest_312[(k, s)] for s in seeds] for k in big])
            m["largest_312"], m["pruned_largest_234_minus_b_312"] = float(b312[ok].mean()), versus(d_big, b312)
            if raced:
                m["d_minus_b_312"] = versus(d_race, b312)
        if base.race:
            c311 = np.array([[base.race[(kind, i, s)] for s in seeds] for i in range(len(ds))])
            m["race_311"], m["pruned_largest_234_minus_c_311"] = float(c311[ok].mean()), versus(d_big, c311)
            if raced:
                m["d_minus_c_311"] = versus(d_race, c311)
        kinds[kind] = m
        print(f"\n{kind}: {m['draws_with_a_pruning']} of {len(ds)} budgets leave a pruning in the pool "
              f"({m['draws_raced']} leave two or more to race); {m['distinct_largest']} distinct largest prunings, "
              f"{m['largest_params'][0]:,}–{m['largest_params'][1]:,} params")
        if raced:
            print(f"  (d) pruned race 311: {m['pruned_race_311']:.2f}, {m['distinct_winners']} distinct winners")
        longer = [f"{label}: {m[name]:.2f}" for name, label in (("largest_312", "(b) largest 312"),
                                                                  ("race_311", "(c) race 311")) if name in m]
        if longer:
            print("  " + "   ".join(longer))
        print(f"  pruned largest 234: {m['pruned_largest_234']:.2f}   (b) 234: {m['largest_234_inherited']:.2f}   "
              f"(a) 234: {m['largest_234_fresh']:.2f}")
        t = m["pruned_steps_to_match_fresh_final_val"]
        print(f"  the largest pruning reaches (a)'s final val top-1 after a median {t['median']:.0f} of {FULL_STEPS} steps; "
              f"within half in {t['at_most_half']} of {t['runs']} runs, never in {t['never']}")
        for name in ("d_minus_b_312", "d_minus_c_311", "pruned_largest_minus_b_234", "pruned_largest_minus_a_234",
                     "pruned_race_minus_pruned_largest", "pruned_largest_234_minus_b_312", "pruned_largest_234_minus_c_311"):
            if name not in m:
                continue
            v = m[name]
            lo, hi = v["ci95"]
            print(f"  {name:34s} {v['difference']:+6.2f} [{lo:+6.2f}, {hi:+6.2f}]  W/T/L {v['wins']}/{v['ties']}/{v['losses']}")
    real = read_rows(setting.real) if setting.real.exists() else []
    for r in real:
        key = shipped[(r["kind"], r["draw"], 0)]
        r["replay_winner"], r["replay_test_acc"] = key, raw[(key, RACE_SEED)]
        r["reproduced"] = r["winner"] == key and r["test_acc"] == r["replay_test_acc"]
        print(f"real race, {r['kind']} draw {r['draw']} ({r['budget']}): winner {pruned[r['winner']]['params']:,} params, "
              f"test top-1 {100 * r['test_acc']:.2f}; replay {pruned[key]['params']:,} params, "
              f"{100 * r['replay_test_acc']:.2f}; {r['total_steps']} steps")
    out = args.json or Path(setting.json)
    from kdsearch.files import write_json

    write_json(out, {
        "command": "python benchmarks/race_pruned.py " + " ".join(sys.argv[1:]), "setting": args.setting,
        "race": RACE, "race_steps": 311, "largest_steps": 312, "pool": POOL, "seeds": seeds,
        "race_seeds": [RACE_SEED + s for s in seeds], "race_replayed": raced, "finalists_without_curves": len(missing),
        "inputs": {"archs": shown(setting.archs), "latency": shown(setting.latency), "students": shown(setting.students),
                   "curves": [shown(setting.curves_file(RACE_SEED + s)) for s in seeds], **base.files},
        "unit": "test top-1, points", "kinds": kinds, "real_races": real,
        "real_reproduced": sum(r["reproduced"] for r in real)})


if __name__ == "__main__":
    main()
