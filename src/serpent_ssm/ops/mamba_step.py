"""One recurrent step of the Mamba (S6) mixer, for one module or for a stack of modules at once.

``Mamba.step`` runs ``mamba_step`` with its own weights (``Mamba.step_weights()``: its projection
layers themselves, and its parameters). A SeRpEnt mixer steps all of its branch backbones in one
call: ``stack_step_weights`` stacks ``R`` modules' weights (``StackedLinear`` projections, the
other fields with leading ``(R, 1)`` dims that broadcast over the batch), and the input, the
convolution state and the SSM state get a leading ``R`` dim. Modules that
share their weights need no stack: one module's weights broadcast over a leading ``R`` dim as
they are. The plain reference is ``Mamba.step`` of each module in turn (tests pin one to the
other).

``cell_step`` is one element of a causal SeRpEnt mixer's branches with cell aggregation (each
rate branch closes at most one cell per element), then their backbones' ``mamba_step``: the plain
reference of the fused CPU kernel ``ops.mamba_step_cpu.cell_step_cpu``, which also runs a single
Mamba's step (no rate branches, the element itself as the "full" branch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CellState",
    "MambaStepWeights",
    "StackedLinear",
    "cell_step",
    "conv_step",
    "mamba_step",
    "stack_step_weights",
]


class StackedLinear:
    """``R`` linear maps applied at once: ``x (R, B, in) -> (R, B, out)`` with ``weight
    (R, in, out)`` and ``bias (R, 1, out)`` or None."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, self.weight) if self.bias is None else torch.baddbmm(self.bias, x, self.weight)


Linear = Callable[[torch.Tensor], torch.Tensor]


class MambaStepWeights(NamedTuple):
    """What one step reads, one module's (shapes on the left) or a stack of ``R`` modules'
    (``stack_step_weights``, on the right); ``E = d_inner``, ``N = d_state``, ``K = d_conv``.

    The projections ``in_proj`` (``D -> 2E``), ``x_proj`` (``E -> dt_rank + 2N``), ``dt_proj``
    (``dt_rank -> E``) and ``out_proj`` (``E -> D``) are callables: one module's own layers (so
    whatever wraps them, an adapter or a hook, applies) or ``StackedLinear``s. conv_w ``(E, K)``
    | ``(R, 1, E, K)``, conv_b ``(E,)`` | ``(R, 1, E)`` or None, a ``= −exp(A_log)`` float
    ``(E, N)`` | ``(R, 1, E, N)``, d float ``(E,)`` | ``(R, 1, E)``.
    """

    in_proj: Linear
    conv_w: torch.Tensor
    conv_b: torch.Tensor | None
    x_proj: Linear
    dt_proj: Linear
    a: torch.Tensor
    d: torch.Tensor
    out_proj: Linear
    dt_rank: int
    d_state: int


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


def mamba_step(
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


def stack_step_weights(weights: list[MambaStepWeights]) -> MambaStepWeights:
    """Stack the step weights of ``R`` modules of the same shapes (each as ``Mamba.step_weights()``
    returns them, with plain ``nn.Linear`` projections) into the stacked layout."""
    first = weights[0]

    def linear(name: str) -> StackedLinear:
        layers = [getattr(w, name) for w in weights]
        odd = [type(m).__name__ for m in layers if type(m) is not nn.Linear]
        if odd:
            raise ValueError(f"weights: expected plain nn.Linear {name} layers to stack, got {odd[0]}")
        if len({(m.weight.shape, m.bias is None) for m in layers}) != 1:
            raise ValueError("weights: expected modules of the same shapes and biases, got different ones")
        bias = None if layers[0].bias is None else torch.stack([m.bias for m in layers]).unsqueeze(1)
        return StackedLinear(torch.stack([m.weight.mT for m in layers]), bias)

    def rows(name: str) -> torch.Tensor | None:
        values = [getattr(w, name) for w in weights]
        if all(v is None for v in values):
            return None
        if any(v is None for v in values) or len({v.shape for v in values}) != 1:
            raise ValueError("weights: expected modules of the same shapes and biases, got different ones")
        return torch.stack(values).unsqueeze(1)

    if len({(w.dt_rank, w.d_state) for w in weights}) != 1:
        raise ValueError("weights: expected modules of the same shapes and biases, got different ones")
    return MambaStepWeights(
        in_proj=linear("in_proj"),
        conv_w=rows("conv_w"),
        conv_b=rows("conv_b"),
        x_proj=linear("x_proj"),
        dt_proj=linear("dt_proj"),
        a=rows("a"),
        d=rows("d"),
        out_proj=linear("out_proj"),
        dt_rank=first.dt_rank,
        d_state=first.d_state,
    )


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
    y, conv, ssm = mamba_step(xk, state.conv, state.ssm, weights)
    keep = active.view(*active.shape, 1, 1)
    conv, ssm = torch.where(keep, conv, state.conv), torch.where(keep, ssm, state.ssm)
    held = torch.where(crossed.unsqueeze(-1), y[:rates], state.held)
    out = held if hold else y[:rates] * crossed.unsqueeze(-1).to(y.dtype)
    if full:
        out = torch.cat([out, y[rates:]])
    return out, CellState(new_acc, held, conv, ssm)
