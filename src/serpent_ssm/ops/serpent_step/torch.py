"""The ``"torch"`` backend of the recurrent steps: one Mamba step for one module or for a stack
of modules at once, and a causal SeRpEnt layer's step with every branch's backbone in one
stacked step.

``mamba_step_torch`` runs ``MambaStepWeights`` of one module (``Mamba.step_weights()``), of a
stack of ``R`` (``stack_step_weights``: ``StackedLinear`` projections, the other fields with
leading ``(R, 1)`` dims that broadcast over the batch; the input and the states get a leading
``R`` dim) or of one module shared by all ``R`` (its weights broadcast as they are).

``cell_step`` is one element of a causal SeRpEnt mixer's branches with cell aggregation (each
rate branch closes at most one cell per element), then their backbones' step: the reference of
the CPU kernel's ``cell_step_cpu``. ``serpent_step_torch`` is the whole layer; its reference is
``naive.serpent_step_naive`` (branch by branch), which tests pin it to.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from serpent_ssm.ops.serpent_step.naive import advance_times, merge_branches, step_deltas
from serpent_ssm.ops.serpent_step.weights import MambaStepWeights, SeRpEntStepWeights
from serpent_ssm.ops.states import CellPoolState, MambaState, SeRpEntState

__all__ = ["CellState", "cell_step", "conv_step", "mamba_step_torch", "serpent_step_torch"]


def conv_step(
    x: torch.Tensor, conv: torch.Tensor, w: MambaStepWeights
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The input projection and causal convolution of one element ``x (..., D)`` with the last
    ``K − 1`` inputs ``conv (..., E, K − 1)``: ``xc (..., E)`` (the scan input, after SiLU),
    the gate ``z (..., E)`` and the new ``conv``."""
    xs, z = w.in_proj(x).chunk(2, dim=-1)
    window = torch.cat([conv.to(xs.dtype), xs.unsqueeze(-1)], dim=-1)  # (..., E, K)
    xc = (window * w.conv_w).sum(-1)
    if w.conv_b is not None:
        xc = xc + w.conv_b
    return F.silu(xc), z, window[..., 1:]


def mamba_step_torch(
    x: torch.Tensor, conv: torch.Tensor, ssm: torch.Tensor, w: MambaStepWeights
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step: ``x (..., D)``, ``conv (..., E, K − 1)``, ``ssm (..., E, N)`` float32 ->
    ``y (..., D)`` and the new ``conv`` and ``ssm``. ``...`` is ``(B,)`` with one module's
    weights, ``(R, B)`` with a stack of ``R`` (or with one module's, shared by all ``R``).
    The state update runs in float32 whatever the weights' dtype."""
    xc, z, conv = conv_step(x, conv, w)
    dt, b, c = w.x_proj(xc).split([w.dt_rank, w.d_state, w.d_state], dim=-1)
    dt = F.softplus(w.dt_proj(dt).float())  # (..., E)
    xf = xc.float()
    h = torch.exp(dt.unsqueeze(-1) * w.a) * ssm + (dt * xf).unsqueeze(-1) * b.float().unsqueeze(-2)
    y = (h * c.float().unsqueeze(-2)).sum(-1) + w.d * xf
    y = y * F.silu(z.float())
    return w.out_proj(y.to(x.dtype)), conv, h


class CellState(NamedTuple):
    """What ``cell_step`` reads and returns of a causal SeRpEnt mixer's state (``R`` rate
    branches, ``G = R + F`` backbones, ``F = 1`` with the full branch): the open cells' pooled
    inputs ``acc (R, B, D)``, the held outputs ``held (R, B, D)``, and the backbones' ``conv
    (G, B, E, K − 1)`` and ``ssm (G, B, E, N)`` float32."""

    acc: torch.Tensor
    held: torch.Tensor
    conv: torch.Tensor
    ssm: torch.Tensor


def cell_step(
    x: torch.Tensor,
    t_old: torch.Tensor,
    t_new: torch.Tensor,
    state: CellState,
    weights: MambaStepWeights,
    proj: tuple[torch.Tensor, torch.Tensor] | None = None,
    full: bool = False,
    hold: bool = True,
) -> tuple[torch.Tensor, CellState]:
    """One element ``x (B, D)`` through every branch of a causal SeRpEnt mixer whose rate branches
    cross at most one grid point per element (``Δ ≤ 1``), with cell aggregation and Mamba
    backbones (``weights``: stacked for the ``G`` backbones, or one set that all share).

    Rate branch ``i`` moves from ``t_old[i]`` to ``t_new[i]`` (``(R, B)`` float64): cell
    ``floor(t_old) + 1`` closes when ``floor(t_new) > floor(t_old)``; the element's share of it
    joins the open cell's input, the closed cell (mapped by ``proj``: weights ``(R, D, D)``
    transposed and biases ``(R, 1, D)``) is the backbone's input, and the rest of the element
    opens the next cell. Rows that closed nothing keep their backbone's state and held output
    (a NaN time closes nothing). With ``full`` the last backbone steps on ``x`` itself.
    Returns the outputs ``(G, B, D)`` (rate branches: the held output with ``hold``, else the
    new output where a cell closed and 0 elsewhere; then the full branch's) and the new state.
    """
    rates = state.acc.shape[0]
    k_old, k_new = torch.floor(t_old), torch.floor(t_new)
    crossed = k_new > k_old  # (R, B); NaN times (poisoned rows) cross nothing
    share = torch.minimum(t_new, k_old + 1.0) - t_old  # of the closing cell
    rest = t_new - torch.maximum(t_old, k_new)  # of the cell left open
    parts = torch.stack([share, rest]).to(x.dtype).unsqueeze(-1) * x  # (2, R, B, D)
    pooled = parts[0] + state.acc  # without a crossing share == rest, so this is also acc + rest·x
    new_acc = torch.where(crossed.unsqueeze(-1), parts[1], pooled)
    xk = pooled if proj is None else torch.baddbmm(proj[1], pooled, proj[0])
    active = crossed
    if full:
        xk = torch.cat([xk, x.unsqueeze(0)])
        active = torch.cat([crossed, crossed.new_ones(1, crossed.shape[1])])
    y, conv, ssm = mamba_step_torch(xk, state.conv, state.ssm, weights)
    keep = active.view(*active.shape, 1, 1)
    conv, ssm = torch.where(keep, conv, state.conv), torch.where(keep, ssm, state.ssm)
    held = torch.where(crossed.unsqueeze(-1), y[:rates], state.held)
    out = held if hold else y[:rates] * crossed.unsqueeze(-1).to(y.dtype)
    if full:
        out = torch.cat([out, y[rates:]])
    return out, CellState(new_acc, held, conv, ssm)


def serpent_step_torch(
    x_t: torch.Tensor, state: SeRpEntState, w: SeRpEntStepWeights
) -> tuple[torch.Tensor, SeRpEntState]:
    """A causal SeRpEnt layer's step with every backbone in one stacked step (``w.stacked``):
    ``x_t (B, D)`` -> ``y_t (B, D)`` and the new state; the branches must cross at most one grid
    point per element (``Δ ≤ 1``), with cell aggregation and Mamba backbones."""
    deltas, scores = step_deltas(x_t, state.scores, w)
    t_new, bad = advance_times(x_t, state.t, deltas)
    cells = CellState(state.aggregator.acc, state.held, state.backbone.conv, state.backbone.ssm)
    out, cells = cell_step(
        x_t, state.t, t_new, cells, w.stacked, w.cell_proj, w.full_step is not None, w.hold
    )
    return merge_branches(out, x_t, bad, w), from_cells(t_new, cells, scores)


def from_cells(t: torch.Tensor, cells: CellState, scores: tuple) -> SeRpEntState:
    """A SeRpEnt state from the running times ``t (R, B)``, ``cell_step``'s state and the scores'."""
    return SeRpEntState(t, cells.held, CellPoolState(cells.acc), MambaState(cells.conv, cells.ssm), scores)
