"""The embedded demo: CE vs MAE vs MAE with eps(K) on 1000 classes of real handwriting.

Three runs that differ only in the loss, on :func:`robustkernels.data.composite_digits` (three
handwritten digits side by side, ``K = 1000`` classes) with 40 % symmetric label noise:

- ``ce``: cross entropy, the unbounded baseline (learns, then starts memorising the noise);
- ``mae``: MAE without the bias: with ``K = 1000`` the label's initial probability is about
  ``1/K``, where MAE's gradient ``2 p_y (p - e_y)`` vanishes, so it barely learns (the paper's
  Fig. 2b);
- ``mae+eps(K)``: MAE with the logit bias ``eps = epsilon_for_classes(1000)`` (about 5.36),
  which lifts the initial ``p_y`` to 0.15, where MAE learns.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from .config import TrainConfig
from .loop import train
from .plot import plot_history

__all__ = ["demo_configs", "run_demo", "main"]

_RUNS = (("ce", "ce", 0.0), ("mae", "mae", 0.0), ("mae+eps(K)", "mae", "auto"))


def demo_configs(output_dir: str, quick: bool = False, threads: int | None = None) -> dict[str, TrainConfig]:
    """The three run configs (``quick`` shrinks the data and epochs for CI)."""
    base = TrainConfig(
        dataset="composite_digits",
        num_digits=3,
        train_size=12000 if quick else 30000,
        val_size=2000 if quick else 5000,
        noise="symmetric",
        noise_rate=0.4,
        model="mlp",
        hidden=512,
        lr=0.8,  # 0.4 at batch 128 after linear scaling
        batch_size=128,
        weight_decay=5e-4,
        warmup_epochs=0.5,
        lr_schedule="cosine",
        epochs=6 if quick else 15,
        loss_backend="auto",
        seed=0,
        threads=threads,
        plot=False,
        progress=False,
        num_workers=0,
        time_loss_every=10,
    )
    return {
        label: dataclasses.replace(base, loss=loss, epsilon=eps, output_dir=os.path.join(output_dir, label))
        for label, loss, eps in _RUNS
    }


def run_demo(
    output_dir: str = "runs/demo", figure: str | None = None, quick: bool = False, threads: int | None = 1
) -> dict[str, dict]:
    """Train the three runs, print one line per epoch and a final table, save the figure.

    Returns ``{label: result of train()}``.
    """
    results = {}
    t_all = time.perf_counter()
    for label, cfg in demo_configs(output_dir, quick, threads).items():
        t0 = time.perf_counter()
        res = train(cfg)
        res["wall_s"] = time.perf_counter() - t0
        results[label] = res
        for r in res["history"]:
            print(
                f"{label:>11} epoch {r['epoch']:2d}  loss {r['train_loss']:.4f}  "
                f"noisy-train acc {r['train_acc_noisy']:5.1f}%  val top-1 {r['val_top1']:5.1f}%  "
                f"top-5 {r['val_top5']:5.1f}%  eps {r['epsilon']:.3f}",
                flush=True,
            )
    first = next(iter(results.values()))
    cfg0 = next(iter(demo_configs(output_dir, quick).values()))
    print(
        f"\n{first['num_classes']} classes, {cfg0.train_size} training images with "
        f"{100 * first['noise_rate']:.1f}% symmetric label noise, {cfg0.epochs} epochs; clean validation "
        f"({cfg0.val_size} images of unseen handwriting):"
    )
    print(f"{'loss':>11}  {'top-1':>6}  {'top-5':>6}  {'best top-1':>10}  {'wall s':>6}  {'loss share':>10}")
    for label, res in results.items():
        final = res["final"]
        best = max(r["val_top1"] for r in res["history"])
        print(
            f"{label:>11}  {final['val_top1']:5.1f}%  {final['val_top5']:5.1f}%  {best:9.1f}%  "
            f"{res['wall_s']:6.1f}  {100 * final['loss_share']:9.1f}%"
        )
    backends = sorted({res["loss_backend"] for res in results.values()})
    print(f"loss backend {', '.join(backends)}; total wall time {time.perf_counter() - t_all:.1f} s")
    figure = figure or os.path.join(output_dir, "demo_curves.png")
    title = f"{first['num_classes']} classes, {100 * first['noise_rate']:.0f}% symmetric noise"
    plot_history({label: res["history"] for label, res in results.items()}, figure, title)
    print(f"figure: {figure}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m robustkernels.train demo",
        # argparse %-formats help= strings, but prints a description without %(prog) as written.
        description="CE vs MAE vs MAE+eps(K) on 1000 classes of handwritten digits with 40% label noise.",
    )
    parser.add_argument("--quick", action="store_true", help="shortened form for CI (well under a minute)")
    parser.add_argument("--out", default="runs/demo", help="output folder (logs, checkpoints)")
    parser.add_argument("--figure", default=None, help="PNG path of the learning curves (default OUT/demo_curves.png)")
    # One thread by default: on a 2-core machine shared with other jobs, two OpenMP threads
    # oversubscribe the cores and a step of this small MLP became 30x slower (measured).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    run_demo(args.out, args.figure, args.quick, args.threads)
    return 0
