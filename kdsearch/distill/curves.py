"""The training-curve figure of a run's history (loss by term, train/val top-1, agreement)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_curves"]


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Write ``path`` (PNG) from the per-epoch ``history`` the training engine returns; nothing if empty."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kdsearch.files import atomic_path

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for term in history[0]["train_loss"]:
        ax_loss.plot(epochs, [h["train_loss"].get(term, float("nan")) for h in history], marker="o", label=term)
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="loss by term")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["train_acc"] for h in history], marker="o", label="train top-1")
    ax_acc.plot(epochs, [h["val_acc"] for h in history], marker="o", label="val top-1")
    if "agreement" in history[0]:
        ax_acc.plot(epochs, [h["agreement"] for h in history], marker="o", label="teacher agreement")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_acc.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
