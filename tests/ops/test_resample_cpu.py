"""The fused CPU resampling kernel (``ops.resample.cpu``) against the torch reference
(``ops.resample.torch``): outputs (bit for bit) and gradients (values and times, to rounding) of
``cell_pool`` and ``restore``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from serpent_ssm.ops import cpu_build
from serpent_ssm.ops import resample as rs

from tests.helpers import assert_close, right_padding_mask
from tests.ops.test_resample import batches, peaked_batches

pytestmark = pytest.mark.skipif(
    not cpu_build.cpu_kernel_available(), reason="no C++ compiler for the CPU kernel"
)


def _both(fn, leaves, seed):
    """``fn(kernel)`` for the reference and the kernel: outputs and the gradients of the leaves
    under a random cotangent."""
    results = []
    for kernel in (False, True):
        out = fn(kernel)
        cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
        grads = torch.autograd.grad(out, leaves, cot, allow_unused=True)
        results.append((out.detach(), grads))
    return results


def _pool_case(delta, mask, rate, causal, g, d, start=False):
    delta = delta.double().requires_grad_()
    x = torch.randn(*delta.shape, d, generator=g).requires_grad_()
    t_start = torch.rand(delta.shape[0], generator=g, dtype=torch.float64) if start else None

    def pool(kernel):
        t, counts = rs.intervals_to_times(delta, mask, rate, causal)
        if t_start is not None:
            t = t + t_start.unsqueeze(1)
            counts = torch.floor(t[:, -1]).long() if t.shape[1] else counts
        buffer = max(1, min(int(counts.max()) if counts.numel() else 1, 64))
        return rs.cell_pool(x, t, counts.clamp(max=buffer), buffer, mask, t_start, kernel=kernel)

    return pool, (x, delta)


def _check(results, what, rtol=1e-5, atol=1e-5):
    (ref, ref_grads), (got, got_grads) = results
    assert torch.equal(got, ref), f"{what}: the kernel's output differs from the reference's"
    for name, a, b in zip(("values", "times"), got_grads, ref_grads, strict=True):
        if b is None:
            assert a is None or not a.any(), f"{what}: gradient of the {name} where the reference has none"
        else:
            assert_close(a, b, rtol, atol, f"{what} gradient of the {name}")


@settings(max_examples=60, deadline=None)
@given(batch=batches(), d=st.integers(1, 5), start=st.booleans())
def test_cell_pool_kernel_equals_the_reference(batch, d, start):
    delta, mask, rate, causal, g = batch
    pool, leaves = _pool_case(delta, mask, rate, causal, g, d, start=start and causal)
    _check(_both(pool, leaves, 0), "cell_pool")


@settings(max_examples=40, deadline=None)
@given(batch=peaked_batches(), d=st.integers(1, 3))
def test_cell_pool_kernel_with_long_zero_and_on_grid_intervals(batch, d):
    """One element spanning many cells, zero intervals, times exactly on grid points (the ties of
    torch.minimum/maximum, where autograd splits the gradient)."""
    delta, mask, rate, causal, g = batch
    pool, leaves = _pool_case(delta, mask, rate, causal, g, d)
    _check(_both(pool, leaves, 1), "cell_pool", rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("how", ["hold", "interp"])
@settings(max_examples=40, deadline=None)
@given(batch=batches(), d=st.integers(1, 5))
def test_restore_kernel_equals_the_reference(how, batch, d):
    delta, mask, rate, causal, g = batch
    delta = delta.double().requires_grad_()
    buffer = rs.compressed_length(rate, delta.shape[1], causal, 2 * rate)
    y = torch.randn(delta.shape[0], buffer, d, generator=g).requires_grad_()

    def restore(kernel):
        t, counts = rs.intervals_to_times(delta, mask, rate, causal)
        counts = counts.clamp(max=buffer)
        index, valid = rs.select_grid(t.detach(), counts, mask.sum(1), buffer)
        return rs.restore(y, t, counts, index, valid, mask, how, kernel=kernel)

    _check(_both(restore, (y, delta), 2), f"restore {how}")


def test_interp_ties_split_the_gradient_as_autograd_does():
    """t exactly at 1 and at the last grid point: torch.maximum/minimum give half the gradient."""
    t = torch.tensor([[0.5, 1.0, 1.5, 3.0, 3.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[[1.0], [3.0], [7.0]]], requires_grad=True)
    counts = torch.tensor([3])
    index, valid = rs.select_grid(t.detach(), counts, torch.tensor([5]), 3)
    grads = []
    for kernel in (False, True):
        out = rs.restore(y, t, counts, index, valid, None, "interp", kernel=kernel)
        grads.append(torch.autograd.grad(out.sum(), (y, t)))
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.equal(grads[0][1], grads[1][1])
    assert grads[1][1][0].tolist() == [0.0, 1.0, 2.0, 0.0, 0.0]  # (3 − 1)·½ at the tie at 1


def test_the_kernel_is_the_default_for_float32_on_the_cpu():
    t, counts = rs.intervals_to_times(torch.rand(2, 30), None, 0.5, False)
    x = torch.randn(2, 30, 4, requires_grad=True)
    assert type(rs.cell_pool(x, t, counts, 15, None).grad_fn).__name__ == "_CellPoolBackward"
    index, valid = rs.select_grid(t, counts, torch.tensor([30, 30]), 15)
    y = torch.randn(2, 15, 4, requires_grad=True)
    assert type(rs.restore(y, t, counts, index, valid, None, "interp").grad_fn).__name__ == "_RestoreBackward"
    # float64 values, and scatter, take the torch ops
    assert type(rs.cell_pool(x.double(), t, counts, 15, None).grad_fn).__name__ != "_CellPoolBackward"
    assert (
        type(rs.restore(y, t, counts, index, valid, None, "scatter").grad_fn).__name__
        == "ScatterAddBackward0"
    )


def test_asking_for_the_kernel_where_it_cannot_run():
    t, counts = rs.intervals_to_times(torch.rand(2, 30), None, 0.5, False)
    with pytest.raises(
        ValueError,
        match=r"^kernel: cell_pool in the CPU kernel needs float32 values and float64 times on the "
        r"CPU and a built kernel, got torch\.float64 and torch\.float64 on cpu$",
    ):
        rs.cell_pool(torch.randn(2, 30, 4, dtype=torch.float64), t, counts, 15, None, kernel=True)
    with pytest.raises(
        ValueError, match=r"^kernel: cell_pool in the CPU kernel needs counts <= buffer \(10\), got 15$"
    ):
        rs.cell_pool(torch.randn(2, 30, 4), t, counts, 10, None, kernel=True)
    start = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(
        ValueError, match=r"^kernel: cell_pool in the CPU kernel needs t_start without gradient, got one"
    ):
        rs.cell_pool(torch.randn(2, 30, 4), t, counts, 15, None, start, kernel=True)
    # where it cannot run, the default takes the torch ops
    want = rs.cell_pool(torch.ones(2, 30, 1), t, counts, 10, None, kernel=False)
    assert torch.equal(rs.cell_pool(torch.ones(2, 30, 1), t, counts, 10, None), want)


@pytest.mark.parametrize("kernel", [False, True])
@pytest.mark.parametrize("fill", [math.nan, math.inf, 1e30])
def test_padding_never_reaches_an_output_or_a_gradient(kernel, fill):
    """NaN, Inf or 1e30 in the padded values and times: the outputs and every gradient at real
    positions are those of zero padding, in the kernel and in the reference."""
    g = torch.Generator().manual_seed(5)
    mask = right_padding_mask([12, 7, 1, 0, 9], 12)
    delta = torch.rand(5, 12, generator=g, dtype=torch.float64) * 1.2
    x = torch.randn(5, 12, 3, generator=g)
    results = []
    for pad in (0.0, fill):
        t, counts = rs.intervals_to_times(delta, mask, 0.5, False)
        t = torch.where(mask, t, pad).requires_grad_()
        xs = x.masked_fill(~mask.unsqueeze(-1), pad).requires_grad_()
        buffer = int(counts.max())
        pooled = rs.cell_pool(xs, t, counts, buffer, mask, kernel=kernel)
        index, valid = rs.select_grid(t.detach().nan_to_num(), counts, mask.sum(1), buffer)
        out = rs.restore(pooled * 2.0, t, counts, index, valid, mask, "interp", kernel=kernel)
        gx, gt = torch.autograd.grad(out.square().sum() + pooled.sum(), (xs, t))
        results.append(
            [v.masked_fill(~mask.unsqueeze(-1), 0) for v in (out, gx)] + [gt.masked_fill(~mask, 0)]
        )
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_empty_shapes_through_the_kernel():
    t = torch.zeros(3, 5, dtype=torch.float64)
    counts = torch.zeros(3, dtype=torch.long)
    assert rs.cell_pool(torch.randn(3, 5, 2), t, counts, 0, None, kernel=True).shape == (3, 0, 2)
    assert not rs.cell_pool(torch.randn(3, 0, 2), t[:, :0], counts, 4, None, kernel=True).any()
    assert rs.cell_pool(torch.randn(0, 5, 2), t[:0], counts[:0], 4, None, kernel=True).shape == (0, 4, 2)
    assert not rs.restore(torch.randn(3, 0, 2), t, counts, None, None, None, "interp", kernel=True).any()


@pytest.mark.parametrize("how", ["hold", "interp"])
def test_kernel_with_more_rows_than_threads_counts_past_the_buffer_and_strided_inputs(how):
    g = torch.Generator().manual_seed(6)
    mask = right_padding_mask([40, 3, 17, 40, 0, 29, 1], 40)
    delta = (torch.rand(7, 40, generator=g, dtype=torch.float64) * 1.5).requires_grad_()
    y = torch.randn(7, 6, 9, generator=g)[:, :, ::2].requires_grad_()  # strided
    results = []
    for kernel in (False, True):
        t, counts = rs.intervals_to_times(delta, mask, 0.7, True)  # counts reach 40 > 6
        out = rs.restore(y, t, counts, None, None, mask, how, kernel=kernel)
        grads = torch.autograd.grad(out.square().sum(), (y, delta), allow_unused=True)
        results.append(
            [
                out,
                *(torch.zeros_like(v) if gr is None else gr for gr, v in zip(grads, (y, delta), strict=True)),
            ]
        )
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1:], results[1][1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    t, counts = rs.intervals_to_times(delta.detach(), mask, 0.7, True)  # times without gradient
    out = rs.restore(y, t, counts, None, None, mask, how, kernel=True)
    assert torch.equal(out, rs.restore(y, t, counts, None, None, mask, how, kernel=False))


@settings(max_examples=25, deadline=None)
@given(batch=peaked_batches(), d=st.integers(1, 3))
def test_cell_pool_kernel_with_a_start_time_and_ties(batch, d):
    delta, mask, rate, _, g = batch
    pool, leaves = _pool_case(delta, mask, rate, True, g, d, start=True)
    _check(_both(pool, leaves, 3), "cell_pool", rtol=1e-4, atol=1e-4)


def test_inputs_the_kernel_does_not_take_go_to_the_reference():
    """Negative times, broadcast shapes: the reference runs (kernel=None), or a clear error."""
    t = torch.tensor([[0.5, 1.5, 2.5]], dtype=torch.float64)
    x = torch.randn(1, 3, 2)
    start = torch.tensor([-0.5], dtype=torch.float64)
    want = rs.cell_pool(x, t, torch.tensor([2]), 2, None, start, kernel=False)
    assert torch.equal(rs.cell_pool(x, t, torch.tensor([2]), 2, None, start), want)
    with pytest.raises(
        ValueError, match=r"^kernel: cell_pool in the CPU kernel needs times >= 0, got a negative one$"
    ):
        rs.cell_pool(x, t, torch.tensor([2]), 2, None, start, kernel=True)
    y = torch.randn(2, 3, 2)
    t2 = torch.rand(2, 4, dtype=torch.float64).cumsum(1)
    counts = torch.tensor([2])  # broadcast over the rows
    want = rs.restore(y, t2, counts, None, None, None, "hold", kernel=False)
    assert torch.equal(rs.restore(y, t2, counts, None, None, None, "hold"), want)
    with pytest.raises(
        ValueError,
        match=r"^kernel: restore in the CPU kernel needs t \(B, L\), values \(B, L_c, D\), counts \(B,\), "
        r"mask \(B, L\), t_start \(B,\), got t \(2, 4\), values \(2, 3, 2\), counts \(1,\)$",
    ):
        rs.restore(y, t2, counts, None, None, None, "hold", kernel=True)
