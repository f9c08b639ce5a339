"""Resampling ops: every batched function equals its loop twin; exact counts; edge cases."""

from __future__ import annotations

import math
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from serpent_ssm.ops import resample as rs
from serpent_ssm.ops.resample import naive

from tests.helpers import right_padding_mask

RATES = st.sampled_from([1.0, 0.5, 0.3, 0.2, 0.25, 0.1, 0.05, 0.7, 0.01])


@st.composite
def batches(draw, max_len=64):
    """A batch of positive intervals, a right-padding mask, a rate and a mode."""
    b = draw(st.integers(1, 4))
    length = draw(st.integers(1, max_len))
    lengths = draw(st.lists(st.integers(0, length), min_size=b, max_size=b))
    rate = draw(RATES)
    causal = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    delta = 2 * rate * torch.rand(b, length, generator=g)
    mask = right_padding_mask(lengths, length)
    return delta, mask, rate, causal, g


def _pipeline(delta, mask, rate, causal):
    lengths = mask.sum(1)
    t, counts = rs.intervals_to_times(delta, mask, rate, causal)
    buffer = rs.compressed_length(rate, delta.shape[1], causal, 2 * rate)
    return t, counts.clamp(max=buffer), lengths, buffer


@given(batches())
def test_intervals_to_times_equals_loop(batch):
    delta, mask, rate, causal, _ = batch
    t, counts = rs.intervals_to_times(delta, mask, rate, causal)
    t_loop, counts_loop = naive.intervals_to_times_loop(delta, mask, rate, causal)
    torch.testing.assert_close(t, t_loop, rtol=1e-12, atol=1e-9)
    assert torch.equal(counts, counts_loop)


@given(batches(), st.integers(0, 999), st.floats(0.01, 30.0))
def test_mean_normalised_intervals_equal_loop(batch, seed, scale):
    _, mask, rate, causal, _ = batch
    s = scale * torch.randn(mask.shape, generator=torch.Generator().manual_seed(seed))
    got = torch.where(mask, rs.mean_normalised_intervals(s, rate, mask, causal).double(), 0.0)
    torch.testing.assert_close(
        got, naive.mean_normalised_intervals_loop(s, rate, mask, causal), rtol=1e-5, atol=1e-7
    )
    assert (got <= 2 * rate + 1e-6).all() and (got >= 0).all()


@given(batches(), st.integers(0, 999))
def test_mean_normalised_steps_equal_the_causal_intervals(batch, seed):
    _, _, rate, _, _ = batch
    s = 5 * torch.randn(3, 17, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    log_sum, steps = torch.full((3,), -math.inf, dtype=torch.float64), []
    for pos in range(17):
        delta, log_sum = rs.mean_normalised_step(s[:, pos], log_sum, torch.full((3,), pos + 1.0), rate)
        steps.append(delta)
    torch.testing.assert_close(torch.stack(steps, 1), rs.mean_normalised_intervals(s, rate, None, True))


def test_mean_normalised_intervals_keep_the_causal_count_whatever_the_scale():
    """Equal scores give Δ ≡ κ at any level; a sigmoid of the same scores collapses (κ·2σ(−30) ≈ 0)."""
    s = torch.full((2, 64), -30.0)
    delta = rs.mean_normalised_intervals(s, 0.25, None, True)
    assert torch.equal(delta, torch.full_like(s, 0.25))
    assert rs.intervals_to_times(delta, None, 0.25, True)[1].tolist() == [16, 16]
    assert rs.intervals_to_times(0.5 * torch.sigmoid(s), None, 0.25, True)[1].tolist() == [0, 0]


def test_mean_normalised_intervals_ignore_the_padding():
    s = torch.randn(2, 10)
    mask = right_padding_mask([10, 6], 10)
    bad = s.clone()
    bad[1, 6:] = 1e30
    for causal in (False, True):
        a = rs.mean_normalised_intervals(s, 0.3, mask, causal)
        b = rs.mean_normalised_intervals(bad, 0.3, mask, causal)
        assert torch.equal(a[mask], b[mask]) and torch.isfinite(b).all()


@given(batches())
def test_counts_are_exact(batch):
    """Non-causal: exactly ceil(κ·n) grid points; causal: floor(t_n)."""
    delta, mask, rate, causal, _ = batch
    t, counts = rs.intervals_to_times(delta, mask, rate, causal)
    for i, n in enumerate(mask.sum(1).tolist()):
        if causal:
            assert counts[i] == math.floor(float((delta[i, :n].double()).sum()))
        else:
            from fractions import Fraction

            assert counts[i] == math.ceil(Fraction(str(rate)) * n)
            if n:
                assert abs(float(t[i, n - 1]) - int(counts[i])) < 1e-9  # last element on the last grid point


def test_float32_ceil_trap():
    """0.3 × 90 is 27.000002 in float32; the count must still be 27."""
    assert torch.tensor(0.3, dtype=torch.float32) * 90 > 27
    assert rs.ceil_rate(0.3, torch.tensor([90, 91, 0, 1])).tolist() == [27, 28, 0, 1]


@given(batches())
def test_select_grid_equals_loop(batch):
    delta, mask, rate, causal, _ = batch
    t, counts, lengths, buffer = _pipeline(delta, mask, rate, causal)
    index, valid = rs.select_grid(t, counts, lengths, buffer)
    index_l, valid_l = naive.select_grid_loop(t, counts, lengths, buffer)
    assert torch.equal(valid, valid_l) and torch.equal(index, index_l)
    # valid slots are a prefix (right padding) of length counts, and the selection is monotone
    assert torch.equal(valid.sum(1), counts)
    for i in range(index.shape[0]):
        sel = index[i, valid[i]]
        assert torch.all(sel[1:] >= sel[:-1])
        if len(sel):
            assert sel.max() < lengths[i]


@given(batches(), st.integers(1, 6), st.integers(1, 5))
def test_gather_windows_equals_loop(batch, window, d):
    delta, mask, rate, causal, g = batch
    t, counts, lengths, buffer = _pipeline(delta, mask, rate, causal)
    index, valid = rs.select_grid(t, counts, lengths, buffer)
    x = torch.randn(delta.shape[0], delta.shape[1], d, generator=g)
    got = rs.gather_windows(x, t, index, valid, lengths, window, causal)
    want = naive.gather_windows_loop(x, t, index, valid, lengths, window, causal)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_window_layouts():
    assert rs.window_offsets(3, causal=True) == [-2, -1, 0]
    assert rs.window_offsets(3, causal=False) == [-1, 0, 1]
    assert rs.window_offsets(4, causal=False) == [-1, 0, 1, 2]
    assert rs.window_offsets(1, causal=False) == [0]


@pytest.mark.parametrize("how", rs.RESTORES)
@given(batch=batches(), d=st.integers(1, 4))
def test_restore_equals_loop(how, batch, d):
    delta, mask, rate, causal, g = batch
    t, counts, lengths, buffer = _pipeline(delta, mask, rate, causal)
    index, valid = rs.select_grid(t, counts, lengths, buffer)
    y = torch.randn(delta.shape[0], buffer, d, generator=g)
    got = rs.restore(y, t, counts, index, valid, mask, how)
    want = naive.restore_loop(y, t, counts, index, valid, mask, how)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_hold_never_reads_the_future():
    """Position l holds grid point floor(t_l), whose selected element is at or before l."""
    g = torch.Generator().manual_seed(0)
    delta = torch.rand(3, 50, generator=g)
    mask = right_padding_mask([50, 31, 5], 50)
    t, counts, lengths, buffer = _pipeline(delta, mask, 0.5, causal=True)
    index, valid = rs.select_grid(t, counts, lengths, buffer)
    k = torch.floor(t).long()
    for i in range(3):
        for l in range(int(lengths[i])):
            if k[i, l] >= 1:
                assert index[i, k[i, l] - 1] <= l


def test_interp_is_differentiable_in_time():
    t = torch.tensor([[0.5, 1.25, 2.0, 2.7, 3.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[[1.0], [3.0], [7.0]]])
    counts = torch.tensor([3])
    index, valid = rs.select_grid(t.detach(), counts, torch.tensor([5]), 3)
    out = rs.restore(y, t, counts, index, valid, None, "interp")
    # t=1.25 lies a quarter of the way from grid point 1 (value 1) to 2 (value 3)
    assert out[0, :, 0].tolist() == pytest.approx([1.0, 1.5, 3.0, 5.8, 7.0])
    out.sum().backward()
    assert t.grad[0, 1] == pytest.approx(2.0) and t.grad[0, 3] == pytest.approx(4.0)


def test_rbf_features():
    centers, sigma = rs.rbf_centers(5, -1.0, 3.0)
    assert centers.tolist() == [-1.0, 0.0, 1.0, 2.0, 3.0] and sigma == 1.0
    phi = rs.rbf_features(torch.tensor([0.0, 1.5], dtype=torch.float64), centers, sigma)
    assert phi.shape == (2, 5) and phi[0, 1] == 1.0
    assert phi[1, 2] == pytest.approx(math.exp(-0.125))


def test_static_buffer_sizes():
    assert rs.compressed_length(0.3, 90, causal=False, delta_max=0.6) == 27
    assert rs.compressed_length(0.3, 91, causal=False, delta_max=0.6) == 28
    assert rs.compressed_length(0.01, 10, causal=False, delta_max=0.02) == 1  # ceil gives one element
    assert rs.compressed_length(0.5, 100, causal=True, delta_max=1.0) == 100
    assert rs.compressed_length(0.3, 100, causal=True, delta_max=0.6) == 60
    assert rs.compressed_length(0.5, 0, causal=True, delta_max=1.0) == 0


def test_long_times_are_exact():
    """16K elements of Δ = 0.3: float64 times keep floor(t) exact where float32 would drift."""
    delta = torch.full((1, 16384), 0.3)
    t, counts = rs.intervals_to_times(delta, None, 0.3, causal=True)
    assert int(counts) == math.floor(16384 * float(torch.tensor(0.3)))
    assert abs(float(t[0, -1]) - 16384 * float(torch.tensor(0.3))) < 1e-6


@given(batch=batches(), d=st.integers(1, 4))
def test_cell_pool_equals_loop(batch, d):
    delta, mask, rate, causal, g = batch
    t, counts, lengths, buffer = _pipeline(delta, mask, rate, causal)
    x = torch.randn(delta.shape[0], delta.shape[1], d, generator=g)
    got = rs.cell_pool(x, t, counts, buffer, mask)
    want = naive.cell_pool_loop(x, t, counts, buffer, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_cell_pool_weights_sum_to_one_and_drop_nothing():
    """Pooling ones: every complete cell sums to 1; all time up to the last complete cell is used."""
    g = torch.Generator().manual_seed(3)
    delta = torch.rand(2, 40, generator=g) * 1.8
    mask = right_padding_mask([40, 23], 40)
    for causal in (True, False):
        t, counts, lengths, buffer = _pipeline(delta, mask, 0.9, causal)
        pooled = rs.cell_pool(torch.ones(2, 40, 1, dtype=torch.float64), t, counts, buffer, mask)[..., 0]
        for i in range(2):
            c = int(counts[i])
            torch.testing.assert_close(pooled[i, :c], torch.ones(c, dtype=torch.float64))
            assert torch.count_nonzero(pooled[i, c:]) == 0


def test_cell_pool_is_differentiable_in_time():
    t = torch.tensor([[0.4, 1.5, 2.0]], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[[1.0], [10.0], [100.0]]], dtype=torch.float64)
    out = rs.cell_pool(x, t, torch.tensor([2]), 2, None)
    # cell 1 = 0.4·1 + 0.6·10, cell 2 = 0.5·10 + 0.5·100
    assert out[0, :, 0].tolist() == pytest.approx([6.4, 55.0])
    out.sum().backward()
    assert t.grad[0, 0] == pytest.approx(1.0 - 10.0)  # moving t_0 right shifts weight from x_1 to x_0


@st.composite
def peaked_batches(draw, max_len=40):
    """Intervals of which one or two dominate (one element spans many cells), zero intervals, and
    intervals that end exactly on grid points; a right-padding mask and a mode."""
    b = draw(st.integers(1, 3))
    length = draw(st.integers(1, max_len))
    lengths = draw(st.lists(st.integers(0, length), min_size=b, max_size=b))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["peaked", "two-peaks", "zeros", "on-grid"]))
    delta = torch.rand(b, length, generator=g) * 1e-3
    peaks = torch.randint(length, (b, 2), generator=g)
    delta.scatter_(1, peaks[:, :1], draw(st.sampled_from([10.0, 1e3, 1e6])))
    if kind == "two-peaks":
        delta.scatter_(1, peaks[:, 1:], 7.3)
    elif kind == "zeros":
        delta = delta * (torch.rand(b, length, generator=g) < 0.5)
    elif kind == "on-grid":  # whole and half time units: t lands on grid points
        delta = torch.randint(0, 5, (b, length), generator=g) * 0.5
    return delta, right_padding_mask(lengths, length), draw(RATES), draw(st.booleans()), g


@settings(max_examples=40)
@given(batch=peaked_batches(), d=st.integers(1, 3))
def test_cell_pool_equals_loop_with_peaked_intervals(batch, d):
    delta, mask, rate, causal, g = batch
    t, counts = rs.intervals_to_times(delta, mask, rate, causal)
    buffer = max(1, min(int(counts.max()), 64))  # causal counts reach 10^6: the loop takes a subset
    counts = counts.clamp(max=buffer)
    x = torch.randn(delta.shape[0], delta.shape[1], d, generator=g, dtype=torch.float64)
    got = rs.cell_pool(x, t, counts, buffer, mask)
    want = naive.cell_pool_loop(x, t, counts, buffer, mask)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_cell_pool_gradients_with_a_long_interval():
    """Gradients in ``x`` and ``t`` by finite differences, with one element spanning four cells."""
    t = torch.tensor([[0.3, 0.7, 4.6, 5.2, 6.0]], dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 5, 2, dtype=torch.float64, requires_grad=True)

    def pool(x, t):
        return rs.cell_pool(x, t, torch.tensor([6]), 7, None)

    assert torch.autograd.gradcheck(pool, (x, t), eps=1e-7, atol=1e-6)


def _pool_seconds(delta, rate):
    t, counts = rs.intervals_to_times(delta, None, rate, causal=False)
    x = torch.randn(delta.shape[0], delta.shape[1], 16)
    buffer = rs.compressed_length(rate, delta.shape[1], False, 2 * rate)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        rs.cell_pool(x, t, counts, buffer, None)
        best = min(best, time.perf_counter() - start)
    return best


def test_cell_pool_cost_does_not_depend_on_the_intervals():
    """One dominant interval (one element spanning most of the cells) costs about what random
    intervals cost: the pooling is linear in L whatever the intervals (it was quadratic)."""
    g = torch.Generator().manual_seed(0)
    random = torch.rand(2, 4096, generator=g)
    peaked = torch.full((2, 4096), 1e-4)
    peaked[:, 100] = 1e4
    slow, fast = _pool_seconds(peaked, 0.5), _pool_seconds(random, 0.5)
    assert slow < 5 * fast + 0.05, f"peaked {slow:.3f} s against random {fast:.3f} s"


@settings(max_examples=30)
@given(batch=batches(max_len=24), d=st.integers(1, 3), window=st.integers(1, 4), data=st.data())
def test_padding_contents_never_matter(batch, d, window, data):
    """NaN, ±Inf or 1e30 at padded positions of ``delta``, ``x`` and at invalid slots of ``y``:
    every op returns what it returns with zeros there, bit for bit."""
    delta, mask, rate, causal, g = batch
    fill = data.draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e30]))
    pad = ~mask
    t, counts = rs.intervals_to_times(delta.masked_fill(pad, 0.0), mask, rate, causal)
    t2, counts2 = rs.intervals_to_times(delta.masked_fill(pad, fill), mask, rate, causal)
    assert torch.equal(t2, t) and torch.equal(counts2, counts)
    buffer = rs.compressed_length(rate, delta.shape[1], causal, 2 * rate)
    counts = counts.clamp(max=buffer)
    lengths = mask.sum(1)
    index, valid = rs.select_grid(t, counts, lengths, buffer)
    x = torch.randn(*delta.shape, d, generator=g).masked_fill(pad.unsqueeze(-1), 0.0)
    x2 = x.masked_fill(pad.unsqueeze(-1), fill)
    for a, b in zip(
        rs.gather_windows(x2, t, index, valid, lengths, window, causal),
        rs.gather_windows(x, t, index, valid, lengths, window, causal),
        strict=True,
    ):
        assert torch.equal(a, b)
    assert torch.equal(rs.cell_pool(x2, t, counts, buffer, mask), rs.cell_pool(x, t, counts, buffer, mask))
    y = torch.randn(delta.shape[0], buffer, d, generator=g).masked_fill(~valid.unsqueeze(-1), 0.0)
    y2 = y.masked_fill(~valid.unsqueeze(-1), fill)
    for how in rs.RESTORES:
        want = rs.restore(y, t, counts, index, valid, mask, how)
        assert torch.equal(rs.restore(y2, t, counts, index, valid, mask, how), want), how


def test_loop_twins_live_apart_from_the_production_ops():
    assert not [name for name in rs.__all__ if name.endswith("_loop")]
    assert all(hasattr(rs, name) for name in rs.__all__)
    steps = (
        "intervals_to_times",
        "mean_normalised_intervals",
        "select_grid",
        "gather_windows",
        "cell_pool",
        "restore",
    )
    assert sorted(naive.__all__) == sorted(f"{name}_loop" for name in steps)


def test_unknown_restore():
    t, counts = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1])
    index, valid = torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="^how: expected one of 'hold', 'interp', 'scatter', got 'nearest'$"):
        rs.restore(torch.zeros(1, 1, 1), t, counts, index, valid, None, "nearest")
