"""Correlation statistics for intervals vs information: Pearson, Spearman, bootstrap confidence
intervals and a least-squares line. numpy only; every function takes 1-D arrays of equal length.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["CorrelationReport", "bootstrap_ci", "correlate", "linear_fit", "pearson", "rankdata", "spearman"]


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x, y: expected arrays of equal length, got {x.size} and {y.size}")
    if x.size < 3:
        raise ValueError(f"x, y: expected at least 3 pairs, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x, y: expected finite values, got NaN or infinity")
    return x, y


def pearson(x, y) -> float:
    """Pearson's r (nan when either side is constant)."""
    x, y = _pair(x, y)
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / denom) if denom > 0 else float("nan")


def rankdata(a) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as ``scipy.stats.rankdata``'s default)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size, dtype=np.float64)
    sorted_a = a[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], a.size]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mean of ranks s+1 .. e
    return ranks


def spearman(x, y) -> float:
    """Spearman's rho: Pearson's r of the (tie-averaged) ranks."""
    x, y = _pair(x, y)
    return pearson(rankdata(x), rankdata(y))


def linear_fit(x, y) -> tuple[float, float, float]:
    """Least-squares ``y ≈ slope * x + intercept``; returns ``(slope, intercept, r²)``."""
    x, y = _pair(x, y)
    dx = x - x.mean()
    sxx = (dx * dx).sum()
    if sxx == 0:
        raise ValueError("x: expected at least two distinct values for a line, got a constant")
    slope = float((dx * (y - y.mean())).sum() / sxx)
    intercept = float(y.mean() - slope * x.mean())
    resid = y - (slope * x + intercept)
    tot = ((y - y.mean()) ** 2).sum()
    r2 = float(1 - (resid * resid).sum() / tot) if tot > 0 else float("nan")
    return slope, intercept, r2


def bootstrap_ci(
    x, y, stat, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(x, y)`` over pairs resampled with replacement."""
    x, y = _pair(x, y)
    if not 0 < level < 1:
        raise ValueError(f"level: expected a probability in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        idx = rng.integers(0, x.size, x.size)
        v = stat(x[idx], y[idx])
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass
class CorrelationReport:
    n: int
    pearson: float
    pearson_ci: tuple[float, float]
    spearman: float
    spearman_ci: tuple[float, float]
    slope: float
    intercept: float
    r2: float

    def to_dict(self) -> dict:
        return asdict(self)


def correlate(x, y, n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> CorrelationReport:
    """All of the above for one (intervals, information) pair of arrays."""
    x, y = _pair(x, y)
    slope, intercept, r2 = linear_fit(x, y)
    return CorrelationReport(
        n=int(x.size),
        pearson=pearson(x, y),
        pearson_ci=bootstrap_ci(x, y, pearson, n_resamples, level, seed),
        spearman=spearman(x, y),
        spearman_ci=bootstrap_ci(x, y, spearman, n_resamples, level, seed),
        slope=slope,
        intercept=intercept,
        r2=r2,
    )
