import math

import pytest

import robustkernels as rk
from robustkernels.specs import LN_1E_MINUS_4

# The issue fixes names, parameters and defaults: this table is the contract, checked verbatim.
EXPECTED = {
    "ce": {},
    "mae": {"scale": 2.0},
    "gce": {"q": 0.7},
    "agce": {"a": 0.6, "q": 0.6},
    "aul": {"a": 5.5, "q": 3.0},
    "ael": {"a": 2.5},
    "nce": {},
    "focal": {"gamma": 0.5},
    "nfl": {"gamma": 0.5},
    "rce": {"A": math.log(1e-4)},
    "sce": {"alpha": 0.1, "beta": 1.0, "A": math.log(1e-4)},
    "nce_mae": {"alpha": 1.0, "beta": 1.0},
    "nf_mae": {"alpha": 1.0, "beta": 1.0, "gamma": 0.5},
    "nce_rce": {"alpha": 1.0, "beta": 1.0, "A": math.log(1e-4)},
    "nce_agce": {"alpha": 1.0, "beta": 4.0, "a": 6.0, "q": 1.5},
    "bitemp": {"t1": 0.8, "t2": 1.2, "num_iters": 5},
}


def test_names_parameters_defaults():
    assert list(rk.LOSSES) == list(EXPECTED)
    for name, defaults in EXPECTED.items():
        assert rk.LOSSES[name].defaults == pytest.approx(defaults), name


def test_rce_constant_is_natural_log():
    assert LN_1E_MINUS_4 == pytest.approx(-9.2103403719761836)


def test_kinds_unique_and_dense():
    assert sorted(s.kind for s in rk.LOSSES.values()) == list(range(len(rk.LOSSES)))
    assert len({s.class_name for s in rk.LOSSES.values()}) == len(rk.LOSSES)


def test_every_spec_documented():
    for spec in rk.LOSSES.values():
        assert spec.formula and spec.citation and spec.title


def test_resolve_defaults_and_order():
    spec = rk.get_spec("nce_agce")
    assert spec.resolve({"q": 2.0}) == (1.0, 4.0, 6.0, 2.0)


@pytest.mark.parametrize(
    "loss, params, exc, text",
    [
        ("gce", {"q": 0.0}, ValueError, "'q'"),
        ("gce", {"q": 1.5}, ValueError, "'q'"),
        ("aul", {"a": 1.0}, ValueError, "'a'"),
        ("mae", {"scale": -1.0}, ValueError, "'scale'"),
        ("rce", {"A": 1.0}, ValueError, "'A'"),
        ("bitemp", {"t1": 2.0}, ValueError, "'t1'"),
        ("bitemp", {"num_iters": 2.5}, ValueError, "'num_iters'"),
        ("bitemp", {"t2": float("nan")}, ValueError, "'t2'"),
        ("mae", {"q": 0.5}, TypeError, "unknown parameter"),
        ("mae", {"scale": "2"}, TypeError, "'scale'"),
        ("mae", {"scale": True}, TypeError, "'scale'"),
    ],
)
def test_resolve_rejects(loss, params, exc, text):
    with pytest.raises(exc, match=text):
        rk.get_spec(loss).resolve(params)


def test_gce_q_one_is_valid_edge():
    assert rk.get_spec("gce").resolve({"q": 1.0}) == (1.0,)


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss 'mse'"):
        rk.get_spec("mse")
