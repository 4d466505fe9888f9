"""Command line: ``python -m robustkernels.train [--config X.yaml] [--flags]``, ``... demo [--quick]`` or
``... throughput [--flags]`` (images/s and the expected time per epoch)."""

from __future__ import annotations

import logging
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["demo"]:
        from .demo import main as demo_main

        return demo_main(argv[1:])
    if argv[:1] == ["throughput"]:
        from .throughput import main as throughput_main

        return throughput_main(argv[1:])
    from .config import config_from_args
    from .loop import train

    cfg = config_from_args(argv)
    result = train(cfg)
    final = {k: v for k, v in result["final"].items() if isinstance(v, (int, float))}
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in final.items()))
    return 0
