"""Sequence helpers for right-padded batches."""

from __future__ import annotations

import torch

__all__ = ["reverse_padded"]


def reverse_padded(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse the real elements of each row of ``x (B, L, ...)``, leaving right padding in place.

    Row ``b`` with real length ``n`` maps position ``j < n`` to ``n - 1 - j``; padding positions
    stay where they are, so the result is right-padded again. Without a mask, a plain flip.
    The map is an involution: applying it twice returns ``x``.
    """
    if mask is None:
        return x.flip(1)
    length = x.shape[1]
    lengths = mask.sum(1, keepdim=True)  # (B, 1)
    pos = torch.arange(length, device=x.device).unsqueeze(0)  # (1, L)
    idx = torch.where(pos < lengths, lengths - 1 - pos, pos)  # (B, L)
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)
