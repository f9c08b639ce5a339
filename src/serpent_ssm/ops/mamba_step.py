"""One recurrent step of the Mamba (S6) mixer, for one module or for a stack of modules at once.

``Mamba.step`` runs ``mamba_step`` with its own weights (``Mamba.step_weights()``: the parameters
as they are, 2-D linear weights ``(out, in)``). A SeRpEnt mixer steps all of its branch
backbones in one call: ``stack_step_weights`` stacks ``R`` modules' weights (3-D linear weights
``(R, in, out)``, the other fields with leading ``(R, 1)`` dims that broadcast over the batch),
and the input, the convolution state and the SSM state get a leading ``R`` dim. Modules that
share their weights need no stack: one module's weights broadcast over a leading ``R`` dim as
they are. The plain reference is ``Mamba.step`` of each module in turn (tests pin one to the
other).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["MambaStepWeights", "conv_step", "mamba_step", "stack_step_weights"]


class MambaStepWeights(NamedTuple):
    """What one step reads, one module's (shapes on the left) or a stack of ``R`` modules'
    (``stack_step_weights``, on the right); ``E = d_inner``, ``N = d_state``, ``K = d_conv``.

    in_w ``(2E, D)`` | ``(R, D, 2E)``, in_b ``(2E,)`` | ``(R, 1, 2E)`` or None, conv_w ``(E, K)`` |
    ``(R, 1, E, K)``, conv_b ``(E,)`` | ``(R, 1, E)`` or None, x_w ``(dt_rank + 2N, E)`` |
    ``(R, E, dt_rank + 2N)``, dt_w ``(E, dt_rank)`` | ``(R, dt_rank, E)``, dt_b ``(E,)`` |
    ``(R, 1, E)``, a ``= −exp(A_log)`` float ``(E, N)`` | ``(R, 1, E, N)``, d float ``(E,)`` |
    ``(R, 1, E)``, out_w ``(D, E)`` | ``(R, E, D)``, out_b ``(D,)`` | ``(R, 1, D)`` or None.
    """

    in_w: torch.Tensor
    in_b: torch.Tensor | None
    conv_w: torch.Tensor
    conv_b: torch.Tensor | None
    x_w: torch.Tensor
    dt_w: torch.Tensor
    dt_b: torch.Tensor
    a: torch.Tensor
    d: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor | None
    dt_rank: int
    d_state: int


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x (..., in) -> (..., out)`` with one weight ``(out, in)`` or a stack ``(R, in, out)``
    applied to ``x (R, B, in)``."""
    if w.dim() == 2:
        return F.linear(x, w, b)
    return torch.bmm(x, w) if b is None else torch.baddbmm(b, x, w)


def conv_step(
    x: torch.Tensor, conv: torch.Tensor, w: MambaStepWeights
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The input projection and causal convolution of one element ``x (..., D)`` with the last
    ``K − 1`` inputs ``conv (..., E, K − 1)``: ``xc (..., E)`` (the scan input, after SiLU),
    the gate ``z (..., E)`` and the new ``conv``."""
    xs, z = _linear(x, w.in_w, w.in_b).chunk(2, dim=-1)
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
    dt, b, c = _linear(xc, w.x_w, None).split([w.dt_rank, w.d_state, w.d_state], dim=-1)
    dt = F.softplus(_linear(dt, w.dt_w, w.dt_b).float())  # (..., E)
    xf = xc.float()
    h = torch.exp(dt.unsqueeze(-1) * w.a) * ssm + (dt * xf).unsqueeze(-1) * b.float().unsqueeze(-2)
    y = (h * c.float().unsqueeze(-2)).sum(-1) + w.d * xf
    y = y * F.silu(z.float())
    return _linear(y.to(x.dtype), w.out_w, w.out_b), conv, h


def stack_step_weights(weights: list[MambaStepWeights]) -> MambaStepWeights:
    """Stack the step weights of ``R`` modules of the same shapes (each as ``Mamba.step_weights()``
    returns them) into the stacked layout of ``MambaStepWeights``."""
    first = weights[0]
    for w in weights[1:]:
        if (w.dt_rank, w.d_state, w.in_w.shape, w.in_b is None, w.conv_b is None, w.out_b is None) != (
            first.dt_rank,
            first.d_state,
            first.in_w.shape,
            first.in_b is None,
            first.conv_b is None,
            first.out_b is None,
        ):
            raise ValueError("weights: expected modules of the same shapes and biases, got different ones")

    def linear(name: str) -> torch.Tensor:
        return torch.stack([getattr(w, name).mT for w in weights])

    def rows(name: str) -> torch.Tensor | None:
        if getattr(first, name) is None:
            return None
        return torch.stack([getattr(w, name) for w in weights]).unsqueeze(1)

    return MambaStepWeights(
        in_w=linear("in_w"),
        in_b=rows("in_b"),
        conv_w=rows("conv_w"),
        conv_b=rows("conv_b"),
        x_w=linear("x_w"),
        dt_w=linear("dt_w"),
        dt_b=rows("dt_b"),
        a=rows("a"),
        d=rows("d"),
        out_w=linear("out_w"),
        out_b=rows("out_b"),
        dt_rank=first.dt_rank,
        d_state=first.d_state,
    )
