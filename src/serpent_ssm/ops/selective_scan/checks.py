"""Argument checks of ``selective_scan``, shared by every backend and the naive twin."""

from __future__ import annotations

import torch

from serpent_ssm.utils.validation import (
    check_device,
    check_finite,
    check_float_tensor,
    check_mask,
    check_shape,
)

__all__ = ["check_scan_arguments"]


def _check_input_matrix(name: str, x: torch.Tensor, bt: int, d: int, n: int, length: int) -> None:
    """``B`` or ``C``: ``(D, N)``, ``(Bt, N, L)`` or ``(Bt, G, N, L)`` with ``G`` dividing ``D``."""
    check_float_tensor(name, x, ndim=(2, 3, 4))
    if x.dim() == 2:
        check_shape(name, x, (d, n))
    elif x.dim() == 3:
        check_shape(name, x, (bt, n, length))
    else:
        check_shape(name, x, (bt, None, n, length))
        g = x.shape[1]
        if g < 1 or d % g != 0:
            raise ValueError(f"{name}: expected a group count G dividing D={d}, got G={g}")


def check_scan_arguments(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    initial_state: torch.Tensor | None,
) -> None:
    """Raise ``ValueError`` naming the first argument whose device, type, shape or values are off.

    Expected: ``u, delta (Bt, D, L)``, ``A (D, N)`` finite, ``B, C`` as in ``_check_input_matrix``,
    ``D (D,)`` finite, ``z (Bt, D, L)``, ``delta_bias (D,)`` finite, ``mask (Bt, L)`` bool right
    padding, ``initial_state (Bt, D, N)``; every optional one may be None. Every tensor lives on
    ``u``'s device: checked first (attributes only), before any value is read.
    """
    check_float_tensor("u", u, ndim=3)
    tensors = {"delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, x in {**tensors, "mask": mask, "initial_state": initial_state}.items():
        if isinstance(x, torch.Tensor):  # anything else is refused by its own check below
            check_device(name, x, u.device)
    bt, d, length = u.shape
    check_float_tensor("delta", delta, ndim=3)
    check_shape("delta", delta, (bt, d, length))
    check_float_tensor("A", A, ndim=2)
    if A.shape[0] != d:
        raise ValueError(f"A: expected shape ({d}, N) matching u's {d} channels, got {tuple(A.shape)}")
    n = A.shape[1]
    check_finite("A", A.detach())
    _check_input_matrix("B", B, bt, d, n, length)
    _check_input_matrix("C", C, bt, d, n, length)
    if D is not None:
        check_float_tensor("D", D, ndim=1)
        check_shape("D", D, (d,))
        check_finite("D", D.detach())
    if z is not None:
        check_float_tensor("z", z, ndim=3)
        check_shape("z", z, (bt, d, length))
    if delta_bias is not None:
        check_float_tensor("delta_bias", delta_bias, ndim=1)
        check_shape("delta_bias", delta_bias, (d,))
        check_finite("delta_bias", delta_bias.detach())
    if mask is not None:
        check_mask(mask, bt, length)
    if initial_state is not None:
        check_float_tensor("initial_state", initial_state, ndim=3)
        check_shape("initial_state", initial_state, (bt, d, n))
