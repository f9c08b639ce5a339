"""Loop twins of the resampling ops: plain Python loops over rows, positions and grid points.

Each ``*_loop`` function computes what its batched namesake in ``serpent_ssm.ops.resample``
computes, straight from the definition, one element at a time, sharing no code with it; the
tests compare the two. Too slow for anything but tests.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

__all__ = [
    "cell_pool_loop",
    "gather_windows_loop",
    "intervals_to_times_loop",
    "mean_normalised_intervals_loop",
    "restore_loop",
    "select_grid_loop",
]


def _real_length(mask: torch.Tensor | None, row: int, length: int) -> int:
    """Real elements of row ``row`` of a ``(B, L)`` right-padding mask (``length`` without one)."""
    return int(mask[row].sum()) if mask is not None else length


def intervals_to_times_loop(
    delta: torch.Tensor, mask: torch.Tensor | None, rate: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loop twin of ``intervals_to_times``: ``delta (B, L)`` -> ``t (B, L)`` float64, ``counts (B,)``.

    ``t_l`` sums the real intervals up to ``l``; causal: ``counts = floor(t_n)``; non-causal:
    ``counts = ceil(rate · n)`` with ``rate`` read as the decimal it prints as, and ``t`` rescaled
    so that ``t_n = counts``.
    """
    b, length = delta.shape
    t = torch.zeros(b, length, dtype=torch.float64)
    counts = torch.zeros(b, dtype=torch.long)
    for i in range(b):
        n = _real_length(mask, i, length)
        acc = 0.0
        for l in range(length):
            if l < n:
                acc += float(delta[i, l])
            t[i, l] = acc
        if causal:
            counts[i] = math.floor(acc)
        else:
            counts[i] = math.ceil(n * Fraction(str(rate)).limit_denominator(10**6))
            if acc > 0:
                t[i] = t[i] / acc * counts[i].item()
    return t, counts


def mean_normalised_intervals_loop(
    s: torch.Tensor, rate: float, mask: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    """Loop twin of ``mean_normalised_intervals``: ``s (B, L)`` -> ``Δ (B, L)`` float64 (0 at padding).

    ``Δ_l = min(2κ, κ · e^{s_l} / m_l)`` with ``m_l`` the plain mean of ``e^{s_j}`` over
    ``j <= l`` (causal) or over the row's real positions.
    """
    b, length = s.shape
    out = torch.zeros(b, length, dtype=torch.float64)
    for row in range(b):
        n = _real_length(mask, row, length)
        values = [math.exp(float(s[row, j])) for j in range(n)]
        for pos in range(n):
            pool = values[: pos + 1] if causal else values
            out[row, pos] = min(2.0 * rate, rate * values[pos] / (sum(pool) / len(pool)))
    return out


def select_grid_loop(
    t: torch.Tensor, counts: torch.Tensor, lengths: torch.Tensor, buffer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loop twin of ``select_grid``: ``t (B, L)`` -> ``index (B, buffer)``, ``valid (B, buffer)``.

    Grid point ``k <= counts`` selects the first position with ``t_l >= k``, clamped to the last
    real position; other slots are invalid with index 0.
    """
    b, length = t.shape
    index = torch.zeros(b, buffer, dtype=torch.long)
    valid = torch.zeros(b, buffer, dtype=torch.bool)
    for i in range(b):
        for k in range(1, buffer + 1):
            if k > counts[i]:
                continue
            valid[i, k - 1] = True
            hit = next((l for l in range(length) if t[i, l] >= k), length)
            index[i, k - 1] = min(hit, max(int(lengths[i]) - 1, 0))
    return index, valid


def gather_windows_loop(
    x: torch.Tensor,
    t: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    lengths: torch.Tensor,
    window: int,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loop twin of ``gather_windows``: ``x (B, L, D)`` -> ``xw (B, L', K, D)``, ``offsets (B, L', K)``
    and ``ok (B, L', K)``.

    The window of slot ``s`` starts ``K − 1`` positions before its selected position (causal) or
    ``(K − 1) // 2`` before it (centred) and holds ``K`` positions; a neighbour outside the real
    range, or in an invalid slot, stays zero and not ok.
    """
    b, length, d = x.shape
    buffer = index.shape[1]
    xw = torch.zeros(b, buffer, window, d, dtype=x.dtype)
    offsets = torch.zeros(b, buffer, window, dtype=t.dtype)
    ok = torch.zeros(b, buffer, window, dtype=torch.bool)
    first = -(window - 1) if causal else -((window - 1) // 2)
    for i in range(b):
        for s in range(buffer):
            if not valid[i, s]:
                continue
            for w in range(window):
                j = int(index[i, s]) + first + w
                if 0 <= j < int(lengths[i]):
                    xw[i, s, w] = x[i, j]
                    offsets[i, s, w] = (s + 1) - t[i, j]
                    ok[i, s, w] = True
    return xw, offsets, ok


def cell_pool_loop(
    x: torch.Tensor,
    t: torch.Tensor,
    counts: torch.Tensor,
    buffer: int,
    mask: torch.Tensor | None,
    t_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loop twin of ``cell_pool``: ``x (B, L, D)`` -> ``(B, buffer, D)``.

    Cell ``k <= counts`` sums every real element weighted by the overlap of its interval
    ``(t_{l-1}, t_l]`` with ``(k − 1, k]`` (``t_{-1} = t_start``, 0 without it).
    """
    b, length, d = x.shape
    out = torch.zeros(b, buffer, d, dtype=x.dtype)
    for i in range(b):
        prev = 0.0 if t_start is None else float(t_start[i])
        for l in range(_real_length(mask, i, length)):
            tl = float(t[i, l])
            for k in range(1, int(counts[i]) + 1):
                o = min(tl, k) - max(prev, k - 1)
                if o > 0:
                    out[i, k - 1] += o * x[i, l]
            prev = tl
    return out


def restore_loop(
    y: torch.Tensor,
    t: torch.Tensor,
    counts: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    mask: torch.Tensor | None,
    how: str,
) -> torch.Tensor:
    """Loop twin of ``restore``: ``y (B, L', D)`` -> ``(B, L, D)``, 0 at padded positions.

    ``"scatter"``: each valid slot adds its value at its selected position. ``"hold"``: position
    ``l`` reads grid point ``min(floor(t_l), counts)`` (0 before the first). ``"interp"``: linear
    in time between the grid points around ``t_l`` clamped to ``[1, counts]``.
    """
    b, buffer, d = y.shape
    length = t.shape[1]
    out = torch.zeros(b, length, d, dtype=y.dtype)
    for i in range(b):
        n = _real_length(mask, i, length)
        c = int(counts[i])
        if how == "scatter":
            for s in range(buffer):
                if valid[i, s]:
                    out[i, int(index[i, s])] += y[i, s]
            out[i, n:] = 0
            continue
        for l in range(n):
            tl = float(t[i, l])
            if how == "hold":
                k = min(math.floor(tl), c)
                if k >= 1:
                    out[i, l] = y[i, k - 1]
            elif c >= 1:
                tc = min(max(tl, 1.0), float(c))
                lo = math.floor(tc)
                w = tc - lo
                hi = min(lo + 1, c)
                out[i, l] = (1 - w) * y[i, lo - 1] + w * y[i, hi - 1]
    return out
