"""What ``benchmarks/run.py`` compares, and the correctness gate every variant passes first.

A variant is one way of computing a loss: a fused backend through ``robust_loss``, the naive
PyTorch a user would write (eager or ``torch.compile``-d), or, for ``ce``, a framework's own
cross entropy. The gate compares each variant's loss with the float64 ``torch``-backend
reference on the same inputs before anything is timed: a wrong baseline would make any
speed-up meaningless, so a mismatch raises instead of producing numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import robustkernels as rk
from benchmarks.naive import naive_loss

FUSED = ("triton", "native")
BACKENDS = (*FUSED, "eager", "compile", "torch_ce", "liger")
CE_ONLY = ("torch_ce", "liger")
#: |loss - reference| <= tol * max(1, |reference|): bf16 eager rounds the mean itself to 8 bits.
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 2e-2, torch.float16: 1e-2}
EPS = 1.0

# Peak memory of a variant in units of N*K*itemsize, besides the logits and the copy's output
# (measured on CPU: eager bitemp 41, nfl 12-15, sce 10-11, the rest 5-10; fused 1 = the gradient).
_PEAK_UNITS = {"bitemp": 44, "nfl": 16, "nf_mae": 16, "sce": 16, "nce_rce": 16}


class GateError(RuntimeError):
    """A variant's loss differs from the float64 reference: its timings would mean nothing."""


@dataclass
class Variant:
    backend: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    eps: float
    scratch: bool = False  # writes into its logits (Liger stores the gradient there): own copy


def estimate_bytes(loss: str, backend: str, n: int, k: int, itemsize: int) -> int:
    """Rough peak bytes of one variant of a configuration, inputs and copy included."""
    if backend in FUSED or backend == "liger":
        units = 1
    elif backend == "torch_ce":
        units = 4
    else:
        units = _PEAK_UNITS.get(loss, 12)
    return (2 + units) * n * k * itemsize + 64 * n


def make_variants(loss: str, backends: list[str], device: torch.device) -> list[Variant]:
    """The variants of ``loss`` to compare on ``device``. Resets Dynamo for ``compile``: a fresh
    ``torch.compile`` per configuration, so that no shape ever hits the recompile limit (which
    would silently fall back to eager)."""
    out: list[Variant] = []
    for b in backends:
        if b in FUSED:
            out.append(Variant(b, lambda x, y, b=b: rk.robust_loss(x, y, loss, epsilon=EPS, backend=b), EPS))
        elif b == "eager":
            out.append(Variant(b, naive_loss(loss, eps=EPS), EPS))
        elif b == "compile":
            torch._dynamo.reset()
            out.append(Variant(b, torch.compile(naive_loss(loss, eps=EPS), dynamic=False), EPS))
        elif b == "torch_ce" and loss == "ce":
            out.append(Variant(b, lambda x, y: F.cross_entropy(x, y), 0.0))
        elif b == "liger" and loss == "ce":
            from liger_kernel.transformers.functional import liger_cross_entropy

            out.append(Variant(b, lambda x, y: liger_cross_entropy(x, y), 0.0, scratch=True))
    return out


def reference_loss(logits: torch.Tensor, target: torch.Tensor, loss: str, eps: float) -> float:
    """Mean loss of the float64 torch backend, by row chunks (bounded memory at any N*K)."""
    n, k = logits.shape
    rows = max(1, 2**24 // k)
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, rows):
            chunk = logits[i : i + rows].double()
            part = rk.robust_loss(chunk, target[i : i + rows], loss, epsilon=eps, reduction="sum", backend="torch")
            total += float(part)
    return total / n


def check_variants(variants: list[Variant], logits: torch.Tensor, target: torch.Tensor, loss: str) -> dict:
    """Loss value, reference and relative error per backend; raises :class:`GateError`."""
    tol = TOLERANCE[logits.dtype]
    refs = {eps: reference_loss(logits, target, loss, eps) for eps in {v.eps for v in variants}}
    out = {}
    for v in variants:
        x = logits.detach().clone() if v.scratch else logits.detach()
        with torch.no_grad():
            got = float(v.fn(x, target))
        ref = refs[v.eps]
        err = abs(got - ref) / max(1.0, abs(ref))
        if not err <= tol:  # also catches NaN
            n, k = logits.shape
            raise GateError(
                f"{loss}/{v.backend} N={n} K={k} {logits.dtype}: loss {got!r} differs from the float64 "
                f"reference {ref!r} (relative {err:.3g} > {tol:g})"
            )
        out[v.backend] = {"loss_value": got, "ref_value": ref, "rel_err": err}
    return out
