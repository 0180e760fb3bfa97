"""Does inheriting the teacher's weights beat fresh weights for "largest within budget"? On ground truth.

A setting pairs two ground truths of the same archs, recipe and training seeds, distilled from the
same teacher once from fresh weights and once cut from the teacher's weights (``init: inherit``).
``resnet_cifar``: the race benchmark's 30 ``resnet_cifar`` archs (``benchmarks/race_truth/resnet_cifar.jsonl``,
read by ``race_proof.py``) against ``benchmarks/race_truth/resnet_cifar_inherit.jsonl``, the per-student
rows of ``kdsearch correlate --config benchmarks/race_truth/resnet_cifar_inherit.yaml --out
runs/race_truth_inherit/resnet_cifar`` (``--collect`` copies them there once the run is complete; until
then the run's own, partial file is read). An arch counts only with every one of ``--seeds`` in both
ground truths; its accuracy in each is the mean test top-1 over those seeds.

Draws, each a pool of ``--pool`` of those archs and a budget, reported apart per kind of budget:

- ``params`` (and ``flops``): near one of the space's edges, times a factor in [0.9, 1.0]
  (``race_proof.make_draws``; the first ``--draws`` of each resource);
- ``speedup``: S× faster than the teacher, S uniform in [``--min-speedup``, ``--max-speedup``], at
  every batch of ``--speed-batches`` (ONNX Runtime, ``benchmarks/race_truth/latency.json``: speed-up
  = teacher ms / student ms, timed interleaved; ``speed_rules.make_speed_draws``).

A draw leaves at least two of its pool's archs within the budget. The pick is kdsearch's default
rule, the most parameters within the budget; it does not look at accuracy, so it is the same arch
in both arms: (a) its mean test top-1 from fresh weights, (b) inherited. Reported per kind: mean
(a) and (b), mean (b) − (a) in points with a paired bootstrap 95 % interval (resampling draws and,
per arch, training seeds, the same seeds in both arms), wins/ties/losses of (b), and how many
distinct archs the draws picked (the effective sample: every draw that picks an arch shares its
runs). Also (b) − (a) per arch over all complete archs, with an interval resampling archs and seeds.
The target checked: (b) ahead of (a) by at least ``--target`` points (1.0) of mean test top-1.

Run: ``OMP_NUM_THREADS=1 python benchmarks/inherit_proof.py --collect --json benchmarks/inherit_proof.json``
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from race_proof import HERE, _interval, edges_of, feasible, make_draws
from speed_rules import attach_latency, make_speed_draws


@dataclass(frozen=True)
class Setting:
    """Two ground truths of one space that differ only in the students' initial weights."""

    space: str
    fresh: Path  # per-student rows distilled from fresh weights (committed)
    inherited: Path  # the same archs, recipe and seeds with init: inherit (committed by --collect)
    inherited_run: Path  # the correlate run that writes them, read until they are collected
    inherited_config: Path  # that run's config: how many rows make it complete
    latency: Path  # race_truth_latency.py's timings of the archs against the teacher


SETTINGS = {
    "resnet_cifar": Setting(
        space="resnet_cifar",
        fresh=HERE / "resnet_cifar.jsonl",
        inherited=HERE / "resnet_cifar_inherit.jsonl",
        inherited_run=Path("runs/race_truth_inherit/resnet_cifar/correlate/students.jsonl"),
        inherited_config=HERE / "resnet_cifar_inherit.yaml",
        latency=HERE / "latency.json",
    ),
}
KINDS = ("params", "speedup", "flops")  # budget kinds, each reported apart


def shown(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it (as the JSON records it)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        raise SystemExit(f"{path}: not found")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect(setting: Setting) -> None:
    """Copy the finished inherited run into its committed place; refuse a partial run."""
    import yaml

    correlate = yaml.safe_load(setting.inherited_config.read_text())["correlate"]
    expected = correlate["archs"] * correlate["repeats"]
    rows = read_rows(setting.inherited_run)
    pairs = {(r["key"], r["seed"]) for r in rows}
    if len(rows) != expected or len(pairs) != expected:
        raise SystemExit(f"{setting.inherited_run}: {len(rows)} rows ({len(pairs)} distinct arch-seed pairs), "
                         f"{expected} make it complete; --collect copies only a finished run")
    tmp = setting.inherited.with_suffix(".jsonl.tmp")
    tmp.write_text(setting.inherited_run.read_text())
    tmp.replace(setting.inherited)
    print(f"{shown(setting.inherited_run)} -> {shown(setting.inherited)} ({expected} students)")


def accuracies(rows: list[dict]) -> dict[str, dict]:
    """Per arch key: its row's arch, params and FLOPs, and ``accs``, test top-1 in points per seed."""
    archs: dict[str, dict] = {}
    for r in rows:
        a = archs.setdefault(r["key"], {"key": r["key"], "arch": r["arch"], "params": r["params"],
                                         "flops": r["flops"], "accs": {}})
        a["accs"][r["seed"]] = 100.0 * r["test_acc"]
    return archs


def label(arch: dict) -> str:
    genes = arch["arch"]["genes"]
    if "depths" not in genes:  # a pruning of the teacher: its size says more than its keep shares
        return f"{arch['arch']['space']} {arch['params']:,} params"
    name = "d" + "-".join(map(str, genes["depths"])) + "_w" + "-".join(map(str, genes["widths"]))
    return name if genes.get("block", "basic") == "basic" else f"{genes['block']}_{name}"


def largest(draw: dict, by_key: dict[str, dict]) -> str:
    """kdsearch's default pick: the most parameters within the budget (no two archs here tie)."""
    return max(feasible(draw, by_key), key=lambda a: a["params"])["key"]


def paired_bootstrap(picks: np.ndarray, fresh: np.ndarray, inherited: np.ndarray, replicates: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Mean (inherited − fresh) over ``picks`` (arch indices), ``replicates`` times: picks resampled with
    replacement and, per arch, its seeds (the same resampled seeds in both arms, which share them)."""
    archs, seeds = fresh.shape  # (K, S) test top-1 in points
    out = np.empty(replicates)
    for i in range(replicates):
        chosen = rng.integers(0, seeds, (archs, seeds))  # (K, S) seed indices
        gain = (np.take_along_axis(inherited, chosen, 1) - np.take_along_axis(fresh, chosen, 1)).mean(1)  # (K,)
        out[i] = gain[picks[rng.integers(0, len(picks), len(picks))]].mean()
    return out


def compare(picks: np.ndarray, fresh: np.ndarray, inherited: np.ndarray, replicates: int, seed: int,
            target: float) -> dict:
    """Arm (a) against arm (b) over the picks (arch indices into the (K, S) accuracy arrays)."""
    a, b = fresh.mean(1)[picks], inherited.mean(1)[picks]
    gain = b - a
    boot = paired_bootstrap(picks, fresh, inherited, replicates, np.random.default_rng(seed))
    return {"n": len(picks), "distinct_archs": len(set(picks.tolist())),
            "fresh_top1": float(a.mean()), "inherited_top1": float(b.mean()),
            "difference": float(gain.mean()), "difference_ci95": _interval(boot.tolist()),
            "wins": int((gain > 1e-9).sum()), "ties": int((abs(gain) <= 1e-9).sum()),
            "losses": int((gain < -1e-9).sum()), "target_met": bool(gain.mean() >= target)}


def budget_draws(archs: list[dict], space: str, n: int, pool: int, low: float, high: float,
                 seed: int) -> tuple[dict[str, list[dict]], int]:
    """``n`` draws per budget kind over ``archs``, each with a ``budget_text``; and how many speed-up
    budgets were drawn again for leaving fewer than two archs to choose from."""
    truth = {space: archs}
    edge_draws = make_draws(truth, 4 * n, pool, seed)  # params and FLOPs edges, about half each
    out = {}
    for resource in ("params", "flops"):
        kept = [d for d in edge_draws if d["resource"] == resource][:n]
        if len(kept) < n:
            raise SystemExit(f"only {len(kept)} {resource} budgets in {4 * n} draws; ask for fewer --draws")
        out[resource] = [{**d, "budget_text": f"{d['budget']:,.0f} {resource}"} for d in kept]
    speed, redrawn = make_speed_draws(truth, n, pool, low, high, seed)
    out["speedup"] = [{**d, "budget_text": f"{d['speedup']:.2f}x"} for d in speed]
    return out, redrawn[space]


def check_drawable(archs: list[dict], edges: list[tuple[str, float]], low: float) -> None:
    """Fail with one line where a kind of budget could never leave two archs to choose from (the
    draws would redraw forever)."""
    for resource in ("params", "flops"):
        if not any(sum(a[resource] <= 0.9 * e for a in archs) >= 2 for r, e in edges if r == resource):
            raise SystemExit(f"fewer than two of the {len(archs)} complete archs fit any {resource} edge "
                             f"({', '.join(f'{e:,.0f}' for r, e in edges if r == resource)}); wait for more rows")
    if sum(1 / a["latency_fraction"] > low for a in archs) < 2:
        raise SystemExit(f"fewer than two of the {len(archs)} complete archs are over {low:g}x faster than the "
                         "teacher; lower --min-speedup or wait for more rows")


def print_kind(kind: str, m: dict, draws: list[dict]) -> None:
    lo, hi = m["difference_ci95"]
    picks = ", ".join(f"{name} ×{count}" for name, count in m["picks"].items())
    print(f"{kind:8s} {m['n']:5d} {m['distinct_archs']:6d} {m['fresh_top1']:8.2f} {m['inherited_top1']:10.2f} "
          f"{m['difference']:+7.2f} [{lo:+6.2f}, {hi:+6.2f}] {m['wins']:3d}/{m['ties']}/{m['losses']:<3d} "
          f"{'met' if m['target_met'] else 'missed'}")
    ordered = sorted(draws, key=lambda d: d.get("speedup", d["budget"]))
    print(f"{'':8s} budgets {ordered[0]['budget_text']} – {ordered[-1]['budget_text']}; picks: {picks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="resnet_cifar", choices=sorted(SETTINGS))
    parser.add_argument("--collect", action="store_true", help="copy the finished inherited run into benchmarks/ first")
    parser.add_argument("--inherited", type=Path, help="inherited rows to read (default: the committed copy, else "
                        "the run's partial file)")
    parser.add_argument("--seeds", help="training seeds an arch needs in both arms, e.g. 0,1 (default: all of the "
                        "fresh ground truth's)")
    parser.add_argument("--draws", type=int, default=40, help="budgets per kind")
    parser.add_argument("--pool", type=int, default=20, help="archs each draw chooses among")
    parser.add_argument("--min-speedup", type=float, default=3.0)
    parser.add_argument("--max-speedup", type=float, default=6.0)
    parser.add_argument("--speed-batches", default="1", help="batches a speed-up budget must hold at, e.g. 1,32")
    parser.add_argument("--target", type=float, default=1.0, help="points of mean test top-1 (b) must gain over (a)")
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    setting = SETTINGS[args.setting]

    if args.collect:
        collect(setting)
    inherited_path = args.inherited or (setting.inherited if setting.inherited.exists() else setting.inherited_run)
    fresh_rows, inherited_rows = read_rows(setting.fresh), read_rows(inherited_path)
    fresh, inherited = accuracies(fresh_rows), accuracies(inherited_rows)
    all_seeds = sorted({r["seed"] for r in fresh_rows})
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else all_seeds
    except ValueError:
        raise SystemExit(f"--seeds {args.seeds}: give training seeds as integers, e.g. 0,1") from None
    if not set(seeds) <= set(all_seeds):
        raise SystemExit(f"--seeds {args.seeds}: the fresh ground truth has seeds {all_seeds}")
    strangers = set(inherited) - set(fresh)
    if strangers:
        raise SystemExit(f"{inherited_path}: {len(strangers)} archs the fresh ground truth {setting.fresh} lacks; "
                         "the two must distil the same archs")
    complete = [a for k, a in fresh.items()
                if k in inherited and all(s in a["accs"] and s in inherited[k]["accs"] for s in seeds)]
    seed_text = ",".join(map(str, seeds))
    print(f"{args.setting}: {len(fresh_rows)} fresh rows ({shown(setting.fresh)}), {len(inherited_rows)} inherited "
          f"({shown(inherited_path)}); {len(complete)} of {len(fresh)} archs have seeds {seed_text} in both")
    if len(complete) < 2:
        raise SystemExit(f"{len(complete)} archs have seeds {seed_text} in both ground truths; nothing to compare yet "
                         "(--seeds 0 compares on fewer seeds)")

    batches = tuple(int(b) for b in args.speed_batches.split(","))
    attach_latency({setting.space: complete}, json.loads(setting.latency.read_text()), batches)
    check_drawable(complete, edges_of(setting.space), args.min_speedup)
    index = {a["key"]: i for i, a in enumerate(complete)}
    by_key = {a["key"]: a for a in complete}
    fresh_acc = np.array([[a["accs"][s] for s in seeds] for a in complete])  # (K, S) points
    inherited_acc = np.array([[inherited[a["key"]]["accs"][s] for s in seeds] for a in complete])  # (K, S)

    pool = min(args.pool, len(complete))
    draws, redrawn = budget_draws(complete, setting.space, args.draws, pool, args.min_speedup, args.max_speedup,
                                  args.seed)
    kinds = {}
    for kind in KINDS:
        picks = [largest(d, by_key) for d in draws[kind]]
        m = compare(np.array([index[k] for k in picks]), fresh_acc, inherited_acc, args.replicates, args.seed,
                    args.target)
        m["picks"] = {label(by_key[k]): picks.count(k) for k in sorted(set(picks), key=lambda k: by_key[k]["params"])}
        m["draw_list"] = [{"budget": d["budget"], "budget_text": d["budget_text"], "pick": label(by_key[k])}
                          for d, k in zip(draws[kind], picks)]
        kinds[kind] = m
    per_arch = compare(np.arange(len(complete)), fresh_acc, inherited_acc, args.replicates, args.seed, args.target)

    spread = statistics.fmean(float(np.std(row, ddof=1)) for row in fresh_acc) if len(seeds) > 1 else None
    print(f"draws of a {pool}-arch pool and a budget, {args.draws} per kind; speed-up {args.min_speedup:g}x–"
          f"{args.max_speedup:g}x at batch {args.speed_batches} ({redrawn} redrawn: < 2 archs "
          f"within); test top-1 in points, mean over seeds {seed_text}; (b) − (a) paired bootstrap 95 % CI, "
          f"{args.replicates} replicates" + (f"; fresh seed-to-seed sd {spread:.2f} points" if spread else ""))
    print(f"\n{'budget':8s} {'draws':>5s} {'archs':>6s} {'(a) fresh':>8s} {'(b) inherit':>10s} {'b − a':>7s} "
          f"{'95% CI':>16s} {'W/T/L':>7s} target +{args.target:g}")
    for kind in KINDS:
        print_kind(kind, kinds[kind], draws[kind])
    lo, hi = per_arch["difference_ci95"]
    print(f"\nper arch, all {len(complete)}: fresh {per_arch['fresh_top1']:.2f}, "
          f"inherited {per_arch['inherited_top1']:.2f}, "
          f"(b) − (a) {per_arch['difference']:+.2f} [{lo:+.2f}, {hi:+.2f}] points; inherited ahead in "
          f"{per_arch['wins']}, behind in {per_arch['losses']}")
    table = []
    print(f"\n{'arch':24s} {'params':>8s} {'speed-up':>8s} {'fresh':>7s} {'inherit':>7s} {'b − a':>6s}")
    for i, a in sorted(enumerate(complete), key=lambda ia: ia[1]["params"]):
        row = {"arch": label(a), "key": a["key"], "params": a["params"], "flops": a["flops"],
               **{f"speedup_b{b}": a[f"speedup_b{b}"] for b in batches},
               "fresh": dict(zip(seeds, fresh_acc[i].tolist())),
               "inherited": dict(zip(seeds, inherited_acc[i].tolist())),
               "fresh_mean": float(fresh_acc[i].mean()), "inherited_mean": float(inherited_acc[i].mean())}
        row["difference"] = row["inherited_mean"] - row["fresh_mean"]
        table.append(row)
        print(f"{row['arch']:24s} {a['params']:8,d} {1 / a['latency_fraction']:7.2f}x {row['fresh_mean']:7.2f} "
              f"{row['inherited_mean']:7.2f} {row['difference']:+6.2f}")
    for kind in ("params", "speedup"):
        m = kinds[kind]
        lo, hi = m["difference_ci95"]
        where = "above" if lo >= args.target else "includes" if hi >= args.target else "below"
        print(f"target (b) ≥ (a) + {args.target:g} point under {kind} budgets: "
              f"{'met' if m['target_met'] else 'missed'} ({m['difference']:+.2f} points, interval {where} "
              f"+{args.target:g}; {m['distinct_archs']} distinct archs)")

    if args.json:
        payload = {
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "setting": args.setting, "space": setting.space,
            "inputs": {"fresh": {"path": shown(setting.fresh), "rows": len(fresh_rows)},
                       "inherited": {"path": shown(inherited_path), "rows": len(inherited_rows)},
                       "latency": {"path": shown(setting.latency), "batches": list(batches)}},
            "seeds": seeds, "archs": len(fresh), "archs_complete": len(complete), "unit": "test top-1, points",
            "draws_per_kind": args.draws, "pool": pool, "speedup_range": [args.min_speedup, args.max_speedup],
            "speedup_redrawn": redrawn,
            "replicates": args.replicates, "seed": args.seed, "target_points": args.target,
            "fresh_seed_sd": spread, "kinds": kinds, "per_arch": per_arch, "arch_table": table,
        }
        tmp = args.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=1) + "\n")
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
