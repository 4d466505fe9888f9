"""The grid's report: ``table.md`` (paper format), ``table.json`` and the figures, from ``runs.jsonl`` records."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from .table_grid import LOSS_CHOICES, GridSetting, noise_setting

__all__ = ["summarise", "markdown_table", "plot_top1_vs_classes", "plot_learning_curves", "write_report"]

# The learning-curve figure: these losses at this K and noise (or the nearest the records hold).
CURVE_LOSSES = ("ce", "mae", "mae+eps")
CURVE_CLASSES, CURVE_NOISE = 1000, "sym40"
TOP1_NOISES = ("sym0", "sym40")


def _order(values: Iterable[str], canonical: Sequence[str]) -> list[str]:
    """``values`` in ``canonical`` order, unknown ones after them in sorted order."""
    values = set(values)
    return [v for v in canonical if v in values] + sorted(values - set(canonical))


def _noise_order(values: Iterable[str]) -> list[str]:
    def rank(name: str) -> tuple[int, int]:
        kind = 0 if name.startswith("sym") else 1
        return kind, int("".join(c for c in name if c.isdigit()) or 0)

    return sorted(set(values), key=rank)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    # Sample standard deviation over seeds (0 for a single seed).
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One cell per (K, noise, loss): mean and std over seeds of final top-1 and memorised share."""
    groups: dict[tuple[int, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["classes"], r["noise"], r["loss"])].append(r)
    cells = []
    for (k, noise, loss), runs in groups.items():
        top1 = [r["top1"] for r in runs if r.get("top1") is not None]
        memorised = [r["memorised"] for r in runs if r.get("memorised") is not None]
        top1_mean, top1_std = _mean_std(top1)
        mem_mean, mem_std = _mean_std(memorised)
        cells.append(
            {
                "classes": k,
                "noise": noise,
                "loss": loss,
                "seeds": sorted(r["seed"] for r in runs),
                "diverged": sum(bool(r.get("diverged")) for r in runs),
                "top1_mean": top1_mean,
                "top1_std": top1_std,
                "memorised_mean": mem_mean,
                "memorised_std": mem_std,
                "top1": top1,
                "memorised": memorised,
                "loss_params": runs[0].get("loss_params", {}),
                "epsilon": runs[0].get("epsilon"),
            }
        )
    return cells


def _axes(cells: list[dict[str, Any]]) -> tuple[list[int], list[str], list[str]]:
    classes = sorted({c["classes"] for c in cells})
    noises = _noise_order(c["noise"] for c in cells)
    losses = _order((c["loss"] for c in cells), list(LOSS_CHOICES))
    return classes, noises, losses


def _noise_header(name: str) -> str:
    kind, rate = noise_setting(name)
    return f"pair {100 * rate:.0f} %" if kind == "pairflip" else f"{100 * rate:.0f} %"


def _cell_text(mean: float | None, std: float | None, n: int, n_max: int, bold: bool, diverged: int) -> str:
    if mean is None:
        return "diverged" if diverged else "—"
    text = f"{mean:.2f} ± {std:.2f}"
    if bold:
        text = f"**{text}**"
    if n < n_max:
        text += f" (n={n})"  # fewer seeds than the other cells: the grid is not finished
    if diverged:
        text += f" ({diverged} diverged)"
    return text


def _block(
    cells: dict[tuple[str, str], dict], noises: list[str], losses: list[str], metric: str, bold: bool
) -> list[str]:
    """Markdown rows of one K: a loss per row, a noise setting per column."""
    n_max = max((len(c["seeds"]) for c in cells.values()), default=0)
    best = {}
    for noise in noises:
        means = [cells[(noise, loss)][f"{metric}_mean"] for loss in losses if (noise, loss) in cells]
        means = [m for m in means if m is not None]
        best[noise] = max(means) if means and bold else None
    lines = ["| loss | " + " | ".join(_noise_header(n) for n in noises) + " |", "|---" * (len(noises) + 1) + "|"]
    for loss in losses:
        row = []
        for noise in noises:
            cell = cells.get((noise, loss))
            if cell is None:
                row.append("")
                continue
            mean = cell[f"{metric}_mean"]
            if metric == "memorised" and noise_setting(noise)[1] == 0.0:
                row.append("—")  # no wrong labels to memorise
                continue
            is_best = best[noise] is not None and mean is not None and math.isclose(mean, best[noise])
            n = len(cell[metric])
            row.append(_cell_text(mean, cell[f"{metric}_std"], n, n_max, is_best, cell["diverged"]))
        lines.append(f"| {loss} | " + " | ".join(row) + " |")
    return lines


def _setting_text(setting: GridSetting, cells: list[dict[str, Any]]) -> str:
    seeds = max((len(c["seeds"]) for c in cells), default=0)
    return (
        f"Composite handwritten digits (K = 10**digits), {setting.train_size} training and {setting.val_size} "
        f"clean validation images, {setting.epochs} epochs, up to {seeds} seed(s). Every loss uses the "
        "demo's MLP (512-512), SGD with Nesterov (lr 0.4 at batch 128), half an epoch of warm-up and a cosine "
        "schedule, with its published hyper-parameters (CIFAR-10 values for K = 10, CIFAR-100 values above); "
        "`+eps` adds the logit bias eps(K) of Eq. 4, `gce+transfer` moves q = 0.7 from K = 10 by Eq. 3. "
        "Symmetric noise relabels each class's share to one of the other classes; pair flip relabels c as c + 1."
    )


def markdown_table(cells: list[dict[str, Any]], setting: GridSetting) -> str:
    """``table.md``: final clean top-1 per loss x noise (one block per K, best in bold), then the memorised share."""
    classes, noises, losses = _axes(cells)
    by_k: dict[int, dict[tuple[str, str], dict]] = defaultdict(dict)
    for c in cells:
        by_k[c["classes"]][(c["noise"], c["loss"])] = c
    lines = ["# Final clean top-1 accuracy (%) on composite digits", "", _setting_text(setting, cells), ""]
    lines.append(
        "Mean ± sample standard deviation over seeds of the final epoch's clean validation top-1; "
        "best per column in bold."
    )
    for k in classes:
        lines += ["", f"## K = {k}", "", *_block(by_k[k], noises, losses, "top1", bold=True)]
    lines += [
        "",
        "# Memorised share of the wrong labels (%)",
        "",
        "Share of the mislabelled training images (noisy label != clean label) whose prediction at the final "
        "epoch equals the wrong label, mean ± std over seeds (lower is more robust; a loss that does not learn "
        "at all also scores near 0).",
    ]
    for k in classes:
        lines += ["", f"## K = {k}", "", *_block(by_k[k], noises, losses, "memorised", bold=False)]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: CI and cluster nodes have no display
    import matplotlib.pyplot as plt

    return plt


def plot_top1_vs_classes(cells: list[dict[str, Any]], path: str) -> str | None:
    """Final top-1 against K, one line per loss, a panel per noise of :data:`TOP1_NOISES` (those present)."""
    _, noises_present, losses = _axes(cells)
    noises = [n for n in TOP1_NOISES if n in noises_present] or noises_present[:1]
    if not noises:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(noises), figsize=(6.5 * len(noises) + 2.0, 4.5), squeeze=False)
    # Twelve losses outrun the default ten-colour cycle: tab20's colours, and a loss and its
    # "+eps" / "+transfer" variant told apart by the line style as well.
    colours = plt.get_cmap("tab20").colors
    for ax, noise in zip(axes[0], noises):
        for index, loss in enumerate(losses):
            points = sorted(
                (c["classes"], c["top1_mean"], c["top1_std"])
                for c in cells
                if c["noise"] == noise and c["loss"] == loss and c["top1_mean"] is not None
            )
            if points:
                ks, means, stds = zip(*points)
                style = "--" if "+" in loss else "-"
                colour = colours[(2 * index) % 20 + (index // 10) % 2]
                ax.errorbar(ks, means, yerr=stds, marker="o", ms=3, capsize=2, ls=style, color=colour, label=loss)
        ax.set_xscale("log")
        ax.set(xlabel="classes K", ylabel="final clean top-1 (%)", title=f"{_noise_header(noise)} noise")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _save(fig, plt, path)


def _curve_selection(records: list[dict[str, Any]]) -> tuple[int, str, list[str]] | None:
    """K, noise and losses of the learning curves: :data:`CURVE_CLASSES` / :data:`CURVE_NOISE` if
    present, else the largest K and the noisiest symmetric setting the records hold."""
    if not records:
        return None
    classes = {r["classes"] for r in records}
    k = CURVE_CLASSES if CURVE_CLASSES in classes else max(classes)
    noises = {r["noise"] for r in records if r["classes"] == k}
    noise = CURVE_NOISE if CURVE_NOISE in noises else _noise_order(noises)[-1]
    present = {r["loss"] for r in records if r["classes"] == k and r["noise"] == noise}
    losses = [x for x in CURVE_LOSSES if x in present] or _order(present, list(LOSS_CHOICES))
    return k, noise, losses


def _mean_curve(runs: list[dict[str, Any]], field: str) -> tuple[list[int], list[float]]:
    per_epoch: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        for row in r.get("history", []):
            if row.get(field) is not None:
                per_epoch[row["epoch"]].append(row[field])
    epochs = sorted(per_epoch)
    return epochs, [statistics.fmean(per_epoch[e]) for e in epochs]


def plot_learning_curves(records: list[dict[str, Any]], path: str) -> str | None:
    """Clean validation top-1 and memorised share per epoch (mean over seeds) for ce, mae, mae+eps."""
    selection = _curve_selection(records)
    if selection is None:
        return None
    k, noise, losses = selection
    plt = _pyplot()
    fig, (ax_acc, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5))
    for loss in losses:
        runs = [r for r in records if (r["classes"], r["noise"], r["loss"]) == (k, noise, loss)]
        ax_acc.plot(*_mean_curve(runs, "val_top1"), marker="o", ms=3, label=loss)
        ax_mem.plot(*_mean_curve(runs, "train_memorised"), marker="o", ms=3, label=loss)
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="clean validation top-1")
    ax_mem.set(xlabel="epoch", ylabel="share (%)", title="mislabelled training images predicted as their wrong label")
    for ax in (ax_acc, ax_mem):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    kind = "pair-flip" if noise_setting(noise)[0] == "pairflip" else "symmetric"
    fig.suptitle(f"K = {k}, {100 * noise_setting(noise)[1]:.0f} % {kind} noise (mean over seeds)")
    return _save(fig, plt, path)


def _save(fig, plt, path: str) -> str:
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(records: list[dict[str, Any]], out: str, setting: GridSetting) -> dict[str, str]:
    """Write ``table.md``, ``table.json``, ``top1_vs_classes.png`` and ``learning_curves.png`` to ``out``.

    Returns the paths written, by name.
    """
    cells = summarise(records)
    classes, noises, losses = _axes(cells)
    paths = {"table.md": os.path.join(out, "table.md"), "table.json": os.path.join(out, "table.json")}
    with open(paths["table.md"], "w", encoding="utf-8") as f:
        f.write(markdown_table(cells, setting))
    summary = {"setting": setting.as_dict(), "classes": classes, "noise": noises, "losses": losses, "cells": cells}
    with open(paths["table.json"], "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    for name, plot in (("top1_vs_classes.png", plot_top1_vs_classes), ("learning_curves.png", plot_learning_curves)):
        written = plot(cells if plot is plot_top1_vs_classes else records, os.path.join(out, name))
        if written:
            paths[name] = written
    return paths
