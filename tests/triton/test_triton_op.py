"""The torch.library ops: opcheck, torch.compile, the backward's traffic, repeated backward, the
forward-only path, availability messages, and which kernel arguments are compile-time constants."""

import inspect
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from _triton_cases import assert_rows_close, make_inputs, record_fused_launches, reference_rows
from torch.utils._python_dispatch import TorchDispatchMode

import robustkernels as rk
from robustkernels.specs import KERNEL_SLOTS
from robustkernels.triton import backend as triton_backend
from robustkernels.triton import kernels, op


def _op_args(logits, target, name, eps=0.5, eps_rows=None, reduction="mean", ignore_index=-100):
    spec = rk.LOSSES[name]
    terms, slots = spec.kernel_args(spec.resolve({}))
    return (logits, target, eps_rows, None, eps, terms, [float(v) for v in slots], ignore_index, 0.0, reduction, True)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck_with_grad(reduction):
    logits, target = make_inputs(4, 9, torch.float32)
    target[1] = -100
    eps_rows = torch.rand(4, dtype=torch.float64, requires_grad=True)
    for name, eps_arg in (("nce_agce", None), ("bitemp", eps_rows)):
        args = _op_args(logits, target, name, eps_rows=eps_arg, reduction=reduction)
        torch.library.opcheck(op.fused_loss, args)


def test_opcheck_forward_only():
    logits, target = make_inputs(4, 9, torch.bfloat16)
    args = _op_args(logits.detach(), target, "focal", reduction="sum")[:-1]
    torch.library.opcheck(op.fused_loss, (*args, False))


def test_torch_compile_fullgraph():
    """fullgraph=True: no graph break from the backend (aot_eager keeps CPU CI fast; on a GPU the
    ops are triton_ops that Inductor sees through)."""
    torch._dynamo.reset()
    linear = torch.nn.Linear(6, 11)
    x = torch.randn(8, 6)
    target = torch.randint(0, 11, (8,))
    spec = rk.LOSSES["gce"]

    def step(x, target):
        logits = linear(x)
        return triton_backend.robust_loss(logits, target, spec, spec.resolve({"q": 0.48}), 1.3, "mean", -100)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(x, target)
    loss.backward()
    grads = [p.grad.clone() for p in linear.parameters()]
    linear.zero_grad()
    eager = step(x, target)
    eager.backward()
    torch.testing.assert_close(loss, eager)
    for got, want in zip(grads, [p.grad for p in linear.parameters()]):
        torch.testing.assert_close(got, want)


class _RecordOps(TorchDispatchMode):
    """Records (op name, output shape, output storage pointer) of every aten op."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.paused = False  # inside a kernel launch: the interpreter copies its arguments around

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = out if isinstance(out, torch.Tensor) else None
        if first is not None and not self.paused:
            self.calls.append((str(func), tuple(first.shape), first.untyped_storage().data_ptr()))
        return out


_GRAD_ARG = list(inspect.signature(kernels.fused_loss_kernel.fn).parameters).index("grad_ptr")


def _record_gradient_outputs(monkeypatch) -> list:
    """Patch the launcher so that each forward-kernel launch appends ``(HAS_GRAD, the gradient
    argument's shape and data pointer, a copy of what the kernel wrote there)`` to the returned
    list. No reference to the buffer is kept: autograd hands a gradient over as ``.grad`` without a
    copy only when nothing else holds it."""

    def record(args, kwargs):
        grad = args[_GRAD_ARG]
        return kwargs["HAS_GRAD"], (grad.shape, grad.data_ptr()), grad.clone()

    return record_fused_launches(monkeypatch, record)


def test_mean_backward_is_one_read_one_write(monkeypatch):
    """loss.backward() on a mean loss: the gradient the forward kernel wrote becomes logits.grad as
    is (same storage, no copy: no aten op of the backward produces an [N, K] tensor in other
    storage, nor writes into it in place), and the rescale kernel (grad_output == 1) leaves it alone."""
    forwards = _record_gradient_outputs(monkeypatch)
    launches = []
    real_rescale = op._rescale_in_place
    recorder = _RecordOps()

    def recording_rescale(grad, grad_output):
        launches.append(grad.data_ptr())
        recorder.paused = True
        try:
            return real_rescale(grad, grad_output)
        finally:
            recorder.paused = False

    monkeypatch.setattr(op, "_rescale_in_place", recording_rescale)
    logits, target = make_inputs(6, 20, torch.bfloat16)
    loss = rk.robust_loss(logits, target, "nce_mae", epsilon=1.0, backend="triton")
    with recorder:
        loss.backward()
    ((has_grad, (_, ptr), written),) = forwards
    assert has_grad
    assert launches == [ptr]
    assert logits.grad.data_ptr() == ptr, "the forward buffer must become .grad without a copy"
    assert torch.equal(logits.grad, written), "grad_output == 1 must leave the buffer untouched"
    copies = [c for c in recorder.calls if c[1] == (6, 20) and c[2] != ptr]
    writes = [c for c in recorder.calls if c[2] == ptr and c[0].split(".")[1].endswith("_") and "set_" not in c[0]]
    assert not copies and not writes, f"backward moved [N, K] data outside the rescale kernel: {copies} {writes}"


def test_backward_scaling_and_retain_graph():
    logits, target = make_inputs(5, 13, torch.float32)
    ref_rows, ref_grad = reference_rows(logits, target, "agce", rk.LOSSES["agce"].defaults, 0.7)
    loss = rk.robust_loss(logits, target, "agce", epsilon=0.7, reduction="sum", backend="triton")
    for scale in (1.0, 3.0, -0.5, 1.0):
        logits.grad = None
        loss.backward(torch.tensor(scale), retain_graph=True)
        assert_rows_close(logits.grad, scale * ref_grad, 2e-5, f"scale {scale}")
    rows = rk.robust_loss(logits, target, "agce", epsilon=0.7, reduction="none", backend="triton")
    for seed in range(3):
        upstream = torch.randn(5, generator=torch.Generator().manual_seed(seed))
        logits.grad = None
        rows.backward(upstream, retain_graph=True)
        assert_rows_close(logits.grad, upstream.double()[:, None] * ref_grad, 2e-5, f"rows {seed}")


def test_gradient_returned_earlier_is_not_modified_by_a_later_backward():
    logits, target = make_inputs(3, 7, torch.float32)
    hooked = []
    z = logits * 1.0  # a non-leaf, so the hook sees the tensor the backward returns
    z.register_hook(lambda g: hooked.append(g))
    loss = rk.robust_loss(z, target, "gce", backend="triton")
    loss.backward(torch.tensor(2.0), retain_graph=True)
    first = hooked[0].clone()
    loss.backward(torch.tensor(5.0))
    assert torch.equal(hooked[0], first)
    torch.testing.assert_close(hooked[1], first * 2.5)


def test_forward_only_path_allocates_no_gradient(monkeypatch):
    forwards = _record_gradient_outputs(monkeypatch)
    logits, target = make_inputs(4, 30, torch.float32)
    with torch.no_grad():
        a = rk.robust_loss(logits, target, "nfl", backend="triton")
    b = rk.robust_loss(logits.detach(), target, "nfl", backend="triton")
    c = rk.robust_loss(logits, target, "nfl", backend="triton")
    # Without a gradient the kernel's gradient pointer is the read-only logits (never written).
    calls = [(has_grad, ptr != logits.data_ptr() and shape == (4, 30)) for has_grad, (shape, ptr), _ in forwards]
    assert calls == [(False, False), (False, False), (True, True)]
    assert not a.requires_grad and not b.requires_grad and c.requires_grad
    assert torch.equal(a, b) and torch.equal(a, c.detach())


def test_hyper_parameters_and_eps_are_runtime_arguments():
    """Only the term mask, static feature flags and tile shapes are compile-time constants: a new
    weight, q, gamma, t2, num_iters, eps, label smoothing or gradient scale reuses the compiled
    kernel, and every slot of the table is a kernel argument of its own name."""
    fn = kernels.fused_loss_kernel.fn
    constexprs = {name for name, p in inspect.signature(fn).parameters.items() if "constexpr" in str(p.annotation)}
    assert constexprs == {
        "TERMS",
        "LABEL_ONLY",
        "FLOAT_TARGET",
        "HAS_WEIGHT",
        "EPS_PER_ROW",
        "HAS_GRAD",
        "HAS_INV_COUNT",
        "FP64",
        "ROWS",
        "BLOCK_K",
        "SINGLE_PASS",
    }
    runtime = {"eps_scalar", "target_scale", "uniform_share", "grad_scale", *KERNEL_SLOTS}
    assert runtime <= set(inspect.signature(fn).parameters)


def test_every_spec_parameter_reaches_the_kernel():
    """Each term's weight and parameters land in the kernel argument of its slot's name, integers as
    ints (a loop count) and everything else as floats (one compiled signature whatever the value)."""
    specs = [*rk.LOSSES.values(), rk.combine({"nfl": 1.0, "ngce": 0.5, "nce": 0.3, "agce": 0.2})]
    for spec in specs:
        values = [1.0 + i if p.integer else 0.25 + i for i, p in enumerate(spec.params)]
        terms, slots = spec.kernel_args(values)
        named = op._slot_kwargs(slots)
        assert list(named) == list(KERNEL_SLOTS)
        for term in spec.bind(values):
            prim = term.primitive.name
            assert named[f"{prim}_weight"] == term.weight, (spec.name, prim)
            for p in term.primitive.params:
                got = named[f"{prim}_{p.name}"]
                assert got == term.params[p.name] and isinstance(got, int) == p.integer, (spec.name, prim, p.name)
        assert all(type(v) is float for k, v in named.items() if k not in op._INT_SLOTS)


def test_op_rejects_a_mask_or_slot_table_the_kernel_cannot_run():
    logits, target = make_inputs(2, 5, torch.float32)
    terms, slots = rk.LOSSES["nce_agce"].kernel_args(rk.LOSSES["nce_agce"].resolve({}))
    bitemp = 1 << rk.PRIMITIVES["bitemp"].bit
    cases = [
        (terms, slots[:-1], "params must hold the 30 values"),
        (terms | 1 << len(rk.PRIMITIVES), slots, "terms=0x"),
        (0, slots, "terms=0x0 must be a non-empty mask"),
        (bitemp | 1, slots, "bitemp has its own softmax"),
    ]
    for bad_terms, bad_slots, message in cases:
        for compute_grad in (False, True):
            with pytest.raises(ValueError, match=message):
                slot_values = [float(v) for v in bad_slots]
                op.fused_loss(logits, target, None, None, 0.0, bad_terms, slot_values, -100, 0.0, "mean", compute_grad)


def test_unavailable_reasons():
    assert triton_backend.unavailable_reason(torch.device("cpu")) is None  # interpreter (conftest)
    assert "cuda" in triton_backend.unavailable_reason(torch.device("meta")).lower()
    assert rk.backends.unavailable_reason("triton", torch.device("cpu")) is None
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = textwrap.dedent(
        """
        import torch
        from robustkernels.triton import backend
        print(backend.unavailable_reason(torch.device("cpu")))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "TRITON_INTERPRET=1" in res.stdout and "CUDA" in res.stdout


def test_through_public_api_matches_reference():
    logits, target = make_inputs(6, 100, torch.float32)
    loss = rk.robust_loss(logits, target, "nf_mae", epsilon="auto", backend="triton", gamma=1.5, beta=0.3)
    loss.backward()
    z = logits.detach().double().requires_grad_()
    ref = rk.robust_loss(z, target, "nf_mae", epsilon="auto", backend="torch", gamma=1.5, beta=0.3)
    ref.backward()
    assert_rows_close(loss.detach().reshape(1), ref.detach().reshape(1), 2e-5, "loss")
    assert_rows_close(logits.grad, z.grad, 2e-5, "grad")


def test_interpreter_works_when_triton_was_imported_first():
    """torchvision (and others) import Triton before a test can set TRITON_INTERPRET=1; only the
    kernels' own import has to follow the variable."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = textwrap.dedent(
        """
        import os
        import triton, triton.language  # compiled-mode standard library
        os.environ["TRITON_INTERPRET"] = "1"
        import torch, robustkernels as rk
        x = torch.randn(3, 40, requires_grad=True)
        y = torch.tensor([0, 5, 39])
        loss = rk.robust_loss(x, y, "nf_mae", backend="triton")
        loss.backward()
        ref = rk.robust_loss(x.detach(), y, "nf_mae", backend="torch")
        torch.testing.assert_close(loss.detach(), ref)
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


def test_vanishing_differences_reach_the_kernel_formed_in_double():
    """Compiled Triton receives fp32 scalars; a - 1 (aul) and 2 - t1 (bitemp) formed from the
    rounded parameters would keep only its rounding error near a = 1 and t1 = 2."""
    aul = op._slot_kwargs(rk.LOSSES["aul"].kernel_args([1.0 + 1e-7, 3.0])[1])
    assert aul["aul_a_minus_1"] == (1.0 + 1e-7) - 1.0
    bitemp = op._slot_kwargs(rk.LOSSES["bitemp"].kernel_args([2.0 - 1e-7, 1.2, 5])[1])
    assert bitemp["bitemp_two_minus_t1"] == 2.0 - (2.0 - 1e-7)
