import copy
import math
import pickle
import re
from pathlib import Path

import pytest

import robustkernels as rk
from robustkernels.specs import KERNEL_SLOTS, LN_1E_MINUS_4, terms_from_kernel_args

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
    # The published combinations, with the defaults of the config or class named in each citation.
    "ngce": {"scale": 1.0, "q": 0.1},
    "nmae": {"scale": 1.0},
    "nrce": {"scale": 1.0, "A": math.log(1e-4)},
    "gce_mae": {"alpha": 1.0, "beta": 1.0, "q": 0.7},
    "gce_rce": {"alpha": 1.0, "beta": 1.0, "q": 0.7, "A": math.log(1e-4)},
    "gce_nce": {"alpha": 1.0, "beta": 1.0, "q": 0.7},
    "ngce_nce": {"alpha": 1.0, "beta": 1.0, "q": 0.7},
    "ngce_mae": {"alpha": 1.0, "beta": 1.0, "q": 0.1},
    "ngce_rce": {"alpha": 1.0, "beta": 1.0, "q": 0.1, "A": math.log(1e-4)},
    "mae_rce": {"alpha": 1.0, "beta": 1.0, "A": math.log(1e-4)},
    "nfl_nce": {"alpha": 1.0, "beta": 1.0, "gamma": 0.5},
    "nfl_rce": {"alpha": 1.0, "beta": 1.0, "gamma": 0.5, "A": math.log(1e-4)},
    "nce_aul": {"alpha": 1.0, "beta": 4.0, "a": 6.3, "q": 1.5},
    "nce_ael": {"alpha": 1.0, "beta": 4.0, "a": 5.0},
    "nfl_agce": {"alpha": 1.0, "beta": 1.0, "gamma": 0.5, "a": 3.0, "q": 2.0},
    "nfl_aul": {"alpha": 1.0, "beta": 1.0, "gamma": 0.5, "a": 1.5, "q": 0.9},
    "nfl_ael": {"alpha": 1.0, "beta": 1.0, "gamma": 0.5, "a": 3.0},
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


# ---- the loss algebra ---------------------------------------------------------------------------


def test_every_loss_is_a_weighted_sum_of_primitives():
    for spec in rk.LOSSES.values():
        assert spec.terms and all(t.primitive in rk.PRIMITIVES for t in spec.terms), spec.name
        mask, slots = spec.kernel_args(spec.resolve({}))
        assert mask == sum(1 << rk.PRIMITIVES[t.primitive].bit for t in spec.terms)
        assert len(slots) == len(KERNEL_SLOTS)
        assert terms_from_kernel_args(mask, slots) == tuple(sorted(spec.bind(spec.resolve({})), key=_bit))


def _bit(term):
    return term.primitive.bit


def test_kernel_slots_carry_weights_parameters_and_the_differences_formed_in_double():
    spec = rk.get_spec("nce_aul")
    mask, slots = spec.kernel_args(spec.resolve({"alpha": 2.0, "beta": 0.5, "a": 1.0 + 1e-12, "q": 3.0}))
    named = dict(zip(KERNEL_SLOTS, slots))
    assert (named["nce_weight"], named["aul_weight"], named["aul_q"]) == (2.0, 0.5, 3.0)
    assert named["aul_a_minus_1"] == pytest.approx(1e-12, rel=1e-4)  # not 0 and not 2.2e-16 off
    assert all(v == 0.0 for k, v in named.items() if k.split("_")[0] not in ("nce", "aul"))


def test_kernel_call_args_are_kernel_args_memoised_for_plain_floats_only():
    spec = rk.get_spec("nce_agce")
    values = spec.resolve({"alpha": 2.0, "q": 1.25})
    mask, slots = spec.kernel_call_args(values)
    assert (mask, slots) == spec.kernel_args(values)
    assert all(type(v) is float for v in slots)
    assert spec.kernel_call_args(values)[1] is slots  # the same list: nothing formed again
    other = spec.kernel_call_args(spec.resolve({"alpha": 3.0, "q": 1.25}))[1]
    assert dict(zip(KERNEL_SLOTS, other))["nce_weight"] == 3.0 and slots is not other

    class Traced(float):  # stands for a symbolic float: never memoised
        pass

    traced = tuple(Traced(v) for v in values)
    assert spec.kernel_call_args(traced) == (mask, slots)
    assert spec.kernel_call_args(traced)[1] is not spec.kernel_call_args(traced)[1]
    # another spec gets its own
    combined = rk.combine({"nce": 1.0, "agce": 1.0})
    c_values = combined.resolve({})
    assert combined.kernel_call_args(c_values) == combined.kernel_args(c_values)


def test_combine_builds_a_loss_equal_to_the_published_entry():
    spec = rk.combine({"nce": 1.0, "agce": 4.0}, agce={"a": 6.0, "q": 1.5})
    assert [p.name for p in spec.params] == ["agce_a", "agce_q"]
    ours = spec.kernel_args(spec.resolve({}))
    published = rk.get_spec("nce_agce")
    assert ours == published.kernel_args(published.resolve({}))
    # missing parameters take the primitive's defaults; a call may override them by name
    assert rk.combine({"gce": 1.0}).resolve({}) == (rk.PRIMITIVES["gce"].params[0].default,)
    assert spec.resolve({"agce_q": 2.0}) == (6.0, 2.0)


def test_combined_specs_pickle_and_copy():
    spec = rk.combine({"nfl": 1.0, "mae": 0.5}, nfl={"gamma": 2.0})
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert copy.deepcopy(rk.RobustLoss(spec)).spec == spec


@pytest.mark.parametrize(
    "weights, params, exc, text",
    [
        ({}, {}, ValueError, "non-empty"),
        ({"mse": 1.0}, {}, ValueError, "unknown primitive.*'mse'"),
        ({"nce": float("nan")}, {}, ValueError, r"weights\['nce'\]"),
        ({"nce": "1"}, {}, ValueError, r"weights\['nce'\]"),
        ({"nce": 1.0}, {"nce": {"q": 1.0}}, TypeError, "nce takes no parameters"),
        ({"agce": 1.0}, {"agce": {"b": 1.0}}, TypeError, "unknown parameter.*b of agce"),
        ({"agce": 1.0}, {"gce": {"q": 0.5}}, TypeError, "gce, which is not in weights"),
        ({"agce": 1.0}, {"agce": {"a": -1.0}}, ValueError, "'a'"),
        ({"bitemp": 1.0, "ce": 1.0}, {}, ValueError, "bitemp"),
    ],
)
def test_combine_rejects(weights, params, exc, text):
    with pytest.raises(exc, match=text):
        rk.combine(weights, **params)


def test_combination_names_live_in_the_spec_only():
    """A combination is one entry in specs.py: its name appears nowhere else in the package or
    the C++ sources, except in files whose first line says they are generated."""
    combos = [s.name for s in rk.LOSSES.values() if len(s.terms) > 1]
    pattern = re.compile(r"\b(" + "|".join(combos) + r")\b")
    root = Path(rk.__file__).resolve().parents[1]
    hits = []
    for folder in ("robustkernels", "csrc"):
        for path in sorted((root / folder).rglob("*")):
            if path.suffix not in (".py", ".h", ".cpp", ".cu", ".cuh") or path.name == "specs.py":
                continue
            lines = path.read_text().splitlines()
            if lines and "Generated by" in lines[0]:
                continue
            hits += [f"{path.relative_to(root)}:{i}" for i, line in enumerate(lines, 1) if pattern.search(line)]
    assert not hits, hits
