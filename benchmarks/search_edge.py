"""How close the search's largest in-budget candidate gets to the params budget (the `--pick largest` winner).

For each budget (teacher/8 and teacher/4 by default) and seed, one search with the run's own search
settings (48 trials, NSGA-II, DisWOT + params) in three variants, compared in the same run:

- ``default``: what kdsearch does (params maximised within the budget under ``--pick largest``);
- ``params minimised``: the same search with params as a cost (what ``best``/``knee`` use, and
  the default before session 4);
- ``random``: ``--sampler random`` after the same in-budget first generation.

"fill" is the winner's params / the budget; "feasible" the trials within the budget.

Run: ``python benchmarks/search_edge.py --run-dir runs/quick3 [--seeds 6]``.
Writes ``benchmarks/search_edge.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import kdsearch.search.study as study
from kdsearch.pipeline import load_run_config, load_run_dataset, resolve_teacher


def _search(teacher, dataset, config) -> dict:
    with tempfile.TemporaryDirectory() as d:
        result = study.run_search(teacher, dataset, Path(d) / "search", config)
    feasible = [r for r in result.rows if r["feasible"]]
    return {"fill": result.winner_row["params"] / config.max_params, "winner_params": result.winner_row["params"],
            "feasible": len(feasible), "trials": len(result.rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a kdsearch run directory with a teacher")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--fractions", default="8,4", help="budgets as teacher params / N")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    config = load_run_config(args.run_dir)
    dataset = load_run_dataset(config)
    teacher = resolve_teacher(args.run_dir, config, dataset)
    teacher_params = sum(p.numel() for p in teacher.module.parameters())
    kept = study.objective_directions

    def minimised(c):
        return ["minimize" if o in study.COST_OBJECTIVES else "maximize" for o in c.objectives]

    variants = {"default": ({}, kept), "params minimised": ({}, minimised), "random": ({"sampler": "random"}, kept)}
    results: dict = {"run_dir": str(args.run_dir), "trials": config.search.trials, "budgets": {}}
    for frac in (int(f) for f in args.fractions.split(",")):
        budget = teacher_params // frac
        rows = results["budgets"][f"teacher/{frac}"] = {"max_params": budget}
        for name, (changes, directions) in variants.items():
            study.objective_directions = directions
            try:
                runs = [_search(teacher, dataset, replace(config.search, max_params=budget, seed=seed, **changes))
                        for seed in range(args.seeds)]
            finally:
                study.objective_directions = kept
            rows[name] = {"runs": runs, "mean_fill": statistics.mean(r["fill"] for r in runs),
                          "mean_feasible": statistics.mean(r["feasible"] for r in runs)}
            fills = " ".join(f"{r['fill']:.3f}" for r in runs)
            print(f"teacher/{frac} {name:<17} fill {fills}  mean {rows[name]['mean_fill']:.4f}  "
                  f"feasible trials {rows[name]['mean_feasible']:.1f}", flush=True)
        base = rows["params minimised"]["mean_fill"]
        print(f"teacher/{frac}: default / params-minimised mean fill = {rows['default']['mean_fill'] / base:.4f}")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
