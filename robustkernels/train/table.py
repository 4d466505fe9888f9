"""``python -m robustkernels.train table``: a resumable Table-2-style grid on composite digits.

Trains every loss of :data:`~robustkernels.train.table_grid.LOSS_CHOICES` at ``K = 10, 100,
1000`` under symmetric noise 0/20/40/60 % and 40 % pair flip, for several seeds, with the demo's
model, optimiser and schedule, then writes ``runs.jsonl`` (one record per finished run),
``table.md``, ``table.json`` and the figures to ``--out``.

Each run is appended to ``runs.jsonl`` as soon as it finishes, and a re-run skips the runs
already there with the same data setting, so an interrupted grid resumes where it stopped.
``--workers`` processes (spawned, one torch thread each) train side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any

from .errors import DivergedError
from .loop import train
from .table_grid import (
    LOSS_CHOICES,
    NOISE_SETTINGS,
    GridSetting,
    RunSpec,
    grid_runs,
    run_config,
    run_metadata,
)

__all__ = ["FULL", "QUICK", "load_records", "pending_runs", "run_grid", "run_table", "main"]

log = logging.getLogger(__name__)

RUNS_FILE = "runs.jsonl"

#: The full grid's data setting: 540 runs (3 K x 5 noise settings x 12 losses x 3 seeds) in about
#: 2 hours on 2 cores. One K = 1000 run with one thread, both cores busy, took 19.3 s for 3 epochs of
#: 30000 images (about 1.9 s of setup, 5.8 s per epoch); K = 100 and K = 10 epochs cost about 0.45
#: and 0.35 of that. At 20000 images and 10 epochs a run then takes about 41 / 20 / 16 s at
#: K = 1000 / 100 / 10, and the grid 180 * (41 + 20 + 16) / 2 workers = 6900 s, 1.9 hours.
FULL = GridSetting(train_size=20000, val_size=5000, epochs=10)
#: ``--quick``: tiny data, 2 epochs, K = 10 and 100, two losses, one noise setting, one seed.
QUICK = GridSetting(train_size=2000, val_size=500, epochs=2)
_QUICK_GRID = {"classes": [10, 100], "noise": ["sym40"], "losses": ["ce", "mae+eps"], "seeds": 1}

# Per-epoch fields kept in runs.jsonl (the whole training log would be ~10x larger).
_CURVE_FIELDS = ("epoch", "train_loss", "train_acc_noisy", "val_top1", "val_top5", "train_memorised")


def load_records(path: str) -> list[dict[str, Any]]:
    """The records of ``runs.jsonl`` (``[]`` if absent); a line cut short by an interrupt is skipped."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s line %d is not a complete record (an interrupted write?); ignored", path, number)
    return records


def matching_records(records: Iterable[dict[str, Any]], setting: GridSetting) -> dict[str, dict[str, Any]]:
    """The records of runs trained with ``setting``, by run key (the last one wins)."""
    wanted = setting.as_dict()
    return {r["key"]: r for r in records if r.get("setting") == wanted and "key" in r}


def pending_runs(runs: Sequence[RunSpec], records: Iterable[dict[str, Any]], setting: GridSetting) -> list[RunSpec]:
    """The runs of ``runs`` that ``records`` does not hold a finished result for."""
    done = matching_records(records, setting)
    return [spec for spec in runs if spec.key not in done]


def _repair_tail(path: str) -> None:
    # An interrupt can leave a last line without its newline; the next record must not be glued to it.
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def append_record(path: str, record: dict[str, Any]) -> None:
    """Append one record as a JSON line and flush it to disk (it survives a later kill)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _result_fields(result: dict[str, Any]) -> dict[str, Any]:
    final = result["final"]
    return {
        "top1": _finite(final.get("val_top1")),
        "top5": _finite(final.get("val_top5")),
        "memorised": _finite(final.get("train_memorised")),
        "epsilon": _finite(final.get("epsilon")),
        "noise_rate": _finite(result.get("noise_rate")),
        "loss_backend": result.get("loss_backend"),
        "diverged": False,
        "history": [{k: r[k] for k in _CURVE_FIELDS if k in r} for r in result["history"]],
    }


def train_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one run of the grid (in a worker process) and return its ``runs.jsonl`` record.

    ``job`` holds the run (``spec``), the data ``setting`` and the ``config`` fields. The run's
    log and checkpoint go to a temporary folder that is removed afterwards: the record keeps
    what the table needs, and 540 checkpoints would take gigabytes.
    """
    from .config import TrainConfig

    spec, setting = RunSpec(**job["spec"]), GridSetting(**job["setting"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rk_table_") as tmp:
        cfg = TrainConfig(**{**job["config"], "output_dir": tmp})
        try:
            fields = _result_fields(train(cfg))
        except DivergedError as exc:
            # A divergence is the run's result (re-running would diverge again), so it is recorded.
            fields = {"top1": None, "top5": None, "memorised": None, "diverged": True, "error": str(exc)}
    return {
        **run_metadata(spec, cfg),
        "setting": setting.as_dict(),
        **fields,
        "wall_s": time.perf_counter() - t0,
    }


def _init_worker() -> None:
    import torch

    # One thread per worker: two workers on two cores; more threads only oversubscribe them.
    torch.set_num_threads(1)
    # The loop's per-run INFO line would break up the grid's progress bar.
    logging.getLogger("robustkernels.train.loop").setLevel(logging.WARNING)


@contextlib.contextmanager
def _one_thread_quiet():
    """:func:`_init_worker`'s settings in this process, restored afterwards (the caller keeps its own)."""
    import torch

    loop_log = logging.getLogger("robustkernels.train.loop")
    threads, level = torch.get_num_threads(), loop_log.level
    _init_worker()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        loop_log.setLevel(level)


def _jobs(runs: Sequence[RunSpec], setting: GridSetting) -> list[dict[str, Any]]:
    # Configs are built (and validated, and GCE's q transferred once) in the parent process.
    jobs = []
    for spec in runs:
        cfg = run_config(spec, setting, output_dir="unused")
        jobs.append({"spec": dataclasses.asdict(spec), "setting": setting.as_dict(), "config": cfg.to_dict()})
    return jobs


def _completed(jobs: list[dict[str, Any]], workers: int) -> Iterable[dict[str, Any]]:
    """The records of ``jobs`` in the order they finish, ``workers`` at a time."""
    if workers <= 1:
        with _one_thread_quiet():
            for job in jobs:
                yield train_one(job)
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the spawned workers' thread pools
    context = multiprocessing.get_context("spawn")  # fork after torch's threads started is unsafe
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        futures: list[Future] = [pool.submit(train_one, job) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()  # an interrupt stops queued runs; the running ones finish or die with it


def run_grid(
    runs: Sequence[RunSpec], setting: GridSetting, out: str, workers: int = 2, progress: bool = True
) -> list[dict[str, Any]]:
    """Train the runs of ``runs`` that ``out/runs.jsonl`` lacks, appending each as it finishes.

    Returns the new records. A bar over the whole grid (finished runs included) shows the ETA from
    the mean rate of this invocation (``smoothing=0``: runs of different K take different times).
    """
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, RUNS_FILE)
    _repair_tail(path)
    todo = pending_runs(runs, load_records(path), setting)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs), initial=len(runs) - len(todo), unit="run", dynamic_ncols=True, smoothing=0.0)
    new = []
    try:
        for record in _completed(_jobs(todo, setting), workers):
            append_record(path, record)
            new.append(record)
            if bar is not None:
                top1 = "diverged" if record["diverged"] else f"{record['top1']:.1f}%"
                bar.set_postfix_str(f"{record['key']} {top1}", refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return new


def run_table(
    out: str,
    setting: GridSetting,
    classes: Sequence[int],
    noises: Sequence[str],
    losses: Sequence[str],
    seeds: int,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, str]:
    """Train the grid (resuming), then write ``table.md``, ``table.json`` and the figures.

    Returns the paths written, by name.
    """
    from .table_report import write_report

    runs = grid_runs(classes, noises, losses, range(seeds))
    t0 = time.perf_counter()
    new = run_grid(runs, setting, out, workers, progress)
    wall = time.perf_counter() - t0
    print(f"{len(new)} run(s) trained in {wall:.1f} s, {len(runs) - len(new)} already in {out}/{RUNS_FILE}")
    records = list(matching_records(load_records(os.path.join(out, RUNS_FILE)), setting).values())
    return write_report(records, out, setting)


def _csv(kind):
    def parse(text: str) -> list:
        return [kind(item) for item in text.split(",") if item.strip()]

    parse.__name__ = f"comma-separated {kind.__name__}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``table`` subcommand's options (unset ones default to the full grid, or to ``--quick``'s)."""
    parser = argparse.ArgumentParser(
        prog="python -m robustkernels.train table",
        description="Table-2-style grid on composite handwritten digits: every loss x K x label noise x seed; "
        "resumable (finished runs in OUT/runs.jsonl are skipped).",
    )
    parser.add_argument("--quick", action="store_true", help="tiny grid for CI (K 10,100; ce, mae+eps; sym40; 1 seed)")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/results/paper_table)")
    parser.add_argument("--workers", type=int, default=2, help="parallel training processes, one thread each")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds, 0..N-1 (default 3)")
    parser.add_argument("--losses", type=_csv(str), default=None, help=f"subset of {','.join(LOSS_CHOICES)}")
    parser.add_argument("--classes", type=_csv(int), default=None, help="class counts (default 10,100,1000)")
    parser.add_argument("--noise", type=_csv(str), default=None, help=f"settings (default {','.join(NOISE_SETTINGS)})")
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs per run (default {FULL.epochs})")
    parser.add_argument("--train-size", type=int, default=None, help=f"training images (default {FULL.train_size})")
    parser.add_argument("--val-size", type=int, default=None, help=f"validation images (default {FULL.val_size})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _pick(value, default):
    return default if value is None else value


def main(argv: list[str] | None = None) -> int:
    """Parse the options, train the grid and write the report; returns the exit status."""
    args = build_parser().parse_args(argv)
    base = QUICK if args.quick else FULL
    grid = (
        _QUICK_GRID
        if args.quick
        else {"classes": [10, 100, 1000], "noise": list(NOISE_SETTINGS), "losses": list(LOSS_CHOICES), "seeds": 3}
    )
    setting = GridSetting(
        train_size=_pick(args.train_size, base.train_size),
        val_size=_pick(args.val_size, base.val_size),
        epochs=_pick(args.epochs, base.epochs),
    )
    out = args.out or ("runs/paper_table_quick" if args.quick else os.path.join("benchmarks", "results", "paper_table"))
    grid_args = {
        "classes": _pick(args.classes, grid["classes"]),
        "noises": _pick(args.noise, grid["noise"]),
        "losses": _pick(args.losses, grid["losses"]),
        "seeds": _pick(args.seeds, grid["seeds"]),
    }
    try:
        grid_runs(grid_args["classes"], grid_args["noises"], grid_args["losses"], range(grid_args["seeds"]))
    except ValueError as exc:  # an unknown loss, class count or noise name: a usage error
        build_parser().error(str(exc))
    paths = run_table(out, setting, **grid_args, workers=args.workers, progress=not args.no_progress)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
