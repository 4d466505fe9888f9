"""Launch parameters for the kernels: a fixed heuristic keyed on ``K`` and the dtype.

The numbers below come from the usual register / bandwidth reasoning and ptxas reports, not from
GPU timings (none have been measured yet; ``benchmarks.run --device cuda`` is the tool for it):

* **Single pass** while the padded row ``BLOCK_K = next_pow2(K)`` fits ``MAX_SINGLE_PASS_BLOCK``
  elements: a row tile lives in registers as fp32 (fp64 for fp64 input) whatever the input dtype,
  and every pass over the row (softmax statistics, the normalised forms' sums, the gradient) reads
  that tile. At 8192 elements and 16 warps that is 16 values per thread per tile; ptxas for sm_90
  reports 40-116 registers per thread for ce, nfl, bitemp and the mask of every softmax primitive
  at once (fp32 and bf16, K in {1000, 8192, 262144}), no spills; bitemp keeps a 24-byte stack at
  fp32 K = 8192. fp64 tiles take two registers per value: at 4096 lanes nfl spills (40-48 bytes,
  16 warps), so the fp64 limit is 2048 lanes (122-227 registers there, no spills).
* **Several rows per program** for small ``K``: a program handles ``ROWS`` rows so that a tile holds
  about ``TARGET_TILE`` elements (at K = 7 one row of 8 lanes would leave most of a warp idle).
  ``ROWS`` never exceeds the (power-of-two padded) number of rows. fp64 caps ``ROWS`` at 8: the
  per-row math (series for expm1, bisection, several primitives' terms) in fp64 spilled registers
  at 128 rows, and at 16 rows for nfl + agce / aul (64-80 bytes; none at 8, where only a mask of
  every softmax primitive at once still spills, 136 bytes; ptxas for sm_90, measured by compiling,
  not by running).
* **Warps** so that each thread holds ~8 elements of a tile: for bf16 that is one 16-byte vector
  load per thread per row, for K = 1000 (two rows of 1024 lanes) 8 warps.
* **Blocked** (column-tiled, two or more passes) beyond the single-pass limit, one row per program
  with ``BLOCKED_BLOCK`` lanes per tile.
* **Soft targets** (label smoothing, probability targets: every class carries a term) keep more per
  lane alive from the class terms to the gradient (``a``, ``r``, the class coefficients, nce's
  ``b``), so their single-pass limit is ``MAX_SINGLE_PASS_BLOCK_SOFT``: ptxas for sm_90 (compiled,
  not run) reports 128 registers with 80-490 bytes of spills at 8192 lanes and 16 warps for ce + rce
  and nce + agce (bf16, with and without per-row eps), none at 4096 (97-124 registers); only a mask of
  every soft primitive at once still spills there (348 bytes). fp64 keeps its limit: there nce + mae
  spills 28-44 bytes at 1024 and 2048 lanes, every soft primitive at once 840.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

__all__ = ["LaunchConfig", "forward_config", "rescale_config"]

MAX_SINGLE_PASS_BLOCK = 8192
MAX_SINGLE_PASS_BLOCK_FP64 = 2048
MAX_SINGLE_PASS_BLOCK_SOFT = 4096
BLOCKED_BLOCK = 4096
BLOCKED_BLOCK_FP64 = 2048
TARGET_TILE = 2048
MAX_ROWS = 128
MAX_ROWS_FP64 = 8
ELEMENTS_PER_THREAD = 8
MAX_WARPS = 16


@dataclass(frozen=True)
class LaunchConfig:
    """Compile-time tile shape and launch shape of one kernel call."""

    rows: int  #: rows per program (``ROWS``)
    block_k: int  #: lanes per row tile (``BLOCK_K``)
    single_pass: bool  #: whole row in one tile
    num_warps: int
    grid_rows: int  #: programs along the rows
    grid_cols: int = 1  #: programs along the columns (rescale kernel only)


def _warps(tile_elements: int) -> int:
    return max(1, min(MAX_WARPS, triton.next_power_of_2(tile_elements // (32 * ELEMENTS_PER_THREAD))))


def _rows_for(block_k: int, num_rows: int, max_rows: int = MAX_ROWS) -> int:
    return max(1, min(TARGET_TILE // block_k, max_rows, triton.next_power_of_2(max(num_rows, 1))))


def forward_config(
    num_rows: int, num_classes: int, dtype: torch.dtype, max_single_pass: int | None = None, soft: bool = False
) -> LaunchConfig:
    """Launch parameters of ``fused_loss_kernel`` (``soft``: its soft-target variants) for
    ``[num_rows, num_classes]`` logits of ``dtype``.

    ``max_single_pass`` overrides the single-pass limit (tests use it to exercise the column-tiled
    path at small ``K``).
    """
    fp64 = dtype == torch.float64
    if fp64:
        default_limit = MAX_SINGLE_PASS_BLOCK_FP64
    else:
        default_limit = MAX_SINGLE_PASS_BLOCK_SOFT if soft else MAX_SINGLE_PASS_BLOCK
    limit = max_single_pass or default_limit
    padded = triton.next_power_of_2(num_classes)
    if padded <= limit:
        rows = _rows_for(padded, num_rows, MAX_ROWS_FP64 if fp64 else MAX_ROWS)
        return LaunchConfig(rows, padded, True, _warps(rows * padded), triton.cdiv(num_rows, rows))
    block = min(BLOCKED_BLOCK_FP64 if fp64 else BLOCKED_BLOCK, triton.next_power_of_2(limit) // 2 or 1)
    return LaunchConfig(1, block, False, _warps(block), num_rows)


def rescale_config(num_rows: int, num_classes: int) -> LaunchConfig:
    """Launch parameters of ``rescale_grad_kernel``: a 2-D grid of ~``TARGET_TILE``-element tiles
    (it is elementwise, so large rows are split across programs)."""
    block = min(triton.next_power_of_2(num_classes), TARGET_TILE)
    rows = _rows_for(block, num_rows)
    return LaunchConfig(
        rows,
        block,
        block >= num_classes,
        _warps(rows * block),
        triton.cdiv(num_rows, rows),
        triton.cdiv(num_classes, block),
    )
