"""The naive selective scan: a plain loop over time, the oracle of every fast backend.

It shares nothing with the fast paths but the argument checks: the bias, the softplus, the
mask, the skip ``D``, the gate ``z`` and the initial and final states are all handled here, one
time step after the other, as the recurrence reads::

    Δ_t = softplus(delta_t + delta_bias)                      (or delta_t + delta_bias)
    h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t                    (h_{-1} = initial_state, or 0)
    y_t = (<C_t, h_t> + D u_t) · z_t σ(z_t)

and a padded position (``mask`` False) leaves the state as it was and outputs 0, whatever
``u``, ``delta``, ``B``, ``C`` and ``z`` hold there (they are replaced by zeros, by selection,
before use, so NaN or Inf in the padding reach neither the outputs nor any gradient). So a bug
in the preprocessing of a fast backend shows up as a difference from this one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from serpent_ssm.ops.selective_scan.checks import check_scan_arguments

__all__ = ["selective_scan_ref"]


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + e^x) = −log σ(−x)``, finite for every ``x`` (no threshold), any shape."""
    return -F.logsigmoid(-x)


def _real_or_zero(real: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x`` where ``real`` (broadcast), 0 elsewhere: a selection, so NaN or Inf at padding stay out."""
    return torch.where(real, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _matrix_at(x: torch.Tensor, t: int, batch: int, channels: int) -> torch.Tensor:
    """``B`` or ``C`` at time ``t`` as seen by every channel: ``(Bt, D, N)``.

    ``x`` is ``(D, N)`` (the same at every time and in every row), ``(Bt, N, L)`` (shared by
    all channels) or ``(Bt, G, N, L)`` (channel ``c`` reads group ``c // (D / G)``).
    """
    if x.dim() == 2:
        return x.expand(batch, *x.shape)
    if x.dim() == 3:
        return x[:, None, :, t].expand(batch, channels, x.shape[1])
    return x[:, :, :, t].repeat_interleave(channels // x.shape[1], dim=1)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    mask: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    backend: str = "ref",
    *,
    return_last_state: bool | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``selective_scan`` computed one time step after the other: same arguments, same results up
    to rounding.

    Shapes: ``u, delta, z (Bt, D, L)``, ``A (D, N)``, ``B, C`` ``(Bt, N, L)``, ``(Bt, G, N, L)``
    or ``(D, N)``, ``D, delta_bias (D,)``, ``mask (Bt, L)`` bool right padding,
    ``initial_state (Bt, D, N)``; ``backend`` must be ``"ref"`` (accepted so that a call to
    ``selective_scan`` can be redirected here unchanged).

    Returns ``y (Bt, D, L)`` in ``u``'s dtype, and with ``return_final_state`` (or mamba_ssm's
    ``return_last_state``) the state after each row's last real element ``(Bt, D, N)``.
    Computes in float64 for float64 ``u``, in float32 otherwise.
    """
    if return_last_state is not None:
        return_final_state = bool(return_last_state)
    if backend != "ref":
        raise ValueError(
            f"backend: selective_scan_ref runs the 'ref' loop only, expected 'ref', got {backend!r}"
        )
    check_scan_arguments(u, delta, A, B, C, D, z, delta_bias, mask, initial_state)
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
    uf, deltaf, Af, Bf, Cf, Df, zf, biasf, h = (
        None if x is None else x.to(cdt) for x in (u, delta, A, B, C, D, z, delta_bias, initial_state)
    )
    batch, channels, length = u.shape
    if h is None:
        h = torch.zeros(batch, channels, A.shape[1], dtype=cdt, device=u.device)
    ys = []
    for t in range(length):
        real = mask[:, t, None] if mask is not None else None  # (Bt, 1)
        dt, u_t = deltaf[:, :, t], uf[:, :, t]  # (Bt, D)
        b_t, c_t = _matrix_at(Bf, t, batch, channels), _matrix_at(Cf, t, batch, channels)
        z_t = zf[:, :, t] if zf is not None else None
        if real is not None:  # padding: whatever it holds, zeros go in (and no gradient comes out)
            dt, u_t = _real_or_zero(real, dt), _real_or_zero(real, u_t)
            b_t, c_t = _real_or_zero(real[..., None], b_t), _real_or_zero(real[..., None], c_t)
            z_t = _real_or_zero(real, z_t) if z_t is not None else None
        dt = dt if biasf is None else dt + biasf
        if delta_softplus:
            dt = _softplus(dt)
        if real is not None:  # ... and no time passes
            dt = _real_or_zero(real, dt)
        h_t = torch.exp(dt[..., None] * Af) * h + (dt * u_t)[..., None] * b_t
        y_t = (h_t * c_t).sum(-1)
        if Df is not None:
            y_t = y_t + Df * u_t
        if z_t is not None:
            y_t = y_t * z_t * torch.sigmoid(z_t)
        if real is not None:  # ... and nothing comes out; the state stays
            h = torch.where(real[..., None], h_t, h)
            y_t = _real_or_zero(real, y_t)
        else:
            h = h_t
        ys.append(y_t)
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(batch, channels, 0)
    y = y.to(u.dtype)
    return (y, h) if return_final_state else y
