"""Command line: ``python -m robustkernels.train [--config X.yaml] [--flags]``, ``... demo [--quick]`` or
``... throughput [--flags]`` (images/s and the expected time per epoch) or ``... table [--quick]``
(the resumable Table-2-style grid of every loss x K x noise x seed).

Errors that are the user's to fix (a bad setting, an unusable checkpoint, a resume with changed
settings, a diverged run) are printed as one line without a traceback; the exit status is 2 for
bad input (as for argparse's own errors) and 1 for a run that diverged.
"""

from __future__ import annotations

import logging
import sys

from .errors import TrainError

__all__ = ["main"]

PROG = "python -m robustkernels.train"


def _train(argv: list[str]) -> int:
    from .config import config_from_args
    from .loop import train

    result = train(config_from_args(argv))
    final = {k: v for k, v in result["final"].items() if isinstance(v, (int, float))}
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in final.items()))
    return 0


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["demo"]:
        from .demo import main as demo_main

        return demo_main(argv[1:])
    if argv[:1] == ["table"]:
        from .table import main as table_main

        return table_main(argv[1:])
    if argv[:1] == ["throughput"]:
        from .throughput import main as throughput_main

        return throughput_main(argv[1:])
    return _train(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(argv)
    except TrainError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_status
