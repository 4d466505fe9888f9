"""Timing, peak memory, the bytes model and run metadata for ``benchmarks/run.py``.

Kept apart from the runner so that each measurement rule is written once and can be read (and
tested) on its own:

* **Bytes model** (:func:`model_bytes`): the least traffic any implementation must move, so
  that GB/s compares implementations on what they achieve rather than on what they waste.
* **Timing**: CUDA through ``triton.testing.do_bench`` (L2 flushed before every call, the
  median of the per-call CUDA-event times); CPU through ``time.perf_counter`` with the steps of
  one configuration timed *round-robin* within each repeat, so that a noisy shared machine
  slows every variant alike and same-repeat ratios stay meaningful.
* **Peak memory above the inputs**, in a separate untimed call: CUDA from the caching
  allocator's statistics; CPU from the RSS high-water mark, reset through
  ``/proc/self/clear_refs`` (Linux only).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import gc
import importlib.metadata
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

import torch

ROOT = Path(__file__).resolve().parent.parent
Step = Callable[[], None]
Key = TypeVar("Key", bound=Hashable)

MODES = ("fwd+bwd", "fwd")

#: The model written in the outputs, next to the numbers it produced.
BYTES_MODEL = (
    "minimal bytes: fwd+bwd = read logits + write gradient (N*K*itemsize each) + labels (N*8) + "
    "per-row loss (N*4); fwd = read logits + labels + per-row loss; copy = 2*N*K*itemsize (x.clone())"
)


def model_bytes(n: int, k: int, itemsize: int, mode: str) -> int:
    """Bytes that any implementation of one call must move (the minimal-bytes model).

    Forward + backward reads the logits once and writes the gradient once (the fused kernels'
    ideal); forward-only reads the logits. Both read the int64 labels and write one float32
    loss per row. Temporaries, re-reads and the reduction to a scalar are not counted: they are
    what a fused kernel avoids, so the model makes them visible as lost bandwidth.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    passes = 2 if mode == "fwd+bwd" else 1
    return passes * n * k * itemsize + n * 8 + n * 4


def copy_bytes(n: int, k: int, itemsize: int) -> int:
    """Bytes moved by ``x.clone()`` of an ``N x K`` tensor: one read and one write."""
    return 2 * n * k * itemsize


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def make_step(fn: Callable, logits: torch.Tensor, target: torch.Tensor, mode: str) -> Step:
    """One timed unit: a forward + backward (gradient reset first, so it is written, never
    accumulated) or a forward under ``no_grad`` (inference: nothing is saved for backward)."""
    if mode == "fwd+bwd":

        def step() -> None:
            logits.grad = None
            fn(logits, target).backward()

    else:
        detached = logits.detach()

        def step() -> None:
            with torch.no_grad():
                fn(detached, target)

    return step


def time_cpu_round_robin(
    steps: dict[Key, Step], repeats: int, warmup: int, min_sample_s: float = 1e-3
) -> dict[Key, list[float]]:
    """Seconds per call of every step, ``repeats`` samples each, timed round-robin.

    After ``warmup`` untimed calls (which also compile), each step gets an inner call count so
    that one sample lasts at least ``min_sample_s`` (timer resolution and Python overhead of
    a 20-us call would otherwise dominate). Every repeat then times each step once, in turn:
    a burst of load from another process lands on all steps of that repeat, not on one.
    """
    inner: dict[Key, int] = {}
    for label, step in steps.items():
        for _ in range(max(1, warmup)):
            step()
        start = time.perf_counter()
        step()
        once = time.perf_counter() - start
        inner[label] = max(1, math.ceil(min_sample_s / max(once, 1e-9)))
    samples: dict[Key, list[float]] = {label: [] for label in steps}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one sample would charge it to whichever step ran
    try:
        for _ in range(repeats):
            for label, step in steps.items():
                reps = inner[label]
                start = time.perf_counter()
                for _ in range(reps):
                    step()
                samples[label].append((time.perf_counter() - start) / reps)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def time_cuda(step: Step, warmup: int, grad_to_none: list[torch.Tensor], warmup_ms: float, rep_ms: float) -> float:
    """Median seconds per call on CUDA via ``triton.testing.do_bench`` (same API in triton
    3.6-3.8): the L2 cache is flushed before every call, and ``grad_to_none`` is reset so the
    backward writes a fresh gradient each time."""
    from triton.testing import do_bench

    for _ in range(warmup):  # compile (torch.compile, Triton autotuning) outside do_bench's estimate
        step()
    torch.cuda.synchronize()
    ms = do_bench(step, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, return_mode="median")
    return ms * 1e-3


# ---- peak memory -------------------------------------------------------------------------------

_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None


def rss_peak_unavailable() -> str | None:
    """``None`` if the CPU peak can be measured here, else why not."""
    if not sys.platform.startswith("linux"):
        return f"RSS high-water mark reset needs Linux /proc/self/clear_refs (platform {sys.platform})"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as err:
        return f"/proc/self/clear_refs is not writable ({err.strerror}): the RSS high-water mark cannot be reset"
    return None


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_bytes(step: Step, device: torch.device, grad_holder: torch.Tensor | None = None) -> int | None:
    """Peak memory of one untimed call above what was allocated before it (inputs included in
    the baseline, so the result is what the call itself needs, the gradient it returns too).

    CUDA: the caching allocator's peak minus its allocation before the call. CPU: the RSS
    high-water mark (``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``) minus ``VmRSS``
    before; freed heap pages are returned to the OS first (``malloc_trim``) so that memory the
    allocator reuses is still counted. Page granularity (4 KiB) and glibc caching make small
    CPU values approximate. ``None`` where the CPU mark cannot be reset.
    """
    if grad_holder is not None:
        grad_holder.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    if rss_peak_unavailable() is not None:
        return None
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
    before_kb = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    return max(0, _status_kb("VmHWM") - before_kb) * 1024


# ---- metadata ----------------------------------------------------------------------------------


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def device_slug(device: torch.device) -> str:
    """File stem of the outputs: the GPU name (``nvidia-h100-80gb-hbm3``) or ``cpu-`` + the CPU
    model, never plain ``cpu`` (``cpu.json`` / ``cpu.md`` belong to ``benchmarks/cpu.py``)."""
    if device.type == "cuda":
        return slug(device_name(device)) or "cuda-unknown"
    return "cpu-" + (slug(cpu_name()) or "unknown")


def git_commit() -> str:
    """``HEAD`` of the repository, with ``-dirty`` when the working tree has changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("triton", "liger-kernel"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_average() -> float | None:
    """1-minute load average (how busy the machine was: recorded next to CPU timings)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def available_memory(device: torch.device) -> int:
    """Bytes a run may use: free GPU memory, or ``MemAvailable`` on CPU (0 when unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
