"""Under a speed-up budget, which winner rule picks best? Regret on the race benchmark's ground truth.

Ground truth: the race benchmark's 60 archs (``benchmarks/race_truth``, read by ``race_proof.py``:
an arch's accuracy is its mean test top-1 over three training seeds) and their ONNX Runtime
speed-ups over the teacher (``benchmarks/race_truth/latency.json``, from
``race_truth_latency.py``: 1 thread, batch 1 and 32, each arch timed interleaved with the teacher).

Draws: ``--draws`` per space of (pool, budget): ``--pool`` archs of the space and a speed-up S
drawn uniformly in [``--min-speedup``, ``--max-speedup``]. An arch meets the budget when it is at
least S× faster than the teacher at batch 1 *and* at batch 32; a draw that leaves fewer than two
archs of its pool to choose from is drawn again (the count is reported). Rules, each picking one
of the archs within the budget (kdsearch's tie-break, the DisWOT score, where one is needed):

- ``most-params``: the most parameters (``--pick largest`` under a params budget);
- ``most-flops``: the most FLOPs;
- ``slowest``: the highest latency within the budget (spend the budget: largest by the constrained resource);
- ``best-diswot`` / ``best-synflow``: the highest proxy score, scored as ``kdsearch search`` scores
  (freshly initialised teacher, 64 images, seed 0);
- ``fastest``: the fastest arch (a sanity baseline).

Reported per rule, per space and pooled: mean regret (best accuracy within the budget minus the
pick's) with a bootstrap 95 % interval, win rate against ``most-params`` (ties count half) and the
paired bootstrap 95 % interval of the regret difference against ``most-params``, resampling draws
and, per arch, training seeds (``race_proof.analyse``).

Run: ``python benchmarks/speed_rules.py --json benchmarks/speed_rules.json``
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from race_proof import HERE, SPACES, analyse, feasible, load_truth, print_table, score_archs

# Latency as a fraction of the teacher's at the slower of the two batches: an arch meets a
# speed-up budget S exactly when this is at most 1/S, so race_proof's budget test applies as it is.
RESOURCE = "latency_fraction"
BASELINE = "most-params"
PICKS = {  # rule -> what it maximises among the archs within the budget
    "most-params": lambda a: (a["params"], a["diswot"]),
    "most-flops": lambda a: (a["flops"], a["diswot"]),
    "slowest": lambda a: (a[RESOURCE], a["diswot"]),
    "best-diswot": lambda a: (a["diswot"], -a["params"]),
    "best-synflow": lambda a: (a["synflow"], -a["params"]),
    "fastest": lambda a: (-a[RESOURCE], a["diswot"]),
}


def attach_latency(truth: dict[str, list[dict]], latency: dict, batches: tuple[int, ...]) -> None:
    """Give every arch its speed-ups and its ``latency_fraction`` (in place)."""
    timed = {row["key"]: row for row in latency["archs"]}
    for archs in truth.values():
        for a in archs:
            row = timed[a["key"]]
            for b in batches:
                a[f"speedup_b{b}"] = row[f"speedup_b{b}"]
            a[RESOURCE] = 1.0 / min(row[f"speedup_b{b}"] for b in batches)


def make_speed_draws(truth: dict[str, list[dict]], n: int, pool: int, low: float, high: float,
                     seed: int) -> tuple[list[dict], dict[str, int]]:
    """``n`` seeded draws per space of (pool of arch keys, speed-up budget); and per space, how many
    budgets were drawn again for leaving fewer than two archs to choose from."""
    rng = random.Random(seed)
    draws, redrawn = [], {s: 0 for s in truth}
    for space in truth:
        for _ in range(n):
            while True:
                pooled = rng.sample(truth[space], min(pool, len(truth[space])))
                speedup = rng.uniform(low, high)
                if sum(a[RESOURCE] <= 1 / speedup for a in pooled) >= 2:
                    break
                redrawn[space] += 1
            draws.append({"draw": len(draws), "space": space, "pool": [a["key"] for a in pooled], "speedup": speedup,
                          "resource": RESOURCE, "budget": 1 / speedup})
    return draws, redrawn


def rule_picks(draws: list[dict], by_key: dict[str, dict]) -> dict[str, list[str]]:
    return {rule: [max(feasible(d, by_key), key=key)["key"] for d in draws] for rule, key in PICKS.items()}


def subset(draws: list[dict], picks: dict[str, list[str]], keep) -> tuple[list[dict], dict[str, list[str]]]:
    index = [i for i, d in enumerate(draws) if keep(d)]
    return [draws[i] for i in index], {r: [k[i] for i in index] for r, k in picks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=Path, default=HERE / "latency.json")
    parser.add_argument("--teacher", help="teacher whose architecture DisWOT scores against, freshly initialised "
                        "(default: runs/quick_teacher when trained, else the zoo's resnet20: the same network)")
    parser.add_argument("--draws", type=int, default=40, help="budgets per space")
    parser.add_argument("--pool", type=int, default=20, help="archs of the space each draw chooses among")
    parser.add_argument("--min-speedup", type=float, default=2.0)
    parser.add_argument("--max-speedup", type=float, default=8.0)
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch
    import yaml

    from kdsearch.pipeline.config import config_from_dict
    from kdsearch.pipeline.stages import load_run_dataset
    from kdsearch.spaces.model_files import load_teacher

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    latency = json.loads(args.latency.read_text())
    batches = tuple(latency["batches"])
    run_config = config_from_dict(yaml.safe_load((HERE / f"{SPACES[0]}.yaml").read_text()))
    dataset = load_run_dataset(run_config)
    teacher_spec = args.teacher or ("runs/quick_teacher" if Path("runs/quick_teacher/model.json").exists() else "resnet20")
    teacher = load_teacher(teacher_spec, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                           image_size=dataset.image_size)
    truth = {s: load_truth(s, dataset) for s in SPACES}
    for space, archs in truth.items():
        score_archs(space, archs, teacher, dataset)
    attach_latency(truth, latency, batches)
    by_key = {a["key"]: a for archs in truth.values() for a in archs}

    draws, redrawn = make_speed_draws(truth, args.draws, args.pool, args.min_speedup, args.max_speedup, args.seed)
    picks = rule_picks(draws, by_key)
    stats = {"pooled": analyse(draws, picks, by_key, replicates=args.replicates, seed=args.seed, baseline=BASELINE)}
    for space in SPACES:
        d, p = subset(draws, picks, lambda draw: draw["space"] == space)
        stats[space] = analyse(d, p, by_key, replicates=args.replicates, seed=args.seed, baseline=BASELINE)

    for space, archs in truth.items():
        top = max(min(a[f"speedup_b{b}"] for b in batches) for a in archs)
        slower = sum(a["speedup_b1"] <= 1 for a in archs)
        print(f"{space}: {len(archs)} archs, {slower} not faster than the teacher at batch 1, the fastest "
              f"{top:.2f}× at the slower batch; {redrawn[space]} budgets drawn again (< 2 archs within)")
    print(f"{args.draws} speed-up budgets per space, uniform in {args.min_speedup:g}×–{args.max_speedup:g}× "
          f"(kept {min(d['speedup'] for d in draws):.2f}×–{max(d['speedup'] for d in draws):.2f}×), "
          f"pools of {args.pool}; DisWOT against a fresh {teacher_spec}")
    for name, table in stats.items():
        print_table(table, f"{name} ({table[BASELINE]['draws']} draws)", baseline=BASELINE)

    if args.json:
        payload = {
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "latency": str(args.latency), "teacher": teacher_spec, "teacher_init": "random", "batches": list(batches),
            "draws_per_space": args.draws, "pool": args.pool, "speedup_range": [args.min_speedup, args.max_speedup],
            "redrawn": redrawn, "replicates": args.replicates, "seed": args.seed, "baseline": BASELINE,
            "rules": stats,
            "archs": [{k: a[k] for k in ("key", "params", "flops", "diswot", "synflow", RESOURCE,
                                         *(f"speedup_b{b}" for b in batches))} | {"accs": a["accs"]}
                      for a in by_key.values()],
            "draw_list": [{**{k: v for k, v in d.items() if k != "pool"}, "picks": {r: picks[r][i] for r in picks}}
                          for i, d in enumerate(draws)],
        }
        tmp = args.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=1) + "\n")
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
