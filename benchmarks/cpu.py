"""CPU benchmark: forward + backward of every loss, native kernel vs naive eager PyTorch vs
``torch.compile`` of the same naive code (benchmarks/naive.py).

    python -m benchmarks.cpu                      # N=8192, K=1000, float32, all losses
    python -m benchmarks.cpu --losses mae,bitemp --repeats 5

Robust to a shared, noisy machine: every variant is warmed up (compiled) first, then the
variants of one loss are timed round-robin within each repeat, and the speed-ups are medians of
the per-repeat ratios (same-run comparisons), next to the median times. Writes
benchmarks/results/cpu.json and cpu.md (with the command line that produced them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import robustkernels as rk
from benchmarks._measure import cpu_name
from benchmarks.naive import naive_loss

RESULTS = Path(__file__).resolve().parent / "results"
# The targets: native vs eager and vs torch.compile, for these losses.
TARGETS = {"eager": 4.0, "compile": 2.0}
TARGET_LOSSES = ("mae", "gce", "nce_agce", "bitemp")


def _time_fwd_bwd(fn: Callable, logits: torch.Tensor, target: torch.Tensor) -> float:
    logits.grad = None
    start = time.perf_counter()
    fn(logits, target).backward()
    return time.perf_counter() - start


def bench_loss(name: str, n: int, k: int, eps: float, repeats: int, warmup: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g).requires_grad_()
    target = torch.randint(0, k, (n,), generator=g)
    naive = naive_loss(name, eps=eps)
    torch._dynamo.reset()  # every loss shares naive_loss's code object: no recompile limit
    variants = {
        "native": lambda x, y: rk.robust_loss(x, y, name, epsilon=eps, backend="native"),
        "eager": naive,
        "compile": torch.compile(naive, dynamic=False),
    }
    # Same numbers before timing anything (a wrong baseline would make any speed-up meaningless).
    ref = float(rk.robust_loss(logits.detach().double(), target, name, epsilon=eps, backend="torch"))
    for label, fn in variants.items():
        for _ in range(warmup):
            _time_fwd_bwd(fn, logits, target)
        with torch.no_grad():
            got = float(fn(logits, target))
        if abs(got - ref) > 1e-3 * max(1.0, abs(ref)):
            raise RuntimeError(f"{name}/{label}: loss {got} differs from the float64 reference {ref}")
    times: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(repeats):
        for label, fn in variants.items():
            times[label].append(_time_fwd_bwd(fn, logits, target))
    speedup = {
        base: statistics.median(b / a for a, b in zip(times["native"], times[base])) for base in ("eager", "compile")
    }
    return {
        "loss": name,
        "ms": {label: 1e3 * statistics.median(t) for label, t in times.items()},
        "speedup_vs": speedup,
    }


def _markdown(results: list[dict], meta: dict) -> str:
    lines = [
        "# CPU benchmark: forward + backward",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"N = {meta['n']}, K = {meta['k']}, float32, eps = {meta['eps']}, reduction mean, "
        f"{meta['threads']} threads, {meta['repeats']} timed repeats after {meta['warmup']} warm-up calls; "
        f"CPU: {meta['cpu']}; torch {meta['torch']}.",
        "Times are medians; speed-ups are medians of per-repeat ratios (variants timed round-robin).",
        f"Targets: native >= {TARGETS['eager']:g}x eager and >= {TARGETS['compile']:g}x torch.compile "
        f"for {', '.join(TARGET_LOSSES)}.",
        "",
        "| loss | native ms | eager ms | compile ms | vs eager | vs compile |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ms, s = r["ms"], r["speedup_vs"]
        mark = " *" if r["loss"] in TARGET_LOSSES else ""
        lines.append(
            f"| {r['loss']}{mark} | {ms['native']:.1f} | {ms['eager']:.1f} | {ms['compile']:.1f} "
            f"| {s['eager']:.1f}x | {s['compile']:.1f}x |"
        )
    lines += ["", "`*`: losses with a performance target.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=1.0)
    parser.add_argument("--losses", default=",".join(rk.LOSSES))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS), help="folder for cpu.json / cpu.md ('' to skip writing)")
    args = parser.parse_args(argv)
    reason = rk.backends.unavailable_reason("native", torch.device("cpu"))
    if reason:
        sys.exit(f"native backend unavailable: {reason}")
    meta = {
        "command": "python -m benchmarks.cpu " + " ".join(argv if argv is not None else sys.argv[1:]),
        "n": args.n,
        "k": args.k,
        "eps": args.eps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
    }
    results = []
    for name in args.losses.split(","):
        r = bench_loss(name, args.n, args.k, args.eps, args.repeats, args.warmup)
        results.append(r)
        ms, s = r["ms"], r["speedup_vs"]
        print(
            f"{name:9s} native {ms['native']:8.1f} ms  eager {ms['eager']:8.1f} ms  compile {ms['compile']:8.1f} ms"
            f"  -> {s['eager']:5.1f}x eager, {s['compile']:5.1f}x compile",
            flush=True,
        )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cpu.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        (out / "cpu.md").write_text(_markdown(results, meta))
    missed = [
        f"{r['loss']} vs {base}: {r['speedup_vs'][base]:.2f}x < {want:g}x"
        for r in results
        if r["loss"] in TARGET_LOSSES
        for base, want in TARGETS.items()
        if r["speedup_vs"][base] < want
    ]
    for line in missed:
        print("target missed:", line)
    return 1 if missed else 0


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    sys.exit(main())
