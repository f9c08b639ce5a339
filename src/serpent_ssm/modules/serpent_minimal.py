"""SeRpEnt in a few lines of plain PyTorch, for reading (as mamba_ssm's ``ssd_minimal.py`` shows SSD).

``serpent_minimal(x, mixer)`` computes ``mixer(x)`` for a non-causal ``SeRpEnt`` at its default
options, straight from the definition: it reads the mixer's score layer and branch merge, calls
its backbone as a black box, and shares no code with ``modules.serpent`` or ``ops.resample``
(tests/modules/test_serpent_minimal.py compares the two). The production mixer adds causal mode
and streaming, padding masks, non-finite inputs, the other options and the fast kernels.

One branch with compression rate ``κ`` (``0 < κ <= 1``) on a row ``x_1 .. x_L``:

1. intervals: a score ``s_l = w·x_l + b`` per element gives ``Δ_l = 2κ·σ(s_l)`` in ``(0, 2κ)``;
   an element with a high score takes more time, so more of the compressed sequence;
2. running time: ``t_l = Δ_1 + … + Δ_l``, rescaled so that the row ends at ``t_L = n``, the
   ``n = ceil(κ·L)`` grid points of the branch (so only the ratios of the intervals matter
   here); element ``l`` occupies the time interval ``(t_{l−1}, t_l]`` (``t_0 = 0``);
3. cell pooling: grid point ``k`` owns the cell ``(k − 1, k]`` and receives ``Σ_l o_lk·x_l``,
   ``o_lk`` the length of the overlap of element ``l``'s interval with that cell: every element
   lands somewhere, the weights of a cell sum to 1, and the result is differentiable in ``t``;
4. the backbone (by default a bidirectional Mamba, or S4D) runs on the ``n`` pooled elements;
5. restore: position ``l`` reads the backbone's output at its time ``t_l``, linear between grid
   points ``floor(t_l)`` and ``floor(t_l) + 1`` (times clamped to ``[1, n]``);

and the branches merge with a learned weight per branch and channel, ``y = Σ_r g_r ⊙ ŷ^r + c``
(``mix="gates"``). Every branch runs the same backbone (``share_backbone``), on its own sequence.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from serpent_ssm.modules.serpent import SeRpEnt

__all__ = ["serpent_minimal"]

# the options this file implements: SeRpEnt's non-causal defaults (modules.serpent_config)
DEFAULTS = {
    "causal": False,
    "aggregate": "cell",
    "restore": "interp",
    "interval_bounds": "ours",
    "interval_source": "score",
    "include_full_branch": False,
    "gate": False,
    "mix": "gates",
    "cell_proj": False,
}


def grid_points(rate: float, length: int) -> int:
    """``n = ceil(κ·L)``, with ``κ`` read as the decimal it prints as (in floats ``0.7·10`` exceeds 7)."""
    return math.ceil(Fraction(str(rate)) * length)


def running_time(delta: torch.Tensor, n: int) -> torch.Tensor:
    """Intervals ``Δ (B, L)`` -> times ``t (B, L)`` float64: ``t_l = Σ_{j<=l} Δ_j``, scaled to ``t_L = n``."""
    t = torch.cumsum(delta.double(), dim=1)
    return t / t[:, -1:] * n


def cell_pool(x: torch.Tensor, t: torch.Tensor, n: int) -> torch.Tensor:
    """``x (B, L, D)`` at times ``t (B, L)`` -> ``(B, n, D)``: cell ``k`` sums the elements, each
    weighted by the overlap of its interval ``(t_{l−1}, t_l]`` with ``(k − 1, k]``."""
    start = torch.cat([torch.zeros_like(t[:, :1]), t[:, :-1]], dim=1)  # t_{l-1}
    k = torch.arange(1, n + 1, dtype=t.dtype, device=t.device)  # the grid points 1..n
    overlap = torch.minimum(t[..., None], k) - torch.maximum(start[..., None], k - 1)  # (B, L, n)
    return torch.einsum("bln,bld->bnd", overlap.clamp(min=0).to(x.dtype), x)


def restore(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``y (B, n, D)`` (grid point ``k`` in slot ``k − 1``) read at the times ``t (B, L)`` ->
    ``(B, L, D)``: linear between the grid points around ``t_l``, clamped to ``[1, n]``."""
    n = y.shape[1]
    tc = t.clamp(1, n)
    lo = torch.floor(tc)
    w = (tc - lo).to(y.dtype).unsqueeze(-1)  # how far past grid point lo
    lo = lo.long()
    hi = (lo + 1).clamp(max=n)
    rows = torch.arange(y.shape[0], device=y.device).unsqueeze(1)
    return (1 - w) * y[rows, lo - 1] + w * y[rows, hi - 1]


def serpent_minimal(x: torch.Tensor, mixer: SeRpEnt) -> torch.Tensor:
    """``mixer(x)`` for ``x (B, L, D)`` (``L >= 1``, no padding) and a non-causal ``SeRpEnt`` at the
    default options (``DEFAULTS``; rates, backbone and widths free) -> ``(B, L, D)``."""
    cfg = mixer.config
    changed = {k: getattr(cfg, k) for k, v in DEFAULTS.items() if getattr(cfg, k) != v}
    if changed:
        raise ValueError(f"mixer: expected SeRpEnt's non-causal defaults {DEFAULTS}, got {changed}")
    length = x.shape[1]
    gates = mixer.out_proj  # mix="gates": weight (R, D), bias (D,)
    y = gates.bias.expand_as(x)
    for i, rate in enumerate(cfg.rates):
        score = mixer.scores[0 if cfg.share_intervals else i]  # nn.Linear(D, 1)
        delta = 2 * rate * torch.sigmoid(x @ score.weight[0] + score.bias[0])  # 1. (B, L)
        n = grid_points(rate, length)
        t = running_time(delta, n)  # 2. (B, L)
        xc = cell_pool(x, t, n)  # 3. (B, n, D)
        yc = mixer.branch_backbone(i)(xc)  # 4. (B, n, D)
        y = y + gates.weight[i] * restore(yc, t)  # 5., then the merge
    return y
