"""An independent NumPy float64 implementation of every loss and its analytic gradient.

Written from the formulas in ``shared/reference/losses.md`` (probabilities, not log-space; the
gradients are the closed forms, not autograd), so that agreement with
:mod:`robustkernels.reference` checks both the values and the autograd gradients. Also used as
the oracle the kernel backends are compared against.

The losses added with the loss algebra (ngce, nmae, nrce and the published combinations) are
written as the authors' code computes them -- HanxunH/Active-Passive-Losses ``loss.py`` (APL)
and hitcszx/ALFs ``lnl/losses.py`` (ALFs) -- as functions of the probability vector ``p`` with
their derivative ``dL/dp``, taken to the logits by the chain rule through the softmax
(:func:`_chain`). :func:`published_loss_and_grad` evaluates the authors' classes themselves (their
clamps, their weightings), :func:`loss_and_grad` our specs (no clamp, alpha and beta weighting
every term), :func:`combination_loss_and_grad` any weighted sum of primitives (``rk.combine``).
Gradients are exact everywhere: the authors detach the focal weights ``(1 - p_k)^gamma`` of NFL,
which changes only their gradient (``detach_focal=True`` reproduces it), never the value.
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
    "ngce": {"scale": 2.5, "q": 0.45},
    "nmae": {"scale": 3.0},
    "nrce": {"scale": 0.2, "A": -3.0},
    "gce_mae": {"alpha": 0.4, "beta": 2.5, "q": 0.3},
    "gce_rce": {"alpha": 2.0, "beta": 0.3, "q": 0.9, "A": -5.0},
    "gce_nce": {"alpha": 0.5, "beta": 3.0, "q": 0.2},
    "ngce_nce": {"alpha": 3.0, "beta": 0.5, "q": 0.6},
    "ngce_mae": {"alpha": 0.7, "beta": 1.8, "q": 0.9},
    "ngce_rce": {"alpha": 5.0, "beta": 0.2, "q": 0.35, "A": -6.0},
    "mae_rce": {"alpha": 2.0, "beta": 0.05, "A": -1.5},
    "nfl_nce": {"alpha": 0.3, "beta": 2.0, "gamma": 1.7},
    "nfl_rce": {"alpha": 4.0, "beta": 0.3, "gamma": 2.5, "A": -3.5},
    "nce_aul": {"alpha": 2.0, "beta": 0.7, "a": 2.2, "q": 0.8},
    "nce_ael": {"alpha": 0.6, "beta": 2.5, "a": 1.7},
    "nfl_agce": {"alpha": 1.5, "beta": 0.4, "gamma": 1.2, "a": 0.8, "q": 0.9},
    "nfl_aul": {"alpha": 0.8, "beta": 2.0, "gamma": 2.0, "a": 3.5, "q": 2.5},
    "nfl_ael": {"alpha": 2.5, "beta": 0.6, "gamma": 0.9, "a": 4.5},
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


# ---- the published formulas, as functions of p ---------------------------------------------------

#: Both codebases clamp p to [1e-7, 1] before GCE, NGCE and RCE (ALFs' module-level ``eps``).
P_FLOOR = 1e-7
#: ... and the one-hot label to [1e-4, 1] before RCE's log: log(1e-4) is our default A.
LABEL_FLOOR = 1e-4


def _chain(p, dp):
    """dL/dz from dL/dp through p = softmax(z): dL/dz_j = sum_k dL/dp_k p_k (delta_kj - p_j)."""
    return p * (dp - (dp * p).sum(axis=1, keepdims=True))


class _Probs:
    """The probabilities ``p [N, K]`` of a batch and its labels, with the authors' clamp of p
    (``clamp=False``: none, as our losses) and their detached focal weights (``detach_focal``).

    Every term method returns ``(value [N], d value / d p [N, K])`` of one unweighted term, with
    p taken as K free variables (the chain rule through the softmax does the rest).
    """

    def __init__(self, p, onehot, clamp=False, detach_focal=False):
        self.p, self.onehot, self.clamp, self.detach_focal = p, onehot, clamp, detach_focal
        self.K = p.shape[1]
        self.py = (p * onehot).sum(axis=1)

    def _clamped(self):
        """``clamp(p, 1e-7, 1)`` and its derivative (1 inside the interval, as torch.clamp's)."""
        if not self.clamp:
            return self.p, np.ones_like(self.p)
        inside = (self.p >= P_FLOOR) & (self.p <= 1.0)
        return np.clip(self.p, P_FLOOR, 1.0), inside.astype(np.float64)

    def _label(self, value, slope):
        """A function of p_y alone: d/dp = f'(p_y) e_y."""
        return value, slope[:, None] * self.onehot

    def ce(self):
        return self._label(-np.log(self.py), -1 / self.py)

    def mae(self):
        """``1 - sum_k onehot_k p_k``: APL MeanAbsoluteError / ALFs MAELoss at scale 1."""
        return self._label(1 - self.py, -np.ones_like(self.py))

    def nmae(self):
        """ALFs NMAE at scale 1: ``1 / (K - 1) * (1 - p_y)``."""
        value, dp = self.mae()
        return value / (self.K - 1), dp / (self.K - 1)

    def gce(self, q):
        """``(1 - clamp(p)_y^q) / q``."""
        pc, inside = self._clamped()
        pyc = (pc * self.onehot).sum(axis=1)
        return (1 - pyc**q) / q, -(pyc ** (q - 1))[:, None] * self.onehot * inside

    def ngce(self, q):
        """``(1 - clamp(p)_y^q) / (K - sum_k clamp(p)_k^q)``."""
        pc, inside = self._clamped()
        pyc = (pc * self.onehot).sum(axis=1)
        num = 1 - pyc**q
        den = self.K - (pc**q).sum(axis=1)
        dnum = -q * (pyc ** (q - 1))[:, None] * self.onehot * inside
        dden = -q * pc ** (q - 1) * inside
        return num / den, (dnum * den[:, None] - num[:, None] * dden) / den[:, None] ** 2

    def rce(self, label_floor=LABEL_FLOOR):
        """``-sum_k clamp(p)_k log(clamp(onehot_k, label_floor, 1))``; the floor is e^A (1e-4)."""
        pc, inside = self._clamped()
        log_label = np.log(np.clip(self.onehot, label_floor, 1.0))
        return -(pc * log_label).sum(axis=1), -log_label * inside

    def nrce(self, label_floor=LABEL_FLOOR):
        """APL / ALFs at scale 1: ``1 / 4 * (K - 1) * RCE`` (Python's precedence: (K - 1) / 4)."""
        norm = 1 / 4 * (self.K - 1)
        value, dp = self.rce(label_floor)
        return norm * value, norm * dp

    def nce(self):
        """``-sum_k onehot_k log p_k / -sum_k log p_k`` (log_softmax, no clamp)."""
        logp = np.log(self.p)
        S = logp.sum(axis=1)
        ly = np.log(self.py)
        return ly / S, (self.onehot * S[:, None] - ly[:, None]) / (self.p * S[:, None] ** 2)

    def _focal_all(self, gamma):
        """``focal_k = -(1 - p_k)^gamma log p_k`` and its derivative (weights detached if asked)."""
        w = (1 - self.p) ** gamma
        logp = np.log(self.p)
        dfocal = -w / self.p
        if not self.detach_focal:
            dfocal = dfocal + gamma * (1 - self.p) ** (gamma - 1) * logp
        return -w * logp, dfocal

    def focal(self, gamma):
        focal, dfocal = self._focal_all(gamma)
        return (focal * self.onehot).sum(axis=1), dfocal * self.onehot

    def nfl(self, gamma):
        """``focal_y / sum_k focal_k``."""
        focal, dfocal = self._focal_all(gamma)
        num = (focal * self.onehot).sum(axis=1)
        den = focal.sum(axis=1)
        dp = (dfocal * self.onehot * den[:, None] - num[:, None] * dfocal) / den[:, None] ** 2
        return num / den, dp

    def agce(self, a, q):
        """``((a + 1)^q - (a + p_y)^q) / q``."""
        return self._label(((a + 1) ** q - (a + self.py) ** q) / q, -((a + self.py) ** (q - 1)))

    def aul(self, a, q):
        """ALFs AUELoss: ``((a - p_y)^q - (a - 1)^q) / q``."""
        return self._label(((a - self.py) ** q - (a - 1) ** q) / q, -((a - self.py) ** (q - 1)))

    def ael(self, a):
        """ALFs AExpLoss: ``exp(-p_y / a)``."""
        value = np.exp(-self.py / a)
        return self._label(value, -value / a)

    def primitive(self, name, prm):
        """The primitive ``name`` of :data:`robustkernels.PRIMITIVES` with its parameters."""
        if name in ("ce", "mae", "nmae", "nce"):
            return getattr(self, name)()
        if name in ("gce", "ngce"):
            return getattr(self, name)(prm["q"])
        if name in ("agce", "aul"):
            return getattr(self, name)(prm["a"], prm["q"])
        if name == "ael":
            return self.ael(prm["a"])
        if name in ("rce", "nrce"):
            return getattr(self, name)(np.exp(prm["A"]))
        if name in ("focal", "nfl"):
            return getattr(self, name)(prm["gamma"])
        raise KeyError(name)


def _scaled(scale, term):
    value, dp = term
    return scale * value, scale * dp


def _summed(*terms):
    return sum(t[0] for t in terms), sum(t[1] for t in terms)


# The authors' classes, by source and class name, with their constructor's keyword arguments and
# defaults (num_classes is K). Each composes the single-term classes as the authors' forward does.


def _apl_gce(P, q=0.7):
    return P.gce(q)


def _apl_ngce(P, scale=1.0, q=0.7):
    return _scaled(scale, P.ngce(q))


def _apl_mae(P, scale=1.0):
    return _scaled(scale, P.mae())


def _apl_nmae(P, scale=1.0):
    return _scaled(scale * (1 / (2 * (P.K - 1))), P.mae())


def _apl_rce(P, scale=1.0):
    return _scaled(scale, P.rce())


def _apl_nrce(P, scale=1.0):
    return _scaled(scale, P.nrce())


def _apl_nce(P, scale=1.0):
    return _scaled(scale, P.nce())


def _apl_nfl(P, scale=1.0, gamma=0.0):
    return _scaled(scale, P.nfl(gamma))


def _alfs_nfl(P, gamma=0.5, scale=1.0):
    return _scaled(scale, P.nfl(gamma))


def _alfs_agce(P, a=1.0, q=2.0, scale=1.0):
    return _scaled(scale, P.agce(a, q))


def _alfs_aue(P, a=1.5, q=0.9, scale=1.0):
    return _scaled(scale, P.aul(a, q))


def _alfs_aexp(P, a=3.0, scale=1.0):
    return _scaled(scale, P.ael(a))


PUBLISHED = {
    "APL": {
        "GeneralizedCrossEntropy": _apl_gce,
        "NormalizedGeneralizedCrossEntropy": _apl_ngce,
        "MeanAbsoluteError": _apl_mae,
        "NormalizedMeanAbsoluteError": _apl_nmae,
        "ReverseCrossEntropy": _apl_rce,
        "NormalizedReverseCrossEntropy": _apl_nrce,
        "NormalizedCrossEntropy": _apl_nce,
        "NormalizedFocalLoss": _apl_nfl,
        # The GCE term of these three is GeneralizedCrossEntropy(q): alpha is not used (nor beta
        # by GCEandNCE, whose NCE keeps scale 1).
        "GCEandMAE": lambda P, alpha, beta, q=0.7: _summed(_apl_gce(P, q), _apl_mae(P, beta)),
        "GCEandRCE": lambda P, alpha, beta, q=0.7: _summed(_apl_gce(P, q), _apl_rce(P, beta)),
        "GCEandNCE": lambda P, alpha, beta, q=0.7: _summed(_apl_gce(P, q), _apl_nce(P)),
        "NGCEandNCE": lambda P, alpha, beta, q=0.7: _summed(_apl_ngce(P, alpha, q), _apl_nce(P, beta)),
        "NGCEandMAE": lambda P, alpha, beta, q=0.7: _summed(_apl_ngce(P, alpha, q), _apl_mae(P, beta)),
        "NGCEandRCE": lambda P, alpha, beta, q=0.7: _summed(_apl_ngce(P, alpha, q), _apl_rce(P, beta)),
        "MAEandRCE": lambda P, alpha, beta: _summed(_apl_mae(P, alpha), _apl_rce(P, beta)),
        "NFLandNCE": lambda P, alpha, beta, gamma=0.5: _summed(_apl_nfl(P, alpha, gamma), _apl_nce(P, beta)),
        "NFLandRCE": lambda P, alpha, beta, gamma=0.5: _summed(_apl_nfl(P, alpha, gamma), _apl_rce(P, beta)),
    },
    "ALFs": {
        "MAELoss": lambda P, scale=2.0: _scaled(scale, P.mae()),
        "NMAE": lambda P, scale=1.0: _scaled(scale * (1 / (P.K - 1)), P.mae()),
        "RCELoss": lambda P, scale=1.0: _scaled(scale, P.rce()),
        "NRCELoss": lambda P, scale=1.0: _scaled(scale * (1 / 4 * (P.K - 1)), P.rce()),
        "NCELoss": lambda P, scale=1.0: _scaled(scale, P.nce()),
        "GCELoss": lambda P, q=0.7: P.gce(q),
        "NGCELoss": lambda P, q=0.7, scale=1.0: _scaled(scale, P.ngce(q)),
        "AGCELoss": _alfs_agce,
        "AUELoss": _alfs_aue,
        "AExpLoss": _alfs_aexp,
        "NormalizedFocalLoss": _alfs_nfl,
        "NFLandRCE": lambda P, alpha=1.0, beta=1.0, gamma=0.5: _summed(
            _alfs_nfl(P, gamma, alpha), _scaled(beta, P.rce())
        ),
        "NCEandAUE": lambda P, alpha=1.0, beta=1.0, a=6.0, q=1.5: _summed(
            _scaled(alpha, P.nce()), _alfs_aue(P, a, q, beta)
        ),
        "NCEandAEL": lambda P, alpha=1.0, beta=4.0, a=2.5: _summed(_scaled(alpha, P.nce()), _alfs_aexp(P, a, beta)),
        # The NFL of these three is NormalizedFocalLoss(num_classes, scale=alpha): gamma = 0.5.
        "NFLandAGCE": lambda P, alpha=1.0, beta=1.0, a=3.0, q=2.0: _summed(
            _alfs_nfl(P, scale=alpha), _alfs_agce(P, a, q, beta)
        ),
        "NFLandAUE": lambda P, alpha=1.0, beta=1.0, a=1.5, q=0.9: _summed(
            _alfs_nfl(P, scale=alpha), _alfs_aue(P, a, q, beta)
        ),
        "NFLandAEL": lambda P, alpha=1.0, beta=1.0, a=3.0: _summed(_alfs_nfl(P, scale=alpha), _alfs_aexp(P, a, beta)),
    },
}


# Our losses that are written in probability space: name -> (primitive, weighting parameter).
_TERM_LOSSES = {
    "ngce": (("ngce", "scale"),),
    "nmae": (("nmae", "scale"),),
    "nrce": (("nrce", "scale"),),
    "gce_mae": (("gce", "alpha"), ("mae", "beta")),
    "gce_rce": (("gce", "alpha"), ("rce", "beta")),
    "gce_nce": (("gce", "alpha"), ("nce", "beta")),
    "ngce_nce": (("ngce", "alpha"), ("nce", "beta")),
    "ngce_mae": (("ngce", "alpha"), ("mae", "beta")),
    "ngce_rce": (("ngce", "alpha"), ("rce", "beta")),
    "mae_rce": (("mae", "alpha"), ("rce", "beta")),
    "nfl_nce": (("nfl", "alpha"), ("nce", "beta")),
    "nfl_rce": (("nfl", "alpha"), ("rce", "beta")),
    "nce_aul": (("nce", "alpha"), ("aul", "beta")),
    "nce_ael": (("nce", "alpha"), ("ael", "beta")),
    "nfl_agce": (("nfl", "alpha"), ("agce", "beta")),
    "nfl_aul": (("nfl", "alpha"), ("aul", "beta")),
    "nfl_ael": (("nfl", "alpha"), ("ael", "beta")),
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


def _prepare(logits, target, epsilon):
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(target, dtype=np.int64)
    N, K = z.shape
    onehot = np.zeros_like(z)
    onehot[np.arange(N), y] = 1.0
    eps = np.broadcast_to(np.asarray(epsilon, dtype=np.float64), (N,))
    return z + eps[:, None] * onehot, y, onehot


def loss_and_grad(name: str, params: dict, logits, target, epsilon=0.0):
    """Per-row loss [N] and d loss_row / d logits [N, K] in float64 NumPy."""
    zb, y, onehot = _prepare(logits, target, epsilon)
    N, K = zb.shape
    if name == "bitemp":
        return _bitemp(zb, y, onehot, params["t1"], params["t2"], int(params["num_iters"]))
    p = softmax(zb)
    if name in _TERM_LOSSES:
        P = _Probs(p, onehot)
        value, dp = _summed(*(_scaled(params[w], P.primitive(prim, params)) for prim, w in _TERM_LOSSES[name]))
        return value, _chain(p, dp)
    py = p[np.arange(N), y]
    if name in _COMBOS:
        first, second = _COMBOS[name]
        l1, g1 = _pieces(first, params, p, py, onehot, K)
        l2, g2 = _pieces(second, params, p, py, onehot, K)
        return params["alpha"] * l1 + params["beta"] * l2, params["alpha"] * g1 + params["beta"] * g2
    return _pieces(name, params, p, py, onehot, K)


def combination_loss_and_grad(terms: dict, logits, target, epsilon=0.0):
    """``sum_t weight_t * primitive_t`` (what ``rk.combine`` builds) and its gradient.

    ``terms`` maps a primitive name to ``(weight, its parameters)``, e.g.
    ``{"nce": (1.0, {}), "agce": (0.1, {"a": 6.0, "q": 1.5})}``; bitemp must be alone.
    """
    zb, y, onehot = _prepare(logits, target, epsilon)
    if "bitemp" in terms:
        assert len(terms) == 1, "bitemp has its own softmax and cannot be combined"
        w, prm = terms["bitemp"]
        loss, grad = _bitemp(zb, y, onehot, prm["t1"], prm["t2"], int(prm["num_iters"]))
        return w * loss, w * grad
    p = softmax(zb)
    P = _Probs(p, onehot)
    value, dp = _summed(*(_scaled(w, P.primitive(name, prm)) for name, (w, prm) in terms.items()))
    return value, _chain(p, dp)


def published_loss_and_grad(
    source: str, cls: str, logits, target, epsilon=0.0, *, clamp=True, detach_focal=False, **args
):
    """Per-row loss and gradient of the authors' class ``PUBLISHED[source][cls](**args)``.

    The rows are what the authors' ``forward`` averages. ``clamp=False`` drops their clamp of p
    at 1e-7 (the loss of every input whose probabilities are all above 1e-7);
    ``detach_focal=True`` gives the gradient their code computes for NFL (weights detached).
    """
    zb, _, onehot = _prepare(logits, target, epsilon)
    p = softmax(zb)
    value, dp = PUBLISHED[source][cls](_Probs(p, onehot, clamp=clamp, detach_focal=detach_focal), **args)
    return value, _chain(p, dp)
