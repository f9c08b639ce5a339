"""Selective resampling in torch ops: the pure, batched, mask-aware steps of the SeRpEnt mixer.

A sequence ``x (B, L, D)`` is laid on a time axis by per-position intervals ``Δ (B, L)``:
``t_l = Δ_1 + … + Δ_l``. A uniform grid ``k = 1, 2, …`` resamples it: grid point ``k`` selects
``l_k = min{l : t_l >= k}`` and aggregates a window of ``K`` elements around ``l_k``, each with
its time offset ``δ_kj = k − t_j`` expanded in Gaussian radial basis functions. After a backbone
runs on the compressed sequence, its output is restored to length ``L``.

No function here loops over the sequence in Python. The loop twins of the six steps
(``mean_normalised_intervals``, ``intervals_to_times``, ``select_grid``, ``gather_windows``,
``cell_pool``, ``restore``) live in ``resample.naive``, apart from these production ops; the tests
compare the two. ``cell_pool`` and ``restore`` also run in a fused CPU kernel (``resample.cpu``):
``resample.interface`` checks their arguments and picks the kernel or their torch versions here,
``cell_pool_torch`` and ``restore_torch``. The other ops check that their tensors share a device
(attributes only) and run here on any device.

Index conventions: positions ``l`` are 0-based in tensors; grid point ``k`` (1-based, as in the
paper) lives in slot ``k − 1`` of the compressed buffer. Times are float64, so that counts and
selections are exact for long sequences.

Padding and invalid slots are zeroed by selection (``torch.where``), never by multiplying with
the mask: they may hold anything, NaN and Inf included, without reaching a real output.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from serpent_ssm.ops.resample.checks import check_devices

__all__ = [
    "RESTORES",
    "ceil_rate",
    "cell_pool_torch",
    "compressed_length",
    "gather_windows",
    "intervals_to_times",
    "mean_normalised_carry",
    "mean_normalised_intervals",
    "mean_normalised_step",
    "rbf_centers",
    "rbf_features",
    "restore_torch",
    "select_grid",
    "window_offsets",
]

RESTORES = ("hold", "interp", "scatter")


# ----------------------------------------------------------------------------- counts
def _fraction(rate: float) -> Fraction:
    """``rate`` as the decimal it prints as (0.3 is 3/10), denominators up to 10^6."""
    return Fraction(str(rate)).limit_denominator(10**6)


def ceil_rate(rate: float, n: torch.Tensor | int) -> torch.Tensor | int:
    """Exact ``ceil(rate · n)`` for integer lengths ``n`` (an int, or a tensor of any shape).

    ``rate`` is read as the decimal it prints as (0.3 is 3/10), and the product is taken in
    integers: in float32, 0.3 × 90 is 27.000002 and its ceiling 28.
    """
    f = _fraction(rate)
    if isinstance(n, torch.Tensor):
        n = n.long()
    return (n * f.numerator + f.denominator - 1) // f.denominator


def compressed_length(rate: float, length: int, causal: bool, delta_max: float) -> int:
    """Static size of the compressed buffer of a branch for inputs of length ``length``.

    Non-causal: ``ceil(rate · L)`` (the counts are exactly ``ceil(rate · n) <= ceil(rate · L)``).
    Causal: ``ceil(delta_max · L)``, the largest ``floor(t_n)`` intervals bounded by
    ``delta_max`` can reach.
    """
    if length == 0:
        return 0
    if causal:
        return max(1, math.ceil(delta_max * length - 1e-9))
    return max(1, ceil_rate(rate, length))


# ----------------------------------------------------------------------------- times
def mean_normalised_intervals(
    s: torch.Tensor,
    rate: float,
    mask: torch.Tensor | None,
    causal: bool,
    carry: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Intervals whose mean is held near ``κ``: ``Δ_l = min(2κ, κ · e^{s_l} / mean_j e^{s_j})``.

    Args:
        s: ``(B, L)`` scores (any float dtype).
        rate: the branch's compression rate ``κ``.
        mask: ``(B, L)`` bool right padding, or None; padding never enters a mean.
        causal: the mean runs over the prefix ``j <= l`` (so ``Δ_l`` reads nothing later) or
            over every real position of the row.
        carry: causal only, for a chunk of a longer sequence: ``(log_sum (B,), n (B,))`` float64,
            ``log Σ e^s`` and the count of the elements before the chunk (``mean_normalised_carry``).
    Returns:
        ``Δ (B, L)`` in ``s``'s dtype, in ``(0, 2κ]``: a sequence of equal scores gets ``Δ ≡ κ``,
        so the branch keeps about ``κ·n`` grid points whatever the scores' scale (in causal mode
        the count is ``floor(Σ Δ)``, which unbounded intervals can collapse towards 0).
        Computed in float64 with log-sum-exp. Padding holds finite values (any value there is
        replaced before use, so nothing non-finite reaches a gradient).
    """
    parts = {} if carry is None else {"carry[0] (log_sum)": carry[0], "carry[1] (n)": carry[1]}
    check_devices(s.device, mask=mask, **parts)
    sd = s.double()
    if causal:  # right padding comes after every real element: prefixes of real positions are real
        if mask is not None:
            sd = torch.where(mask, sd, 0.0)
        n = torch.arange(1, s.shape[1] + 1, device=s.device, dtype=torch.float64)
        log_sum = torch.logcumsumexp(sd, dim=1)
        if carry is not None:
            log_sum = torch.logaddexp(log_sum, carry[0].unsqueeze(1))
            n = n + carry[1].unsqueeze(1)
        log_mean = log_sum - torch.log(n)
    else:
        if mask is not None:
            sd = torch.where(mask, sd, -1e300)
            n = mask.sum(1, keepdim=True).clamp(min=1).double()
        else:
            n = torch.full((s.shape[0], 1), float(s.shape[1]), device=s.device, dtype=torch.float64)
        log_mean = torch.logsumexp(sd, dim=1, keepdim=True) - torch.log(n)
    return (rate * torch.exp(sd - log_mean)).clamp(max=2.0 * rate).to(s.dtype)


def mean_normalised_carry(
    s: torch.Tensor, mask: torch.Tensor | None, log_sum: torch.Tensor, n: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The carry of ``mean_normalised_intervals`` after a causal chunk: ``s (B, L)`` scores,
    ``mask (B, L)`` or None, ``log_sum (B,)`` and ``n (B,)`` float64 before it -> after it
    (padding not counted)."""
    check_devices(s.device, mask=mask, log_sum=log_sum, n=n)
    sd = s.double()
    if mask is not None:
        sd = torch.where(mask, sd, -math.inf)
        n = n + mask.sum(1).double()
    else:
        n = n + s.shape[1]
    if s.shape[1] == 0:
        return log_sum, n
    return torch.logaddexp(log_sum, torch.logsumexp(sd, dim=1)), n


def mean_normalised_step(
    s_t: torch.Tensor, log_sum: torch.Tensor, n: torch.Tensor, rate: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One causal step of ``mean_normalised_intervals``.

    Args:
        s_t: ``(B,)`` the scores of the new elements.
        log_sum: ``(B,)`` float64, ``log Σ_{j<l} e^{s_j}`` of the elements before (``-inf`` for none).
        n: ``(B,)`` float64, the number of elements up to and including this one.
        rate: ``κ``.
    Returns:
        ``Δ_t (B,)`` in ``s_t``'s dtype and the new ``log_sum (B,)``.
    """
    check_devices(s_t.device, log_sum=log_sum, n=n)
    sd = s_t.double()
    log_sum = torch.logaddexp(log_sum, sd)
    delta = (rate * torch.exp(sd - (log_sum - torch.log(n)))).clamp(max=2.0 * rate)
    return delta.to(s_t.dtype), log_sum


def intervals_to_times(
    delta: torch.Tensor, mask: torch.Tensor | None, rate: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative times and compressed counts.

    Args:
        delta: ``(B, L)`` non-negative intervals (any float dtype).
        mask: ``(B, L)`` bool right padding, or None. Padding gets ``Δ = 0``, whatever ``delta``
            holds there.
        rate: the branch's compression rate ``κ``.
        causal: causal (no rescaling) or non-causal (rescale to ``ceil(κ·n)`` time units).
    Returns:
        ``t (B, L)`` float64 (``t_l = Σ_{j<=l} Δ_j``, rescaled in non-causal mode so that the
        last real element sits exactly at ``ceil(κ·n)``) and ``counts (B,)`` int64: the number
        of grid points, ``ceil(κ·n)`` (non-causal) or ``floor(t_n)`` (causal).
    """
    check_devices(delta.device, mask=mask)
    d = delta.double()
    if mask is not None:  # selected, not multiplied: NaN or Inf in the padding must not leak
        d = torch.where(mask, d, 0.0)
    t = torch.cumsum(d, dim=1)
    if t.shape[1] == 0:
        return t, torch.zeros(t.shape[0], dtype=torch.long, device=t.device)
    total = t[:, -1]
    if causal:
        return t, torch.floor(total).long()
    n = mask.sum(1) if mask is not None else torch.full_like(total, t.shape[1], dtype=torch.long)
    counts = ceil_rate(rate, n)
    # divide first: t_n / t_n is exactly 1, so the last real element (and the padding after it)
    # lands exactly on grid point ceil(κ·n), whatever the rounding of the intervals
    safe = torch.where(total > 0, total, torch.ones_like(total)).unsqueeze(1)
    t = torch.where(total.unsqueeze(1) > 0, t / safe * counts.unsqueeze(1).double(), torch.zeros_like(t))
    return t, counts


# ----------------------------------------------------------------------------- selection
def select_grid(
    t: torch.Tensor, counts: torch.Tensor, lengths: torch.Tensor, buffer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid point ``k`` selects ``l_k = min{l : t_l >= k}``, for ``k = 1..buffer``.

    Args:
        t: ``(B, L)`` float64 non-decreasing times. counts: ``(B,)`` grid points per row.
        lengths: ``(B,)`` real lengths. buffer: static compressed length ``L'``.
    Returns:
        ``index (B, L')`` int64 (0-based positions; clamped into the real range, and 0 on
        invalid slots) and ``valid (B, L')`` bool (slot ``k − 1`` is valid iff ``k <= counts``).
    """
    check_devices(t.device, counts=counts, lengths=lengths)
    b = t.shape[0]
    grid = torch.arange(1, buffer + 1, dtype=t.dtype, device=t.device).expand(b, buffer).contiguous()
    index = torch.searchsorted(t.contiguous(), grid, side="left")
    valid = grid <= counts.unsqueeze(1).to(t.dtype)
    last = (lengths - 1).clamp_min(0).unsqueeze(1)
    index = torch.where(valid, torch.minimum(index, last), torch.zeros_like(index))
    return index, valid


# ----------------------------------------------------------------------------- windows
def window_offsets(window: int, causal: bool) -> list[int]:
    """Relative positions of a window: causal ``[-(K-1), …, 0]``, centred ``[-(K-1)//2, …, K//2]``."""
    if causal:
        return list(range(-(window - 1), 1))
    return list(range(-((window - 1) // 2), window // 2 + 1))


def gather_windows(
    x: torch.Tensor,
    t: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    lengths: torch.Tensor,
    window: int,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather the ``K`` neighbours of every selected element and their time offsets.

    Args:
        x: ``(B, L, D)``; t: ``(B, L)`` times; index, valid: ``(B, L')`` from ``select_grid``;
        lengths: ``(B,)``; window: ``K``; causal: window layout (see ``window_offsets``).
    Returns:
        ``xw (B, L', K, D)`` (zero where invalid), ``offsets (B, L', K)`` float64
        ``δ_kj = k − t_j`` (zero where invalid) and ``ok (B, L', K)`` bool: the neighbour exists
        (inside the real range) and its slot is valid.
    """
    check_devices(x.device, t=t, index=index, valid=valid, lengths=lengths)
    b, length, d = x.shape
    buffer = index.shape[1]
    rel = torch.tensor(window_offsets(window, causal), device=x.device)
    pos = index.unsqueeze(-1) + rel  # (B, L', K)
    ok = valid.unsqueeze(-1) & (pos >= 0) & (pos < lengths.view(b, 1, 1))
    pos = torch.where(ok, pos, torch.zeros_like(pos))
    flat = pos.view(b, buffer * window)
    xw = x.gather(1, flat.unsqueeze(-1).expand(b, buffer * window, d)).view(b, buffer, window, d)
    xw = torch.where(ok.unsqueeze(-1), xw, 0.0)
    grid = torch.arange(1, buffer + 1, dtype=t.dtype, device=t.device).view(1, buffer, 1)
    offsets = torch.where(
        ok, grid - t.gather(1, flat).view(b, buffer, window), torch.zeros((), dtype=t.dtype)
    )
    return xw, offsets, ok


# ----------------------------------------------------------------------------- cell pooling
def _overlap(t: torch.Tensor, t_prev: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Length of the overlap of ``(t_prev, t]`` with the grid cell ``(cell − 1, cell]`` (any shape)."""
    return (torch.minimum(t, cell) - torch.maximum(t_prev, cell - 1)).clamp_min(0.0)


def cell_pool_torch(
    x: torch.Tensor,
    t: torch.Tensor,
    counts: torch.Tensor,
    buffer: int,
    mask: torch.Tensor | None,
    t_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """``cell_pool`` (``resample.interface``, which checks the arguments) in torch ops: the
    reference of the kernel, any device and dtype. ``x (B, L, D)`` -> ``(B, L', D)``.

    Cost ``O((L + L') D)`` whatever the intervals: the intervals are disjoint, so a cell receives
    the elements whose interval starts in it (one scatter over the elements) and at most one
    element that started before it, the one whose interval holds the grid point ``k − 1`` (one
    search per cell). An element spanning many cells is thus found once per cell it covers.
    """
    b, length, d = x.shape
    out = x.new_zeros(b, buffer, d)
    if length == 0 or buffer == 0:
        return out
    start = t.new_zeros(b, 1) if t_start is None else t_start.to(t.dtype).unsqueeze(1)
    t_prev = torch.cat([start, t[:, :-1]], dim=1)
    limit = counts.unsqueeze(1).to(t.dtype)
    real = mask if mask is not None else torch.ones(b, length, dtype=torch.bool, device=x.device)
    if mask is not None:  # padding is never read, not even by a gradient (0 · NaN is NaN)
        x = torch.where(mask.unsqueeze(-1), x, 0.0)
    # each element's share of the cell its interval starts in
    first = torch.floor(t_prev.detach()) + 1
    share = _overlap(t, t_prev, first)
    keep = (real & (first <= limit) & (share > 0)).unsqueeze(-1)
    slot = (first.long() - 1).clamp(0, buffer - 1).unsqueeze(-1).expand(b, length, d)
    out = out.scatter_add(1, slot, torch.where(keep, share.to(x.dtype).unsqueeze(-1) * x, 0.0))
    if buffer == 1:
        return out
    # cell k >= 2 from the element whose interval holds grid point k - 1 strictly inside it
    cell = torch.arange(2, buffer + 1, dtype=t.dtype, device=t.device).expand(b, buffer - 1)
    t_real = torch.where(real, t.detach(), math.inf)  # still sorted: the padding is on the right
    owner = torch.searchsorted(t_real.contiguous(), (cell - 1).contiguous(), side="right")
    inside = owner < length
    owner = owner.clamp(max=length - 1)
    t_o, t_prev_o = t.gather(1, owner), t_prev.gather(1, owner)
    keep = inside & real.gather(1, owner) & (t_prev_o < cell - 1) & (cell <= limit)
    share = _overlap(t_o, t_prev_o, cell).to(x.dtype).unsqueeze(-1)
    spill = share * x.gather(1, owner.unsqueeze(-1).expand(b, buffer - 1, d))
    return torch.cat([out[:, :1], out[:, 1:] + torch.where(keep.unsqueeze(-1), spill, 0.0)], dim=1)


# ----------------------------------------------------------------------------- RBF
def rbf_centers(n_bases: int, low: float, high: float) -> tuple[torch.Tensor, float]:
    """``n_bases`` centres evenly spaced over ``[low, high]`` and the width ``σ`` = their spacing."""
    centers = torch.linspace(low, high, n_bases, dtype=torch.float64)
    sigma = (high - low) / (n_bases - 1) if n_bases > 1 else max(high - low, 1.0)
    return centers, sigma


def rbf_features(offsets: torch.Tensor, centers: torch.Tensor, sigma: float) -> torch.Tensor:
    """``φ_m(δ) = exp(−(δ − μ_m)² / 2σ²)``: ``(...,)`` offsets -> ``(..., M)`` float32."""
    diff = offsets.unsqueeze(-1) - centers.to(offsets.device, offsets.dtype)
    return torch.exp(-(diff * diff) / (2.0 * sigma * sigma)).float()


# ----------------------------------------------------------------------------- restore
def restore_torch(
    y: torch.Tensor,
    t: torch.Tensor,
    counts: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    mask: torch.Tensor | None,
    how: str,
) -> torch.Tensor:
    """``restore`` (``resample.interface``, which checks the arguments) in torch ops: the
    reference of the kernel for ``hold`` and ``interp``, and ``scatter``. ``y (B, L', D)`` ->
    ``(B, L, D)``."""
    b, buffer, d = y.shape
    length = t.shape[1]
    if mask is not None:  # whatever the padding's times hold (the outputs there are 0)
        t = torch.where(mask, t, 0.0)
    if how == "scatter":
        src = torch.where(valid.unsqueeze(-1), y, 0.0)
        out = y.new_zeros(b, length, d).scatter_add(1, index.unsqueeze(-1).expand(b, buffer, d), src)
    elif buffer == 0:
        out = y.new_zeros(b, length, d)
    elif how == "hold":
        k = torch.minimum(torch.floor(t).long(), counts.unsqueeze(1))  # grid point held, 0 = none
        slot = (k - 1).clamp(0, buffer - 1)
        out = y.gather(1, slot.unsqueeze(-1).expand(b, length, d))
        out = torch.where((k >= 1).unsqueeze(-1), out, 0.0)
    elif how == "interp":
        hi = counts.clamp_min(1).unsqueeze(1).to(t.dtype)
        tc = torch.minimum(torch.maximum(t, torch.ones_like(t)), hi)
        lo = torch.floor(tc)
        w = (tc - lo).to(y.dtype).unsqueeze(-1)
        lo_slot = (lo.long() - 1).clamp(0, buffer - 1)
        hi_slot = lo.long().clamp(max=buffer - 1)
        hi_slot = torch.minimum(hi_slot, (counts.unsqueeze(1) - 1).clamp(0, buffer - 1))
        y_lo = y.gather(1, lo_slot.unsqueeze(-1).expand(b, length, d))
        y_hi = y.gather(1, hi_slot.unsqueeze(-1).expand(b, length, d))
        out = (1 - w) * y_lo + w * y_hi
        out = torch.where((counts >= 1).view(b, 1, 1), out, 0.0)
    else:
        raise ValueError(f"how: expected one of {', '.join(map(repr, RESTORES))}, got {how!r}")
    if mask is not None:
        out = torch.where(mask.unsqueeze(-1), out, 0.0)
    return out
