"""Does the race out-pick "largest within budget"? Regret of winner rules on held-out ground truth.

Ground truth: ``benchmarks/race_truth/<space>.jsonl``, the per-student rows of
``kdsearch correlate --config benchmarks/race_truth/<space>.yaml --out runs/race_truth/<space>``
(archs of ``resnet_cifar`` and ``mbconv`` drawn near four budget edges, each distilled with one
fixed recipe and three training seeds; ``--collect runs/race_truth`` copies them here). An arch's
accuracy is the mean test top-1 over its seeds.

Draws: ``--draws`` times (space, pool, budget): a pool of ``--pool`` archs of one space, and a
budget on params or FLOPs at one of the space's edges times a factor in [0.9, 1.0], so the edge's
archs fall on both sides of it. Rules, each picking among the pool's archs within the budget:

- ``largest``: the most parameters (the default rule today);
- ``largest-by-resource``: the most of the constrained resource (FLOPs under a FLOPs budget;
  the same as ``largest`` under a params budget);
- ``best-diswot``: the highest DisWOT score, scored as ``kdsearch search`` scores (random teacher,
  64 images, seed 0);
- ``race@B``: ``kdsearch``'s race (kdsearch.search.race.run_race) really run: ``--race`` finalists
  nearest the budget's edge, successive halving whose race plus the winner's continued
  distillation cost B × one distillation of the recipe (``--race-budget``), each rung ranked by
  the sum of training losses so far (TSE, the race's default); ``race-val@B``: the same race
  ranked by validation top-1 (``--race-rank val``). Rows of ``races.jsonl`` without
  ``"design": 2`` were raced by the first race design (finalists in ``largest`` order, a fresh
  optimizer per rung, the race alone costing B distillations, the winner distilled again from
  scratch) and are reported as ``race-v1@B``.
  Each finished race is appended to ``benchmarks/race_truth/races.jsonl`` and never run twice,
  so the comparison grows across sittings (``--max-races`` bounds one sitting).
- ``rung-1 val@B`` / ``rung-1 TSE@B``: the two rank signals compared at equal cost, on the first
  rung every finalist of a race trains (identical for both ranks: same seeded steps).

Reported per rule: mean regret (best accuracy within the budget minus the pick's), win rate
against ``largest`` (ties count half), and a paired bootstrap 95 % interval of the mean regret
difference against ``largest``, resampling draws and, per arch, training seeds. Also the
ground truth's seed-to-seed spread: accuracy sd within an arch against sd between archs.

Run: ``python benchmarks/race_proof.py --teacher runs/quick_teacher --json benchmarks/race_proof.json``
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from kdsearch.files import append_line

HERE = Path(__file__).parent / "race_truth"
SPACES = ("resnet_cifar", "mbconv")
RULES = ("largest", "largest-by-resource", "best-diswot")


def collect(runs: Path) -> None:
    """Copy each space's students.jsonl from its correlate run into benchmarks/race_truth/."""
    for space in SPACES:
        source = runs / space / "correlate" / "students.jsonl"
        if source.exists():
            shutil.copyfile(source, HERE / f"{space}.jsonl")
            print(f"{source} -> {HERE / f'{space}.jsonl'} ({len(source.read_text().splitlines())} students)")


def study_config(space: str, config: str | None = None):
    """The run config of the space's correlate study in race_truth/ (``config``, default ``<space>.yaml``)."""
    import yaml

    from kdsearch.pipeline.config import config_from_dict

    return config_from_dict(yaml.safe_load((HERE / (config or f"{space}.yaml")).read_text()))


def planned_archs(space: str, dataset, config: str | None = None) -> list[dict]:
    """The archs the space's correlate study distils (its stratified, edge-weighted sample), with
    params and FLOPs; worked out once and kept in ``<space>.archs.json``, so draws and races do
    not depend on how far the ground truth has got. ``config``: the study's YAML in race_truth/
    (default ``<space>.yaml``), whose ``correlate.space`` builds the archs."""
    path = HERE / f"{space}.archs.json"
    if not path.exists():
        from kdsearch.proxies import count_flops
        from kdsearch.search.config import parse_edges
        from kdsearch.search.correlate import stratified_archs
        from kdsearch.spaces import load_space

        c = study_config(space, config).correlate
        sp = load_space(c.space)
        archs = stratified_archs(sp, dataset, c.archs, seed=c.seed, pool=c.pool, max_params=c.max_params,
                                 edges=parse_edges(c.edges))
        rows = []
        for arch in archs:
            model = sp.build(arch, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
            rows.append({"key": arch.key, "arch": arch.to_dict(), "params": sum(p.numel() for p in model.parameters()),
                         "flops": count_flops(model, (dataset.in_channels, *dataset.image_size))})
        path.write_text(json.dumps(rows, indent=1) + "\n")
    return json.loads(path.read_text())


def load_truth(space: str, dataset) -> list[dict]:
    """The planned archs, each with ``accs``: test top-1 per training seed distilled so far."""
    archs = {a["key"]: {**a, "accs": {}} for a in planned_archs(space, dataset)}
    path = HERE / f"{space}.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(line)
        archs[row["key"]]["accs"][row["seed"]] = row["test_acc"]
    return list(archs.values())


def edges_of(space: str) -> list[tuple[str, float]]:
    import yaml

    from kdsearch.search.config import parse_edges

    config = yaml.safe_load((HERE / f"{space}.yaml").read_text())
    return list(parse_edges(config["correlate"]["edges"]))


def make_draws(truth: dict[str, list[dict]], n: int, pool: int, seed: int) -> list[dict]:
    """``n`` seeded draws of (space, pool of arch keys, budget resource and value) over ``truth``'s spaces."""
    rng = random.Random(seed)
    draws = []
    spaces = [s for s in truth if len(truth[s]) >= pool]
    for d in range(n):
        space = spaces[d % len(spaces)]
        while True:  # a budget that leaves at least two of the pool's archs to choose from
            resource, edge = rng.choice(edges_of(space))
            pooled = rng.sample(truth[space], pool)
            budget = edge * rng.uniform(0.9, 1.0)
            if sum(a[resource] <= budget for a in pooled) >= 2:
                break
        draws.append({"draw": d, "space": space, "pool": [a["key"] for a in pooled], "resource": resource,
                      "budget": budget})
    return draws


def feasible(draw: dict, by_key: dict[str, dict]) -> list[dict]:
    return [by_key[k] for k in draw["pool"] if by_key[k][draw["resource"]] <= draw["budget"]]


def static_picks(draw: dict, by_key: dict[str, dict]) -> dict[str, str]:
    """The training-free rules' picks (arch keys); ties broken as kdsearch breaks them."""
    inside = feasible(draw, by_key)
    largest = max(inside, key=lambda a: (a["params"], a["diswot"]))
    by_resource = max(inside, key=lambda a: (a[draw["resource"]], a["diswot"]))
    best = max(inside, key=lambda a: (a["diswot"], -a["params"]))
    return {"largest": largest["key"], "largest-by-resource": by_resource["key"], "best-diswot": best["key"]}


def score_archs(space: str, archs: list[dict], teacher, dataset) -> None:
    """DisWOT and synflow scores of each arch, as the search computes them (in place)."""
    from kdsearch.arch import Arch
    from kdsearch.progress import NULL_PROGRESS
    from kdsearch.search.config import CorrelateConfig
    from kdsearch.search.correlate import score_variants
    from kdsearch.spaces import load_space

    config = CorrelateConfig(space=space, proxies=("diswot", "synflow"), teacher_inits=("random",), extra_batches=())
    scores = score_variants(load_space(space), [Arch.from_dict(a["arch"]) for a in archs], teacher, dataset, config,
                            NULL_PROGRESS)
    for a, s in zip(archs, scores):
        a["diswot"], a["synflow"] = s["diswot"], s["synflow"]


def run_one_race(draw: dict, budget: float, rank: str, by_key: dict[str, dict], teacher, dataset, train,
                 finalists: int, work: Path) -> dict:
    """Really run kdsearch's race on the draw's feasible archs; the winner's key and what it spent."""
    from kdsearch.search.config import SearchConfig
    from kdsearch.search.race import run_race

    inside = {_arch_text(a): a for a in feasible(draw, by_key)}  # leaderboard rows name archs by their JSON
    rows = [{"arch": text, "params": a["params"], "flops": a["flops"], "feasible": True, "score_diswot": a["diswot"],
             "score_synflow": a["synflow"]} for text, a in inside.items()]
    name = f"draw{draw['draw']}-b{budget:g}" + ("" if rank == "val" else f"-{rank}")
    config = SearchConfig(space=draw["space"], race=min(finalists, len(rows)), race_budget=budget, race_rank=rank,
                          study_name=name)
    race_dir = work / name
    t0 = time.perf_counter()
    result = run_race(rows, teacher, dataset, race_dir, config, train, space_spec=draw["space"], resume=True)
    record = result.record()
    return {"draw": draw["draw"], "budget": budget, "rank": rank, "space": draw["space"], "winner": inside[result.winner["arch"]]["key"],
            "finalist_rungs": [{"key": inside[f["arch"]]["key"], "rungs": f["rungs"]} for f in record["finalists"]],
            "finalists": config.race, "spent_steps": record["spent_steps"], "full_steps": record["full_steps"],
            "rungs": record["rungs"], "seconds": time.perf_counter() - t0, "draw_budget": draw["budget"],
            "resource": draw["resource"], "design": 2, "total_distillations": record["total_distillations"]}


def _arch_text(arch: dict) -> str:
    return json.dumps(arch["arch"], sort_keys=True, separators=(",", ":"))


def regrets(draws: list[dict], picks: dict[str, list[str | None]], by_key: dict[str, dict],
            acc: dict[str, float]) -> dict[str, np.ndarray]:
    """Per rule, per draw: best accuracy within the budget minus the pick's (nan: no pick yet)."""
    out = {}
    for rule, keys in picks.items():
        values = []
        for draw, key in zip(draws, keys):
            inside = [a["key"] for a in feasible(draw, by_key)]
            judged = key is not None and all(k in acc for k in inside)  # else not distilled yet
            values.append(max(acc[k] for k in inside) - acc[key] if judged else np.nan)
        out[rule] = np.array(values)
    return out


def analyse(draws: list[dict], picks: dict[str, list[str | None]], by_key: dict[str, dict], *, replicates: int,
            seed: int, baseline: str = "largest") -> dict:
    """Mean regret, win rate against ``baseline`` and paired bootstrap intervals, per rule."""
    acc = {k: statistics.fmean(a["accs"].values()) for k, a in by_key.items() if a["accs"]}
    base = regrets(draws, picks, by_key, acc)
    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {rule: [] for rule in picks}
    diffs: dict[str, list[float]] = {rule: [] for rule in picks}
    for _ in range(replicates):
        sample = rng.integers(0, len(draws), len(draws))  # draws with replacement
        resampled = {}
        for k, a in by_key.items():  # each arch's seeds with replacement
            values = list(a["accs"].values())
            if not values:
                continue
            resampled[k] = float(np.mean(rng.choice(values, len(values))))
        r = regrets([draws[i] for i in sample], {rule: [keys[i] for i in sample] for rule, keys in picks.items()},
                    by_key, resampled)
        for rule in picks:
            both = ~np.isnan(r[rule]) & ~np.isnan(r[baseline])
            boot[rule].append(float(np.mean(r[rule][~np.isnan(r[rule])])) if (~np.isnan(r[rule])).any() else np.nan)
            diffs[rule].append(float(np.mean(r[rule][both] - r[baseline][both])) if both.any() else np.nan)
    out = {}
    for rule, values in base.items():
        done = ~np.isnan(values)
        paired = done & ~np.isnan(base[baseline])
        wins = [1.0 if acc[a] > acc[b] else 0.5 if acc[a] == acc[b] else 0.0
                for a, b, ok in zip(picks[rule], picks[baseline], paired) if ok]
        out[rule] = {
            "draws": int(done.sum()),
            "mean_regret": float(np.mean(values[done])) if done.any() else None,
            "mean_regret_ci95": _interval(boot[rule]),
            f"win_rate_vs_{baseline}": float(np.mean(wins)) if wins else None,
            f"regret_minus_{baseline}": float(np.mean(values[paired] - base[baseline][paired])) if paired.any() else None,
            f"regret_minus_{baseline}_ci95": _interval(diffs[rule]),
        }
    return out


def _interval(values: list[float]) -> list[float] | None:
    """The 2.5th and 97.5th percentiles of the finite bootstrap values (None when there are none)."""
    finite = np.array([v for v in values if np.isfinite(v)])
    return [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))] if len(finite) else None


def seed_spread(archs: list[dict]) -> dict:
    """Accuracy sd between an arch's training seeds (mean over archs) against sd between archs' means."""
    full = [a for a in archs if len(a["accs"]) >= 2]
    if len(full) < 2:
        return {"archs_with_2_seeds": len(full)}
    return {"archs_with_2_seeds": len(full),
            "sd_within_arch": statistics.fmean(statistics.stdev(a["accs"].values()) for a in full),
            "sd_between_archs": statistics.stdev(statistics.fmean(a["accs"].values()) for a in full)}


def print_table(stats: dict, title: str, baseline: str = "largest") -> None:
    print(f"\n{title}")
    print(f"{'rule':22s} {'draws':>5s} {'regret':>8s} {'95% CI':>17s} {'win vs B':>8s} {'Δ vs ' + baseline:>16s} {'95% CI':>19s}")
    for rule, m in stats.items():
        if not m["draws"]:
            print(f"{rule:22s} {0:5d}  (not run yet)")
            continue
        lo, hi = m["mean_regret_ci95"]
        dlo, dhi = m[f"regret_minus_{baseline}_ci95"] or (np.nan, np.nan)
        diff = m[f"regret_minus_{baseline}"]
        print(f"{rule:22s} {m['draws']:5d} {m['mean_regret']:8.4f} [{lo:7.4f}, {hi:7.4f}] "
              f"{m[f'win_rate_vs_{baseline}'] if m[f'win_rate_vs_{baseline}'] is not None else np.nan:8.2f} {diff if diff is not None else np.nan:+16.4f} "
              f"[{dlo:+8.4f}, {dhi:+8.4f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="runs/quick_teacher")
    parser.add_argument("--collect", type=Path, help="copy students.jsonl from these correlate runs first")
    parser.add_argument("--draws", type=int, default=30)
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--race", type=int, default=9, help="finalists per race")
    parser.add_argument("--race-budgets", default="1.25", help="budgets this sitting races at (race plus distillation)")
    parser.add_argument("--race-rank", default="tse", choices=("tse", "val"), help="what this sitting's races rank by")
    parser.add_argument("--max-races", type=int, default=0, help="races to run in this sitting (0: none)")
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th missing race from the I-th, so N "
                        "processes share a sitting (each appends whole lines to --races)")
    parser.add_argument("--work", type=Path, default=Path("runs/race_proof"))
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--races", type=Path, default=HERE / "races.jsonl", help="finished races (appended)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    if args.collect:
        collect(args.collect)
    import torch
    import yaml

    from kdsearch.distill.config import TrainConfig
    from kdsearch.pipeline.config import config_from_dict
    from kdsearch.pipeline.stages import load_run_dataset
    from kdsearch.spaces.model_files import load_teacher

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    run_config = config_from_dict(yaml.safe_load((HERE / f"{SPACES[0]}.yaml").read_text()))
    dataset = load_run_dataset(run_config)
    truth = {s: load_truth(s, dataset) for s in SPACES}
    teacher = load_teacher(args.teacher, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                           image_size=dataset.image_size)
    for space, archs in truth.items():
        if archs:
            score_archs(space, archs, teacher, dataset)
    by_key = {a["key"]: a for archs in truth.values() for a in archs}
    draws = make_draws(truth, args.draws, args.pool, args.seed)
    picks: dict[str, list[str | None]] = {rule: [] for rule in RULES}
    for draw in draws:
        for rule, key in static_picks(draw, by_key).items():
            picks[rule].append(key)

    train: TrainConfig = replace(run_config.correlate.train, seed=0)
    races_path = args.races
    done = {}
    for line in races_path.read_text().splitlines() if races_path.exists() else []:
        row = json.loads(line)
        design = "" if row.get("design") == 2 else "v1"
        done[(row["draw"], row["budget"], row.get("rank", "val") + design)] = row
    budgets = [float(b) for b in args.race_budgets.split(",")]
    for (d, budget, _), row in done.items():
        draw = draws[d] if d < len(draws) else None
        if draw is None or (row["space"], row["draw_budget"]) != (draw["space"], draw["budget"]):
            raise SystemExit(f"{races_path}: draw {d} was made with other draws (same --seed and --pool, please)")
    # This sitting's races: whole draws (every budget) first, draws the ground truth can already
    # judge before the others, the faster space first.
    judged = {d["draw"]: all(by_key[k]["accs"] for k in d["pool"]) for d in draws}
    todo = sorted(((d, b) for d in draws for b in budgets if (d["draw"], b, args.race_rank) not in done),
                  key=lambda db: (not judged[db[0]["draw"]], db[0]["space"] != SPACES[0], db[0]["draw"]))
    i, n = (int(x) for x in args.shard.split("/"))
    for draw, budget in todo[i::n][: args.max_races]:
        row = run_one_race(draw, budget, args.race_rank, by_key, teacher, dataset, train, args.race, args.work)
        append_line(races_path, row)
        done[(draw["draw"], budget, args.race_rank)] = row
        print(f"race draw {draw['draw']} at {budget:g}× by {args.race_rank}: {by_key[row['winner']]['params']:,} params "
              f"({row['spent_steps']}/{row['full_steps']} steps, {row['seconds']:.0f} s)", flush=True)
    raced = sorted({(b, r) for _, b, r in done}, key=lambda br: (br[1] != "tse", br[0]))
    for budget, rank in raced:
        kind = "race" if rank.startswith("tse") else f"race-{rank.removesuffix('v1')}"
        name = f"{kind}{'-v1' if rank.endswith('v1') else ''}@{budget:g}"
        picks[name] = [done[(d["draw"], budget, rank)]["winner"] if (d["draw"], budget, rank) in done else None
                       for d in draws]

    # The two rung signals compared at equal cost: every finalist's first rung (trained the same
    # whatever the race ranks by), picked by validation top-1 or by the lowest sum of training losses.
    for budget in sorted({b for b, _ in raced}):
        rows = [next((done[(d["draw"], budget, r)] for r in ("tse", "val", "tsev1", "valv1")
                      if (d["draw"], budget, r) in done), None) for d in draws]
        first = [[(f["key"], f["rungs"][0]) for f in r["finalist_rungs"]] if r else None for r in rows]
        picks[f"rung-1 val@{budget:g}"] = [max(f, key=lambda kr: kr[1]["val_acc"])[0] if f else None for f in first]
        picks[f"rung-1 TSE@{budget:g}"] = [min(f, key=lambda kr: kr[1]["train_loss_sum"])[0] if f else None for f in first]
    stats = analyse(draws, picks, by_key, replicates=args.replicates, seed=args.seed)
    spread = {s: seed_spread(archs) for s, archs in truth.items()}
    students = {s: sum(len(a["accs"]) for a in archs) for s, archs in truth.items()}
    print(f"ground truth: {', '.join(f'{s} {len(a)} archs, {students[s]} students' for s, a in truth.items())}")
    for s, v in spread.items():
        if "sd_within_arch" in v:
            print(f"  {s}: accuracy sd {v['sd_within_arch']:.4f} within an arch (seeds), {v['sd_between_archs']:.4f} between archs")
    print(f"{len(draws)} draws of a {args.pool}-arch pool and a budget")
    print_table(stats, "all draws")
    flops = [i for i, d in enumerate(draws) if d["resource"] == "flops"]
    by_flops = analyse([draws[i] for i in flops], {r: [k[i] for i in flops] for r, k in picks.items()}, by_key,
                       replicates=args.replicates, seed=args.seed) if flops else {}
    if by_flops:
        print_table(by_flops, f"the {len(flops)} draws with a FLOPs budget")
    # Head to head, what a rung ranks by: TSE against validation top-1, on the same draws.
    versus = {}
    for budget in sorted({b for b, _ in raced}):
        for a, b in ((f"rung-1 TSE@{budget:g}", f"rung-1 val@{budget:g}"), (f"race@{budget:g}", f"race-val@{budget:g}"),
                     (f"race-v1@{budget:g}", f"race-val-v1@{budget:g}")):
            both = [i for i in range(len(draws)) if a in picks and b in picks and picks[a][i] and picks[b][i]]
            if both:
                m = analyse([draws[i] for i in both], {r: [picks[r][i] for i in both] for r in (a, b)}, by_key,
                            replicates=args.replicates, seed=args.seed, baseline=b)[a]
                versus[f"{a} - {b}"] = {"draws": m["draws"], "regret_difference": m[f"regret_minus_{b}"],
                                        "ci95": m[f"regret_minus_{b}_ci95"], "win_rate": m[f"win_rate_vs_{b}"]}
    if versus:
        print("\nTSE against validation top-1 (regret difference; negative: TSE picks better)")
        for name, m in versus.items():
            if m["regret_difference"] is not None:
                lo, hi = m["ci95"]
                print(f"  {name:32s} {m['draws']:3d} draws {m['regret_difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] "
                      f"win rate {m['win_rate']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({
            "ground_truth": {s: {"archs": len(a), "students": students[s]} for s, a in truth.items()},
            "seed_spread": spread, "draws": len(draws), "pool": args.pool, "finalists": args.race,
            "recipe": {"epochs": train.epochs, "batch_size": train.batch_size, "lr": train.lr, "schedule": train.schedule,
                       "subset": run_config.data.subset},
            "rules": stats, "rules_under_flops_budgets": by_flops, "tse_vs_val": versus,
            "draw_list": [{**{k: v for k, v in d.items() if k != "pool"}, "picks": {r: picks[r][i] for r in picks}}
                          for i, d in enumerate(draws)],
        }, indent=1) + "\n")


if __name__ == "__main__":
    main()
