"""The ``robustkernels`` command (also ``python -m robustkernels``).

Subcommands live in :data:`COMMANDS` (name -> :class:`Command`); a new one (e.g. ``train``) is
added by inserting an entry, without touching :func:`main`. Plots use matplotlib's Agg backend
and are imported only by the subcommands that draw, so ``epsilon`` and ``transfer`` work without
matplotlib.

Bad input never computes anything and never shows a traceback: each argument is parsed by a type
function below that says what it expects, the output file (``-o``) is checked before any work,
and the run functions check what needs several arguments together (a loss's parameters, the
cost of Eq. 3) before they start. All of these exit with status 2 and one line naming the option.
"""

from __future__ import annotations

import argparse
import decimal
import math
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .calibration import (
    _TRANSFER_EVALUATIONS,
    _check_error_budget,
    _resolve_samples,
    closed_form_epsilon,
    epsilon_for_classes,
    mean_error,
    transfer,
)
from .specs import LOSSES, get_spec

__all__ = ["Command", "COMMANDS", "build_parser", "main"]

#: ``eps(K)`` values quoted in the paper's main text (Staats et al., AAAI 2025), for comparison.
PAPER_EPSILON = {10: 0.5, 100: 3.0, 1000: 5.2}

#: Largest magnitude of a logit-scale argument (``--at``, ``--epsilon``, ``--z-min``, ``--z-max``,
#: ``--logit-std``). ``exp`` underflows float64 below -745, so a logit gap of ~750 already makes
#: every probability exactly 0 or 1; 1e4 leaves room and keeps grids and histograms finite.
LOGIT_LIMIT = 1e4
#: Largest number of classes: the kernels' labels are int64.
MAX_CLASSES = 2**63 - 1
#: Most grid points of a ``plot-error`` curve and values of K of ``plot-epsilon``: beyond these a
#: figure shows nothing more, and the cost grows with each.
MAX_ERROR_POINTS = 1001
MAX_EPSILON_POINTS = 200
#: Most ``--classes`` columns of a ``plot-error`` figure.
MAX_ERROR_COLUMNS = 10


@dataclass(frozen=True)
class Command:
    """One subcommand: ``configure`` adds its arguments, ``run`` executes it and returns the exit code."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ---- argument types -----------------------------------------------------------------------------
# Each parses one command-line string or raises ArgumentTypeError with a message that says what is
# expected; argparse prefixes it with "argument --option: " and exits with status 2. (A plain
# ValueError would make argparse print "invalid <function name> value".)


def _shown(text: str, limit: int = 40) -> str:
    """``text`` quoted for a message, shortened when long (a 5000-digit number stays one line)."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _parse_integer(text: str) -> int | None:
    """An int from ``"12"``, ``"1_000"`` or an exactly integral ``"1e8"``; None otherwise.

    ``decimal`` reads ``"1e23"`` exactly (``float`` would round it to 99999999999999991611392);
    exponents above 30 are refused before ``int()`` could build a number of a billion digits.
    """
    try:
        value = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        return None
    if not value.is_finite() or value.adjusted() > 30 or value != value.to_integral_value():
        return None
    return int(value)


def _integer_type(
    what: str, low: int, high: int | None = None, texts: tuple[str, str] | None = None
) -> Callable[[str], int]:
    """A type function for an integer in ``[low, high]`` (``high=None``: no upper end); ``texts``
    spells the two ends in the message (``"2**63 - 1"`` reads better than its 19 digits)."""
    low_text, high_text = texts or (str(low), str(high))
    expected = f">= {low_text}" if high is None else f"in [{low_text}, {high_text}]"

    def parse(text: str) -> int:
        value = _parse_integer(text)
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{what} must be an integer {expected}, got {_shown(text)}")
        return value

    return parse


def _parse_real(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _real_type(
    what: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """A type function for a float in the interval from ``low`` to ``high`` (NaN never passes)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        value = _parse_real(text)
        above_low = low < value if low_open else low <= value
        below_high = value < high if high_open else value <= high
        if not (above_low and below_high):
            raise argparse.ArgumentTypeError(f"{what} must be a number in {interval}, got {_shown(text)}")
        return value

    return parse


_classes = _integer_type("K", 2, MAX_CLASSES, ("2", "2**63 - 1"))
_samples = _integer_type("the number of sample rows", 1)
_seed = _integer_type("the seed", -(2**63), 2**64 - 1, ("-2**63", "2**64 - 1"))  # torch's range
_target = _real_type("C", 0.0, 1.0, low_open=True, high_open=True)
_logit_std = _real_type("the logit std", 0.0, LOGIT_LIMIT, low_open=True)
_logit = _real_type("a logit", -LOGIT_LIMIT, LOGIT_LIMIT)
_error_points = _integer_type("the number of points", 2, MAX_ERROR_POINTS)
_epsilon_points = _integer_type("the number of values of K", 2, MAX_EPSILON_POINTS)


def _finite(text: str) -> float:
    value = _parse_real(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {_shown(text)}")
    return value


def _epsilon_arg(text: str) -> float | str:
    if text == "auto":
        return text
    value = _parse_real(text)
    if not -LOGIT_LIMIT <= value <= LOGIT_LIMIT:
        raise argparse.ArgumentTypeError(
            f"eps must be 'auto' or a number in [{-LOGIT_LIMIT:g}, {LOGIT_LIMIT:g}], got {_shown(text)}"
        )
    return value


def _assignment(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    number = _parse_real(value)
    if not sep or not name or not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with a finite number VALUE, got {_shown(text)}")
    return name, number


def _figure_formats() -> set[str] | None:
    """File extensions matplotlib can write here; None without matplotlib (the run then says so).

    ``.pgf`` is listed by matplotlib but written through a TeX program (``pgf.texsystem``,
    xelatex by default), so it counts only where that program is installed.
    """
    try:
        import matplotlib
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return None
    formats = set(FigureCanvasBase.get_supported_filetypes())
    if shutil.which(matplotlib.rcParams["pgf.texsystem"]) is None:
        formats.discard("pgf")
    return formats


def _output_file(text: str) -> str:
    """``-o/--output``: a file the figure can be written to, checked before anything is computed."""
    shown = _shown(text, 300)
    try:
        problem = _output_problem(Path(text), _figure_formats())
    except OSError as err:  # e.g. a name longer than the file system allows
        problem = err.strerror or str(err)
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write {shown}: {problem}")
    return text


def _output_problem(path: Path, formats: set[str] | None) -> str | None:
    """Why ``path`` cannot take the figure, or None."""
    if not str(path) or path.is_dir():
        return "expected a file name such as figure.png, not a directory"
    if formats is not None and path.suffix[1:].lower() not in formats:
        # matplotlib would append ".png" to a name without one, so the file would not be `path`.
        return f"the name must end in a format matplotlib writes ({', '.join('.' + f for f in sorted(formats))})"
    if not path.parent.is_dir():
        return f"the directory {str(path.parent)!r} does not exist"
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return "permission denied"
    return None


# ---- checks of several arguments together (run before any work) ---------------------------------


def _check_assignments(losses: Sequence[str], assignments: Sequence[tuple[str, float]]) -> None:
    """Every ``--set NAME=VALUE`` names a parameter of one of ``losses`` and is in its range there."""
    known = {p.name for loss in losses for p in get_spec(loss).params}
    unused = [name for name, _ in assignments if name not in known]
    if unused:
        raise ValueError(f"--set: {', '.join(unused)} is not a parameter of {', '.join(losses)}")
    for loss in losses:
        _params_for(loss, assignments)


def _params_for(loss: str, assignments: Sequence[tuple[str, float]]) -> dict[str, float]:
    """The ``--set`` values that ``loss`` has, checked against its ranges (integer ones as ints)."""
    spec = get_spec(loss)
    out: dict[str, float] = {}
    for name, value in assignments:
        if name in spec.param_index:
            try:
                out[name] = spec.params[spec.param_index[name]].check(value, spec.name)
            except ValueError as err:
                raise ValueError(f"--set {name}={value:g}: {err}") from None
    return out


def _check_error_cost(option: str, classes: Sequence[int], samples: int | None, evaluations: int, what: str) -> None:
    """Eq. 3 at each ``K`` of ``classes`` fits calibration's memory and time bound (see there)."""
    for k in classes:
        try:
            _check_error_budget(k, _resolve_samples(samples, k), evaluations, what)
        except ValueError as err:
            raise ValueError(f"{option} {k} with --samples {samples or 'default'}: {err}") from None


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--logit-std", type=_logit_std, default=1.0, help="std of the initial logits (default 1)")
    parser.add_argument("--samples", type=_samples, default=None, help="Monte Carlo rows (default: by K)")
    parser.add_argument("--seed", type=_seed, default=0, help="seed of the Monte Carlo sample (default 0)")


def _bias(epsilon: float | str, num_classes: int, logit_std: float = 1.0, seed: int = 0) -> float:
    if epsilon == "auto":
        return epsilon_for_classes(num_classes, logit_std=logit_std, seed=seed)
    return float(epsilon)


def _use_agg():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("this subcommand draws a figure and needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    """``fig.savefig(path)``; a failure the up-front checks could not see (a full disk, a file
    removed meanwhile) becomes a usage error naming the option."""
    try:
        fig.savefig(path, dpi=120)
    except (OSError, RuntimeError) as err:  # RuntimeError: a backend's missing external program
        raise ValueError(f"-o/--output: cannot write {path!r}: {getattr(err, 'strerror', None) or err}") from None
    print(f"wrote {path}")


# ---- epsilon ------------------------------------------------------------------------------------


def _configure_epsilon(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", type=_classes, nargs="+", required=True, metavar="K", help="number(s) of classes")
    p.add_argument("--target", type=_target, default=0.15, help="C of Eq. 4 (default 0.15)")
    p.add_argument("--logit-std", type=_logit_std, default=1.0, help="std of the initial logits (default 1)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the Monte Carlo sample (default 0)")


def _run_epsilon(args: argparse.Namespace) -> int:
    width = max(8, *(len(str(k)) for k in args.classes))
    print(f"{'K':>{width}}  {'eps (Eq. 4)':>11}  {'ln(C(K-1)/(1-C))':>16}  {'paper':>5}")
    quoted = args.target == 0.15 and args.logit_std == 1.0  # the setting of the paper's values
    for k in args.classes:
        eps = epsilon_for_classes(k, args.target, logit_std=args.logit_std, seed=args.seed)
        paper = f"{PAPER_EPSILON[k]:.1f}" if k in PAPER_EPSILON and quoted else "-"
        print(f"{k:>{width}}  {eps:>11.3f}  {closed_form_epsilon(k, args.target):>16.3f}  {paper:>5}")
    return 0


# ---- transfer -----------------------------------------------------------------------------------


def _configure_transfer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loss", required=True, choices=list(LOSSES), help="loss name")
    p.add_argument("--param", required=True, help="the hyper-parameter to transfer, e.g. q")
    p.add_argument("--value", type=_finite, required=True, help="its value at --from-classes")
    p.add_argument("--from-classes", type=_classes, required=True, metavar="K1")
    p.add_argument("--to-classes", type=_classes, required=True, metavar="K2")
    p.add_argument("--at", type=_logit, default=0.0, help="labelled logit z_k where errors are matched (default 0)")
    p.add_argument("--epsilon", type=_epsilon_arg, default=0.0, help="logit bias on both sides, or 'auto'")
    p.add_argument(
        "--set", type=_assignment, action="append", default=[], metavar="NAME=VALUE", help="fix another parameter"
    )
    _add_sampling(p)


def _check_transfer(args: argparse.Namespace) -> None:
    spec = get_spec(args.loss)
    if args.param not in spec.param_index:
        known = ", ".join(p.name for p in spec.params) or "none"
        raise ValueError(f"--param: {spec.name} has no parameter {args.param!r}; valid parameters: {known}")
    info = spec.params[spec.param_index[args.param]]
    if info.integer:
        raise ValueError(f"--param: {spec.name}.{args.param} is an integer parameter and cannot be transferred")
    try:
        info.check(args.value, spec.name)
    except ValueError as err:
        raise ValueError(f"--value: {err}") from None
    if any(name == args.param for name, _ in args.set):
        raise ValueError(f"--set {args.param}=...: {args.param} is the parameter being transferred (--param)")
    _check_assignments([args.loss], args.set)
    _check_error_cost("--from-classes", [args.from_classes], args.samples, 1, "evaluation")
    _check_error_cost(
        "--to-classes", [args.to_classes], args.samples, _TRANSFER_EVALUATIONS, "evaluations (transfer's search)"
    )


def _run_transfer(args: argparse.Namespace) -> int:
    _check_transfer(args)
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
    given, the biased ones ``N(eps, logit_std^2)`` (``"auto"``: ``eps(K)`` for this
    ``logit_std``). Returns the matplotlib figure.
    """
    import torch

    plt = _use_agg()
    biases = {k: None if epsilon is None else _bias(epsilon, k, logit_std, seed) for k in classes}
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
    p.add_argument(
        "--classes", type=_classes, nargs="+", default=[10, 100, 1000], metavar="K",
        help=f"number(s) of classes, one column each (at most {MAX_ERROR_COLUMNS})",
    )  # fmt: skip
    p.add_argument("--epsilon", type=_epsilon_arg, default=None, help="bias whose shifted histogram to show, or 'auto'")
    p.add_argument("--z-min", type=_logit, default=None, help="left end of the axis (negative: --z-min=-8)")
    p.add_argument("--z-max", type=_logit, default=None, help="right end of the axis")
    p.add_argument("--points", type=_error_points, default=121, help="grid points per curve (default 121)")
    p.add_argument("--set", type=_assignment, action="append", default=[], metavar="NAME=VALUE", help="loss parameter")
    p.add_argument("-o", "--output", type=_output_file, required=True, help="figure file to write (.png, .pdf, .svg)")
    _add_sampling(p)


def _run_plot_error(args: argparse.Namespace) -> int:
    losses, classes = list(dict.fromkeys(args.loss)), list(dict.fromkeys(args.classes))  # each once
    if len(classes) > MAX_ERROR_COLUMNS:
        raise ValueError(f"--classes: at most {MAX_ERROR_COLUMNS} values (one figure column each), got {len(classes)}")
    _check_assignments(losses, args.set)
    z_range = None
    if args.z_min is not None or args.z_max is not None:
        if args.z_min is None or args.z_max is None or not args.z_min < args.z_max:
            raise ValueError("--z-min and --z-max must be given together with z-min < z-max")
        z_range = (args.z_min, args.z_max)
    _check_error_cost("--classes", classes, args.samples, args.points, "grid points (--points)")
    fig = plot_error_figure(
        losses, classes, epsilon=args.epsilon, z_range=z_range, points=args.points, params=args.set,
        logit_std=args.logit_std, samples=args.samples, seed=args.seed,
    )  # fmt: skip
    _save(fig, args.output)
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
    p.add_argument("--points", type=_epsilon_points, default=25, help="values of K, log-spaced (default 25)")
    p.add_argument("--target", type=_target, default=0.15, help="C of Eq. 4 (default 0.15)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("-o", "--output", type=_output_file, required=True, help="figure file to write (.png, .pdf, .svg)")


def _run_plot_epsilon(args: argparse.Namespace) -> int:
    if not args.min_classes < args.max_classes:
        raise ValueError("--min-classes must be < --max-classes")
    fig = plot_epsilon_figure(
        min_classes=args.min_classes, max_classes=args.max_classes, points=args.points, target=args.target,
        seed=args.seed,
    )  # fmt: skip
    _save(fig, args.output)
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


def _attach_negative_values(argv: Sequence[str]) -> list[str]:
    """``["--z-min", "-1e3"]`` -> ``["--z-min=-1e3"]``.

    argparse takes a word that starts with "-" for an option unless it looks like ``-4`` or
    ``-4.5``, so ``--z-min -1e3`` or ``--at -inf`` would fail with "expected one argument" before
    the type function could say anything. Joined with "=", the value reaches the type function.
    """
    out: list[str] = []
    for word in argv:
        previous = out[-1] if out else ""
        is_option = previous.startswith("-") and "=" not in previous and previous not in ("-h", "--help")
        is_number = word.startswith("-") and (not math.isnan(_parse_real(word)) or word.lower() == "-nan")
        if is_option and is_number:
            out[-1] = f"{previous}={word}"
        else:
            out.append(word)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``robustkernels`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(_attach_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        return COMMANDS[args.command].run(args)
    except (ValueError, TypeError) as err:
        # Library validation errors name the argument; show them as usage errors, not tracebacks.
        print(f"robustkernels {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
