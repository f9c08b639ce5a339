"""Correlation statistics against numpy and hand-computed values on known inputs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from serpent_ssm.analysis.stats import bootstrap_ci, correlate, linear_fit, pearson, rankdata, spearman


def test_known_values():
    x = [1, 2, 3, 4, 5]
    y = [2, 1, 4, 3, 5]
    assert pearson(x, y) == pytest.approx(0.8)
    assert spearman(x, y) == pytest.approx(0.8)  # ranks equal the values here
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # monotone, not linear
    assert pearson([1, 2, 3, 4], [1, 8, 27, 64]) < 0.99
    assert rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    slope, intercept, r2 = linear_fit([0, 1, 2, 3], [1, 3, 5, 7])
    assert (slope, intercept, r2) == pytest.approx((2.0, 1.0, 1.0))


# values on a 0.01 grid: no subnormals, whose squares underflow differently in numpy's formula
@given(
    arrays(np.float64, st.integers(3, 40), elements=st.integers(-10_000, 10_000).map(lambda v: v / 100)),
    st.integers(0, 2**16),
)
def test_pearson_matches_numpy(x, seed):
    y = x * 0.5 + np.random.default_rng(seed).normal(size=x.size)
    with np.errstate(invalid="ignore", divide="ignore"):  # numpy warns on a constant x
        want = np.corrcoef(x, y)[0, 1]
    got = pearson(x, y)
    if np.isnan(want):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(want, abs=1e-9)


def test_bootstrap_interval_covers_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    y = 0.6 * x + rng.normal(size=300)
    lo, hi = bootstrap_ci(x, y, pearson, n_resamples=300, seed=1)
    assert lo < pearson(x, y) < hi and hi - lo < 0.3
    assert (lo, hi) == bootstrap_ci(x, y, pearson, n_resamples=300, seed=1)
    report = correlate(x, y, n_resamples=200)
    assert report.n == 300 and report.r2 == pytest.approx(report.pearson**2)
    assert set(report.to_dict()) >= {"pearson", "pearson_ci", "spearman", "spearman_ci", "slope", "r2"}


def test_bad_input():
    with pytest.raises(ValueError, match=r"^x, y: expected arrays of equal length, got 3 and 4$"):
        pearson([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"^x, y: expected at least 3 pairs, got 2$"):
        spearman([1, 2], [1, 2])
    with pytest.raises(ValueError, match=re.escape("x, y: expected finite values, got NaN or infinity")):
        pearson([1, 2, float("nan")], [1, 2, 3])
    with pytest.raises(
        ValueError, match=r"^x: expected at least two distinct values for a line, got a constant$"
    ):
        linear_fit([1, 1, 1], [1, 2, 3])


# integers in a small range: many ties, the case where rank averaging matters
@given(
    arrays(np.float64, st.integers(3, 60), elements=st.integers(-5, 5).map(float)),
    arrays(np.float64, 60, elements=st.integers(-5, 5).map(float)),
)
def test_ranks_and_correlations_match_scipy(x, y_full):
    stats = pytest.importorskip("scipy.stats")
    y = y_full[: x.size]
    np.testing.assert_array_equal(rankdata(x), stats.rankdata(x))
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return  # undefined for a constant input (both return nan)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    fit = stats.linregress(x, y)
    slope, intercept, r2 = linear_fit(x, y)
    assert (slope, intercept, r2) == pytest.approx((fit.slope, fit.intercept, fit.rvalue**2), abs=1e-12)
