"""How much faster is training-free search than training every candidate? And how do workers scale?

1. Search N candidates with the default proxy (wall time, one process, SQLite), then distil a
   few of those candidates with the correlate recipe and EXTRAPOLATE: distil time of N
   candidates = N x mean measured per-candidate time. The ratio is what DisWOT's "≥ 180x
   training acceleration" claims (their training-based baseline trains longer, so their ratio
   is larger for the same proxy cost).
   With ``--from-correlate DIR`` nothing is extrapolated: N is the number of students a finished
   ``kdsearch correlate --out DIR`` distilled, and the distil time is the sum of their measured
   ``train_s`` (pass the same --teacher, --data and --subset the study used).
2. Trials/s of 1, 2 and 4 worker processes on one PostgreSQL study (spawn start-up included;
   on a 2-core machine more workers than cores cannot scale).

Prints a table and writes benchmarks/search_speedup.json.

Example: python benchmarks/search_speedup.py --teacher runs/teacher_r20 --candidates 24
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="resnet20", help="teacher spec (zoo name or model directory)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--subset", type=int, default=2000, help="training images (the correlate recipe's)")
    p.add_argument("--candidates", type=int, default=24, help="N: candidates searched")
    p.add_argument("--distil", type=int, default=3, help="candidates actually distilled to measure the per-candidate time")
    p.add_argument("--epochs", type=int, default=2, help="distillation epochs per candidate")
    p.add_argument("--max-params", type=int, default=60_000)
    p.add_argument("--from-correlate", type=Path, default=None,
                   help="a correlate --out directory: use its students' measured distil times instead of extrapolating")
    p.add_argument("--workers", default="1,2,4", help="worker counts timed on PostgreSQL ('' to skip)")
    p.add_argument("--worker-trials", type=int, default=16)
    p.add_argument("--json", type=Path, default=HERE / "search_speedup.json")
    return p.parse_args()


def _search_time(teacher, dataset, config, out: Path) -> tuple[float, object]:
    from kdsearch.search import run_search

    t0 = time.perf_counter()
    result = run_search(teacher, dataset, out, config)
    return time.perf_counter() - t0, result


def main() -> None:
    args = _args()
    import torch

    from kdsearch.arch import Arch
    from kdsearch.data import load_dataset
    from kdsearch.distill.stage import distill_student
    from kdsearch.spaces.model_files import load_teacher
    from kdsearch.search import SearchConfig
    from kdsearch.search.config import CorrelateConfig

    measured = None
    if args.from_correlate is not None:
        lines = (args.from_correlate / "correlate" / "students.jsonl").read_text().splitlines()
        rows = [json.loads(x) for x in lines if x.strip().endswith("}")]
        first_seed = min(r.get("seed", 0) for r in rows)  # one distillation per candidate, as a search would need
        measured = [r for r in rows if r.get("seed", 0) == first_seed]
        args.candidates, args.epochs = len(measured), measured[0]["epochs"]
    dataset = load_dataset(args.data, subset=args.subset, seed=0)
    torch.manual_seed(0)
    teacher = load_teacher(args.teacher, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    config = SearchConfig(trials=args.candidates, max_params=args.max_params, seed=0)
    recipe = replace(CorrelateConfig().train, epochs=args.epochs, device="cpu")
    report: dict = {"torch_threads": torch.get_num_threads(), "candidates": args.candidates, "proxy": config.proxy,
                    "proxy_batch": config.proxy_batch, "subset": args.subset, "epochs": args.epochs}
    with tempfile.TemporaryDirectory() as tmp:
        search_s, result = _search_time(teacher, dataset, config, Path(tmp) / "search")
        unique = [] if measured else list(dict.fromkeys(r["arch"] for r in result.rows))[: args.distil]
        times = [m["train_s"] for m in measured] if measured else []
        for i, arch_json in enumerate(unique):
            t0 = time.perf_counter()
            distill_student(Arch.from_json(arch_json), teacher, dataset, Path(tmp) / f"d{i}", recipe)
            times.append(time.perf_counter() - t0)
    per_candidate = sum(times) / len(times)
    distil_s = per_candidate * args.candidates
    report.update({"search_s": search_s, "search_s_per_candidate": search_s / args.candidates,
                   "distil_s_per_candidate_measured": times, "distil_s": distil_s,
                   "distil_s_extrapolated": not measured, "speedup": distil_s / search_s,
                   "from_correlate": str(args.from_correlate) if measured else None})
    print(f"search {args.candidates} candidates with {config.proxy}: {search_s:8.1f} s "
          f"({search_s / args.candidates:.2f} s each)")
    how = (f"all {len(times)} measured by correlate" if measured
           else f"extrapolated from {len(times)} measured")
    print(f"distil {args.candidates} candidates x {args.epochs} epoch(s): {distil_s:8.1f} s "
          f"({how}: {per_candidate:.1f} s each)")
    print(f"speedup: {distil_s / search_s:.1f}x")

    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    if counts:
        report["workers"] = _worker_scaling(teacher, dataset, config, counts, args.worker_trials)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"→ {args.json}")


def _worker_scaling(teacher, dataset, config, counts: list[int], trials: int) -> list[dict]:
    sys.path.insert(0, str(HERE.parent / "tests" / "postgres"))
    from pg_server import create_database, find_bin_dir, postgres_server

    bin_dir = find_bin_dir()
    if bin_dir is None:
        print("PostgreSQL not found: worker scaling skipped")
        return []
    rows = []
    print(f"\n{'workers':>8} {'trials':>7} {'wall s':>8} {'trials/s':>9}")
    with postgres_server(bin_dir) as base, tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            url = create_database(base)
            cfg = replace(config, trials=trials, workers=n, storage=url, study_name=f"w{n}")
            wall, _ = _search_time(teacher, dataset, cfg, Path(tmp) / f"w{n}")
            rows.append({"workers": n, "trials": trials, "wall_s": wall, "trials_per_s": trials / wall})
            print(f"{n:>8} {trials:>7} {wall:>8.1f} {trials / wall:>9.3f}")
    return rows


if __name__ == "__main__":
    main()
