"""Learning-curve figure: training loss and accuracy (noisy labels), clean validation top-1, per epoch."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["plot_history"]


def plot_history(runs: dict[str, list[dict[str, Any]]], path: str, title: str | None = None) -> str:
    """Plot one line per run (``{label: history}``) and save a PNG to ``path``; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # headless: CI and cluster nodes have no display
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_fit, ax_acc) = plt.subplots(1, 3, figsize=(14, 4))
    for label, history in runs.items():
        epochs = [r["epoch"] for r in history]
        ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o", ms=3, label=label)
        ax_fit.plot(epochs, [r["train_acc_noisy"] for r in history], marker="o", ms=3, label=label)
        for key in sorted({k for r in history for k in r if k.endswith("_top1")}):
            points = [(r["epoch"], r[key]) for r in history if key in r]
            suffix = "" if key == "val_top1" else f" ({key[: -len('_top1')]})"
            ax_acc.plot(*zip(*points), marker="o", ms=3, label=label + suffix)
    ax_loss.set(xlabel="epoch", ylabel="training loss (noisy labels)", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="clean validation top-1")
    ax_fit.set(xlabel="epoch", ylabel="accuracy on the noisy training labels (%)", title="fit of the noisy labels")
    ax_acc.set_ylim(bottom=0)
    ax_fit.set_ylim(bottom=0)
    for ax in (ax_loss, ax_fit, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
