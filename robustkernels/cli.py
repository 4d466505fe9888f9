"""The ``robustkernels`` command (also ``python -m robustkernels``).

Subcommands live in :data:`COMMANDS` (name -> :class:`Command`); a new one (e.g. ``train``) is
added by inserting an entry, without touching :func:`main`. Plots use matplotlib's Agg backend
and are imported only by the subcommands that draw, so ``epsilon`` and ``transfer`` work without
matplotlib.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .calibration import closed_form_epsilon, epsilon_for_classes, mean_error, transfer
from .specs import LOSSES, get_spec

__all__ = ["Command", "COMMANDS", "build_parser", "main"]

#: ``eps(K)`` values quoted in the paper's main text (Staats et al., AAAI 2025), for comparison.
PAPER_EPSILON = {10: 0.5, 100: 3.0, 1000: 5.2}


@dataclass(frozen=True)
class Command:
    """One subcommand: ``configure`` adds its arguments, ``run`` executes it and returns the exit code."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ---- shared argument helpers --------------------------------------------------------------------


def _classes(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"number of classes must be >= 2, got {value}")
    return value


def _epsilon_arg(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _assignment(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: expected a number, got {value!r}") from None


def _params_for(loss: str, assignments: Sequence[tuple[str, float]]) -> dict[str, float]:
    """The ``--set`` values that ``loss`` has (integer parameters as ints)."""
    spec = get_spec(loss)
    out: dict[str, float] = {}
    for name, value in assignments:
        if name in spec.param_index:
            out[name] = int(value) if spec.params[spec.param_index[name]].integer else value
    return out


def _check_assignments_used(losses: Sequence[str], assignments: Sequence[tuple[str, float]]) -> None:
    known = {p.name for loss in losses for p in get_spec(loss).params}
    unused = [name for name, _ in assignments if name not in known]
    if unused:
        raise ValueError(f"--set: {', '.join(unused)} is not a parameter of {', '.join(losses)}")


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--logit-std", type=float, default=1.0, help="std of the initial logits (default 1)")
    parser.add_argument("--samples", type=int, default=None, help="Monte Carlo rows (default: by K)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo sample (default 0)")


def _bias(epsilon: float | str, num_classes: int) -> float:
    return epsilon_for_classes(num_classes) if epsilon == "auto" else float(epsilon)


def _use_agg():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("this subcommand draws a figure and needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- epsilon ------------------------------------------------------------------------------------


def _configure_epsilon(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", type=_classes, nargs="+", required=True, metavar="K", help="number(s) of classes")
    p.add_argument("--target", type=float, default=0.15, help="C of Eq. 4 (default 0.15)")
    p.add_argument("--logit-std", type=float, default=1.0, help="std of the initial logits (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo sample (default 0)")


def _run_epsilon(args: argparse.Namespace) -> int:
    print(f"{'K':>8}  {'eps (Eq. 4)':>11}  {'ln(C(K-1)/(1-C))':>16}  {'paper':>5}")
    for k in args.classes:
        eps = epsilon_for_classes(k, args.target, logit_std=args.logit_std, seed=args.seed)
        paper = f"{PAPER_EPSILON[k]:.1f}" if k in PAPER_EPSILON and args.target == 0.15 else "-"
        print(f"{k:>8}  {eps:>11.3f}  {closed_form_epsilon(k, args.target):>16.3f}  {paper:>5}")
    return 0


# ---- transfer -----------------------------------------------------------------------------------


def _configure_transfer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loss", required=True, choices=list(LOSSES), help="loss name")
    p.add_argument("--param", required=True, help="the hyper-parameter to transfer, e.g. q")
    p.add_argument("--value", type=float, required=True, help="its value at --from-classes")
    p.add_argument("--from-classes", type=_classes, required=True, metavar="K1")
    p.add_argument("--to-classes", type=_classes, required=True, metavar="K2")
    p.add_argument("--at", type=float, default=0.0, help="labelled logit z_k where errors are matched (default 0)")
    p.add_argument("--epsilon", type=_epsilon_arg, default=0.0, help="logit bias on both sides, or 'auto'")
    p.add_argument(
        "--set", type=_assignment, action="append", default=[], metavar="NAME=VALUE", help="fix another parameter"
    )
    _add_sampling(p)


def _run_transfer(args: argparse.Namespace) -> int:
    _check_assignments_used([args.loss], args.set)
    fixed = _params_for(args.loss, args.set)
    sampling = {"epsilon": args.epsilon, "logit_std": args.logit_std, "samples": args.samples, "seed": args.seed}
    result = transfer(
        args.loss, args.param, args.value, args.from_classes, args.to_classes, at=args.at, **sampling, **fixed
    )
    before = mean_error(args.loss, args.from_classes, args.at, **sampling, **fixed, **{args.param: args.value})
    after = mean_error(args.loss, args.to_classes, args.at, **sampling, **fixed, **{args.param: result})
    name = f"{args.loss}.{args.param}"
    print(f"{name} = {args.value:g} at K = {args.from_classes}  ->  {name} = {result:.4f} at K = {args.to_classes}")
    print(
        f"<delta_k>({args.at:g}) = {float(before):.6g} at K = {args.from_classes}, "
        f"{float(after):.6g} at K = {args.to_classes}"
    )
    return 0


# ---- plot-error ---------------------------------------------------------------------------------


def plot_error_figure(
    losses: Sequence[str],
    classes: Sequence[int],
    *,
    epsilon: float | str | None = None,
    z_range: tuple[float, float] | None = None,
    points: int = 121,
    params: Sequence[tuple[str, float]] = (),
    logit_std: float = 1.0,
    samples: int | None = None,
    seed: int = 0,
):
    """The paper's Fig. 1 / 2: ``<delta_k>`` against the labelled pre-activation, one column per K.

    The curves are ``mean_error(loss, K, s)`` as a function of the pre-activation
    ``s = z_k + eps`` (the bias shifts where a logit lands on the curve, not the curve); the
    histograms below show the raw initial logits ``N(0, logit_std^2)`` and, when ``epsilon`` is
    given, the biased ones ``N(eps, logit_std^2)``. Returns the matplotlib figure.
    """
    import torch

    plt = _use_agg()
    biases = {k: None if epsilon is None else _bias(epsilon, k) for k in classes}
    if z_range is None:
        top = max(closed_form_epsilon(k) for k in classes) + 6.0 * logit_std
        z_range = (-4.0 * logit_std, max(top, 4.0 * logit_std))
    grid = torch.linspace(z_range[0], z_range[1], points, dtype=torch.float64)
    fig, axes = plt.subplots(
        2, len(classes), figsize=(4.2 * len(classes), 4.8), sharex="col", squeeze=False,
        gridspec_kw={"height_ratios": [3, 1]},
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    raw = (torch.randn(20000, generator=gen, dtype=torch.float64) * logit_std).numpy()
    for col, k in enumerate(classes):
        top_ax, hist_ax = axes[0, col], axes[1, col]
        for loss in losses:
            fixed = _params_for(loss, params)
            values = mean_error(loss, k, grid, logit_std=logit_std, samples=samples, seed=seed, **fixed)
            top_ax.plot(grid.numpy(), values.numpy(), label=loss)
        top_ax.axhline(0.0, color="0.6", lw=0.8)
        title = f"K = {k}" + ("" if biases[k] is None else f", eps = {biases[k]:.2f}")
        top_ax.set_title(title)
        hist_ax.hist(raw, bins=60, density=True, alpha=0.6, color="tab:blue", label=f"z_k ~ N(0, {logit_std:g}^2)")
        if biases[k] is not None:
            hist_ax.hist(raw + biases[k], bins=60, density=True, alpha=0.6, color="tab:green", label="z_k + eps")
        hist_ax.set_xlabel("pre-activation of the labelled neuron")
        hist_ax.set_yticks([])
    axes[0, 0].set_ylabel("<delta_k>  (Eq. 3)")
    axes[0, 0].legend(loc="lower right", fontsize="small")
    axes[1, 0].legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return fig


def _configure_plot_error(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loss", nargs="+", default=["mae"], choices=list(LOSSES), help="loss name(s) (default mae)")
    p.add_argument("--classes", type=_classes, nargs="+", default=[10, 100, 1000], metavar="K")
    p.add_argument("--epsilon", type=_epsilon_arg, default=None, help="bias whose shifted histogram to show, or 'auto'")
    p.add_argument("--z-min", type=float, default=None, help="left end of the axis")
    p.add_argument("--z-max", type=float, default=None, help="right end of the axis")
    p.add_argument("--points", type=int, default=121, help="grid points per curve (default 121)")
    p.add_argument("--set", type=_assignment, action="append", default=[], metavar="NAME=VALUE", help="loss parameter")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")
    _add_sampling(p)


def _run_plot_error(args: argparse.Namespace) -> int:
    _check_assignments_used(args.loss, args.set)
    z_range = None
    if args.z_min is not None or args.z_max is not None:
        if args.z_min is None or args.z_max is None or not args.z_min < args.z_max:
            raise ValueError("--z-min and --z-max must be given together with z-min < z-max")
        z_range = (args.z_min, args.z_max)
    if args.points < 2:
        raise ValueError(f"--points must be >= 2, got {args.points}")
    fig = plot_error_figure(
        args.loss, args.classes, epsilon=args.epsilon, z_range=z_range, points=args.points, params=args.set,
        logit_std=args.logit_std, samples=args.samples, seed=args.seed,
    )  # fmt: skip
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")
    return 0


# ---- plot-epsilon -------------------------------------------------------------------------------


def plot_epsilon_figure(
    *, min_classes: int = 2, max_classes: int = 100_000, points: int = 25, target: float = 0.15, seed: int = 0
):
    """``eps(K)`` of Eq. 4 on a log axis, with the closed form and the paper's quoted values."""
    import numpy as np

    plt = _use_agg()
    ks = sorted({int(round(k)) for k in np.geomspace(min_classes, max_classes, points)})
    eps = [epsilon_for_classes(k, target, seed=seed) for k in ks]
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    ax.plot(ks, eps, "o-", ms=3, label=f"Eq. 4 (C = {target:g})")
    ax.plot(ks, [closed_form_epsilon(k, target) for k in ks], "--", color="0.5", label="ln(C(K-1)/(1-C))")
    if target == 0.15:
        shown = {k: v for k, v in PAPER_EPSILON.items() if min_classes <= k <= max_classes}
        ax.plot(list(shown), list(shown.values()), "s", color="tab:red", label="paper")
    ax.set_xscale("log")
    ax.set_xlabel("number of classes K")
    ax.set_ylabel("logit bias eps(K)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _configure_plot_epsilon(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-classes", type=_classes, default=2)
    p.add_argument("--max-classes", type=_classes, default=100_000)
    p.add_argument("--points", type=int, default=25, help="values of K, log-spaced (default 25)")
    p.add_argument("--target", type=float, default=0.15, help="C of Eq. 4 (default 0.15)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="PNG file to write")


def _run_plot_epsilon(args: argparse.Namespace) -> int:
    if not args.min_classes < args.max_classes:
        raise ValueError("--min-classes must be < --max-classes")
    if args.points < 2:
        raise ValueError(f"--points must be >= 2, got {args.points}")
    fig = plot_epsilon_figure(
        min_classes=args.min_classes, max_classes=args.max_classes, points=args.points, target=args.target,
        seed=args.seed,
    )  # fmt: skip
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")
    return 0


#: Subcommand name -> definition. Add an entry to add a subcommand.
COMMANDS: dict[str, Command] = {
    "epsilon": Command("logit bias eps(K) from Eq. 4", _configure_epsilon, _run_epsilon),
    "transfer": Command("move a hyper-parameter to another number of classes", _configure_transfer, _run_transfer),
    "plot-error": Command("plot <delta_k>(z_k) of Eq. 3 (paper Fig. 1/2)", _configure_plot_error, _run_plot_error),
    "plot-epsilon": Command("plot eps(K) against K", _configure_plot_epsilon, _run_plot_epsilon),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="robustkernels", description="Calibration tools for noise-robust losses with the logit bias."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.configure(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``robustkernels`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except (ValueError, TypeError) as err:
        # Library validation errors name the argument; show them as usage errors, not tracebacks.
        print(f"robustkernels {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
