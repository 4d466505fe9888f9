"""EpsilonScheduler: values of every mode, stepping, state_dict round trip, validation."""

import io
import math

import pytest
import torch

import robustkernels as rk
from robustkernels.schedules import MODES, EpsilonScheduler


def _trajectory(sched, steps):
    return [sched.epsilon] + [sched.step() for _ in range(steps)]


def test_linear_reaches_end_and_stays():
    sched = EpsilonScheduler(10, total_steps=4, mode="linear", start=2.0, end=0.0)
    assert _trajectory(sched, 6) == [2.0, 1.5, 1.0, 0.5, 0.0, 0.0, 0.0]
    assert sched.last_step == 6


def test_cosine_is_a_half_cosine():
    sched = EpsilonScheduler(10, total_steps=4, mode="cosine", start=3.0, end=1.0)
    expected = [1.0 + 2.0 * 0.5 * (1 + math.cos(math.pi * min(t, 4) / 4)) for t in range(6)]
    assert _trajectory(sched, 5) == pytest.approx(expected, abs=1e-15)
    assert expected[:5] == pytest.approx([3.0, 1.0 + math.sqrt(0.5) + 1.0, 2.0, 2.0 - math.sqrt(0.5), 1.0])


def test_step_decay():
    sched = EpsilonScheduler(10, total_steps=100, mode="step", start=4.0, end=1.0, step_size=2, gamma=0.5)
    assert _trajectory(sched, 5) == [4.0, 4.0, 2.5, 2.5, 1.75, 1.75]


def test_constant():
    sched = EpsilonScheduler(10, total_steps=3, mode="constant", start=0.8)
    assert _trajectory(sched, 5) == [0.8] * 6


def test_auto_start_is_eq4():
    sched = EpsilonScheduler(100, total_steps=10)
    assert sched.epsilon == rk.epsilon_for_classes(100)
    assert sched.start == rk.epsilon_for_classes(100)
    assert sched.step() == pytest.approx(0.9 * rk.epsilon_for_classes(100), rel=1e-15)


def test_increasing_schedule_is_allowed():
    """A warm-up from a small to a large bias is the same formula with end > start."""
    sched = EpsilonScheduler(10, total_steps=2, start=0.0, end=1.0)
    assert _trajectory(sched, 3) == [0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_round_trip(mode):
    """A scheduler restored from a checkpoint continues exactly where the original is."""
    original = EpsilonScheduler(50, total_steps=7, mode=mode, start=2.5, end=0.25, step_size=3, gamma=0.3)
    for _ in range(4):
        original.step()
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)  # plain Python types: checkpoints need nothing else
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored = EpsilonScheduler(10, total_steps=1, mode="constant", start=9.0)
    restored.load_state_dict(state)
    assert restored.last_step == 4
    assert restored.state_dict() == original.state_dict()
    assert _trajectory(restored, 5) == _trajectory(original, 5)


def test_value_at_does_not_change_state():
    sched = EpsilonScheduler(10, total_steps=4, start=2.0)
    assert sched.value_at(2) == 1.0
    assert sched.last_step == 0 and sched.epsilon == 2.0


def test_epsilon_is_a_python_float_accepted_by_robust_loss():
    sched = EpsilonScheduler(10, total_steps=3, mode="cosine")
    sched.step()
    assert type(sched.epsilon) is float
    logits = torch.randn(4, 10, dtype=torch.float64)
    target = torch.tensor([0, 3, 9, 1])
    got = rk.robust_loss(logits, target, "mae", epsilon=sched.epsilon, backend="torch")
    want = rk.robust_loss(logits, target, "mae", epsilon=sched.value_at(1), backend="torch")
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "exp"}, "mode"),
        ({"total_steps": 0}, "total_steps"),
        ({"total_steps": 2.0}, "total_steps"),
        ({"mode": "step"}, "step_size is required"),
        ({"mode": "step", "step_size": 0}, "step_size"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"start": "max"}, "start"),
        ({"start": float("nan")}, "start"),
        ({"end": float("inf")}, "end"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    args = {"num_classes": 10, "total_steps": 5, "start": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        EpsilonScheduler(args.pop("num_classes"), **args)


def test_load_state_dict_validates():
    sched = EpsilonScheduler(10, total_steps=5, start=1.0)
    state = sched.state_dict()
    with pytest.raises(KeyError, match="last_step"):
        sched.load_state_dict({k: v for k, v in state.items() if k != "last_step"})
    with pytest.raises(ValueError, match="last_step"):
        sched.load_state_dict({**state, "last_step": -1})
    with pytest.raises(ValueError, match="mode"):
        sched.load_state_dict({**state, "mode": "bogus"})
    assert sched.state_dict() == state  # a failed load leaves the scheduler untouched
