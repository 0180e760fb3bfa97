"""Matplotlib figures written atomically as PNG (Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["plot_pareto"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    from kdsearch.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def plot_pareto(rows: Sequence[dict[str, Any]], winner: dict[str, Any], score: str, path: Path) -> None:
    """Proxy score against parameters for every candidate; the Pareto front and winner marked."""
    from kdsearch.search.winner import pareto_front

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    feasible = [r for r in rows if r["feasible"]]
    infeasible = [r for r in rows if not r["feasible"]]
    ax.scatter([r["params"] for r in feasible], [r[score] for r in feasible], s=14, alpha=0.6, label="within budget")
    if infeasible:
        ax.scatter([r["params"] for r in infeasible], [r[score] for r in infeasible], s=14, alpha=0.5, c="lightgrey",
                   label="over budget")
    front = pareto_front(feasible, score, "params") if feasible else []
    ax.plot([r["params"] for r in front], [r[score] for r in front], c="tab:orange", lw=1.5, label="Pareto front")
    ax.scatter([winner["params"]], [winner[score]], marker="*", s=220, c="tab:red", zorder=5, label="winner")
    ax.set(xscale="log", xlabel="parameters", ylabel=score.removeprefix("score_"), title="search candidates")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
