"""Device-generic benchmark of every loss: fused backends against the PyTorch a user would write.

    python -m benchmarks.run --quick --out /tmp/bench          # ce, mae at K = 1000, N = 256, 1024
    python -m benchmarks.run --device cuda --keep-going         # the full GPU target grid (hours)
    python -m benchmarks.run --losses mae,gce --n 1024,4096 --k 1000 --dtypes float32 --modes fwd+bwd
    python -m benchmarks.run --losses bitemp,nfl --k 1000 --merge   # add to the report already in --out

For every loss x backend x N x K x dtype x mode (``fwd+bwd``: forward then backward of the
mean loss; ``fwd``: forward under ``no_grad``) it records the median time, the achieved GB/s,
that bandwidth as a share of a same-run ``x.clone()`` of the logits, and the peak memory above
the inputs. Backends: the fused ones available on the device (CUDA: ``triton`` and
``native``; CPU: ``native`` -- Triton runs on CPU only in its interpreter), ``eager`` (the
naive PyTorch of ``benchmarks/naive.py``), ``compile`` (``torch.compile`` of that code,
``dynamic=False``) and, for ``ce``, ``torch_ce`` (``F.cross_entropy``) and ``liger``
(Liger-Kernel's fused cross entropy, CUDA only, when installed).

Bytes model (minimal bytes, what any implementation must move; see ``_measure.model_bytes``):
forward+backward = read the logits + write the gradient (``N*K*itemsize`` each) + the int64
labels (``N*8``) + one float32 loss per row (``N*4``); forward-only = read the logits + labels
+ per-row loss. GB/s = model bytes / median time; "% of copy" divides it by the GB/s of
``x.clone()`` (``2*N*K*itemsize`` bytes) of a tensor of the same shape and dtype, timed in the
same run, so it reads as "fraction of what this memory system delivers here".

Timing: CUDA ``triton.testing.do_bench`` (L2 flushed, median of CUDA-event times); CPU
``time.perf_counter``, all variants of one configuration timed round-robin inside each repeat
(a noisy shared machine affects them alike), medians over repeats; speed-ups are medians of
per-repeat ratios on CPU, ratios of medians on CUDA. Peak memory is measured in a separate,
untimed call. The fused backends run through the public ``robust_loss`` with its default label
validation, i.e. at the cost a user pays.

Correctness gate: before timing, every variant's loss must match the float64 ``torch``-backend
reference on the same inputs (eps = 1.0 logit bias; ``torch_ce`` and ``liger`` have no bias and
are checked against the reference at eps = 0) within a tolerance for the dtype, else the run
stops with an error (``--keep-going``: the configuration is recorded as failed, the exit code
is 2). A wrong baseline would make any speed-up meaningless.

Outputs in ``--out`` (default ``benchmarks/results``): ``<device-slug>.json`` (records and
metadata), ``<device-slug>.md`` (tables, the GPU targets on CUDA) and
``<device-slug>-time.png`` / ``<device-slug>-copy.png``. The slug is never plain ``cpu``:
``cpu.json`` / ``cpu.md`` belong to ``benchmarks/cpu.py``. Every ``torch.compile`` costs seconds
(one per configuration: ``dynamic=False`` specialises on the shape), so a large grid is best
measured in parts (``--losses``) folded into one report with ``--merge``.

Defaults: CUDA N in {256, 1024, 4096, 16384, 65536}, K in {10, 100, 1000, 32768}; CPU N up to
16384 and N*K <= 2^27 (``--max-elements``); float32 and bfloat16; both modes. A variant whose
estimated peak memory exceeds ``--max-bytes`` is skipped and listed in the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch._inductor.config as inductor_config

import robustkernels as rk
from benchmarks import _measure as M
from benchmarks import _report
from benchmarks._variants import (
    BACKENDS,
    CE_ONLY,
    EPS,
    FUSED,
    GateError,
    Variant,
    check_variants,
    estimate_bytes,
    make_variants,
)

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GRIDS = {  # device type -> (N values, K values, max N*K elements or None)
    "cuda": ((256, 1024, 4096, 16384, 65536), (10, 100, 1000, 32768), None),
    "cpu": ((256, 1024, 4096, 16384), (10, 100, 1000, 32768), 2**27),
}
QUICK = {"losses": "ce,mae", "n": "256,1024", "k": "1000", "dtypes": "float32", "repeats": 3, "warmup": 1}


def bench_config(loss: str, n: int, k: int, dtype: torch.dtype, variants: list[Variant], args) -> list[dict]:
    """All records of one (loss, N, K, dtype): gate, then time every variant x mode and the
    copy, then measure each peak in its own untimed call."""
    device = args.device
    g = torch.Generator(device=device).manual_seed(args.seed)
    logits = torch.randn(n, k, device=device, generator=g).to(dtype).requires_grad_()
    target = torch.randint(0, k, (n,), device=device, generator=g)
    checks = check_variants(variants, logits, target, loss)
    inputs = {v.backend: logits.detach().clone().requires_grad_() if v.scratch else logits for v in variants}
    steps: dict[tuple[str, str], M.Step] = {
        (v.backend, mode): M.make_step(v.fn, inputs[v.backend], target, mode) for v in variants for mode in args.modes
    }
    copy_src = logits.detach()
    steps[("copy", "")] = lambda: copy_src.clone()
    if device.type == "cuda":
        samples = {
            key: [M.time_cuda(step, args.warmup, [inputs.get(key[0], logits)], args.warmup_ms, args.rep_ms)]
            for key, step in steps.items()
        }
    else:
        samples = M.time_cpu_round_robin(steps, args.repeats, args.warmup, args.min_sample_ms * 1e-3)
    itemsize = logits.element_size()
    copy_s = statistics.median(samples[("copy", "")])
    copy_gbps = M.gbps(M.copy_bytes(n, k, itemsize), copy_s)
    records = []
    for v in variants:
        for mode in args.modes:
            t = statistics.median(samples[(v.backend, mode)])
            nbytes = M.model_bytes(n, k, itemsize, mode)
            rate = M.gbps(nbytes, t)
            peak = M.peak_bytes(steps[(v.backend, mode)], device, inputs[v.backend])
            records.append(
                {
                    "loss": loss,
                    "backend": v.backend,
                    "n": n,
                    "k": k,
                    "dtype": str(dtype).removeprefix("torch."),
                    "mode": mode,
                    "eps": v.eps,
                    "time_s": t,
                    "repeats": len(samples[(v.backend, mode)]),
                    "bytes": nbytes,
                    "gbps": rate,
                    "copy_time_s": copy_s,
                    "copy_gbps": copy_gbps,
                    "pct_copy": 100.0 * rate / copy_gbps,
                    "peak_bytes": peak,
                    **checks[v.backend],
                }
            )
    for r in records:  # speed-ups of each fused backend over every baseline of the same config
        if r["backend"] in FUSED:
            mine = samples[(r["backend"], r["mode"])]
            r["speedup"] = {
                base: statistics.median(b / a for a, b in zip(mine, samples[(base, r["mode"])]))
                for base in BACKENDS
                if base not in FUSED and (base, r["mode"]) in samples
            }
    return records


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--losses", help="comma-separated (default: all of robustkernels.LOSSES)")
    p.add_argument("--backends", help=f"comma-separated subset of {','.join(BACKENDS)} (default: all that apply)")
    p.add_argument("--n", help="batch sizes N, comma-separated")
    p.add_argument("--k", help="class counts K, comma-separated")
    p.add_argument("--dtypes", help="comma-separated: float32,bfloat16[,float16] (default: float32,bfloat16)")
    p.add_argument("--modes", default="fwd+bwd,fwd", help="comma-separated: fwd+bwd,fwd")
    p.add_argument("--repeats", type=int, help="CPU: timed repeats per variant (default 7)")
    p.add_argument("--warmup", type=int, help="untimed calls before timing (default 2)")
    p.add_argument("--min-sample-ms", type=float, default=1.0, help="CPU: calls per sample reach this time")
    p.add_argument("--warmup-ms", type=float, default=25.0, help="CUDA: do_bench warm-up time")
    p.add_argument("--rep-ms", type=float, default=100.0, help="CUDA: do_bench timed-run time")
    p.add_argument("--max-elements", type=int, help="skip N*K above this (default: CPU 2^27, CUDA none)")
    p.add_argument(
        "--max-bytes", type=float, help="skip variants estimated above this (default: CPU 1/2, CUDA 0.8 of free memory)"
    )
    p.add_argument("--quick", action="store_true", help=f"tiny grid unless given: {QUICK}")
    p.add_argument("--threads", type=int, help="CPU: torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-going", action="store_true", help="record a failed correctness gate and go on")
    p.add_argument("--merge", action="store_true", help="keep the records of an earlier run in --out (new ones win)")
    p.add_argument("--plot-k", type=int, default=1000, help="K of the plots and headline tables (nearest measured)")
    p.add_argument("--plot-dtype", default="float32")
    p.add_argument("--plot-mode", default="fwd+bwd")
    p.add_argument("--out", default=str(RESULTS), help="output folder")
    args = p.parse_args(argv)
    for key, value in QUICK.items():
        if args.quick and getattr(args, key) is None:
            setattr(args, key, value)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.device = torch.device(args.device)
    n_def, k_def, max_el = GRIDS[args.device.type]
    args.losses = _split(args.losses, str, list(rk.LOSSES))
    args.n = _split(args.n, int, list(n_def))
    args.k = _split(args.k, int, list(k_def))
    args.dtypes = _split(args.dtypes, str, ["float32", "bfloat16"])
    args.modes = _split(args.modes, str, list(M.MODES))
    args.repeats = 7 if args.repeats is None else args.repeats
    args.warmup = 2 if args.warmup is None else args.warmup
    args.max_elements = max_el if args.max_elements is None else args.max_elements
    for name, values, valid in (("losses", args.losses, rk.LOSSES), ("dtypes", args.dtypes, DTYPES)):
        if bad := [x for x in values if x not in valid]:
            p.error(f"unknown {name}: {bad}; valid: {list(valid)}")
    if bad := [m for m in args.modes if m not in M.MODES]:
        p.error(f"unknown modes: {bad}; valid: {list(M.MODES)}")
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def _split(text: str | None, cast: type, default: list) -> list:
    return default if text is None else [cast(x) for x in text.split(",") if x]


def select_backends(args) -> tuple[list[str], dict[str, str]]:
    """Backends to run on this device, and why each other one is left out."""
    wanted = _split(args.backends, str, list(BACKENDS))
    if bad := [b for b in wanted if b not in BACKENDS]:
        raise SystemExit(f"unknown backends: {bad}; valid: {list(BACKENDS)}")
    left_out: dict[str, str] = {}
    for b in FUSED:
        if args.device.type == "cpu" and b == "triton":
            left_out[b] = "Triton runs on CPU only in its interpreter (not a performance path)"
        elif reason := rk.backends.unavailable_reason(b, args.device):
            left_out[b] = reason
    if args.device.type != "cuda":
        left_out["liger"] = "Liger-Kernel is CUDA-only"
    else:
        try:
            import liger_kernel.transformers.functional  # noqa: F401
        except ImportError as err:
            left_out["liger"] = f"liger_kernel not importable ({err})"
    return [b for b in wanted if b not in left_out], {b: r for b, r in left_out.items() if b in wanted}


def _meta(args: argparse.Namespace, backends: list[str], left_out: dict[str, str], max_bytes: float) -> dict:
    cuda = args.device.type == "cuda"
    return {
        "command": "python -m benchmarks.run " + " ".join(args.argv),
        "device": M.device_name(args.device),
        "device_type": args.device.type,
        "slug": M.device_slug(args.device),
        **M.versions(),
        "git_commit": M.git_commit(),
        "date": M.now_utc(),
        "threads": torch.get_num_threads(),
        "loadavg_start": M.load_average(),
        "eps": EPS,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "backends": backends,
        "left_out": left_out,
        "bytes_model": M.BYTES_MODEL,
        "max_bytes": max_bytes,
        "max_elements": args.max_elements,
        "timing": f"triton.testing.do_bench median (L2 flushed, {args.warmup_ms:g} ms warm-up, {args.rep_ms:g} ms runs)"
        if cuda
        else f"perf_counter, round-robin, median of {args.repeats} repeats (>= {args.min_sample_ms:g} ms per sample)",
        "peak_memory": "CUDA caching-allocator peak above the allocation before the call"
        if cuda
        else M.rss_peak_unavailable() or "RSS high-water mark (VmHWM after clear_refs) above VmRSS before the call",
    }


def measure_grid(args: argparse.Namespace, backends: list[str], max_bytes: float) -> tuple[list, list, list]:
    """Records, skipped configurations and gate failures of the whole grid."""
    records: list[dict] = []
    skipped: list[dict] = []
    failures: list[str] = []
    for loss in args.losses:
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            itemsize = torch.empty((), dtype=dtype).element_size()
            for k in args.k:
                for n in args.n:
                    where = {"loss": loss, "n": n, "k": k, "dtype": dtype_name}
                    if args.max_elements and n * k > args.max_elements:
                        skipped.append({**where, "reason": f"N*K > {args.max_elements}"})
                        continue
                    applies = [b for b in backends if b not in CE_ONLY or loss == "ce"]
                    fits = [b for b in applies if estimate_bytes(loss, b, n, k, itemsize) <= max_bytes]
                    skipped += [{**where, "backend": b, "reason": "memory estimate"} for b in applies if b not in fits]
                    if not fits:
                        continue
                    try:
                        new = bench_config(loss, n, k, dtype, make_variants(loss, fits, args.device), args)
                    except GateError as err:
                        if not args.keep_going:
                            raise
                        print(f"CORRECTNESS GATE FAILED: {err}", file=sys.stderr, flush=True)
                        failures.append(str(err))
                        continue
                    except torch.OutOfMemoryError as err:  # the estimate was too low: go on without it
                        torch.cuda.empty_cache()
                        skipped.append({**where, "reason": f"out of memory: {str(err).splitlines()[0]}"})
                        print(f"skipped (out of memory): {where}", file=sys.stderr, flush=True)
                        continue
                    records += new
                    _report.print_config(new)
    return records, skipped, failures


def _merge(path: Path, results: dict) -> None:
    """Fold the records of an earlier run in ``path`` into ``results`` (this run's win): a grid
    too long for one sitting can be measured in parts (e.g. by ``--losses``) into one report."""
    old = json.loads(path.read_text())
    key = lambda r: (r["loss"], r["backend"], r["n"], r["k"], r["dtype"], r["mode"])  # noqa: E731
    mine = {key(r) for r in results["records"]}
    results["records"] = [r for r in old["records"] if key(r) not in mine] + results["records"]
    results["skipped"] = old.get("skipped", []) + results["skipped"]
    results["gate_failures"] = old.get("gate_failures", []) + results["gate_failures"]
    earlier = old["meta"].get("merged", []) + [{k: old["meta"][k] for k in ("command", "git_commit", "date")}]
    results["meta"]["merged"] = earlier


def run(args: argparse.Namespace) -> tuple[dict, int]:
    """Run the grid; write JSON, markdown and plots; return (results, exit code: 0, 1 when a
    CUDA target is missed, 2 when a correctness gate failed under ``--keep-going``)."""
    device = args.device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    if device.type == "cpu":
        inductor_config.compile_threads = 1  # no compile workers competing on a small CPU
        if args.threads:
            torch.set_num_threads(args.threads)
    backends, left_out = select_backends(args)
    if not any(b in FUSED for b in backends):
        print(f"note: no fused backend selected or available: {left_out}", file=sys.stderr)
    if args.max_bytes is not None:
        max_bytes = args.max_bytes
    else:  # CUDA raises a catchable OOM; on CPU an overshoot meets the OOM killer: keep a margin
        max_bytes = M.available_memory(device) * (0.8 if device.type == "cuda" else 0.5)
    meta = _meta(args, backends, left_out, max_bytes)
    out = Path(args.out)
    stem = meta["slug"]
    if stem == "cpu":
        raise SystemExit("refusing to write cpu.json / cpu.md: they belong to benchmarks/cpu.py")
    if device.type == "cpu" and (meta["loadavg_start"] or 0.0) > 0.5:
        print(
            f"warning: 1-min load average {meta['loadavg_start']:.2f} before the run: another process is busy; "
            "CPU timings (and multi-threaded ones most) will be disturbed",
            file=sys.stderr,
        )
    records, skipped, failures = measure_grid(args, backends, max_bytes)
    meta["loadavg_end"] = M.load_average()
    results = {"meta": meta, "records": records, "skipped": skipped, "gate_failures": failures}
    if args.merge and (out / f"{stem}.json").exists():
        _merge(out / f"{stem}.json", results)
    results["targets"] = _report.check_targets(results["records"]) if device.type == "cuda" else []
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(_report.markdown(results, args.plot_k))
    _report.plots(results, out, stem, args.plot_k, args.plot_dtype, args.plot_mode)
    missed = [t for t in results["targets"] if not t["met"]]
    for t in missed:
        print(f"target missed: {t['target']}: {t['loss']} {t['dtype']} N={t['n']}: {t['what']} = {t['value']:.3g}")
    print(f"wrote {out / stem}.json, .md, -time.png, -copy.png")
    return results, 2 if results["gate_failures"] else 1 if missed else 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))[1]


if __name__ == "__main__":
    sys.exit(main())
