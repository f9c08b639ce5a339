"""Batching variable-length samples: right padding plus a mask (True = real element)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["lm_collate", "pad_collate", "pad_sequences"]


def pad_sequences(seqs: Sequence[torch.Tensor], pad_value: float = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``seqs`` (each ``(L_i, ...)``) to ``(B, max L_i, ...)``; mask ``(B, max L_i)`` bool."""
    if not seqs:
        raise ValueError("seqs: expected at least one sequence, got an empty batch")
    lengths = torch.tensor([len(s) for s in seqs])
    longest = int(lengths.max())
    out = seqs[0].new_full((len(seqs), longest, *seqs[0].shape[1:]), pad_value)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    mask = torch.arange(longest)[None, :] < lengths[:, None]
    return out, mask


def pad_collate(batch: Sequence[tuple]) -> dict[str, torch.Tensor]:
    """Collate ``(x, label)`` samples into ``{"inputs", "mask", "labels"}``.

    ``x`` is ``(L,)`` int64 token ids or ``(L,)``/``(L, C)`` float pixels; retrieval samples
    ``((x1, x2), label)`` give ``inputs``/``mask`` and ``inputs2``/``mask2``. Padding is 0
    (the pad id of every vocabulary).
    """
    xs, labels = zip(*batch, strict=True)
    out: dict[str, torch.Tensor] = {"labels": torch.as_tensor(labels, dtype=torch.int64)}
    if isinstance(xs[0], tuple):
        out["inputs"], out["mask"] = pad_sequences([x[0] for x in xs])
        out["inputs2"], out["mask2"] = pad_sequences([x[1] for x in xs])
    else:
        out["inputs"], out["mask"] = pad_sequences(list(xs))
    return out


def lm_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Collate ``(inputs (L,), targets (L,))`` windows (``LMWindows``) into ``{"inputs",
    "labels"}``, both ``(B, L)`` int64; windows have equal lengths, so no padding."""
    inputs, targets = zip(*batch, strict=True)
    return {"inputs": torch.stack(inputs), "labels": torch.stack(targets)}
