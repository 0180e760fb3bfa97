"""Can a winner rule use a proxy and still never pick worse than params? Re-read finished correlate studies.

For each study directory (the ``--out`` of ``kdsearch correlate``) and each proxy variant in its
``scores.csv``, the mean regret under the study's own params budgets (``regret_under_budget``, the
figure ``kdsearch correlate`` reports) of three ways to pick a winner within a budget:

- ``raw``: the proxy's best (what ``--pick best`` with that proxy does);
- ``near X%``: among the feasible archs within X % of the largest feasible size, the proxy's best
  (params first, the proxy breaks near-ties);
- ``adj β``: the best of ``z(log params) + β · z(proxy residual after regressing on log params)``.

``params`` is the baseline every rule must not lose to. Nothing is retrained.

Run: ``python benchmarks/correlate_rules.py runs/correlate_fmnist runs/correlate_strong``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np

from kdsearch.search.correlate import regret_under_budget

VARIANTS = ("diswot", "diswot@random", "diswot@b256", "nwot", "jacov", "flops")


def _study(d: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[float]]:
    with open(d / "correlate" / "scores.csv") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    col = {name: i for i, name in reversed(list(enumerate(header)))}  # first occurrence of a repeated name
    params = np.array([float(r[col["params"]]) for r in body])
    acc = np.array([float(r[col["acc"]]) for r in body])
    scores = {name: np.array([float(r[i]) for r in body]) for name, i in col.items()
              if name not in ("arch", "acc", "val_acc", "train_s", "acc_by_seed")}
    quantiles = json.loads((d / "correlate" / "correlate.json").read_text())["config"]["budgets"]
    ordered = sorted(params)
    budgets = [ordered[max(0, math.ceil(q * len(ordered)) - 1)] for q in quantiles]
    return params, acc, scores, budgets


def _near(score: np.ndarray, params: np.ndarray, budget: float, within: float) -> int:
    inside = [i for i in range(len(params)) if params[i] <= budget]
    top = max(params[i] for i in inside)
    return max((i for i in inside if params[i] >= (1 - within) * top), key=lambda i: score[i])


def _size_adjusted(score: np.ndarray, params: np.ndarray, beta: float) -> np.ndarray:
    lp = np.log(params)
    design = np.vstack([lp, np.ones_like(lp)]).T
    residual = score - design @ np.linalg.lstsq(design, score, rcond=None)[0]
    return (lp - lp.mean()) / lp.std() + beta * (residual - residual.mean()) / (residual.std() + 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path)
    args = parser.parse_args()
    for d in args.studies:
        params, acc, scores, budgets = _study(d)
        base = float(np.mean(regret_under_budget(params, acc, params, budgets)))
        print(f"\n{d}: {len(acc)} archs, params regret {base:.4f} (budgets {', '.join(f'{b:,.0f}' for b in budgets)})")
        print(f"{'variant':16s} {'raw':>7s} {'near10%':>8s} {'near20%':>8s} {'near30%':>8s} {'adj0.25':>8s} {'adj0.5':>8s}")
        for name in VARIANTS:
            s = scores[name]
            raw = np.mean(regret_under_budget(s, acc, params, budgets))
            near = [np.mean([max(acc[params <= b]) - acc[_near(s, params, b, w)] for b in budgets]) for w in (0.1, 0.2, 0.3)]
            adj = [np.mean(regret_under_budget(_size_adjusted(s, params, beta), acc, params, budgets)) for beta in (0.25, 0.5)]
            print(f"{name:16s} " + " ".join(f"{v:{8 if i else 7}.4f}" for i, v in enumerate([raw, *near, *adj])))


if __name__ == "__main__":
    main()
