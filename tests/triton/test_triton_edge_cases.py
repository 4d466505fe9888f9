"""Input policy where it meets the Triton kernels' own structure: column tiles (a first tile of
only -inf, the nce normaliser, confident rows, +inf), bf16 NaN and huge bf16 logits, row strides
read in place, int32 labels, fp64 math and an empty batch. The policy every backend shares is
tests/test_behaviour.py.

Everything is compared with the float64 reference on the same quantised inputs.
"""

import math

import pytest
import torch
from _triton_cases import assert_rows_close, fp32_grad_rtol, make_inputs, record_fused_launches, reference_rows

import robustkernels as rk
from robustkernels.triton import backend as triton_backend
from robustkernels.triton import kernels, op

LOSS_NAMES = list(rk.LOSSES)


def _backend_rows(logits, target, name, epsilon=0.0, reduction="none", ignore_index=-100, **params):
    """The backend function itself (no CPU label check), as the kernels see the input."""
    spec = rk.LOSSES[name]
    return triton_backend.robust_loss(logits, target, spec, spec.resolve(params), epsilon, reduction, ignore_index)


def _tiled(monkeypatch, max_single=16):
    monkeypatch.setattr(op, "max_single_pass_override", max_single)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_tiled_row_whose_first_tile_is_all_minus_inf(name, monkeypatch):
    """The running max must not be clamped: with tiles of 8, a first tile of -inf and the rest
    around -120 (exp underflows against a max pinned at 0) must still give the reference."""
    _tiled(monkeypatch)
    logits, target = make_inputs(3, 37, torch.float32, scale=1.0)
    with torch.no_grad():
        logits -= 120.0
        logits[:, :8] = float("-inf")
    target[:] = torch.tensor([8, 20, 36])
    rows = rk.robust_loss(logits, target, name, epsilon=0.5, reduction="none", backend="triton")
    rows.sum().backward()
    ref_rows, ref_grad = reference_rows(logits, target, name, rk.LOSSES[name].defaults, 0.5)
    assert torch.isfinite(ref_rows).all()
    assert_rows_close(rows, ref_rows, 2e-5, f"{name} loss")
    assert_rows_close(logits.grad, ref_grad, fp32_grad_rtol(name, rk.LOSSES[name].defaults), f"{name} grad")


@pytest.mark.parametrize("name", ["nce", "nce_mae", "nce_rce", "nce_agce"])
@pytest.mark.parametrize("max_single", [None, 16])
def test_nce_normaliser_at_large_logit_offsets(name, max_single, monkeypatch):
    """sum_k log p_k must be summed against the max, not as raw logits minus K m: at logits around
    3e4 the raw sum cancels to 2.5e-4 relative error in fp32 (K = 4000, measured)."""
    if max_single:
        _tiled(monkeypatch, max_single)
    logits, target = make_inputs(3, 37, torch.float32, scale=1.0)
    with torch.no_grad():
        logits += 3e4
    rows = rk.robust_loss(logits, target, name, epsilon=1.0, reduction="none", backend="triton")
    rows.sum().backward()
    ref_rows, ref_grad = reference_rows(logits, target, name, rk.LOSSES[name].defaults, 1.0)
    assert_rows_close(rows, ref_rows, 2e-6, f"{name} loss")
    assert_rows_close(logits.grad, ref_grad, 2e-5, f"{name} grad")


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("max_single", [None, 16])
def test_confident_rows_keep_one_minus_p_y(name, max_single, monkeypatch):
    """The label holds the max and 1 - p_y runs from 1e-2 down to 1e-9: log s must be log1p of the
    other classes' share, as the native kernels form it. log(1 + s) kept only ulp(1) / s of it
    (9e-4 relative error in MAE's loss, measured at 1 - p_y = 1e-4, and exactly 0 below 6e-8)."""
    if max_single:
        _tiled(monkeypatch, max_single)
    logits, target = make_inputs(8, 37, torch.float32, scale=1.0)
    with torch.no_grad():
        margin = torch.linspace(6.0, 22.0, 8)
        logits[torch.arange(8), target] = logits.detach().amax(dim=1) + margin
    rows = rk.robust_loss(logits, target, name, epsilon=0.25, reduction="none", backend="triton")
    rows.sum().backward()
    ref_rows, ref_grad = reference_rows(logits, target, name, rk.LOSSES[name].defaults, 0.25)
    # bitemp's loss, -log_t1(p_y) - (1 - sum_k p_k^(2 - t1)) / (2 - t1), is a difference of O(1)
    # terms whatever the path: 0.5e-4 to 1.1e-4 relative at 1 - p_y < 1e-6 in the triton, native
    # and fp32 torch backends alike (measured), an fp32 floor of the formula, not of the partition.
    loss_rtol = 2e-4 if name == "bitemp" else 2e-5
    assert_rows_close(rows, ref_rows, loss_rtol, f"{name} loss")
    assert_rows_close(logits.grad, ref_grad, 2e-5, f"{name} grad")


@pytest.mark.parametrize("name", ["ce", "nce", "nfl", "gce", "bitemp"])
@pytest.mark.parametrize("max_single", [None, 16])
def test_plus_inf_logit_gives_nan_row(name, max_single, monkeypatch):
    """A +inf logit (or +inf bias) makes log_softmax NaN: a NaN row by policy, in every path and
    dtype (not whatever inf - inf and the GPU's NaN-dropping max would make of it)."""
    if max_single:
        _tiled(monkeypatch, max_single)
    for dtype in (torch.float32, torch.bfloat16):
        logits, target = make_inputs(3, 37, dtype)
        with torch.no_grad():
            logits[0, 30] = float("inf")
        rows = rk.robust_loss(logits, target, name, epsilon=0.5, reduction="none", backend="triton")
        (rows * torch.tensor([1.0, 2.0, 0.5])).sum().backward()  # non-unit upstream: the rescale kernel
        assert torch.isnan(rows[0]) and torch.isfinite(rows[1:]).all(), (dtype, rows)
        assert torch.isnan(logits.grad[0]).all() and torch.isfinite(logits.grad[1:].float()).all(), dtype


def test_bf16_output_keeps_the_gpus_canonical_nan():
    """0x7FFFFFFF (what NVIDIA fp32 arithmetic returns for NaN) plus the rounding increment
    overflows into the sign bit: without the NaN pass-through it would be stored as -0.0."""
    import triton
    import triton.language as tl

    @triton.jit
    def convert(x_ptr, out_ptr, n: tl.constexpr):
        offs = tl.arange(0, n)
        tl.store(out_ptr + offs, kernels.to_output(tl.load(x_ptr + offs), tl.bfloat16))

    bits = torch.tensor([0x7FFFFFFF, 0x7FC00000, -0x400000, 0x7F800000, 0x3F800000, 0x3F808000, 0x3F818000, 0])
    x = bits.to(torch.int32).view(torch.float32)
    out = torch.empty(8, dtype=torch.bfloat16)
    convert[(1,)](x, out, 8)
    assert torch.isnan(out[:3]).all()
    # inf, 1.0, a tie rounding to even (down), a tie rounding to even (up), 0
    expected = torch.tensor([float("inf"), 1.0, 1.0, 1.0 + 2**-6, 0.0], dtype=torch.bfloat16)
    assert torch.equal(out[3:], expected)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_bf16_logits_of_magnitude_1e4(name):
    gen = torch.Generator().manual_seed(3)
    logits = (1e4 * torch.randn(4, 50, generator=gen)).to(torch.bfloat16).requires_grad_()
    target = torch.randint(0, 50, (4,), generator=gen)
    target[0] = int(logits[0].float().argmax())  # one row with p_y = 1 exactly
    rows = rk.robust_loss(logits, target, name, epsilon=2.0, reduction="none", backend="triton")
    rows.sum().backward()
    ref_rows, ref_grad = reference_rows(logits, target, name, rk.LOSSES[name].defaults, 2.0)
    assert torch.isfinite(rows).all() and torch.isfinite(logits.grad.float()).all()
    # atol: where p is one-hot, bitemp's -log_t(p_y) - (1 - sum p^(2-t1)) / (2-t1) is 0 up to the
    # rounding of O(1) terms (the float64 reference gives 5.6e-16, fp32 gives 0).
    assert_rows_close(rows, ref_rows, 2e-5, f"{name} loss", atol=1e-6)
    # Rows whose reference gradient is exactly 0 (p one-hot) must be exactly 0 too.
    zero_rows = (ref_grad == 0).all(dim=1)
    assert (logits.grad[zero_rows] == 0).all()
    # bitemp's implicit gradient w_j - s_j sum_k w_k subtracts O(1) terms when p is one-hot: fp32
    # leaves 2^-24 (the pure-PyTorch reference run in fp32 gives the same 5.96e-8), hence an
    # absolute floor of 4 ulp(1) there. Every other gradient is A (p - e_y) with p_y - 1 from expm1.
    atol = 2.4e-7 if name == "bitemp" else 1e-30
    if (~zero_rows).any():
        assert_rows_close(logits.grad[~zero_rows], ref_grad[~zero_rows], 8e-3, f"{name} grad", atol=atol)


def test_row_stride_is_read_in_place_and_column_stride_is_copied(monkeypatch):
    seen = record_fused_launches(monkeypatch, lambda args, kwargs: (args[0].data_ptr(), args[1]))
    base = torch.randn(5, 40)
    target = torch.randint(0, 33, (5,))
    for logits in (base[:, 3:36], base[:, :33].t().contiguous().t()):  # row stride 40; column stride 5
        x = logits.detach().requires_grad_()  # keeps the strides
        rows = rk.robust_loss(x, target, "sce", reduction="none", backend="triton")
        rows.sum().backward()
        ref_rows, ref_grad = reference_rows(logits, target, "sce", rk.LOSSES["sce"].defaults, 0.0)
        assert_rows_close(rows, ref_rows, 2e-5, "loss")
        assert_rows_close(x.grad, ref_grad, 2e-5, "grad")
    assert seen[0] == (base[:, 3:36].data_ptr(), 40), "a row-strided input must be read in place"
    assert seen[1][1] == 33, "a column-strided input is copied to contiguous rows"


def test_int32_and_misaligned_labels():
    logits, target = make_inputs(6, 17, torch.float32)
    padded = torch.cat([torch.tensor([0]), target])  # target view at an 8-byte (not 16-byte) offset
    for labels in (target.int(), padded[1:], torch.stack([target, target], 1)[:, 0]):
        x = logits.detach().clone().requires_grad_()
        rows = rk.robust_loss(x, labels, "nfl", reduction="none", backend="triton")
        rows.sum().backward()
        ref_rows, ref_grad = reference_rows(logits, target, "nfl", rk.LOSSES["nfl"].defaults, 0.0)
        assert_rows_close(rows, ref_rows, 2e-5, f"loss {labels.dtype} {labels.stride()}")
        assert_rows_close(x.grad, ref_grad, 2e-5, f"grad {labels.dtype} {labels.stride()}")


def test_fp64_is_computed_in_fp64():
    """A loss difference far below fp32 resolution survives: the math is not done in fp32."""
    logits, target = make_inputs(2, 5, torch.float64)
    bumped = logits.detach().clone()
    bumped[:, 0] += 1e-12
    a = rk.robust_loss(logits.detach(), target, "ce", reduction="none", backend="triton")
    b = rk.robust_loss(bumped, target, "ce", reduction="none", backend="triton")
    ref_a = rk.robust_loss(logits.detach(), target, "ce", reduction="none", backend="torch")
    ref_b = rk.robust_loss(bumped, target, "ce", reduction="none", backend="torch")
    assert_rows_close((b - a)[:, None], (ref_b - ref_a)[:, None], 1e-3, "fp64 difference")
    assert (b != a).all()


def test_empty_batch():
    logits = torch.zeros(0, 4, requires_grad=True)
    target = torch.zeros(0, dtype=torch.long)
    assert rk.robust_loss(logits, target, "mae", reduction="sum", backend="triton") == 0
    loss = rk.robust_loss(logits, target, "mae", backend="triton")
    loss.backward()
    assert math.isnan(loss.item()) and logits.grad.shape == (0, 4)
