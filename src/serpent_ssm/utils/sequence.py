"""Sequence helpers for right-padded batches."""

from __future__ import annotations

import torch

__all__ = ["from_first", "reverse_padded", "zero_padding"]


def reverse_padded(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse the real elements of each row of ``x (B, L, ...)``, leaving right padding in place.

    Row ``b`` with real length ``n`` maps position ``j < n`` to ``n - 1 - j``; padding positions
    stay where they are (with whatever they hold), so the result is right-padded again. Without
    a mask, a plain flip. The map is an involution: applying it twice returns ``x``.
    """
    if mask is None:
        return x.flip(1)
    length = x.shape[1]
    lengths = mask.sum(1, keepdim=True)  # (B, 1)
    pos = torch.arange(length, device=x.device).unsqueeze(0)  # (1, L)
    idx = torch.where(pos < lengths, lengths - 1 - pos, pos)  # (B, L)
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)


def zero_padding(x: torch.Tensor, mask: torch.Tensor | None, dim: int = 1) -> torch.Tensor:
    """``x`` with 0 at the padded positions of ``mask (B, L)``, whose dims are ``x``'s 0 and ``dim``.

    A selection (``torch.where``), not a product with the mask: NaN · 0 is NaN, so a product
    would let NaN or Inf in the padding through, and its backward would send NaN gradients to
    whatever computed the padding. ``x`` of any shape ``(B, ..., L, ...)``; None: ``x`` itself.
    """
    if mask is None:
        return x
    shape = [1] * x.dim()
    shape[0], shape[dim] = mask.shape
    return torch.where(mask.view(shape), x, torch.zeros((), dtype=x.dtype, device=x.device))


def from_first(flags: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """True from the first True along ``dim`` on, the shape of ``flags``: ``[0, 1, 0, 0] -> [0, 1, 1, 1]``."""
    return torch.cumsum(flags, dim=dim, dtype=torch.int32) > 0
