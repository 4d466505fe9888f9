"""Each loss as a user would write it in plain PyTorch (the baselines of the benchmarks).

Written the way the published code writes them (APL / ALFs / SCE / the PyTorch ports of the
bi-tempered loss): softmax, gather, the formula, the clamps, autograd for the gradient. The
logit bias is ``logits + eps * one_hot(target)``. One function per primitive of
:data:`robustkernels.PRIMITIVES`; a loss is the weighted sum of its spec's terms, with the spec's
defaults filled in (``naive_loss``), so the baselines compute the same loss as the kernels, up to
the published clamps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustkernels import get_spec

__all__ = ["NAIVE", "naive_loss"]


def _biased(logits: Tensor, target: Tensor, eps: float) -> Tensor:
    return logits + eps * F.one_hot(target, logits.shape[1]).to(logits.dtype)


def _p_y(z: Tensor, target: Tensor) -> Tensor:
    return F.softmax(z, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)


def _ce(z, y):
    return F.cross_entropy(z, y, reduction="none")


def _mae(z, y):
    return 1.0 - _p_y(z, y)


def _gce(z, y, q):
    p = _p_y(z, y).clamp(min=1e-7, max=1.0)
    return (1.0 - p**q) / q


def _agce(z, y, a, q):
    p = _p_y(z, y)
    return ((a + 1) ** q - (a + p) ** q) / q


def _aul(z, y, a, q):
    p = _p_y(z, y)
    return ((a - p) ** q - (a - 1) ** q) / q


def _ael(z, y, a):
    return torch.exp(-_p_y(z, y) / a)


def _nce(z, y):
    logp = F.log_softmax(z, dim=1)
    return -logp.gather(1, y.unsqueeze(1)).squeeze(1) / -logp.sum(dim=1)


def _focal(z, y, gamma):
    logpt = F.log_softmax(z, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    return -((1 - logpt.exp()) ** gamma) * logpt


def _nfl(z, y, gamma):
    logp = F.log_softmax(z, dim=1)
    normalizor = torch.sum(-1 * (1 - logp.exp()) ** gamma * logp, dim=1)
    logpt = logp.gather(1, y.unsqueeze(1)).squeeze(1)
    return -((1 - logpt.exp()) ** gamma) * logpt / normalizor


def _ngce(z, y, q):
    p = F.softmax(z, dim=1).clamp(min=1e-7, max=1.0)
    p_y = p.gather(1, y.unsqueeze(1)).squeeze(1)
    return (1.0 - p_y**q) / (z.shape[1] - p.pow(q).sum(dim=1))


def _nmae(z, y):
    return (1.0 - _p_y(z, y)) / (z.shape[1] - 1)


def _nrce(z, y, A):
    return 1 / 4 * (z.shape[1] - 1) * _rce(z, y, A)


def _rce(z, y, A):
    # as SCE: -sum_k clamp(p_k) log clamp(onehot_k, 1e-4); A = log of the clamp
    p = F.softmax(z, dim=1).clamp(min=1e-7, max=1.0)
    onehot = F.one_hot(y, z.shape[1]).to(z.dtype).clamp(min=math.exp(A), max=1.0)
    return -torch.sum(p * torch.log(onehot), dim=1)


def _bitemp(z, y, t1, t2, num_iters=5):
    """The PyTorch ports of Google's loss: 5 unrolled fixed-point normalisation steps (t2 > 1),
    autograd through them, the soft-label formula at a one-hot label."""

    def log_t(u, t):
        return u.log() if t == 1.0 else (u ** (1.0 - t) - 1.0) / (1.0 - t)

    def exp_t(u, t):
        return u.exp() if t == 1.0 else (1.0 + (1.0 - t) * u).relu() ** (1.0 / (1.0 - t))

    mu = z.max(dim=1, keepdim=True).values
    a0 = z - mu
    a = a0
    for _ in range(int(num_iters)):
        partition = exp_t(a, t2).sum(dim=1, keepdim=True)
        a = a0 * partition ** (1.0 - t2)
    partition = exp_t(a, t2).sum(dim=1, keepdim=True)
    probs = exp_t(z - (-log_t(1.0 / partition, t2) + mu), t2)
    labels = F.one_hot(y, z.shape[1]).to(z.dtype)
    loss = (
        labels * log_t(labels + 1e-10, t1)
        - labels * log_t(probs, t1)
        - labels ** (2.0 - t1) / (2.0 - t1)
        + probs ** (2.0 - t1) / (2.0 - t1)
    )
    return loss.sum(dim=1)


#: Each primitive of robustkernels.PRIMITIVES as published code writes it.
NAIVE: dict[str, Callable[..., Tensor]] = {
    "ce": _ce,
    "mae": _mae,
    "gce": _gce,
    "agce": _agce,
    "aul": _aul,
    "ael": _ael,
    "rce": _rce,
    "focal": _focal,
    "nce": _nce,
    "nfl": _nfl,
    "ngce": _ngce,
    "nmae": _nmae,
    "nrce": _nrce,
    "bitemp": _bitemp,
}


def naive_loss(name: str, eps: float = 0.0, **params: float) -> Callable[[Tensor, Tensor], Tensor]:
    """``f(logits, target) -> mean loss`` for loss ``name`` with the spec defaults filled in."""
    spec = get_spec(name)
    terms = spec.bind(spec.resolve(params))

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        z = _biased(logits, target, eps)
        rows = [term.weight * NAIVE[term.primitive.name](z, target, **term.params) for term in terms]
        return sum(rows[1:], rows[0]).mean()

    return loss
