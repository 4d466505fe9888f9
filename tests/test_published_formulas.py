"""The losses added with the loss algebra against the formulas of the authors' code.

``independent.PUBLISHED`` writes the classes of HanxunH/Active-Passive-Losses ``loss.py`` (APL)
and hitcszx/ALFs ``lnl/losses.py`` (ALFs) as those files compute them, in NumPy float64 with
analytic gradients (checked here against finite differences). Our reference (``backend="torch"``,
float64) must give the same per-row values and gradients to 1e-10, at the parameters that make
the two the same loss:

* APL's NormalizedMeanAbsoluteError has the normaliser 1 / (2 (K - 1)): its scale s is our
  nmae at scale s / 2 (ALFs' NMAE, 1 / (K - 1), is ours at the same scale);
* APL's GCEandMAE and GCEandRCE ignore alpha (their GCE is unweighted), GCEandNCE ignores alpha
  and beta: they are ours at alpha = 1 (and beta = 1); at another alpha ours differs by exactly
  (alpha - 1) * GCE (and (beta - 1) * NCE);
* ALFs' NFLandAGCE / NFLandAUE / NFLandAEL have no gamma: their NFL runs at its default 0.5;
* RCE's constant is ln(1e-4) in both codebases (they clamp the one-hot label at 1e-4): our A.

The authors clamp p to [1e-7, 1] before GCE, NGCE and RCE; we do not, so the comparisons run on
inputs whose probabilities are all above 1e-7 (asserted), and a test shows where the clamp does
change their loss. Their NFL detaches the focal weights, which changes only the gradient: ours is
exact (a test shows the difference).
"""

from __future__ import annotations

import math

import independent
import numpy as np
import pytest
import torch

import robustkernels as rk

LN_1E_4 = math.log(1e-4)
NEW_LOSSES = [
    "ngce",
    "nmae",
    "nrce",
    "gce_mae",
    "gce_rce",
    "gce_nce",
    "ngce_nce",
    "ngce_mae",
    "ngce_rce",
    "mae_rce",
    "nfl_nce",
    "nfl_rce",
    "nce_aul",
    "nce_ael",
    "nfl_agce",
    "nfl_aul",
    "nfl_ael",
]
RTOL = 1e-10


def _inputs(n=8, k=7, seed=0, scale=2.0):
    """float64 logits, labels and a per-row bias whose probabilities are all above the clamp."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, k, (n,), generator=g)
    eps = torch.linspace(-1.0, 3.0, n, dtype=torch.float64)
    p = independent.softmax(logits.numpy() + eps.numpy()[:, None] * np.eye(k)[target.numpy()])
    assert p.min() > 10 * independent.P_FLOOR, "inputs must leave the authors' clamp inactive"
    return logits, target, eps


def _ours(loss, params, logits, target, eps):
    """Our reference's per-row loss and d(sum of rows)/d logits, float64."""
    x = logits.clone().requires_grad_()
    rows = rk.robust_loss(x, target, loss, epsilon=eps, reduction="none", backend="torch", **params)
    rows.sum().backward()
    return rows.detach().numpy(), x.grad.numpy()


def _theirs(source, cls, args, logits, target, eps, **flags):
    return independent.published_loss_and_grad(
        source, cls, logits.numpy(), target.numpy(), eps.numpy(), **flags, **args
    )


def _assert_rows(actual, expected, rtol, what):
    """Values elementwise, gradients per row (max-norm), relative to ``rtol``."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    assert np.isfinite(actual).all() and np.isfinite(expected).all(), what
    if actual.ndim == 1:
        actual, expected = actual[:, None], expected[:, None]
    err = np.abs(actual - expected).max(axis=1)
    scale = np.abs(expected).max(axis=1)
    assert (err <= rtol * scale).all(), f"{what}: relative error {(err / scale).max():.2e} > {rtol:g}"


# (our loss, our parameters, source, class, the class's constructor arguments)
MATCHES = [
    # ngce: our default q = 0.1 is APL's configs/cifar10/sym/ngce.yaml; q = 1 is the end of its range
    ("ngce", {}, "APL", "NormalizedGeneralizedCrossEntropy", {"scale": 1.0, "q": 0.1}),
    ("ngce", {"scale": 2.5, "q": 0.45}, "ALFs", "NGCELoss", {"q": 0.45, "scale": 2.5}),
    ("ngce", {"scale": 0.3, "q": 1.0}, "APL", "NormalizedGeneralizedCrossEntropy", {"scale": 0.3, "q": 1.0}),
    ("nmae", {"scale": 3.0}, "ALFs", "NMAE", {"scale": 3.0}),
    ("nmae", {}, "ALFs", "NMAE", {}),
    ("nmae", {"scale": 1.5}, "APL", "NormalizedMeanAbsoluteError", {"scale": 3.0}),  # ours at s / 2
    ("nrce", {"scale": 0.7}, "APL", "NormalizedReverseCrossEntropy", {"scale": 0.7}),
    ("nrce", {}, "ALFs", "NRCELoss", {}),
    ("gce_mae", {}, "APL", "GCEandMAE", {"alpha": 1.0, "beta": 1.0}),
    ("gce_mae", {"beta": 2.5, "q": 0.3}, "APL", "GCEandMAE", {"alpha": 1.0, "beta": 2.5, "q": 0.3}),
    ("gce_rce", {}, "APL", "GCEandRCE", {"alpha": 1.0, "beta": 1.0}),
    ("gce_rce", {"beta": 0.3, "q": 0.9}, "APL", "GCEandRCE", {"alpha": 1.0, "beta": 0.3, "q": 0.9}),
    ("gce_nce", {}, "APL", "GCEandNCE", {"alpha": 1.0, "beta": 1.0}),
    ("gce_nce", {"q": 0.2}, "APL", "GCEandNCE", {"alpha": 1.0, "beta": 1.0, "q": 0.2}),
    ("ngce_nce", {}, "APL", "NGCEandNCE", {"alpha": 1.0, "beta": 1.0}),
    ("ngce_nce", {"alpha": 3.0, "beta": 0.5, "q": 0.6}, "APL", "NGCEandNCE", {"alpha": 3.0, "beta": 0.5, "q": 0.6}),
    ("ngce_mae", {}, "APL", "NGCEandMAE", {"alpha": 1.0, "beta": 1.0, "q": 0.1}),
    ("ngce_mae", {"alpha": 0.7, "beta": 1.8, "q": 0.9}, "APL", "NGCEandMAE", {"alpha": 0.7, "beta": 1.8, "q": 0.9}),
    ("ngce_rce", {}, "APL", "NGCEandRCE", {"alpha": 1.0, "beta": 1.0, "q": 0.1}),
    ("ngce_rce", {"alpha": 5.0, "beta": 0.2, "q": 0.35}, "APL", "NGCEandRCE", {"alpha": 5.0, "beta": 0.2, "q": 0.35}),
    ("mae_rce", {}, "APL", "MAEandRCE", {"alpha": 1.0, "beta": 1.0}),
    ("mae_rce", {"alpha": 2.0, "beta": 0.05}, "APL", "MAEandRCE", {"alpha": 2.0, "beta": 0.05}),
    ("nfl_nce", {}, "APL", "NFLandNCE", {"alpha": 1.0, "beta": 1.0}),
    (
        "nfl_nce",
        {"alpha": 0.3, "beta": 2.0, "gamma": 1.7},
        "APL",
        "NFLandNCE",
        {"alpha": 0.3, "beta": 2.0, "gamma": 1.7},
    ),
    ("nfl_rce", {}, "APL", "NFLandRCE", {"alpha": 1.0, "beta": 1.0}),
    (
        "nfl_rce",
        {"alpha": 4.0, "beta": 0.3, "gamma": 2.5},
        "ALFs",
        "NFLandRCE",
        {"alpha": 4.0, "beta": 0.3, "gamma": 2.5},
    ),
    ("nfl_rce", {}, "ALFs", "NFLandRCE", {}),
    # nce_aul / nce_ael: our defaults are ALFs' CIFAR-10 config; the classes' own defaults differ
    ("nce_aul", {}, "ALFs", "NCEandAUE", {"alpha": 1.0, "beta": 4.0, "a": 6.3, "q": 1.5}),
    ("nce_aul", {"beta": 1.0, "a": 6.0}, "ALFs", "NCEandAUE", {}),
    (
        "nce_aul",
        {"alpha": 2.0, "beta": 0.7, "a": 1.0 + 1e-7, "q": 0.8},
        "ALFs",
        "NCEandAUE",
        {"alpha": 2.0, "beta": 0.7, "a": 1.0 + 1e-7, "q": 0.8},
    ),
    ("nce_ael", {}, "ALFs", "NCEandAEL", {"alpha": 1.0, "beta": 4.0, "a": 5.0}),
    ("nce_ael", {"a": 2.5}, "ALFs", "NCEandAEL", {}),
    # nfl_agce / nfl_aul / nfl_ael: their NFL has gamma 0.5 (our default); our defaults are theirs
    ("nfl_agce", {}, "ALFs", "NFLandAGCE", {}),
    (
        "nfl_agce",
        {"alpha": 1.5, "beta": 0.4, "a": 0.8, "q": 0.9},
        "ALFs",
        "NFLandAGCE",
        {"alpha": 1.5, "beta": 0.4, "a": 0.8, "q": 0.9},
    ),
    ("nfl_aul", {}, "ALFs", "NFLandAUE", {}),
    (
        "nfl_aul",
        {"alpha": 0.8, "beta": 2.0, "a": 3.5, "q": 2.5},
        "ALFs",
        "NFLandAUE",
        {"alpha": 0.8, "beta": 2.0, "a": 3.5, "q": 2.5},
    ),
    ("nfl_ael", {}, "ALFs", "NFLandAEL", {}),
    ("nfl_ael", {"alpha": 2.5, "beta": 0.6, "a": 4.5}, "ALFs", "NFLandAEL", {"alpha": 2.5, "beta": 0.6, "a": 4.5}),
]


def _match_id(m):
    loss, params, source, cls, _ = m
    return f"{loss}{'-' if params else ''}{'-'.join(f'{k}={v:g}' for k, v in params.items())}-{source}.{cls}"


def test_every_new_loss_is_matched_with_a_published_class():
    assert {m[0] for m in MATCHES} == set(NEW_LOSSES)
    assert set(NEW_LOSSES) <= set(rk.LOSSES)


@pytest.mark.parametrize("k", [7, 10])
@pytest.mark.parametrize("loss, params, source, cls, args", MATCHES, ids=[_match_id(m) for m in MATCHES])
def test_reference_equals_the_published_formula(loss, params, source, cls, args, k):
    logits, target, eps = _inputs(k=k, seed=k)
    got_loss, got_grad = _ours(loss, params, logits, target, eps)
    want_loss, want_grad = _theirs(source, cls, args, logits, target, eps)
    _assert_rows(got_loss, want_loss, RTOL, "loss")
    _assert_rows(got_grad, want_grad, RTOL, "gradient")
    # The scalar bias too (one float for every row: a different code path in the kernels).
    got_loss, got_grad = _ours(loss, params, logits, target, 0.9)
    want_loss, want_grad = _theirs(source, cls, args, logits, target, torch.full((8,), 0.9, dtype=torch.float64))
    _assert_rows(got_loss, want_loss, RTOL, "loss, scalar eps")
    _assert_rows(got_grad, want_grad, RTOL, "gradient, scalar eps")


@pytest.mark.parametrize(
    "loss, cls, ignored",
    [
        ("gce_mae", "GCEandMAE", ("alpha",)),
        ("gce_rce", "GCEandRCE", ("alpha",)),
        ("gce_nce", "GCEandNCE", ("alpha", "beta")),
    ],
)
def test_apl_ignores_alpha_and_the_difference_is_the_unweighted_terms(loss, cls, ignored):
    """At alpha = 3 (and beta = 0.25 for GCEandNCE, which ignores it) ours minus APL's class is
    exactly (alpha - 1) * GCE (+ (beta - 1) * NCE): the terms APL leaves unweighted."""
    logits, target, eps = _inputs(seed=3)
    alpha, beta, q = 3.0, 0.25, 0.4
    args = {"alpha": alpha, "beta": beta, "q": q}
    ours_loss, ours_grad = _ours(loss, args, logits, target, eps)
    theirs_loss, theirs_grad = _theirs("APL", cls, args, logits, target, eps)
    want_loss, want_grad = _theirs("APL", "GeneralizedCrossEntropy", {"q": q}, logits, target, eps)
    want_loss, want_grad = (alpha - 1) * want_loss, (alpha - 1) * want_grad
    if "beta" in ignored:
        nce_loss, nce_grad = _theirs("APL", "NormalizedCrossEntropy", {}, logits, target, eps)
        want_loss, want_grad = want_loss + (beta - 1) * nce_loss, want_grad + (beta - 1) * nce_grad
    else:  # beta is honoured: the class at these arguments is ours at alpha = 1
        at_one_loss, at_one_grad = _ours(loss, {**args, "alpha": 1.0}, logits, target, eps)
        _assert_rows(at_one_loss, theirs_loss, RTOL, "ours at alpha = 1, loss")
        _assert_rows(at_one_grad, theirs_grad, RTOL, "ours at alpha = 1, gradient")
    # The difference is not small: the test would see alpha being dropped or applied twice.
    assert np.abs(want_loss).min() > 1e-2
    _assert_rows(ours_loss - theirs_loss, want_loss, 1e-9, "difference of the losses")
    _assert_rows(ours_grad - theirs_grad, want_grad, 1e-9, "difference of the gradients")


def test_apl_nmae_is_half_of_alfs_nmae():
    """The two published NMAE normalisers differ by 2: APL's scale s is ALFs' (and our) s / 2."""
    logits, target, eps = _inputs(seed=5)
    apl = _theirs("APL", "NormalizedMeanAbsoluteError", {"scale": 1.0}, logits, target, eps)
    alfs = _theirs("ALFs", "NMAE", {"scale": 1.0}, logits, target, eps)
    _assert_rows(2 * apl[0], alfs[0], 1e-15, "loss")
    ours = _ours("nmae", {"scale": 1.0}, logits, target, eps)
    assert np.abs(ours[0] - apl[0]).min() > 0.4 * np.abs(apl[0]).min()  # ours is not APL's at equal scale


# Clamped classes and a batch where the clamp of p at 1e-7 is active: confident rows (1 - p_y = 1e-4
# in one class, the others at 1e-12: RCE's sum_{k != y} clamp(p_k) gains 3e-7, NGCE's normaliser
# (1e-7)^q - (1e-12)^q per clamped class). 1 - p_y stays far above ulp(1), so the oracle's
# probability-space formulas keep 1e-12 of relative accuracy.
CLAMPED = [
    ("ngce", {"q": 0.3}, "APL", "NormalizedGeneralizedCrossEntropy", {"q": 0.3}),
    ("ngce", {"q": 0.3}, "ALFs", "NGCELoss", {"q": 0.3}),
    ("nrce", {}, "APL", "NormalizedReverseCrossEntropy", {}),
    ("nrce", {}, "ALFs", "NRCELoss", {}),
    ("gce_rce", {}, "APL", "GCEandRCE", {"alpha": 1.0, "beta": 1.0}),
    ("ngce_rce", {}, "APL", "NGCEandRCE", {"alpha": 1.0, "beta": 1.0, "q": 0.1}),
    ("mae_rce", {}, "APL", "MAEandRCE", {"alpha": 1.0, "beta": 1.0}),
    ("nfl_rce", {}, "ALFs", "NFLandRCE", {}),
]


@pytest.mark.parametrize("loss, params, source, cls, args", CLAMPED, ids=[_match_id(m) for m in CLAMPED])
def test_the_authors_clamp_is_what_differs_where_it_is_active(loss, params, source, cls, args):
    tiny, small = math.log(1e-12), math.log(1e-4)
    logits = torch.tensor([[0.0, small, tiny, tiny, tiny], [tiny, tiny, 0.0, tiny, small + 1.0]], dtype=torch.float64)
    target = torch.tensor([0, 2])
    eps = torch.zeros(2, dtype=torch.float64)
    p = independent.softmax(logits.numpy())
    assert (p < independent.P_FLOOR).any(axis=1).all()
    ours_loss, ours_grad = _ours(loss, params, logits, target, eps)
    # Without the clamp the authors' formula is ours, also here ...
    want_loss, want_grad = _theirs(source, cls, args, logits, target, eps, clamp=False)
    _assert_rows(ours_loss, want_loss, RTOL, "loss, clamp removed")
    _assert_rows(ours_grad, want_grad, RTOL, "gradient, clamp removed")
    # ... and with it the loss differs on every row where it is active (relative 1e-4 at least).
    clamped_loss, _ = _theirs(source, cls, args, logits, target, eps)
    assert (np.abs(clamped_loss - ours_loss) > 1e-4 * np.abs(ours_loss)).all(), (clamped_loss, ours_loss)


@pytest.mark.parametrize("loss", ["nfl_nce", "nfl_rce"])
def test_detached_focal_weights_change_only_the_gradient(loss):
    """APL/ALFs detach (1 - p_k)^gamma: same value, a gradient without the weights' derivative
    (equal to ours only at gamma = 0, where the weights are constant)."""
    logits, target, eps = _inputs(seed=7)
    for gamma in (0.5, 0.0):
        args = {"alpha": 1.0, "beta": 1.0, "gamma": gamma}
        ours_loss, ours_grad = _ours(loss, args, logits, target, eps)
        cls = "NFLandNCE" if loss == "nfl_nce" else "NFLandRCE"
        det_loss, det_grad = _theirs("APL", cls, args, logits, target, eps, detach_focal=True)
        _assert_rows(ours_loss, det_loss, RTOL, f"loss at gamma={gamma}")
        err = np.abs(ours_grad - det_grad).max(axis=1) / np.abs(ours_grad).max(axis=1)
        if gamma == 0.0:
            assert err.max() <= RTOL, err
        else:
            assert err.min() > 1e-4, err


# ---- the oracle's analytic gradients against finite differences -----------------------------------


def _finite_differences(fn, logits, h=1e-5):
    """Central differences of the per-row losses ``fn(logits)`` (a row depends on its logits only)."""
    grad = np.zeros_like(logits)
    for j in range(logits.shape[1]):
        step = np.zeros_like(logits)
        step[:, j] = h
        grad[:, j] = (fn(logits + step) - fn(logits - step)) / (2 * h)
    return grad


def _fd_inputs():
    logits, target, eps = _inputs(n=5, k=6, seed=11, scale=1.5)
    return logits.numpy(), target.numpy(), eps.numpy()


@pytest.mark.parametrize(
    "source, cls",
    [pytest.param(s, c, id=f"{s}.{c}") for s, classes in independent.PUBLISHED.items() for c in classes],
)
def test_published_gradients_match_finite_differences(source, cls):
    logits, target, eps = _fd_inputs()
    args = {"alpha": 1.7, "beta": 0.6} if "and" in cls else {}

    def fn(z):
        return independent.published_loss_and_grad(source, cls, z, target, eps, **args)[0]

    _, grad = independent.published_loss_and_grad(source, cls, logits, target, eps, **args)
    _assert_rows(grad, _finite_differences(fn, logits), 1e-6, f"{source}.{cls}")


@pytest.mark.parametrize("name", list(rk.LOSSES))
@pytest.mark.parametrize("params", ["defaults", "non-default"])
def test_oracle_gradients_match_finite_differences(name, params):
    logits, target, eps = _fd_inputs()
    prm = {**rk.LOSSES[name].defaults, **(independent.NON_DEFAULT_PARAMS.get(name, {}) if params != "defaults" else {})}
    if name == "bitemp":
        prm["num_iters"] = 100  # the implicit gradient is that of the converged normalisation

    def fn(z):
        return independent.loss_and_grad(name, prm, z, target, eps)[0]

    _, grad = independent.loss_and_grad(name, prm, logits, target, eps)
    _assert_rows(grad, _finite_differences(fn, logits), 1e-6, name)


def test_combination_oracle_matches_finite_differences_and_the_reference():
    """Every primitive but bitemp in one weighted sum (rk.combine), non-default parameters."""
    weights = {n: 0.1 + 0.15 * i for i, n in enumerate(rk.PRIMITIVES) if n != "bitemp"}
    params = {"gce": {"q": 0.4}, "ngce": {"q": 0.8}, "agce": {"a": 2.0, "q": 1.2}, "aul": {"a": 1.7, "q": 2.0}}
    params |= {"ael": {"a": 1.5}, "rce": {"A": -3.0}, "nrce": {"A": -2.0}, "focal": {"gamma": 1.5}}
    params |= {"nfl": {"gamma": 0.8}}
    terms = {
        n: (w, {**{p.name: p.default for p in rk.PRIMITIVES[n].params}, **params.get(n, {})})
        for n, w in weights.items()
    }
    logits, target, eps = _fd_inputs()

    def fn(z):
        return independent.combination_loss_and_grad(terms, z, target, eps)[0]

    loss, grad = independent.combination_loss_and_grad(terms, logits, target, eps)
    _assert_rows(grad, _finite_differences(fn, logits), 1e-6, "combination")
    spec = rk.combine(weights, **params)
    got_loss, got_grad = _ours(spec, {}, torch.from_numpy(logits), torch.from_numpy(target), torch.from_numpy(eps))
    _assert_rows(got_loss, loss, RTOL, "combination loss")
    _assert_rows(got_grad, grad, RTOL, "combination gradient")


def test_non_default_params_cover_every_parameter_of_every_loss():
    """The tests of the parameter plumbing (here, test_reference, test_native) read these."""
    for name, spec in rk.LOSSES.items():
        if not spec.params:
            continue
        assert name in independent.NON_DEFAULT_PARAMS, name
        other = independent.NON_DEFAULT_PARAMS[name]
        assert set(other) == set(spec.defaults), name
        changed = {p for p, v in other.items() if v != spec.defaults[p]}
        # bitemp's num_iters is unused at t2 < 1 (bisection to convergence)
        assert changed == set(spec.defaults) - ({"num_iters"} if name == "bitemp" else set()), name
        spec.resolve(other)  # every value inside its range
