"""Matplotlib figures written atomically as PNG (Agg backend: no display needed)."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

__all__ = ["plot_pareto", "plot_proxy_scatter", "plot_race_rungs", "plot_speed_accuracy"]


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
    from kdsearch.pareto import pareto_front

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


def plot_race_rungs(finalists: Sequence[dict[str, Any]], rungs: Sequence[int], path: Path, rank: str = "tse") -> None:
    """A race by rung, one line per finalist (the eliminated grey, the winner red): validation top-1
    and the mean training loss over every step so far (at one rung, the order of their sums: TSE);
    the panel of ``rank`` (what the race ranked by) says so.

    ``finalists`` as :meth:`kdsearch.search.race.RaceResult.record` lists them (``rungs``: per rung
    reached, ``val_acc`` and ``train_loss_sum``; ``state``: complete for the winner, pruned for the eliminated).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for f in finalists:
        steps = [r["step"] for r in f["rungs"]]
        acc = [r["val_acc"] for r in f["rungs"]]
        tse = [t / s for t, s in zip(itertools.accumulate(r["train_loss_sum"] for r in f["rungs"]), steps)]
        won = f["state"] == "complete"
        style = {"marker": "o", "lw": 2.2 if won else 1.2, "c": "tab:red" if won else "lightgrey",
                 "zorder": 3 if won else 2, "label": f"#{f['finalist']}" + (" (winner)" if won else "")}
        axes[0].plot(steps, acc, **style)
        axes[1].plot(steps, tse, **style)
    for ax, name, label in ((axes[0], "val", "validation top-1"), (axes[1], "tse", "mean training loss so far (TSE ÷ steps)")):
        ax.set(xscale="log" if len(rungs) > 2 else "linear", xticks=list(rungs), xlabel="optimizer steps (rung)",
               ylabel=label, title=label + (" (ranked by)" if name == rank else ""))
        ax.minorticks_off()  # a log axis would label its minor ticks over the rungs
        ax.set_xticklabels([str(r) for r in rungs])
    axes[0].legend(fontsize=7)
    fig.suptitle("race by rung")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_proxy_scatter(
    scores: dict[str, Sequence[float]],
    acc: Sequence[float],
    params: Sequence[float],
    path: Path,
    *,
    ylabel: str = "distilled accuracy",
    xlabel_suffix: str = "",
) -> None:
    """One panel per proxy: its score against accuracy, points coloured by log-parameters."""
    import math

    plt = _pyplot()
    n = max(1, len(scores))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    colour = [math.log10(max(p, 1)) for p in params]
    for ax, (name, values) in zip(axes.flat, scores.items()):
        points = ax.scatter(values, acc, c=colour, s=14, cmap="viridis")
        ax.set(xlabel=name + xlabel_suffix, ylabel=ylabel)
        ax.xaxis.label.set_fontsize(8)
        ax.yaxis.label.set_fontsize(8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(points, ax=axes, label="log10 params", shrink=0.6)
    _save(fig, path)
    plt.close(fig)


def plot_speed_accuracy(trained: Sequence[dict[str, Any]], candidates: Sequence[dict[str, Any]], path: Path, *,
                        proxy: str = "proxy", budget: float | None = None, xlabel: str = "speed-up over the teacher") -> None:
    """The accuracy-speed trade-off, speed-ups measured in ONNX Runtime side by side with the teacher (log x).

    Left: validation top-1 against speed-up for the networks that were trained (``trained``:
    ``label``, ``kind`` teacher | student | finalist, ``speedup``, ``val_acc``). Right, when there
    are any: proxy score against speed-up for the search candidates timed for real, which were
    never trained (``candidates``: ``speedup``, ``score``, ``winner``). A dashed line marks ``budget``.
    """
    plt = _pyplot()
    panels = 2 if candidates else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4), squeeze=False)
    left = axes[0][0]
    style = {"teacher": {"marker": "s", "s": 90, "c": "black", "zorder": 4},
             "student": {"marker": "*", "s": 260, "c": "tab:red", "zorder": 5},
             "finalist": {"marker": "o", "s": 36, "c": "tab:blue", "alpha": 0.7, "zorder": 3}}
    labelled: set[str] = set()
    for p in trained:
        kind = p["kind"]
        name = {"teacher": "teacher", "student": "shipped student", "finalist": "race finalists"}[kind]
        left.scatter([p["speedup"]], [p["val_acc"]], label=None if name in labelled else name, **style[kind])
        labelled.add(name)
        if kind != "finalist":
            left.annotate(p["label"], (p["speedup"], p["val_acc"]), textcoords="offset points", xytext=(6, -12),
                          fontsize=7)
    left.set(xscale="log", xlabel=xlabel, ylabel="validation top-1", title="trained networks")
    if candidates:
        right = axes[0][1]
        others = [c for c in candidates if not c.get("winner")]
        right.scatter([c["speedup"] for c in others], [c["score"] for c in others], s=24, alpha=0.7,
                      c="tab:blue", label="timed candidates")
        won = [c for c in candidates if c.get("winner")]
        if won:
            right.scatter([c["speedup"] for c in won], [c["score"] for c in won], marker="*", s=220, c="tab:red",
                          zorder=5, label="search winner")
        right.set(xscale="log", xlabel=xlabel, ylabel=proxy, title="search candidates timed (not trained)")
    from matplotlib.ticker import FuncFormatter

    times = FuncFormatter(lambda v, _pos: f"{v:g}×")  # 2×, 0.5×: not 2×10⁰ on a log axis
    for ax in axes[0]:
        ax.xaxis.set_major_formatter(times)
        ax.xaxis.set_minor_formatter(times)
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.axvline(1.0, c="grey", lw=0.8, ls=":")
        if budget is not None:
            ax.axvline(budget, c="tab:orange", lw=1.5, ls="--", label=f"budget {budget:g}×")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
