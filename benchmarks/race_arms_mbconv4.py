"""Arm (c) in the second setting: kdsearch's race over ``mbconv`` students of the ``mbconv4`` teacher,
inherited, against the largest inherited student (b), at equal total optimizer steps.

Setting: ``inherit_mbconv.py``'s (teacher ``race_truth/mbconv4_teacher``, the 30 ``mbconv`` archs, the
234-step recipe ``race_truth/mbconv4.yaml``, 40 params and 40 speed-up budgets of 1.5–2.4×, pools of 20).

- (c) ``--race 6`` (eta 3, ``--race-budget 4/3``, ranked by summed training loss), as ``race_arms.py``
  runs it in the first setting: six finalists nearest the budget's edge train to step 11, two go on to
  step 33, the winner's run goes on into its distillation, 311 optimizer steps in all. Race seed 1000 +
  training seed s, s = 0, 1, 2.
- (b) the largest arch within the budget, inherited, 4 epochs = 312 steps
  (``inherit_mbconv.py --train --epochs 4``; rows in ``race_truth/mbconv4_students_4ep.jsonl``).

How (c) is run. A finalist trains the distillation's own schedule from step 0 at the race seed, and its
rungs only stop and resume that run (``tests/search/test_race.py``: bit for bit a straight run). So an
arch's run at one race seed is the same in every race that takes it, and the races share it: each
(arch, seed) has one run directory, trained on demand to the step a rung asks for and, for a winner, on
to the end of its distillation. Every step's loss is kept, so the summed loss at an earlier rung step is
read off the run rather than trained again. Which archs race and who survives is kdsearch's own
``pick_finalists`` and ``plan_race`` (``race_sim.race_pick``); only the steps some race needs are trained.
``--real N`` runs N races with ``run_race`` and ``distill_student`` on from the winner's checkpoint, as
``kdsearch run`` does, to check the shared runs against them.

    OMP_NUM_THREADS=1 python benchmarks/race_arms_mbconv4.py --train --seed 0   # and 1, 2 beside it
    OMP_NUM_THREADS=1 python benchmarks/race_arms_mbconv4.py --real 2
    python benchmarks/race_arms_mbconv4.py --json benchmarks/race_arms_mbconv4.json
"""
from __future__ import annotations

import argparse
import json
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from kdsearch.files import append_line, write_json

import inherit_mbconv
from inherit_proof import label, largest, read_rows, shown
from race_arms import RACE, SEEDS, WORK, bootstrap, load_runtime, real_races
from race_proof import HERE
from race_sim import FULL_STEPS, RACE_SEED, race_pick

RACED = HERE / "mbconv4_race_students.jsonl"  # per (arch, race seed): rung losses and, for winners, test top-1
REAL = HERE / "race_arms_mbconv4_real.jsonl"
RUNS = WORK / "mbconv4"
KINDS = inherit_mbconv.KINDS


def rung_steps() -> list[int]:
    """Every step at which some race plan of RACE's shape ranks its finalists (2 to K finalists)."""
    from kdsearch.errors import UsageError
    from kdsearch.search.race import plan_race

    steps = set()
    for n in range(2, RACE["k"] + 1):
        try:
            steps.update(plan_race(n, RACE["eta"], FULL_STEPS, RACE["budget"], RACE["rank"]).rungs)
        except UsageError:
            pass
    return sorted(steps)


class SharedRuns:
    """One run per arch at one race seed, trained only as far as some race needs it (see the docstring)."""

    def __init__(self, seed: int, by_key: dict[str, dict], rows: list[dict] | None = None) -> None:
        """``rows``: the runs' committed rows, read only (no training); by default this seed's file under runs/."""
        self.seed, self.by_key, self.train = seed, by_key, rows is None
        self.stops = rung_steps()
        if rows is None:
            rows = read_rows(self.file) if self.file.exists() else []
        self.rows = {r["key"]: r for r in rows if r["seed"] == seed}  # the latest row per arch wins
        self._runtime = None

    @property
    def file(self) -> Path:
        return RUNS / f"s{self.seed}.jsonl"  # the latest row per arch wins

    def runtime(self):
        if self._runtime is None:
            dataset, teacher, study = load_runtime(inherit_mbconv.RECIPE)
            # every step's loss kept (curve_every past the run's end: no validation passes), so one stop
            # gives the summed loss at every earlier rung step; it changes nothing the run computes
            self._runtime = dataset, teacher, replace(study.train, init="inherit", seed=self.seed,
                                                      curve_every=10 * FULL_STEPS)
        return self._runtime

    def directory(self, key: str) -> Path:
        return RUNS / f"{zlib.crc32(key.encode()):08x}-s{self.seed}"

    def tse(self, key: str, step: int) -> float:
        """The arch's summed training loss over its first ``step`` steps, training it there if need be."""
        row = self.rows.setdefault(key, {"key": key, "seed": self.seed, "reached": 0, "tse": {}})
        if str(step) not in row["tse"]:
            if not self.train:
                raise SystemExit(f"{key} has no run to step {step} at seed {self.seed}: run --train --seed "
                                 f"{self.seed - RACE_SEED} first")
            if step <= row["reached"]:
                raise RuntimeError(f"{key} seed {self.seed} is past step {step} without its loss there")
            self._advance(key, step)
        return row["tse"][str(step)]

    def _advance(self, key: str, step: int) -> None:
        """Train the arch's run on to ``step``, as a race rung does."""
        from kdsearch.arch import Arch
        from kdsearch.search.race import train_to_step

        dataset, teacher, config = self.runtime()
        result, _ = train_to_step(Arch.from_dict(self.by_key[key]["arch"]), teacher, dataset, self.directory(key),
                                  config, step, "mbconv")
        self._record(key, result["curve"], result["train_loss_total"])

    def _record(self, key: str, curve: list[dict], total: float) -> None:
        """Keep the summed loss at every rung step the run has passed, from its per-step losses."""
        tse = np.cumsum([sum(point["loss"].values()) for point in curve])  # the order the trainer sums in
        if not tse[-1] == total:
            raise RuntimeError(f"{key}: the per-step losses sum to {tse[-1]!r}, the run's total is {total!r}")
        row = self.rows[key]
        row["reached"] = len(tse)
        row["tse"] = {str(s): float(tse[s - 1]) for s in self.stops + [len(tse)] if s <= len(tse)}
        append_line(self.file, row)

    def finish(self, key: str) -> float:
        """The arch's run distilled to its end: its test top-1, a fraction."""
        from kdsearch.arch import Arch
        from kdsearch.distill.stage import distill_student
        from kdsearch.rundir import CURVE_LOG

        row = self.rows.setdefault(key, {"key": key, "seed": self.seed, "reached": 0, "tse": {}})
        if "test_acc" not in row:
            if not self.train:
                raise SystemExit(f"{key} was not distilled to its end at seed {self.seed}: run --train first")
            dataset, teacher, config = self.runtime()
            m = distill_student(Arch.from_dict(self.by_key[key]["arch"]), teacher, dataset, self.directory(key),
                                config, resume=True, space_spec="mbconv")
            row.update(test_acc=m["test_acc"], val_acc=m["val_acc"])
            curve = json.loads((self.directory(key) / CURVE_LOG).read_text())["steps"]
            self._record(key, curve, sum(sum(p["loss"].values()) for p in curve))
        return row["test_acc"]


class _Tse:
    """``race_sim.race_pick``'s view of a shared run's summed loss: ``tse[step - 1]`` trains it to ``step``."""

    def __init__(self, runs: SharedRuns, key: str) -> None:
        self.runs, self.key = runs, key

    def __getitem__(self, index: int) -> float:
        return self.runs.tse(self.key, index + 1)


def race(runs: SharedRuns, draws: dict[str, list[dict]]) -> dict[tuple[str, int], dict]:
    """(kind, draw) -> the race's winner at this seed (the largest where fewer than two fit) and its
    shipped test top-1 (a fraction)."""
    curves = {key: {"tse": _Tse(runs, key)} for key in runs.by_key}
    out = {}
    for kind in KINDS:
        for i, draw in enumerate(draws[kind]):
            key = race_pick(draw, runs.by_key, curves, RACE["k"], RACE["eta"], RACE["budget"], RACE["rank"]) \
                or largest(draw, runs.by_key)
            out[(kind, i)] = {"winner": key, "test_acc": runs.finish(key)}
            if runs.train:
                print(f"seed {runs.seed} {kind} draw {i}: {label(runs.by_key[key])}, test top-1 "
                      f"{100 * out[(kind, i)]['test_acc']:.2f}", flush=True)
    return out


def raced(by_key: dict[str, dict], draws: dict[str, list[dict]],
          rows: list[dict] | None = None) -> list[dict[tuple[str, int], dict]]:
    """Per training seed (``SEEDS``' order), every draw's race from the committed rows (``race``'s answer);
    ``rows``: RACED's, if already read."""
    rows = read_rows(RACED) if rows is None else rows
    return [race(SharedRuns(RACE_SEED + s, by_key, rows), draws) for s in SEEDS]


def collect() -> None:
    """Join the seeds' rows (the latest per arch) into RACED."""
    from race_arms import write_rows

    rows = [r for f in sorted(RUNS.glob("s*.jsonl")) for r in {x["key"]: x for x in read_rows(f)}.values()]
    write_rows(RACED, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="run every draw's race at --seed, training what it needs")
    parser.add_argument("--seed", type=int, default=0, help="with --train: the training seed (race seed 1000 + it)")
    parser.add_argument("--real", type=int, default=0, help="race this many draws for real (seed 1000), to check")
    parser.add_argument("--collect", action="store_true", help="copy the runs' rows into race_truth/ first")
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    by_key, draws = inherit_mbconv.load()
    if args.train:
        race(SharedRuns(RACE_SEED + args.seed, by_key), draws)
        return
    if args.real:
        real_races(args.real, by_key, draws, "mbconv", REAL, WORK / "real-mbconv4", inherit_mbconv.RECIPE, "inherit")
        return
    if args.collect:
        collect()
    rows = read_rows(RACED)
    races = raced(by_key, draws, rows)
    arms = {"b312": {(r["key"], r["seed"]): 100 * r["test_acc"] for r in read_rows(inherit_mbconv.LONG_ROWS)}}
    print(f"mbconv4 teacher, mbconv students, inherited. (c) race K {RACE['k']}, eta {RACE['eta']}, "
          f"budget {RACE['budget']:.3g}, {RACE['rank']}: 311 steps; (b) largest, 4 epochs: 312 steps. Test top-1 "
          "(points), mean over draws and seeds 0,1,2; 95 % CI a bootstrap over draws and seeds")
    kinds = {}
    for kind in KINDS:
        ds = draws[kind]
        big = [largest(d, by_key) for d in ds]
        c = np.array([[100 * races[j][(kind, i)]["test_acc"] for j in range(len(SEEDS))] for i in range(len(ds))])
        winners = [races[j][(kind, i)]["winner"] for i in range(len(ds)) for j in range(len(SEEDS))]
        m = {"draws": len(ds), "race_311": float(c.mean()), "race_picked_largest":
             sum(w == big[i // len(SEEDS)] for i, w in enumerate(winners)), "race_distinct_winners": len(set(winners)),
             "largest_distinct": len(set(big))}
        for name, arm in arms.items():
            if not all((k, s) in arm for k in big for s in SEEDS):
                continue
            other = np.array([[arm[(k, s)] for s in SEEDS] for k in big])
            diff = c - other
            m[name] = float(other.mean())
            picked = np.array([[races[j][(kind, i)]["winner"] == big[i] for j in range(len(SEEDS))] for i in range(len(ds))])
            m[f"c_minus_{name}"] = {"difference": float(diff.mean()), "ci95": bootstrap(diff, args.replicates, 0),
                                    "wins": int((diff > 1e-9).sum()), "ties": int((abs(diff) <= 1e-9).sum()),
                                    "losses": int((diff < -1e-9).sum()),
                                    "where_the_race_picked_the_largest": float(diff[picked].mean()),
                                    "where_it_picked_another": float(diff[~picked].mean())}
        kinds[kind] = m
        print(f"\n{kind}: (c) race 311 {m['race_311']:.2f}, {m['race_distinct_winners']} distinct winners, the largest "
              f"in {m['race_picked_largest']} of {len(winners)}")
        for name in arms:
            if name in m:
                v = m[f"c_minus_{name}"]
                lo, hi = v["ci95"]
                print(f"  {name}: {m[name]:.2f}   (c) − {name} {v['difference']:+.2f} [{lo:+.2f}, {hi:+.2f}]  "
                      f"W/T/L {v['wins']}/{v['ties']}/{v['losses']}; {v['where_the_race_picked_the_largest']:+.2f} where the "
                      f"race picked the largest, {v['where_it_picked_another']:+.2f} where it picked another")
    trained = {"runs": len(rows), "winners_distilled": sum("test_acc" in r for r in rows),
               "steps": sum(FULL_STEPS if "test_acc" in r else max(map(int, r["tse"])) for r in rows)}
    print(f"\nshared runs: {trained['runs']} (arch, seed) runs, {trained['winners_distilled']} to the end; "
          f"{trained['steps']:,} optimizer steps in all ({trained['steps'] / FULL_STEPS:.1f} distillations)")
    real = read_rows(REAL) if REAL.exists() else []
    for r in real:
        mine = races[0][(r["kind"], r["draw"])]
        r["shared_winner"], r["shared_test_acc"] = mine["winner"], mine["test_acc"]
        r["reproduced"] = r["winner"] == mine["winner"] and r["test_acc"] == mine["test_acc"]
        print(f"real race, {r['kind']} draw {r['draw']} ({r['budget']}): winner {label(by_key[r['winner']])} "
              f"{100 * r['test_acc']:.2f}; shared runs {label(by_key[mine['winner']])} {100 * mine['test_acc']:.2f}")
    if args.json:
        write_json(args.json, {
            "command": "python benchmarks/race_arms_mbconv4.py " + " ".join(sys.argv[1:]), "race": RACE,
            "race_steps": 311, "largest_steps": 312, "seeds": list(SEEDS), "race_seeds": [RACE_SEED + s for s in SEEDS],
            "inputs": {"raced": shown(RACED), "largest_312": shown(inherit_mbconv.LONG_ROWS)},
            "unit": "test top-1, points", "kinds": kinds, "shared_runs": trained, "real_races": real,
            "real_reproduced": sum(r["reproduced"] for r in real)})


if __name__ == "__main__":
    main()
