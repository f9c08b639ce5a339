"""``cell_pool`` and ``restore``: argument checks, then the fused CPU kernel (``resample.cpu``)
where it applies, else their torch versions (``resample.torch``)."""

from __future__ import annotations

import torch

from serpent_ssm.ops.resample.checks import check_devices
from serpent_ssm.ops.resample.cpu import cell_pool_cpu, resample_kernel_usable, restore_cpu
from serpent_ssm.ops.resample.torch import cell_pool_torch, restore_torch

__all__ = ["cell_pool", "restore"]


def _use_kernel(
    kernel: bool | None,
    op: str,
    values: torch.Tensor,
    t: torch.Tensor,
    counts: torch.Tensor,
    mask: torch.Tensor | None,
    buffer: int | None = None,
    t_start: torch.Tensor | None = None,
) -> bool:
    """Whether ``op`` runs in the fused CPU kernel (see ``cell_pool``'s ``kernel``): ``values``
    (``x (B, L, D)`` to pool or ``y (B, L', D)`` to restore) float32 and ``t (B, L)`` float64 on
    the CPU, the other tensors (on the same device: checked before) in their exact shapes (no
    broadcasting), times ``>= 0``, ``counts <= buffer`` and no gradient for ``t_start`` (cell
    pooling)."""
    if kernel is False:
        return False
    why = None
    b, length = t.shape if t.dim() == 2 else (-1, -1)
    shapes = {"counts": (counts, (b,)), "mask": (mask, (b, length)), "t_start": (t_start, (b,))}
    wrong = [
        f"{name} {tuple(v.shape)}" for name, (v, want) in shapes.items() if v is not None and v.shape != want
    ]
    lead = (b, length) if buffer is not None else (b,)
    if not resample_kernel_usable(values, t):
        why = (
            f"float32 values and float64 times on the CPU and a built kernel, got {values.dtype} and "
            f"{t.dtype} on {values.device.type}"
        )
    elif t.dim() != 2 or values.dim() != 3 or values.shape[: len(lead)] != lead or wrong:
        why = (
            f"t (B, L), values (B, {'L' if buffer is not None else 'L_c'}, D), counts (B,), mask (B, L), "
            f"t_start (B,), got t {tuple(t.shape)}, values {tuple(values.shape)}"
            + "".join(f", {w}" for w in wrong)
        )
    elif bool((t < 0).any()) or (t_start is not None and bool((t_start < 0).any())):
        why = "times >= 0, got a negative one"
    elif t_start is not None and t_start.requires_grad:
        why = "t_start without gradient, got one that requires grad"
    elif buffer is not None and counts.numel() and int(counts.max()) > buffer:
        why = f"counts <= buffer ({buffer}), got {int(counts.max())}"
    if why is not None and kernel:
        raise ValueError(f"kernel: {op} in the CPU kernel needs {why}")
    return why is None


def cell_pool(
    x: torch.Tensor,
    t: torch.Tensor,
    counts: torch.Tensor,
    buffer: int,
    mask: torch.Tensor | None,
    t_start: torch.Tensor | None = None,
    kernel: bool | None = None,
) -> torch.Tensor:
    """Time-weighted pooling of every element into the grid cells its interval overlaps.

    Element ``l`` occupies the time interval ``(t_{l-1}, t_l]`` (``t_{-1} = t_start``, 0 by
    default; a chunk of a longer causal sequence starts inside cell 1); grid cell ``k``
    is ``(k − 1, k]``. Cell ``k`` receives ``Σ_l o_lk x_l`` with ``o_lk`` the length of the
    overlap, so the weights of a complete cell sum to 1, no element is dropped, an element with
    a long interval (much information) weighs more, and the result is differentiable in ``t``.
    Only cells ``1..counts`` are filled (a causal row's last, incomplete cell is not); padded
    elements are never read, whatever they hold.

    Cost ``O((L + L') D)`` whatever the intervals (see ``resample.torch.cell_pool_torch``).

    Args: ``x (B, L, D)``, ``t (B, L)`` float64 non-decreasing, ``counts (B,)``, ``buffer`` =
    ``L'``, ``mask (B, L)`` or None, ``t_start (B,)`` float64 in ``[0, 1)`` or None;
    ``kernel``: the fused CPU kernel (``resample.cpu``, forward and backward in one pass each)
    when it applies (None: float32 ``x`` and float64 ``t`` on the CPU, every tensor in its exact
    shape, times ``>= 0``, counts within the buffer, no gradient for ``t_start``; else the torch
    ops), always (True: a ValueError that says what it needs) or never (False: the torch ops,
    ``cell_pool_torch``, the reference the tests compare it with). Every tensor lives on ``x``'s
    device (a ValueError naming the first that does not).
    Returns: ``(B, L', D)`` in ``x``'s dtype.
    """
    check_devices(x.device, t=t, counts=counts, mask=mask, t_start=t_start)
    if _use_kernel(kernel, "cell_pool", x, t, counts, mask, buffer, t_start):
        return cell_pool_cpu(x, t, counts, buffer, mask, t_start)
    return cell_pool_torch(x, t, counts, buffer, mask, t_start)


def restore(
    y: torch.Tensor,
    t: torch.Tensor,
    counts: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    mask: torch.Tensor | None,
    how: str,
    kernel: bool | None = None,
) -> torch.Tensor:
    """Map the compressed output ``y (B, L', D)`` back to length ``L``.

    ``hold``: position ``l`` reads grid point ``floor(t_l)`` (0 before the first crossing).
    ``interp``: linear interpolation in time between grid points ``floor(t_l)`` and
    ``floor(t_l) + 1``, clamped to the valid grid points ``1..count`` (differentiable in ``t``).
    ``scatter``: ``ŷ_{l_k} = ỹ_k`` (summed when an element is selected twice), 0 elsewhere.
    ``kernel``: as in ``cell_pool``, for ``hold`` and ``interp`` (``scatter`` is one torch op).
    Every tensor lives on ``y``'s device (a ValueError naming the first that does not).
    Returns ``(B, L, D)``, 0 at padded positions; invalid slots of ``y`` are never read.
    """
    check_devices(y.device, t=t, counts=counts, index=index, valid=valid, mask=mask)
    if how in ("hold", "interp") and _use_kernel(kernel, "restore", y, t, counts, mask):
        return restore_cpu(y, t, counts, mask, how)
    return restore_torch(y, t, counts, index, valid, mask, how)
