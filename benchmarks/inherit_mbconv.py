"""The second setting: does inheriting beat fresh weights with a teacher of another family? Arms (a) and (b).

Teacher: the zoo's ``mbconv4``, a four-stage MBConv network (221k parameters), trained by
``kdsearch teach --config benchmarks/race_truth/mbconv4_teacher.yaml`` and committed in
``race_truth/mbconv4_teacher`` (its README says how).
Students: the race benchmark's 30 ``mbconv`` archs (``race_truth/mbconv.archs.json``, drawn near the params
and FLOPs edges), timed against the teacher (``race_truth_latency.py --space mbconv --teacher mbconv4``),
distilled with the ground truth's recipe (``race_truth/mbconv4.yaml``: 5,000 Fashion-MNIST images, 234
optimizer steps) at training seeds 0, 1, 2, once from fresh weights (a) and once cut from the teacher's (b).

Draws are ``inherit_proof.budget_draws``' (pools of 20 archs; 40 params budgets, 40 speed-up budgets of
1.5–2.4× at batch 1 and 32: the teacher is small and fast, and none of the 30 archs is 2.5× faster at batch 1); kdsearch's default pick, the most parameters within the budget, does not look at accuracy,
so only the archs some draw picks are distilled (``--train``), each in both arms. (b) − (a) per kind of budget
with ``inherit_proof.compare``'s paired bootstrap over draws and, per arch, seeds.

    OMP_NUM_THREADS=1 python benchmarks/inherit_mbconv.py --train --shard 0/2   # and 1/2, in parallel
    python benchmarks/inherit_mbconv.py --collect --json benchmarks/inherit_mbconv.json
"""
from __future__ import annotations

import argparse
import json
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from kdsearch.files import append_line

from inherit_proof import budget_draws, compare, label, largest, read_rows, shown
from race_proof import HERE
from speed_rules import attach_latency

ARCHS = HERE / "mbconv.archs.json"
LATENCY = HERE / "mbconv4_latency.json"
RECIPE = HERE / "mbconv4.yaml"
ROWS = HERE / "mbconv4_students.jsonl"
LONG_ROWS = HERE / "mbconv4_students_4ep.jsonl"  # arm (b) at 4 epochs, 312 steps (--train --epochs 4; race_pruned.py)
WORK = Path("runs/inherit_mbconv")
KINDS = ("params", "speedup")
INITS = ("random", "inherit")
SEEDS = (0, 1, 2)
EPOCHS = 3  # the recipe's: 234 optimizer steps
SPEEDUPS = (1.5, 2.4)  # the small teacher is fast: no arch of the 30 is 2.5x faster at batch 1


def load() -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """The 30 archs by key (with speed-ups at batch 1 and 32) and the draws per kind of budget."""
    archs = json.loads(ARCHS.read_text())
    attach_latency({"mbconv": archs}, json.loads(LATENCY.read_text()), (1, 32))
    draws, _ = budget_draws(archs, "mbconv", 40, 20, *SPEEDUPS, 0)
    return {a["key"]: a for a in archs}, draws


def train(by_key: dict, draws: dict, shard: tuple[int, int], epochs: int = EPOCHS) -> None:
    """Distil every picked arch at each seed, fresh and inherited (resumable; one shard's share). At
    other than the recipe's ``epochs`` only inherited: arm (b) at the race's length, for ``race_pruned.py``."""
    from kdsearch.arch import Arch
    from kdsearch.distill.stage import distill_student
    from kdsearch.rundir import CHECKPOINT
    from race_arms import load_runtime

    keys = sorted({largest(d, by_key) for kind in KINDS for d in draws[kind]}, key=lambda k: by_key[k]["params"])
    inits, tag = (INITS, "") if epochs == EPOCHS else (("inherit",), f"{epochs}ep")
    suffix = f"-{tag}" if tag else ""
    out = WORK / f"shard{shard[0]}{suffix}.jsonl"
    done = {(r["key"], r["seed"], r["init"]) for f in WORK.glob("shard*.jsonl") if shard_tag(f) == tag
            for r in read_rows(f)}  # any shard's, so shards can change
    todo = [(k, s, i) for s in SEEDS for k in keys for i in inits][shard[0]::shard[1]]
    print(f"{len(keys)} picked archs × {len(SEEDS)} seeds × {len(inits)} inits, {epochs} epochs; shard {shard[0]}/{shard[1]}: "
          f"{sum(t not in done for t in todo)} of {len(todo)} to train", flush=True)
    dataset, teacher, study = load_runtime(RECIPE)
    recipe = study.train
    for key, seed, init in todo:
        if (key, seed, init) in done:
            continue
        work = WORK / f"{zlib.crc32(key.encode()):08x}-s{seed}-{init}{suffix}"
        m = distill_student(Arch.from_dict(by_key[key]["arch"]), teacher, dataset, work,
                            replace(recipe, init=init, seed=seed, epochs=epochs),
                            resume=(work / CHECKPOINT).exists(), space_spec="mbconv")
        append_line(out, {"key": key, "arch": by_key[key]["arch"], "params": by_key[key]["params"],
                          "flops": by_key[key]["flops"], "seed": seed, "init": init, **({"epochs": epochs} if tag else {}),
                          "test_acc": m["test_acc"], "val_acc": m["val_acc"]})
        print(f"{label(by_key[key])} seed {seed} {init}: test top-1 {100 * m['test_acc']:.2f}", flush=True)


def shard_tag(path: Path) -> str:
    """A shard file's training length: "" for the recipe's (``shard0.jsonl``), else e.g. "4ep" (``shard0-4ep.jsonl``)."""
    return path.stem.partition("-")[2]


def collect() -> None:
    """Join the shards' rows: the recipe's length into ROWS, other lengths into ``mbconv4_students_<n>ep.jsonl``."""
    from kdsearch.files import write_text

    groups: dict[str, list[dict]] = {}
    for shard in sorted(WORK.glob("shard*.jsonl")):
        groups.setdefault(shard_tag(shard), []).extend(read_rows(shard))
    for tag, rows in groups.items():
        path = ROWS.with_name(f"{ROWS.stem}_{tag}.jsonl") if tag else ROWS
        rows.sort(key=lambda r: (r["seed"], r["key"], r["init"]))
        write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        print(f"-> {shown(path)} ({len(rows)} rows)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="distil the picked archs, fresh and inherited")
    parser.add_argument("--shard", default="0/1", help="i/n: train every n-th run, from the i-th")
    parser.add_argument("--epochs", type=int, default=EPOCHS,
                        help="with --train: distil this long (not 3: inherited only, rows kept apart)")
    parser.add_argument("--collect", action="store_true", help="copy the shards' rows into race_truth/ first")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="training seeds an arch needs in both arms")
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    by_key, draws = load()
    if args.train:
        train(by_key, draws, tuple(int(x) for x in args.shard.split("/")), args.epochs)
        return
    if args.collect:
        collect()
    seeds = [int(x) for x in args.seeds.split(",")]
    acc: dict[tuple[str, str], dict[int, float]] = {}
    for r in read_rows(ROWS):
        acc.setdefault((r["key"], r["init"]), {})[r["seed"]] = 100 * r["test_acc"]
    complete = sorted({k for k, _ in acc if all(set(seeds) <= set(acc.get((k, i), {})) for i in INITS)},
                      key=lambda k: by_key[k]["params"])
    index = {k: n for n, k in enumerate(complete)}
    fresh = np.array([[acc[(k, "random")][s] for s in seeds] for k in complete])
    inherited = np.array([[acc[(k, "inherit")][s] for s in seeds] for k in complete])
    print(f"mbconv students of the mbconv4 teacher, 234 steps; {len(complete)} picked archs complete (seeds "
          f"{args.seeds}, both inits). Test top-1 in points, mean over those seeds; (b) − (a) paired bootstrap 95 % CI")
    kinds = {}
    for kind in KINDS:
        picks = [largest(d, by_key) for d in draws[kind]]
        kept = [k for k in picks if k in index]
        m = compare(np.array([index[k] for k in kept]), fresh, inherited, args.replicates, 0, 1.0)
        m["draws"], m["draws_complete"] = len(picks), len(kept)
        m["picks"] = {label(by_key[k]): picks.count(k) for k in sorted(set(picks), key=lambda k: by_key[k]["params"])}
        kinds[kind] = m
        lo, hi = m["difference_ci95"]
        print(f"{kind:8s} {len(kept)}/{len(picks)} draws, {m['distinct_archs']} archs: (a) {m['fresh_top1']:.2f} "
              f"(b) {m['inherited_top1']:.2f}  (b) − (a) {m['difference']:+.2f} [{lo:+.2f}, {hi:+.2f}]  "
              f"W/T/L {m['wins']}/{m['ties']}/{m['losses']}  target +1.0 {'met' if m['target_met'] else 'missed'}")
    table = [{"arch": label(by_key[k]), "key": k, "params": by_key[k]["params"],
              "speedup_b1": by_key[k]["speedup_b1"], "speedup_b32": by_key[k]["speedup_b32"],
              "fresh": float(fresh[index[k]].mean()), "inherited": float(inherited[index[k]].mean())} for k in complete]
    for row in table:
        print(f"{row['arch']:28s} {row['params']:7,d} {row['speedup_b1']:5.2f}x  fresh {row['fresh']:.2f}  "
              f"inherited {row['inherited']:.2f}  {row['inherited'] - row['fresh']:+.2f}")
    if args.json:
        from kdsearch.files import write_json

        write_json(args.json, {"command": "python benchmarks/inherit_mbconv.py " + " ".join(sys.argv[1:]),
                               "teacher": "mbconv4 (benchmarks/race_truth/mbconv4_teacher, race_truth/mbconv4_teacher.yaml)",
                               "inputs": {"archs": shown(ARCHS), "latency": shown(LATENCY), "rows": shown(ROWS)},
                               "seeds": seeds, "steps": 234, "unit": "test top-1, points", "kinds": kinds,
                               "arch_table": table})


if __name__ == "__main__":
    main()
