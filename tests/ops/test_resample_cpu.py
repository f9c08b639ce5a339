"""The fused CPU resampling kernel (``ops.resample_cpu``) against the torch reference of
``ops.resample``: outputs (bit for bit) and gradients (values and times, to rounding) of
``cell_pool`` and ``restore``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from serpent_ssm.ops import resample as rs
from serpent_ssm.ops import scan_cpu

from tests.helpers import assert_close
from tests.ops.test_resample import batches, peaked_batches

pytestmark = pytest.mark.skipif(
    not scan_cpu.cpu_kernel_available(), reason="no C++ compiler for the CPU kernel"
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
