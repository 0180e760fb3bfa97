"""Which race settings pick well? kdsearch's race simulated offline on learning curves and ground truth.

Inputs, per init (``inherit``, ``random``), for the race benchmark's 30 ``resnet_cifar`` archs:

- learning curves: every step's training loss (and validation top-1 every 6 steps) of each arch
  distilled once at the race's seed (1000, no ground-truth seed), with the ground truth's recipe
  (234 optimizer steps): ``kdsearch correlate --config benchmarks/race_truth/resnet_cifar_curves_<init>.yaml
  --out runs/race_curves/<init>``; ``--collect`` copies each run's ``correlate/curves.jsonl`` to
  ``benchmarks/race_truth/resnet_cifar_curves_<init>.jsonl``;
- ground truth: the same archs' test top-1 at seeds 0, 1, 2 with that init
  (``resnet_cifar.jsonl``, ``resnet_cifar_inherit.jsonl``; see ``inherit_proof.py``).

Draws: ``inherit_proof.budget_draws`` (pools of ``--pool`` archs under params, FLOPs and speed-up
budgets). Per draw and race setting (finalists K, eta, ``--race-budget`` B, rank), the race is
replayed as kdsearch runs it: the finalists are ``kdsearch.search.race.pick_finalists`` of the draw's
feasible archs (nearest the budget's edge, diverse), the rungs ``plan_race(K, eta, 234, B)``, each
rung keeps the best ``n // eta`` by the sum of training losses so far (``tse``) or by the last
validation top-1 logged at or before the rung (``val``), read off the curves; the winner is the best
at the top rung. Its accuracy is the ground truth's mean over seeds 0–2: the winner's race run goes on
into its distillation, and the race seed is not a ground-truth seed. Regret: the best mean within
the budget minus the pick's; ``largest`` (the most parameters within the budget) is the baseline.

Settings are chosen on the params and FLOPs draws and confirmed on the speed-up draws (held out).
A simulated figure is a guide to the defaults, not a measured race.

    OMP_NUM_THREADS=1 python benchmarks/race_sim.py --collect --json benchmarks/race_sim.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from inherit_proof import SETTINGS, accuracies, budget_draws, read_rows
from race_proof import HERE, _interval, feasible
from speed_rules import attach_latency

FULL_STEPS = 234  # the ground truth's recipe: 3 epochs of 4,500 images at batch 64, drop_last
INITS = ("inherit", "random")


RACE_SEED = 1000  # kdsearch's race seed for training seed 0 (RACE_SEED_OFFSET)


def curves_path(init: str, seed: int = RACE_SEED) -> Path:
    return HERE / (f"resnet_cifar_curves_{init}.jsonl" if seed == RACE_SEED else f"resnet_cifar_curves_{init}_s{seed}.jsonl")


def collect(inits: list[str]) -> None:
    for init in inits:
        source = Path(f"runs/race_curves/{init}/correlate/curves.jsonl")
        shutil.copyfile(source, curves_path(init))
        print(f"{source} -> {curves_path(init)} ({len(source.read_text().splitlines())} curves)")


def load_curves(init: str, seed: int = RACE_SEED) -> dict[str, dict]:
    """Per arch key: ``tse`` (cumulative training loss by step, index 0 = after step 1) and ``val``
    (step -> validation top-1), of the curves run at race seed ``seed``."""
    return read_curves(curves_path(init, seed))


def read_curves(path: Path) -> dict[str, dict]:
    """:func:`load_curves` of one collected ``curves.jsonl``."""
    out = {}
    for row in read_rows(path):
        steps = row["steps"]
        out[row["key"]] = {"tse": np.cumsum([sum(p["loss"].values()) for p in steps]),
                           "val": {p["step"]: p["val_acc"] for p in steps if "val_acc" in p}}
    return out


def signal(curve: dict, step: int, rank: str) -> float:
    """What a rung ranks by at ``step``, higher better: minus the loss summed so far, or the last val top-1."""
    if rank == "val":
        logged = [s for s in curve["val"] if s <= step]
        return curve["val"][max(logged)] if logged else 0.0
    return -float(curve["tse"][step - 1])


def search_config(draw: dict):
    """The SearchConfig whose budget the draw sets (the race reads its budget from it)."""
    from kdsearch.search.config import SearchConfig

    if "speedup" in draw:
        return SearchConfig(speedup=draw["speedup"], latency_batch=32)  # batch 1 and 32, as the draws (attach_latency)
    return SearchConfig(**{f"max_{draw['resource']}": draw["budget"]})


def race_rows(draw: dict, by_key: dict) -> list[dict]:
    """The draw's feasible archs as leaderboard rows (how kdsearch's race reads candidates)."""
    return [{"arch": json.dumps(a["arch"], sort_keys=True, separators=(",", ":")), "key": a["key"],
             "params": a["params"], "flops": a["flops"], "feasible": True, "score_diswot": 0.0,
             "speedup_b1": a.get("speedup_b1"), "speedup_b32": a.get("speedup_b32")} for a in feasible(draw, by_key)]


def race_pick(draw: dict, by_key: dict, curves: dict, k: int, eta: int, budget: float, rank: str) -> str | None:
    """The race's winner among the draw's feasible archs (None: fewer than two to race)."""
    from kdsearch.errors import UsageError
    from kdsearch.search.race import pick_finalists, plan_race

    finalists = pick_finalists(race_rows(draw, by_key), search_config(draw), k)
    if len(finalists) < 2:
        return None
    try:
        plan = plan_race(len(finalists), eta, FULL_STEPS, budget, rank)
    except UsageError:
        return None
    alive = [r["key"] for r in finalists]  # in edge order: ties keep the earlier finalist
    for step, survivors in zip(plan.rungs, (*plan.survivors[1:], 1)):
        alive = sorted(alive, key=lambda key: -signal(curves[key], step, rank))[:survivors]
    return alive[0]


def regrets(draws: list[dict], picks: list[str | None], by_key: dict, acc: dict[str, float]) -> np.ndarray:
    out = []
    for draw, pick in zip(draws, picks):
        best = max(acc[a["key"]] for a in feasible(draw, by_key))
        out.append(np.nan if pick is None else best - acc[pick])
    return np.array(out)


def summarise(race: np.ndarray, largest: np.ndarray, replicates: int, seed: int) -> dict:
    both = ~np.isnan(race)
    diff = race[both] - largest[both]
    rng = np.random.default_rng(seed)
    boot = [float(diff[rng.integers(0, len(diff), len(diff))].mean()) for _ in range(replicates)] if len(diff) else []
    return {"draws": int(both.sum()), "regret": float(race[both].mean()) if both.any() else None,
            "largest_regret": float(largest[both].mean()) if both.any() else None,
            "minus_largest": float(diff.mean()) if len(diff) else None, "minus_largest_ci95": _interval(boot),
            "wins": int((diff < -1e-9).sum()), "ties": int((abs(diff) <= 1e-9).sum()), "losses": int((diff > 1e-9).sum())}


def steps_to_match(curves: dict[str, dict], fresh_rows: list[dict]) -> dict:
    """Per arch: the first logged step at which the inherited curve's validation top-1 reaches the mean
    final validation top-1 of the fresh-weights ground truth (None: never within the recipe)."""
    finals: dict[str, list[float]] = {}
    for r in fresh_rows:
        finals.setdefault(r["key"], []).append(r["val_acc"])
    per_arch = {key: next((step for step, v in sorted(c["val"].items()) if v >= np.mean(finals[key])), None)
                for key, c in curves.items() if key in finals}
    reached = sorted(v for v in per_arch.values() if v is not None)
    return {"archs": len(per_arch), "never": sum(v is None for v in per_arch.values()),
            "median_steps": float(np.median(reached)) if reached else None,
            "at_most_half": sum(v <= FULL_STEPS // 2 for v in reached), "per_arch": per_arch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", action="store_true", help="copy the curves runs' curves.jsonl here first")
    parser.add_argument("--draws", type=int, default=40, help="budgets per kind")
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--finalists", default="2,3,4,6")
    parser.add_argument("--etas", default="2,3")
    parser.add_argument("--budgets", default="1.25,1.5")
    parser.add_argument("--ranks", default="tse,val")
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inits", default=",".join(INITS), help="which learning curves to race on")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    inits = args.inits.split(",")
    if args.collect:
        collect(inits)
    setting = SETTINGS["resnet_cifar"]
    truths = {"random": read_rows(setting.fresh), "inherit": read_rows(setting.inherited)}
    out: dict = {"command": "python benchmarks/race_sim.py " + " ".join(sys.argv[1:]), "full_steps": FULL_STEPS,
                 "inits": {}}
    for init in inits:
        curves = load_curves(init)
        archs = [a for a in accuracies(truths[init]).values() if a["key"] in curves]  # every arch, once all are run
        attach_latency({"resnet_cifar": archs}, json.loads(setting.latency.read_text()), (1, 32))
        by_key = {a["key"]: a for a in archs}
        acc = {k: float(np.mean(list(a["accs"].values()))) for k, a in by_key.items()}
        seeds = sorted({len(a["accs"]) for a in archs})
        draws, _ = budget_draws(archs, "resnet_cifar", args.draws, args.pool, 3.0, 6.0, args.seed)
        kinds = {"chosen on (params, flops)": draws["params"] + draws["flops"], "held out (speedup)": draws["speedup"]}
        largest = {name: [max(feasible(d, by_key), key=lambda a: a["params"])["key"] for d in ds]
                   for name, ds in kinds.items()}
        rows = []
        settings = list(itertools.product([int(x) for x in args.finalists.split(",")],
                                          [int(x) for x in args.etas.split(",")],
                                          [float(x) for x in args.budgets.split(",")], args.ranks.split(",")))
        for k, eta, budget, rank in settings:
            row = {"finalists": k, "eta": eta, "budget": budget, "rank": rank}
            for name, ds in kinds.items():
                picks = [race_pick(d, by_key, curves, k, eta, budget, rank) for d in ds]
                row[name] = summarise(regrets(ds, picks, by_key, acc), regrets(ds, largest[name], by_key, acc),
                                      args.replicates, args.seed)
            rows.append(row)
        chosen = min((r for r in rows if r["chosen on (params, flops)"]["regret"] is not None),
                     key=lambda r: r["chosen on (params, flops)"]["minus_largest"])
        print(f"\n{init}: {len(archs)} archs ({'/'.join(map(str, seeds))} seeds each); regret (best mean test top-1 "
              "within the budget − the pick's, points), race − largest")
        print(f"{'K':>2} {'eta':>3} {'B':>5} {'rank':>4}  {'chosen on params+FLOPs':>40}  {'held out: speed-up':>40}")
        for r in rows:
            cells = []
            for name in kinds:
                m = r[name]
                lo, hi = m["minus_largest_ci95"] or (np.nan, np.nan)
                cells.append(f"{m['regret']:.2f} vs {m['largest_regret']:.2f}: {m['minus_largest']:+.2f} [{lo:+.2f}, {hi:+.2f}]"
                             if m["regret"] is not None else "(cannot race)")
            mark = " <- chosen" if r is chosen else ""
            print(f"{r['finalists']:>2} {r['eta']:>3} {r['budget']:>5g} {r['rank']:>4}  {cells[0]:>40}  {cells[1]:>40}{mark}")
        out["inits"][init] = {"curves": str(curves_path(init).relative_to(HERE.parent.parent)), "archs": len(archs),
                              "seeds_per_arch": seeds, "settings": rows,
                              "chosen": {k: chosen[k] for k in ("finalists", "eta", "budget", "rank")}}
    match = steps_to_match(load_curves("inherit"), truths["random"]) if "inherit" in inits else None
    out["inherited_steps_to_match_fresh_final"] = match
    if match:
        print(f"\ninherited students reach the fresh-weights final val top-1 after a median of {match['median_steps']} "
              f"of {FULL_STEPS} steps; within half the steps in {match['at_most_half']} of {match['archs']} archs, never "
              f"in {match['never']}")
    if args.json:
        from kdsearch.files import write_json

        write_json(args.json, out)  # atomic


if __name__ == "__main__":
    main()
