"""An independent NumPy float64 implementation of every loss and its analytic gradient.

Written from the formulas in ``shared/reference/losses.md`` (probabilities, not log-space; the
gradients are the closed forms, not autograd), so that agreement with
:mod:`robustkernels.reference` checks both the values and the autograd gradients. Also used as
the oracle the kernel backends are compared against.
"""

from __future__ import annotations

import numpy as np

# Non-default values of every parameter, for tests of the parameter plumbing: a default used by
# mistake, or parameters passed in the wrong order, would pass a test run at the defaults.
NON_DEFAULT_PARAMS = {
    "mae": {"scale": 1.0},
    "gce": {"q": 0.3},
    "agce": {"a": 1.5, "q": 2.0},
    "aul": {"a": 3.0, "q": 0.5},
    "ael": {"a": 1.2},
    "focal": {"gamma": 2.0},
    "nfl": {"gamma": 1.3},
    "rce": {"A": -4.0},
    "sce": {"alpha": 6.0, "beta": 0.1, "A": -4.0},
    "nce_mae": {"alpha": 10.0, "beta": 0.5},
    "nf_mae": {"alpha": 2.0, "beta": 3.0, "gamma": 0.7},
    "nce_rce": {"alpha": 10.0, "beta": 0.1, "A": -2.0},
    "nce_agce": {"alpha": 50.0, "beta": 0.1, "a": 2.5, "q": 3.0},
    "bitemp": {"t1": 0.5, "t2": 0.8, "num_iters": 5},
}


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _focal_h(p: np.ndarray, gamma: float) -> np.ndarray:
    """d focal_k / d z_j = h_k (p_j - delta_jk) with the focal weight differentiated."""
    return (1 - p) ** gamma - gamma * (1 - p) ** (gamma - 1) * p * np.log(p)


def _pieces(name, prm, p, py, onehot, K):
    """(loss [N], gradient [N, K]) of the single losses."""
    pe = p - onehot
    c = py[:, None]
    if name == "ce":
        return -np.log(py), pe
    if name == "mae_term":
        return 1 - py, c * pe
    if name == "mae":
        return prm["scale"] * (1 - py), prm["scale"] * c * pe
    if name == "gce":
        q = prm["q"]
        return (1 - py**q) / q, c**q * pe
    if name == "agce":
        a, q = prm["a"], prm["q"]
        return ((a + 1) ** q - (a + py) ** q) / q, (a + c) ** (q - 1) * c * pe
    if name == "aul":
        a, q = prm["a"], prm["q"]
        return ((a - py) ** q - (a - 1) ** q) / q, (a - c) ** (q - 1) * c * pe
    if name == "ael":
        a = prm["a"]
        return np.exp(-py / a), (1 / a) * np.exp(-c / a) * c * pe
    if name == "rce":
        A = prm["A"]
        return -A * (1 - py), -A * c * pe
    if name == "nce":
        cc = -np.log(py)
        S = -np.log(p).sum(axis=1)
        grad = (pe * S[:, None] - cc[:, None] * (K * p - 1)) / S[:, None] ** 2
        return cc / S, grad
    if name == "focal":
        g = prm["gamma"]
        return -((1 - py) ** g) * np.log(py), _focal_h(c, g) * pe
    if name == "nfl":
        g = prm["gamma"]
        focal = -((1 - p) ** g) * np.log(p)
        num = (focal * onehot).sum(axis=1)
        den = focal.sum(axis=1)
        h = _focal_h(p, g)
        dnum = (h * onehot).sum(axis=1, keepdims=True) * pe
        dden = p * h.sum(axis=1, keepdims=True) - h
        grad = (dnum * den[:, None] - num[:, None] * dden) / den[:, None] ** 2
        return num / den, grad
    raise KeyError(name)


_COMBOS = {
    "sce": ("ce", "rce"),
    "nce_mae": ("nce", "mae_term"),
    "nf_mae": ("nfl", "mae_term"),
    "nce_rce": ("nce", "rce"),
    "nce_agce": ("nce", "agce"),
}


# ---- bi-tempered (Google's algorithm, soft labels) ------------------------------------------


def log_t(u, t):
    return np.log(u) if t == 1 else (u ** (1 - t) - 1) / (1 - t)


def exp_t(u, t):
    return np.exp(u) if t == 1 else np.maximum(1 + (1 - t) * u, 0) ** (1 / (1 - t))


def normalization(a, t, num_iters):
    if t == 1:
        m = a.max(axis=1, keepdims=True)
        return m + np.log(np.exp(a - m).sum(axis=1, keepdims=True))
    mu = a.max(axis=1, keepdims=True)
    a0 = a - mu
    if t > 1:
        ah = a0
        for _ in range(num_iters):
            z = exp_t(ah, t).sum(axis=1, keepdims=True)
            ah = a0 * z ** (1 - t)
        z = exp_t(ah, t).sum(axis=1, keepdims=True)
        return -log_t(1 / z, t) + mu
    d = (a0 > -1 / (1 - t)).sum(axis=1, keepdims=True).astype(np.float64)
    lo = np.zeros_like(mu)
    hi = -log_t(1 / d, t)
    for _ in range(num_iters):
        mid = (lo + hi) / 2
        below = exp_t(a0 - mid, t).sum(axis=1, keepdims=True) < 1
        hi = np.where(below, mid, hi)
        lo = np.where(below, lo, mid)
    return (lo + hi) / 2 + mu


def tempered_softmax(a, t, num_iters=5):
    return exp_t(a - normalization(a, t, num_iters), t)


def bitemp_soft(a, labels, t1, t2, num_iters=5, label_smoothing=0.0):
    """Google's ``bi_tempered_logistic_loss`` (soft labels), per example."""
    K = a.shape[1]
    if label_smoothing > 0:
        labels = (1 - K / (K - 1) * label_smoothing) * labels + label_smoothing / (K - 1)
    p = tempered_softmax(a, t2, num_iters)
    return (
        labels * log_t(labels + 1e-10, t1)
        - labels * log_t(p, t1)
        - labels ** (2 - t1) / (2 - t1)
        + p ** (2 - t1) / (2 - t1)
    ).sum(axis=1)


def _bitemp(a, y, onehot, t1, t2, num_iters):
    """One-hot bi-tempered loss and the implicit-function gradient (Google's custom grad)."""
    iters = num_iters if t2 > 1 else 200  # bisection to convergence for t2 < 1
    p = tempered_softmax(a, t2, iters)
    py = p[np.arange(len(y)), y]
    loss = -log_t(py, t1) - (1 - (p ** (2 - t1)).sum(axis=1)) / (2 - t1)
    with np.errstate(divide="ignore"):
        f = np.where(p > 0, p ** (t2 - t1), 0.0)
    s = p**t2 / (p**t2).sum(axis=1, keepdims=True)
    w = (p - onehot) * f
    return loss, w - s * w.sum(axis=1, keepdims=True)


def loss_and_grad(name: str, params: dict, logits, target, epsilon=0.0):
    """Per-row loss [N] and d loss_row / d logits [N, K] in float64 NumPy."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(target, dtype=np.int64)
    N, K = z.shape
    onehot = np.zeros_like(z)
    onehot[np.arange(N), y] = 1.0
    eps = np.broadcast_to(np.asarray(epsilon, dtype=np.float64), (N,))
    zb = z + eps[:, None] * onehot
    if name == "bitemp":
        return _bitemp(zb, y, onehot, params["t1"], params["t2"], int(params["num_iters"]))
    p = softmax(zb)
    py = p[np.arange(N), y]
    if name in _COMBOS:
        first, second = _COMBOS[name]
        l1, g1 = _pieces(first, params, p, py, onehot, K)
        l2, g2 = _pieces(second, params, p, py, onehot, K)
        return params["alpha"] * l1 + params["beta"] * l2, params["alpha"] * g1 + params["beta"] * g2
    return _pieces(name, params, p, py, onehot, K)
